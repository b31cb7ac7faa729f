"""Classified polygons from GeoJSON (as QuPath and the PUMA release write them) and their rasterisation.

A file is a ``FeatureCollection`` of ``Polygon`` / ``MultiPolygon`` features in pixel coordinates (x right,
y down, a pixel's centre at +0.5), each classified by ``properties.classification.name`` (QuPath) or
``properties.name``. A pixel belongs to a polygon when its centre is inside the outer ring and outside
every hole. Where polygons overlap, the **smaller** one wins: features are drawn largest first, ties in
file order, so a region annotated inside another stays visible and a pixel claimed by two nuclei goes to
the smaller one, whatever order the file lists them in.

Bad files raise a :class:`~transforms.base.errors.DatasetError` naming the file and the feature: not JSON,
not a FeatureCollection, a geometry other than (Multi)Polygon, a ring that is not closed or has fewer
than four positions, a class name outside the table, coordinates outside the image (by more than
:data:`TOLERANCE` pixels), a missing file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from transforms.base.errors import DatasetError

TOLERANCE = 1.0  # pixels a vertex may lie outside the image (annotation tools snap to the border)


@dataclass
class Feature:
    """One classified (Multi)Polygon: its class name, polygons (each a list of rings of (x, y)), file order."""

    name: str
    polygons: list[list[np.ndarray]]
    index: int

    @property
    def area(self) -> float:
        def shoelace(ring):
            x, y = ring[:, 0], ring[:, 1]
            return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))

        return sum(shoelace(p[0]) - sum(shoelace(h) for h in p[1:]) for p in self.polygons)


def read_features(path: str | Path, names: Sequence[str], size: tuple[int, int] | None = None) -> list[Feature]:
    """The classified polygons of a GeoJSON file, checked (module doc); ``names``: the class names allowed,
    ``size``: (H, W) of the image, to check the coordinates."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "does not exist")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(path, f"is not JSON ({err})") from err
    if not isinstance(content, Mapping) or content.get("type") != "FeatureCollection":
        kind = content.get("type") if isinstance(content, Mapping) else type(content).__name__
        raise DatasetError(path, f"must be a GeoJSON FeatureCollection, got {kind!r}")
    features = []
    for i, feature in enumerate(content.get("features") or []):
        where = f"feature {i}"
        props = feature.get("properties") or {}
        classification = props.get("classification") or {}
        name = classification.get("name") if isinstance(classification, Mapping) else None
        name = name or props.get("name")
        if name not in names:
            raise DatasetError(path, f"{where} has class {name!r}, not one of {sorted(names)}")
        geometry = feature.get("geometry") or {}
        kind = geometry.get("type")
        if kind == "Polygon":
            raw = [geometry.get("coordinates")]
        elif kind == "MultiPolygon":
            raw = geometry.get("coordinates")
        else:
            raise DatasetError(path, f"{where} ({name}) is a {kind!r}; only Polygon and MultiPolygon are read")
        polygons = [[_ring(ring, path, f"{where} ({name}), polygon {p}, ring {r}", size)
                     for r, ring in enumerate(polygon or [])] for p, polygon in enumerate(raw or [])]
        if not polygons or any(not p for p in polygons):
            raise DatasetError(path, f"{where} ({name}) has an empty polygon")
        features.append(Feature(name, polygons, i))
    return features


