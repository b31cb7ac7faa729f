"""PanNuke read as published: fold files, their checks, the datalist, the class table.

Published layout (Gamper et al., https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke), one
zip per fold, unpacked as::

    <root>/Fold 1/images/fold1/images.npy   (N, 256, 256, 3)  RGB, 0-255 (stored as float64)
    <root>/Fold 1/images/fold1/types.npy    (N,)              organ (tissue) name per patch
    <root>/Fold 1/masks/fold1/masks.npy     (N, 256, 256, 6)  instance ids per channel

The dataset's README gives the channel order of ``masks.npy`` as "0: Neoplastic cells,
1: Inflammatory, 2: Connective/Soft tissue cells, 3: Dead Cells, 4: Epithelial, 6 [sic, the
sixth channel]: Background". Each of the first five channels holds instance ids (0 = none).
The reader also accepts a flat ``<root>/fold1/{images,types,masks}.npy`` or
``<root>/Fold 1/{images,types,masks}.npy``.

Class map produced here: **0 background, 1 neoplastic, 2 inflammatory, 3 connective,
4 dead, 5 epithelial** (``masks.npy`` channel c -> class c + 1; :data:`CLASS_NAMES`). Where
two type channels claim the same pixel (rare), the lower channel wins.

The organizers' three-fold split trains on one fold, validates on another and tests on the
third; :func:`pannuke_datalist` takes the folds of each split from the config
(default train 1, val 2, test 3). Arrays are memory-mapped; a record holds the fold, the
patch index and the organ, and :class:`LoadPanNukePatchd` reads one patch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from transforms.base.describe import typed
from transforms.base.errors import DatasetError
from transforms.pannuke import load_npy

CLASS_NAMES = ("background", "neoplastic", "inflammatory", "connective", "dead", "epithelial")


MASK_CHANNELS = ("neoplastic", "inflammatory", "connective", "dead", "epithelial", "background")


# the paper's overlay colours (Fig. 7), by class index
CLASS_COLORS = {
    0: (0, 0, 0),
    1: (255, 0, 0),      # neoplastic: red
    2: (0, 200, 0),      # inflammatory: green
    3: (0, 0, 255),      # connective: blue
    4: (255, 255, 0),    # dead: yellow
    5: (0, 255, 255),    # epithelial: cyan
}


ORGANS = ("Adrenal_gland", "Bile-duct", "Bladder", "Breast", "Cervix", "Colon", "Esophagus", "HeadNeck", "Kidney",
          "Liver", "Lung", "Ovarian", "Pancreatic", "Prostate", "Skin", "Stomach", "Testis", "Thyroid", "Uterus")


FILES = ("images.npy", "masks.npy", "types.npy")


DEFAULT_FOLDS = {"train": (1,), "val": (2,), "test": (3,)}


def fold_candidates(root: Path, fold: int) -> list[dict[str, Path]]:
    """Where the three files of ``fold`` may lie, the published layout first."""
    official = root / f"Fold {fold}"
    return [
        {"images.npy": official / "images" / f"fold{fold}" / "images.npy",
         "types.npy": official / "images" / f"fold{fold}" / "types.npy",
         "masks.npy": official / "masks" / f"fold{fold}" / "masks.npy"},
        {name: root / f"fold{fold}" / name for name in FILES},
        {name: official / name for name in FILES},
    ]


def find_fold(root: str | Path, fold: int) -> dict[str, Path]:
    """The paths of ``images.npy``, ``masks.npy``, ``types.npy`` of one fold; a DatasetError naming the missing file."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "PanNuke folder does not exist (set --dataset_dir to the folder the dataset was unpacked into)")
    candidates = fold_candidates(root, fold)
    for files in candidates:
        present = [n for n in FILES if files[n].is_file()]
        if len(present) == len(FILES):
            return files
        if present:  # the fold is there but incomplete: name what is missing
            missing = [n for n in FILES if n not in present]
            raise DatasetError(files[missing[0]], f"fold {fold} has {', '.join(present)} but no {', '.join(missing)}")
    raise DatasetError(root, f"no PanNuke fold {fold}: looked for {candidates[0]['images.npy']} "
                             f"(published layout) and {candidates[1]['images.npy']}")


def _is_number_array(a: np.ndarray) -> bool:
    return a.dtype.kind in "uif" or a.dtype.kind == "b"


