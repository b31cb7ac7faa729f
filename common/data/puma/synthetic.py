"""Synthetic PUMA ROIs in the published layout: TIFF images (RGBA, as the release), tissue and nuclei GeoJSON.

Each ROI has an epidermis band along its top, stroma below it, a tumour region, one or two blood
vessels in the stroma, sometimes necrosis inside the tumour and a white background corner. Nuclei
follow the tissue, so that each task tells something about the other:

* tumour: dense, large, round, dark purple tumour nuclei, some lymphocytes at the border;
* epidermis: a dense row of medium oval epithelial nuclei;
* stroma: sparse elongated spindle (stromal) nuclei and scattered small round lymphocytes;
* blood vessels: flat endothelial nuclei lining the wall;
* necrosis: a few small apoptotic fragments; background: none.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..synthetic.ownership import claim_folder, is_sample_folder
from transforms.puma import nuclei_maps, tissue_map

from .reader import IMAGES, NUCLEI, TISSUE

_TISSUE_LOOK = {0: (246, 244, 246), 1: (236, 170, 200), 2: (250, 215, 220), 3: (205, 140, 195), 4: (215, 125, 175),
                5: (225, 200, 210)}
# nucleus class: colour, radius (fraction of the ROI side), elongation
_NUCLEUS_LOOK = {
    "nuclei_tumor": ((85, 30, 120), 0.030, 1.2),
    "nuclei_lymphocyte": ((40, 30, 125), 0.014, 1.0),
    "nuclei_stroma": ((150, 70, 150), 0.018, 3.5),
    "nuclei_epithelium": ((120, 55, 150), 0.020, 1.6),
    "nuclei_endothelium": ((130, 60, 140), 0.014, 3.0),
    "nuclei_apoptosis": ((50, 20, 40), 0.010, 1.0),
}
_TISSUE_CLASS = {1: "tissue_stroma", 2: "tissue_blood_vessel", 3: "tissue_tumor", 4: "tissue_epidermis",
                 5: "tissue_necrosis", 0: "tissue_white_background"}


def _ellipse(cx, cy, rx, ry, angle=0.0, n=16, wobble=0.0, rng=None) -> list[list[float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = 1.0 + (rng.uniform(-wobble, wobble, n) if wobble and rng is not None else 0.0)
    x, y = rx * r * np.cos(t), ry * r * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    points = [[round(float(cx + c * a - s * b), 2), round(float(cy + s * a + c * b), 2)] for a, b in zip(x, y)]
    return points + [points[0]]


def _feature(name: str, rings: list[list[list[float]]]) -> dict:
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {"objectType": "annotation", "classification": {"name": name}}}


def _tissue_features(size: int, rng: np.random.Generator) -> list[dict]:
    s = float(size)
    band = rng.uniform(0.12, 0.2) * s
    xs = np.linspace(0, s, 9)
    wave = band + rng.uniform(-0.04, 0.04, len(xs)) * s
    epidermis = [[0.0, 0.0], [s, 0.0]] + [[float(x), float(y)] for x, y in zip(xs[::-1], wave[::-1])] + [[0.0, 0.0]]
    features = [_feature("tissue_stroma", [[[0.0, 0.0], [s, 0.0], [s, s], [0.0, s], [0.0, 0.0]]]),
                _feature("tissue_epidermis", [epidermis])]
    cx, cy = rng.uniform(0.35, 0.65) * s, rng.uniform(0.5, 0.7) * s
    rx, ry = rng.uniform(0.18, 0.26) * s, rng.uniform(0.14, 0.2) * s
    features.append(_feature("tissue_tumor", [_ellipse(cx, cy, rx, ry, rng.uniform(0, np.pi), 20, 0.15, rng)]))
    if rng.random() < 0.5:
        features.append(_feature("tissue_necrosis", [_ellipse(cx, cy, 0.35 * rx, 0.35 * ry, 0.0, 12, 0.1, rng)]))
    for _ in range(int(rng.integers(1, 3))):
        vx = rng.choice([rng.uniform(0.08, 0.22), rng.uniform(0.78, 0.92)]) * s
        vy = rng.uniform(0.35, 0.9) * s
        features.append(_feature("tissue_blood_vessel", [_ellipse(vx, vy, 0.06 * s, 0.04 * s, rng.uniform(0, np.pi), 14)]))
    if rng.random() < 0.5:  # a white corner without tissue
        c = 0.16 * s
        features.append(_feature("tissue_white_background", [[[s - c, s], [s, s - c], [s, s], [s - c, s]]]))
    return features


def _nuclei_features(tissue: np.ndarray, rng: np.random.Generator) -> list[dict]:
    size = tissue.shape[0]
    placed: list[tuple[float, float, float]] = []

    def add(name, x, y, angle=None):
        color, radius, elong = _NUCLEUS_LOOK[name]
        r = max(1.6, radius * size * rng.uniform(0.85, 1.15))
        reach = r * np.sqrt(elong)  # the major semi-axis: nuclei never touch, so every one stays visible
        if not (reach <= x <= size - reach and reach <= y <= size - reach):
            return None
        if any((x - px) ** 2 + (y - py) ** 2 < (reach + pr + 1.0) ** 2 for px, py, pr in placed):
            return None
        placed.append((x, y, reach))
        angle = rng.uniform(0, np.pi) if angle is None else angle
        return _feature(name, [_ellipse(x, y, r * np.sqrt(elong), r / np.sqrt(elong), angle, 12)])

    # placement attempts per pixel of each tissue (attempts that would touch a nucleus are dropped)
    density = {3: ("nuclei_tumor", 0.012), 4: ("nuclei_epithelium", 0.008), 1: ("nuclei_stroma", 0.0012),
               5: ("nuclei_apoptosis", 0.02)}
    features = []
    for cls, (name, per_pixel) in density.items():
        ys, xs = np.nonzero(tissue == cls)
        for _ in range(int(per_pixel * len(ys))):
            k = int(rng.integers(len(ys))) if len(ys) else None
            if k is not None and (f := add(name, xs[k] + 0.5, ys[k] + 0.5)):
                features.append(f)
    ys, xs = np.nonzero(np.isin(tissue, (1, 3)))  # lymphocytes in stroma and tumour
    for _ in range(int(0.0012 * len(ys))):
        k = int(rng.integers(len(ys)))
        if f := add("nuclei_lymphocyte", xs[k] + 0.5, ys[k] + 0.5):
            features.append(f)
    from scipy import ndimage

    vessel = tissue == 2
    wall = vessel & ~ndimage.binary_erosion(vessel, iterations=2)
    ys, xs = np.nonzero(wall)
    cy, cx = (ys.mean(), xs.mean()) if len(ys) else (0, 0)
    for _ in range(int(0.08 * len(ys))):
        k = int(rng.integers(len(ys)))
        tangent = np.arctan2(ys[k] - cy, xs[k] - cx) + np.pi / 2  # lying along the wall
        if f := add("nuclei_endothelium", xs[k] + 0.5, ys[k] + 0.5, tangent):
            features.append(f)
    return features


def _paint(tissue: np.ndarray, instances: np.ndarray, names: list[str], rng: np.random.Generator) -> np.ndarray:
    image = np.zeros((*tissue.shape, 3), np.float32)
    for cls, color in _TISSUE_LOOK.items():
        image[tissue == cls] = color
    image += rng.normal(0, 7, (*tissue.shape, 1)) + rng.normal(0, 3, (*tissue.shape, 3))
    for i, name in enumerate(names, start=1):
        where = instances == i
        if where.any():
            image[where] = np.asarray(_NUCLEUS_LOOK[name][0], np.float32) * rng.uniform(0.9, 1.1) \
                + rng.normal(0, 6, (int(where.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_sample_puma(out_dir: str | Path, n: int = 20, size: int = 128, seed: int = 0) -> Path:
    """Write ``n`` synthetic ROIs of ``size``² in the published layout under ``<out_dir>/PUMA``; returns it."""
    from PIL import Image

    root = claim_folder(Path(out_dir) / "PUMA")
    for folder in (IMAGES, TISSUE, NUCLEI):
        (root / folder).mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        name = f"training_set_{'primary' if i % 2 == 0 else 'metastatic'}_roi_{i // 2 + 1:03d}"
        tissue_path = root / TISSUE / f"{name}_tissue.geojson"
        tissue_path.write_text(json.dumps({"type": "FeatureCollection", "features": _tissue_features(size, rng)}))
        tissue = tissue_map(tissue_path, (size, size))
        nuclei = _nuclei_features(tissue, rng)
        nuclei_path = root / NUCLEI / f"{name}_nuclei.geojson"
        nuclei_path.write_text(json.dumps({"type": "FeatureCollection", "features": nuclei}))
        instances, _ = nuclei_maps(nuclei_path, (size, size))
        names = [f["properties"]["classification"]["name"] for f in nuclei]
        rgb = _paint(tissue, instances, names, rng)  # nuclei never touch: instance i is feature i - 1
        rgba = np.concatenate([rgb, np.full((size, size, 1), 255, np.uint8)], axis=-1)
        Image.fromarray(rgba, mode="RGBA").save(root / IMAGES / f"{name}.tif")
    return root


def ensure_sample_puma(out_dir: str | Path = "sample_data", n: int = 20, size: int = 128, seed: int = 0) -> str:
    """The synthetic PUMA folder under ``out_dir``, written first if it is not complete (demo.yaml)."""
    root = Path(out_dir) / "PUMA"
    images = list((root / IMAGES).glob("*.tif")) if (root / IMAGES).is_dir() else []
    if not (is_sample_folder(root) and len(images) >= n):
        print(f"writing {n} synthetic PUMA ROIs ({size}x{size}) in {root}")
        write_sample_puma(out_dir, n=n, size=size, seed=seed)
    return str(root)