def _ring(ring, path: Path, where: str, size: tuple[int, int] | None) -> np.ndarray:
    try:
        points = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DatasetError(path, f"{where}: coordinates are not numbers ({err})") from err
    if points.ndim != 2 or points.shape[1] < 2:
        raise DatasetError(path, f"{where}: a ring must be a list of [x, y] positions")
    points = points[:, :2]
    if len(points) < 4:
        raise DatasetError(path, f"{where}: a ring needs at least 4 positions (3 corners and the first again), "
                                 f"got {len(points)}")
    if not np.array_equal(points[0], points[-1]):
        raise DatasetError(path, f"{where}: the ring is not closed (first position {points[0].tolist()}, last "
                                 f"{points[-1].tolist()}; GeoJSON repeats the first position at the end)")
    if not np.isfinite(points).all():
        raise DatasetError(path, f"{where}: non-finite coordinates")
    if size is not None:
        h, w = size
        low, high = points.min(axis=0), points.max(axis=0)
        if low[0] < -TOLERANCE or low[1] < -TOLERANCE or high[0] > w + TOLERANCE or high[1] > h + TOLERANCE:
            raise DatasetError(path, f"{where}: coordinates x {low[0]:.1f}..{high[0]:.1f}, y {low[1]:.1f}..{high[1]:.1f} "
                                     f"lie outside the {w}x{h} image (is this the annotation of another ROI?)")
    return points


def fill(feature: Feature, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the pixels whose centres are inside the feature (holes excluded)."""
    from skimage.draw import polygon as draw_polygon

    inside = np.zeros(shape, dtype=bool)
    for rings in feature.polygons:
        outer, holes = rings[0], rings[1:]
        rr, cc = draw_polygon(outer[:, 1] - 0.5, outer[:, 0] - 0.5, shape)  # pixel centres at +0.5
        part = np.zeros(shape, dtype=bool)
        part[rr, cc] = True
        for hole in holes:
            hr, hc = draw_polygon(hole[:, 1] - 0.5, hole[:, 0] - 0.5, shape)
            part[hr, hc] = False
        inside |= part
    return np.nonzero(inside)


def drawing_order(features: list[Feature]) -> list[Feature]:
    """Largest first, ties in file order: smaller features end on top."""
    return sorted(features, key=lambda f: (-f.area, f.index))


def rasterize_classes(features: list[Feature], size: tuple[int, int], values: Mapping[str, int]) -> np.ndarray:
    """(H, W) uint8 map of ``values[feature.name]`` (0 where nothing is drawn)."""
    out = np.zeros(size, dtype=np.uint8)
    for feature in drawing_order(features):
        out[fill(feature, size)] = values[feature.name]
    return out


def rasterize_instances(features: list[Feature], size: tuple[int, int],
                        types: Mapping[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(instances, types)``: (H, W) int32 ids 1..N of the visible features in file order (0 background;
    a feature hidden entirely by smaller ones is left out) and (H, W) uint8 ``types[feature.name]``
    (0 for names not in ``types``)."""
    types = types or {}
    instances = np.zeros(size, dtype=np.int32)
    type_map = np.zeros(size, dtype=np.uint8)
    for feature in drawing_order(features):
        where = fill(feature, size)
        instances[where] = feature.index + 1
        type_map[where] = types.get(feature.name, 0)
    present = np.unique(instances[instances > 0])
    relabel = np.zeros(len(features) + 1, dtype=np.int32)
    relabel[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return relabel[instances], type_map


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file (TIFF/PNG/JPEG; an alpha channel is dropped)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "does not exist")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as err:
        raise DatasetError(path, f"cannot read image ({type(err).__name__}: {err})") from err




def polygon_feature(ring: np.ndarray, name: str, object_type: str = "detection", color: Sequence[int] | None = None,
                    measurements: Mapping[str, float] | None = None) -> dict:
    """A classified GeoJSON polygon feature as QuPath reads it; ``ring``: (N, 2) x, y pixel coordinates
    (closed here if it is not)."""
    points = [[round(float(x), 2), round(float(y), 2)] for x, y in np.asarray(ring, dtype=np.float64)[:, :2]]
    if points[0] != points[-1]:
        points.append(points[0])
    properties: dict = {"objectType": object_type, "classification": {"name": name}}
    if color is not None:
        properties["classification"]["color"] = [int(c) for c in color]
    if measurements:
        properties["measurements"] = {k: float(v) for k, v in measurements.items()}
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [points]}, "properties": properties}


def write_features(path: str | Path, features: Sequence[dict]) -> Path:
    """A GeoJSON FeatureCollection file (QuPath: File > Import objects)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": list(features)}))
    return path