def check_fold(files: Mapping[str, Path]) -> tuple[int, tuple[int, int], list[str], int]:
    """Validate one fold's arrays: (number of patches, (H, W), organs, mask channels); DatasetError otherwise."""
    images = load_npy(files["images.npy"])
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DatasetError(files["images.npy"], f"images must be (N, H, W, 3) RGB, got shape {images.shape}")
    if not _is_number_array(images) or images.dtype.kind == "b":
        raise DatasetError(files["images.npy"], f"images must be numbers (uint8 or float 0-255), got dtype {images.dtype}")
    n, h, w = images.shape[:3]
    masks = load_npy(files["masks.npy"])
    if masks.ndim != 4:
        raise DatasetError(files["masks.npy"], f"masks must be (N, H, W, channels), got shape {masks.shape}")
    if masks.shape[-1] not in (5, 6):
        raise DatasetError(files["masks.npy"], f"masks have {masks.shape[-1]} channels; PanNuke has 6 "
                                               f"({', '.join(MASK_CHANNELS)}) or 5 without background")
    if masks.shape[:3] != (n, h, w):
        raise DatasetError(files["masks.npy"], f"masks shape {masks.shape} does not match images {images.shape} "
                                               f"({files['images.npy']})")
    if not _is_number_array(masks):
        raise DatasetError(files["masks.npy"], f"masks must hold instance ids (integers or floats), got dtype {masks.dtype}")
    types = load_npy(files["types.npy"], mmap=False)
    if types.ndim != 1 or types.shape[0] != n:
        raise DatasetError(files["types.npy"], f"types must be one organ name per patch, shape ({n},), got {types.shape}")
    if types.dtype.kind not in "USO" or not all(isinstance(t, (str, bytes, np.str_, np.bytes_)) for t in types[:16]):
        raise DatasetError(files["types.npy"], f"types must hold organ names (strings), got dtype {types.dtype}")
    organs = [t.decode() if isinstance(t, bytes) else str(t) for t in types]
    return n, (h, w), organs, int(masks.shape[-1])


CHUNK = 256  # patches read at a time by the value checks (a 256x256x3 float64 chunk is ~400 MB at most)


def check_values(files: Mapping[str, Path], fold: int, n: int) -> None:
    """Finite images within 0-255 (not already scaled to 0-1) and finite, non-negative instance ids, checked
    chunk by chunk over the memory-mapped arrays; the error names the fold and the first bad patch.

    A fold's result is remembered (by path, size and modification time) in
    ``~/.cache/tgseg/pannuke_checks.json``, so an unchanged fold is read once, not at every run.
    """
    key = _fingerprint(files)
    cache = _load_check_cache()
    if cache.get(key) == "ok":
        return
    images, masks = load_npy(files["images.npy"]), load_npy(files["masks.npy"])
    largest = 0.0
    for start in range(0, n, CHUNK):
        chunk = np.asarray(images[start:start + CHUNK], dtype=np.float64)
        finite = np.isfinite(chunk).all(axis=(1, 2, 3))
        if not finite.all():
            raise DatasetError(files["images.npy"], f"fold {fold} patch {start + int(np.argmin(finite))} has non-finite "
                                                    "pixel values (NaN/inf)")
        in_range = ((chunk >= 0) & (chunk <= 255)).all(axis=(1, 2, 3))
        if not in_range.all():
            raise DatasetError(files["images.npy"], f"fold {fold} patch {start + int(np.argmin(in_range))} has values "
                                                    "outside 0-255 (PanNuke images are 0-255 RGB)")
        largest = max(largest, float(chunk.max()))
        ids = np.asarray(masks[start:start + CHUNK], dtype=np.float64)
        valid = (np.isfinite(ids) & (ids >= 0)).all(axis=(1, 2, 3))
        if not valid.all():
            raise DatasetError(files["masks.npy"], f"fold {fold} patch {start + int(np.argmin(valid))} has non-finite or "
                                                   "negative instance ids")
    if n and largest <= 1.0:
        raise DatasetError(files["images.npy"], f"fold {fold} looks scaled to 0-1 (largest value {largest:g}); "
                                                "PanNuke images are 0-255 RGB, and the model normalises them itself")
    cache[key] = "ok"
    _save_check_cache(cache)


def _fingerprint(files: Mapping[str, Path]) -> str:
    parts = []
    for name in ("images.npy", "masks.npy"):
        stat = Path(files[name]).stat()
        parts.append(f"{Path(files[name]).resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


def _cache_file() -> Path:
    return Path(os.environ.get("TGSEG_CACHE", Path.home() / ".cache" / "tgseg")) / "pannuke_checks.json"


def _load_check_cache() -> dict:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _save_check_cache(cache: dict) -> None:
    try:
        path = _cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cache))
    except OSError:  # a read-only home only costs a re-check next time
        pass


@typed
def pannuke_datalist(root: str | Path, split: str = "train", folds: Mapping[str, Sequence[int]] | None = None,
                     limit: int | None = None) -> list[dict]:
    """Records ``{image, mask, fold, index, organ, name}`` of the folds assigned to ``split``.

    ``image``/``mask`` are the fold's ``images.npy``/``masks.npy`` paths; :class:`LoadPanNukePatchd`
    reads patch ``index`` from them. ``folds`` maps split -> fold numbers (default train 1, val 2, test 3).
    """

    folds = dict(DEFAULT_FOLDS if folds is None else folds)
    if split not in folds:
        raise ValueError(f"split {split!r} has no folds; folds are {folds}")
    records = []
    for fold in folds[split]:
        files = find_fold(root, int(fold))
        n, _, organs, _ = check_fold(files)
        check_values(files, int(fold), n)
        for i in range(n):
            records.append({"image": str(files["images.npy"]), "mask": str(files["masks.npy"]), "fold": int(fold),
                            "index": i, "organ": organs[i], "name": f"fold{int(fold)}_{i:05d}"})
    if not records:
        raise DatasetError(root, f"the {split} folds {list(folds[split])} hold no patches")
    return records[: int(limit)] if limit is not None else records

