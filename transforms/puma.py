"""PUMA's class tables and the loader of one ROI with its rasterised tissue and nuclei annotations.

Tissue names (the challenge's tissue map values; unannotated pixels are background, 0)::

    tissue_white_background 0, tissue_stroma 1, tissue_blood_vessel 2, tissue_tumor 3,
    tissue_epidermis 4, tissue_necrosis 5

Nuclei names (track 2's ten classes; track 1 merges them into tumour / TIL / other; ``none`` is the
Co-Seg paper's class-agnostic nuclei)::

    nuclei_tumor, nuclei_lymphocyte, nuclei_plasma_cell, nuclei_histiocyte, nuclei_melanophage,
    nuclei_neutrophil, nuclei_stroma, nuclei_epithelium, nuclei_endothelium, nuclei_apoptosis

Predicted nuclei are written under the names PUMA's evaluation reads (:data:`NUCLEI_OUTPUT_NAMES`):
track 1 ``nuclei_tumor``, ``nuclei_lymphocyte`` (the TIL class: lymphocytes and plasma cells) and
``nuclei_other``; track 2 the ten names above; class-agnostic nuclei ``nuclei``. A nuclei file may carry
all of these (:data:`READABLE_NUCLEI_NAMES`), so the bundle reads its own output back (correct it in
QuPath, then fine-tune): ``nuclei_other`` is type 3 of track 1 (track 2 cannot split it and refuses the
file), ``nuclei`` is a nucleus without a type (type 0: the type loss skips it).

Polygons are read and rasterised by :mod:`transforms.geojson` (overlaps: the smaller polygon wins); a
nucleus that covers no pixel centre, or only pixels of smaller nuclei, vanishes from the maps:
:func:`read_nuclei` counts them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Hashable, Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Transform

from .base.errors import DatasetError
from .geojson import rasterize_classes, rasterize_instances, read_features, read_rgb

TISSUE_CLASSES = ("background", "stroma", "blood_vessel", "tumor", "epidermis", "necrosis")
TISSUE_NAMES = {"tissue_white_background": 0, "tissue_stroma": 1, "tissue_blood_vessel": 2, "tissue_tumor": 3,
                "tissue_epidermis": 4, "tissue_necrosis": 5}
TISSUE_COLORS = {0: (255, 255, 255), 1: (0, 170, 0), 2: (220, 0, 0), 3: (130, 40, 200), 4: (240, 170, 0),
                 5: (90, 90, 90)}
NUCLEI_NAMES = ("nuclei_tumor", "nuclei_lymphocyte", "nuclei_plasma_cell", "nuclei_histiocyte", "nuclei_melanophage",
                "nuclei_neutrophil", "nuclei_stroma", "nuclei_epithelium", "nuclei_endothelium", "nuclei_apoptosis")
# nucleus type tables: name -> type id (1..n; 0 is "not a nucleus")
NUCLEI_TYPES = {
    "none": {},
    "track1": {"nuclei_tumor": 1, "nuclei_lymphocyte": 2, "nuclei_plasma_cell": 2,
               **{n: 3 for n in NUCLEI_NAMES if n not in ("nuclei_tumor", "nuclei_lymphocyte", "nuclei_plasma_cell")},
               "nuclei_other": 3},
    "track2": {name: i + 1 for i, name in enumerate(NUCLEI_NAMES)},
}
NUCLEI_TYPE_NAMES = {"none": (), "track1": ("tumor", "TIL", "other"),
                     "track2": tuple(n.removeprefix("nuclei_") for n in NUCLEI_NAMES)}
UNTYPED_NUCLEUS = "nuclei"
# the GeoJSON class of type 1..n of each table (untyped nuclei: UNTYPED_NUCLEUS): what PUMA's evaluation reads
NUCLEI_OUTPUT_NAMES = {"none": (), "track1": ("nuclei_tumor", "nuclei_lymphocyte", "nuclei_other"),
                       "track2": NUCLEI_NAMES}
READABLE_NUCLEI_NAMES = NUCLEI_NAMES + ("nuclei_other", UNTYPED_NUCLEUS)


def nuclei_output_names(type_names) -> tuple[str, ...]:
    """The GeoJSON class names of a model's nucleus types (``NUCLEI_TYPE_NAMES`` of a table, as configs pass
    them): PUMA's names (:data:`NUCLEI_OUTPUT_NAMES`); other names ``n`` become ``nuclei_<n>``."""
    type_names = tuple(type_names or ())
    for table, names in NUCLEI_TYPE_NAMES.items():
        if type_names == names:
            return NUCLEI_OUTPUT_NAMES[table]
    return tuple(n if n.startswith("nuclei_") else f"nuclei_{n}" for n in type_names)


