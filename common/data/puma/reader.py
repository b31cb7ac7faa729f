"""PUMA (melanoma tissue and nuclei, Schuiveling et al. 2025) as published on Zenodo (record 14869398).

Layout (the three training zips unpacked side by side in one folder)::

    <root>/01_training_dataset_tif_ROIs/training_set_metastatic_roi_001.tif          1024x1024 H&E ROI (RGBA TIFF)
    <root>/01_training_dataset_geojson_tissue/training_set_metastatic_roi_001_tissue.geojson
    <root>/01_training_dataset_geojson_nuclei/training_set_metastatic_roi_001_nuclei.geojson

The GeoJSON files are QuPath FeatureCollections of classified polygons; the class tables and the loader
of one ROI are in :mod:`transforms.puma`, polygon reading and rasterising (overlaps: the smaller polygon
wins) in :mod:`transforms.geojson`.

Splits: the paper splits the ROIs 7:1:2 (train/val/test) without publishing the list;
:func:`puma_split` draws one (seeded, by ROI) and writes it to a JSON file, or reads a split file a user
gives (e.g. a published 144/20/41 list).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from transforms.base.errors import DatasetError
from transforms.puma import (  # noqa: F401  (the tables, for configs and reports)
    NUCLEI_NAMES,
    NUCLEI_OUTPUT_NAMES,
    NUCLEI_TYPE_NAMES,
    NUCLEI_TYPES,
    READABLE_NUCLEI_NAMES,
    TISSUE_CLASSES,
    TISSUE_COLORS,
    TISSUE_NAMES,
    num_nuclei_types,
)

logger = logging.getLogger(__name__)

IMAGES = "01_training_dataset_tif_ROIs"
TISSUE = "01_training_dataset_geojson_tissue"
NUCLEI = "01_training_dataset_geojson_nuclei"
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


def puma_cases(root: str | Path) -> list[dict]:
    """``{name, image, tissue, nuclei}`` for every ROI image of a PUMA folder, sorted by name; an image
    without its two annotation files raises, naming the missing file."""
    root = Path(root)
    folder = root / IMAGES
    if not folder.is_dir():
        raise DatasetError(root, f"has no {IMAGES}/ folder: set --dataset_dir to the folder the PUMA training zips "
                                 f"were unpacked into ({IMAGES}/, {TISSUE}/, {NUCLEI}/)")
    cases = []
    for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        name = image.stem
        case = {"name": name, "image": str(image), "tissue": str(root / TISSUE / f"{name}_tissue.geojson"),
                "nuclei": str(root / NUCLEI / f"{name}_nuclei.geojson")}
        for key in ("tissue", "nuclei"):
            if not Path(case[key]).is_file():
                raise DatasetError(case[key], f"does not exist: the {key} annotation of {image.name}")
        cases.append(case)
    if not cases:
        raise DatasetError(folder, f"holds no ROI images ({', '.join(IMAGE_SUFFIXES)})")
    return cases


def puma_split(names: Sequence[str], split_file: str | Path, fractions: Sequence[float] = (0.7, 0.1, 0.2),
               seed: int = 0) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` ROI names.

    An existing ``split_file`` is read (and must name only known ROIs); otherwise one is drawn by ROI with
    ``fractions`` and ``seed`` and written there, so training and evaluation use the same split.
    """
    split_file = Path(split_file)
    known = set(names)
    if split_file.is_file():
        try:
            split = json.loads(split_file.read_text())
        except json.JSONDecodeError as err:
            raise DatasetError(split_file, f"is not JSON ({err})") from err
        if not isinstance(split, Mapping) or not {"train", "val", "test"} <= set(split):
            raise DatasetError(split_file, "must map train, val and test to lists of ROI names")
        unknown = sorted(n for part in ("train", "val", "test") for n in split[part] if n not in known)
        if unknown:
            raise DatasetError(split_file, f"names ROIs that the dataset does not have: {unknown[:5]}")
        unused = sorted(known - {n for part in ("train", "val", "test") for n in split[part]})
        if unused:
            logger.warning("%s leaves %d of the dataset's %d ROIs out of every split (e.g. %s); delete it to draw "
                           "a new split", split_file, len(unused), len(known), unused[0])
        return {k: list(split[k]) for k in ("train", "val", "test")}
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    order = np.random.default_rng(seed).permutation(sorted(known))
    n_val = int(round(fractions[1] * len(order)))
    n_test = int(round(fractions[2] * len(order)))
    n_train = len(order) - n_val - n_test
    split = {"train": sorted(order[:n_train].tolist()), "val": sorted(order[n_train:n_train + n_val].tolist()),
             "test": sorted(order[n_train + n_val:].tolist()),
             "drawn": {"fractions": list(fractions), "seed": seed}}
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text(json.dumps(split, indent=1))
    return {k: split[k] for k in ("train", "val", "test")}


def puma_datalist(root: str | Path, split: str, split_file: str | Path, fractions: Sequence[float] = (0.7, 0.1, 0.2),
                  seed: int = 0, limit: int | None = None) -> list[dict]:
    """Records ``{name, image, tissue, nuclei}`` of one split (:func:`puma_cases`, :func:`puma_split`)."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    cases = puma_cases(root)
    chosen = set(puma_split([c["name"] for c in cases], split_file, fractions, seed)[split])
    records = [c for c in cases if c["name"] in chosen]
    return records[: int(limit)] if limit else records


def roi_side(records: Sequence[Mapping]) -> int:
    """The side (px) of the training ROIs, which training resizes to the network's image size: recorded in the
    checkpoint's settings (``roi_size``) so that evaluation and inference read any ROI at the magnification
    the network learned (:func:`transforms.puma.training_magnification`). Read from the image headers only.
    ROIs of several sizes are each resized to the same image size, i.e. trained at several magnifications:
    this warns, naming two of them, and returns the median side."""
    from PIL import Image

    if not records:
        raise ValueError("no training ROIs to measure: the training split is empty")
    sides: dict[str, int] = {}
    for record in records:
        path = Path(str(record["image"]))
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Exception as err:
            raise DatasetError(path, f"cannot read image ({type(err).__name__}: {err})") from err
        if width != height:
            logger.warning("%s: %dx%d px, not square; training resizes it to a square, which stretches it",
                           path, width, height)
        sides[str(path)] = max(width, height)
    values = sorted(sides.values())
    if values[0] != values[-1]:
        smallest, largest = (next(p for p, s in sides.items() if s == v) for v in (values[0], values[-1]))
        logger.warning("training ROIs differ in size (%s: %d px, %s: %d px): each is resized to the same image "
                       "size, so they are learned at different magnifications; evaluation and inference use the "
                       "median side, %d px", smallest, values[0], largest, values[-1], values[len(values) // 2])
    return int(values[len(values) // 2])


def fine_tuning_settings(settings: Mapping, records: Sequence[Mapping]) -> dict:
    """The checkpoint settings of a fine-tuned model: the trained model's (its ``roi_size`` included, so that
    evaluation and inference keep reading ROIs at the magnification it learned first), after a warning when
    the fine-tuning ROIs have another side: training resizes every ROI to ``image_size``, so they are learned
    at another magnification (resample them to the trained ROI side first, or train a new model). A trained
    model without ``roi_size`` (written before it was recorded) gets the fine-tuning ROIs' side, with a warning."""
    settings = dict(settings)
    if not records:
        return settings
    trained, side = settings.get("roi_size"), roi_side(records)
    if not trained:  # a checkpoint from before roi_size: the side these ROIs are learned at
        settings["roi_size"] = side
        logger.warning("the trained model does not record the side of its training ROIs (written before roi_size "
                       "existed): the fine-tuned model records these ROIs' %d px, at which evaluation and inference "
                       "will read", side)
    elif side != int(trained):
        logger.warning("the fine-tuning ROIs are %d px, the model was trained on %d px ROIs: both are resized to "
                       "%s px, so these are learned at %.2fx the trained magnification; evaluation and "
                       "inference keep reading ROIs as the model was first trained (roi_size %d)",
                       side, int(trained), settings.get("image_size"), int(trained) / side, int(trained))
    return settings