def num_nuclei_types(nuclei_classes: str) -> int:
    """Output channels of the nucleus-type head for a nuclei class table (``none``: 0)."""
    if nuclei_classes not in NUCLEI_TYPES:
        raise ValueError(f"nuclei_classes must be one of {sorted(NUCLEI_TYPES)}, got {nuclei_classes!r}")
    return len(NUCLEI_TYPE_NAMES[nuclei_classes])


def tissue_map(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 tissue class map (:data:`TISSUE_CLASSES`) of a tissue GeoJSON."""
    return rasterize_classes(read_features(path, TISSUE_NAMES, size), size, TISSUE_NAMES)


def read_nuclei(path: str | Path, size: tuple[int, int], nuclei_classes: str = "none") -> tuple[np.ndarray, np.ndarray, int]:
    """``(instances, types, vanished)`` of a nuclei GeoJSON: (H, W) int32 ids 1..N in file order, (H, W) uint8
    type ids of ``NUCLEI_TYPES[nuclei_classes]`` (all 0 for ``none``; 0 for untyped ``nuclei`` too), and how
    many of the file's nuclei left no pixel in the maps (too small to cover a pixel centre, or hidden)."""
    num_nuclei_types(nuclei_classes)
    table = NUCLEI_TYPES[nuclei_classes]
    features = read_features(path, READABLE_NUCLEI_NAMES, size)
    for f in features:
        if table and f.name not in table and f.name != UNTYPED_NUCLEUS:
            raise DatasetError(path, f"feature {f.index} has class {f.name!r} (track 1's merged class), which "
                                     f"nuclei_classes {nuclei_classes} cannot split into its types: read the file with "
                                     f"nuclei_classes track1 or none")
    instances, types = rasterize_instances(features, size, table)
    return instances, types, len(features) - int(instances.max(initial=0))


def nuclei_maps(path: str | Path, size: tuple[int, int], nuclei_classes: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """``(instances, types)`` of a nuclei GeoJSON (:func:`read_nuclei` without the count)."""
    return read_nuclei(path, size, nuclei_classes)[:2]


class LoadPumaROId(Transform):
    """A record ``{image, tissue?, nuclei?}`` (:func:`common.data.puma.reader.puma_datalist`) ->

    * ``image``: (3, H, W) float32 RGB 0-255 (an alpha channel dropped), a ``MetaTensor`` naming its file,
      and ``orig_size``, its (H, W);
    * ``tissue``: (1, H, W) int64 tissue classes (:data:`TISSUE_CLASSES`);
    * ``nuclei``: (1, H, W) int64 nucleus instance ids (0 background);
    * ``nuclei_type``: (1, H, W) int64 type ids of ``nuclei_classes`` (all 0 for ``none``);
    * ``nuclei_vanished``: how many of the file's nuclei left no pixel (:func:`read_nuclei`), for the reports.

    The annotation keys are read only when the record has them (inference records hold an image only);
    every error names the file and the GeoJSON feature.
    """

    def __init__(self, nuclei_classes: str = "none"):
        num_nuclei_types(nuclei_classes)
        self.nuclei_classes = nuclei_classes

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        path = str(d["image"])
        rgb = read_rgb(path)
        size = rgb.shape[:2]
        meta = {"filename_or_obj": path, "spatial_shape": np.asarray(size)}

        def tensor(array: np.ndarray, dtype=torch.int64) -> MetaTensor:
            return MetaTensor(torch.from_numpy(np.ascontiguousarray(array)).to(dtype), meta=dict(meta))

        d["image"] = tensor(rgb.transpose(2, 0, 1), torch.float32)
        d["orig_size"] = torch.tensor(size)
        if d.get("tissue"):
            d["tissue"] = tensor(tissue_map(d["tissue"], size)[None])
        if d.get("nuclei"):
            instances, types, vanished = read_nuclei(d["nuclei"], size, self.nuclei_classes)
            d["nuclei"] = tensor(instances[None])
            d["nuclei_type"] = tensor(types[None])
            d["nuclei_vanished"] = vanished
        return d


def training_magnification(processor: Mapping) -> float:
    """The factor by which training scaled its ROIs: ``image_size / roi_size`` (1 where the training ROIs had
    the network's size, e.g. PUMA's 1024 px ROIs at image size 1024; 0.5 for them at 512). Evaluation and
    inference scale an ROI of any size by it before sliding windows of ``image_size`` over it, so the network
    sees the magnification it learned. A processor written before ``roi_size`` was recorded gives 1."""
    image_size = float(processor["image_size"])
    roi_size = processor.get("roi_size")
    if not roi_size:
        import warnings

        warnings.warn(f"the checkpoint's settings do not record the side of its training ROIs (roi_size; written "
                      f"before it was recorded): ROIs are read unscaled, which is the training magnification only if "
                      f"the model was trained on ROIs of its image size ({int(image_size)} px)", stacklevel=2)
        roi_size = image_size
    if float(roi_size) <= 0:
        raise ValueError(f"processor roi_size must be a positive number of pixels, got {roi_size!r}")
    return image_size / float(roi_size)
