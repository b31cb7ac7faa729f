"""PanNuke reader and a writer of synthetic folds in the same layout.

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

import os
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np

from .errors import DatasetError

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
        raise DatasetError(root, "PanNuke folder does not exist")
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


def _load(path: Path, mmap: bool = True) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err).lower():  # an object array of strings (types.npy written by older numpy)
            return np.load(path, allow_pickle=True)
        raise DatasetError(path, f"cannot read ({err})") from err
    except Exception as err:
        raise DatasetError(path, f"cannot read ({type(err).__name__}: {err})") from err


def _is_number_array(a: np.ndarray) -> bool:
    return a.dtype.kind in "uif" or a.dtype.kind == "b"


def check_fold(files: Mapping[str, Path]) -> tuple[int, tuple[int, int], list[str], int]:
    """Validate one fold's arrays: (number of patches, (H, W), organs, mask channels); DatasetError otherwise."""
    images = _load(files["images.npy"])
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DatasetError(files["images.npy"], f"images must be (N, H, W, 3) RGB, got shape {images.shape}")
    if not _is_number_array(images) or images.dtype.kind == "b":
        raise DatasetError(files["images.npy"], f"images must be numbers (uint8 or float 0-255), got dtype {images.dtype}")
    n, h, w = images.shape[:3]
    masks = _load(files["masks.npy"])
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
    types = _load(files["types.npy"], mmap=False)
    if types.ndim != 1 or types.shape[0] != n:
        raise DatasetError(files["types.npy"], f"types must be one organ name per patch, shape ({n},), got {types.shape}")
    if types.dtype.kind not in "USO" or not all(isinstance(t, (str, bytes, np.str_, np.bytes_)) for t in types[:16]):
        raise DatasetError(files["types.npy"], f"types must hold organ names (strings), got dtype {types.dtype}")
    organs = [t.decode() if isinstance(t, bytes) else str(t) for t in types]
    return n, (h, w), organs, int(masks.shape[-1])


def pannuke_datalist(root: str | Path, split: str = "train", folds: Mapping[str, Sequence[int]] | None = None,
                     limit: int | None = None) -> list[dict]:
    """Records ``{image, mask, fold, index, organ, name}`` of the folds assigned to ``split``.

    ``image``/``mask`` are the fold's ``images.npy``/``masks.npy`` paths; :class:`LoadPanNukePatchd`
    reads patch ``index`` from them. ``folds`` maps split -> fold numbers (default train 1, val 2, test 3).
    """
    from .config import as_optional

    folds = dict(DEFAULT_FOLDS if as_optional(folds) is None else folds)
    if split not in folds:
        raise ValueError(f"split {split!r} has no folds; folds are {folds}")
    limit = as_optional(limit)
    records = []
    for fold in folds[split]:
        files = find_fold(root, int(fold))
        n, _, organs, _ = check_fold(files)
        for i in range(n):
            records.append({"image": str(files["images.npy"]), "mask": str(files["masks.npy"]), "fold": int(fold),
                            "index": i, "organ": organs[i], "name": f"fold{int(fold)}_{i:05d}"})
    if not records:
        raise DatasetError(root, f"the {split} folds {list(folds[split])} hold no patches")
    return records[: int(limit)] if limit is not None else records


def masks_to_class_map(masks: np.ndarray) -> np.ndarray:
    """(H, W, 5 or 6) PanNuke instance masks -> (H, W) int64 class map (0 background, channel c -> c + 1)."""
    label = np.zeros(masks.shape[:2], dtype=np.int64)
    for c in reversed(range(5)):  # lower channels win where two claim a pixel
        label[np.asarray(masks[..., c]) > 0] = c + 1
    return label


_OPEN: dict[str, np.ndarray] = {}


def _mmap(path: str) -> np.ndarray:
    key = f"{os.getpid()}:{path}"
    if key not in _OPEN:
        _OPEN[key] = _load(Path(path))
    return _OPEN[key]


class LoadPanNukePatchd:
    """Read patch ``index`` of a record: ``image`` -> (3, H, W) float32 0-255, ``label`` -> (1, H, W) int64.

    The record keeps ``organ``, ``fold``, ``index`` and ``name``. Arrays are memory-mapped once per
    process. Errors name the file.
    """

    def __init__(self, image_key: str = "image", mask_key: str = "mask", label_key: str = "label"):
        self.image_key, self.mask_key, self.label_key = image_key, mask_key, label_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        import torch

        d = dict(data)
        index = int(d["index"])
        image_path, mask_path = str(d[self.image_key]), str(d[self.mask_key])
        images, masks = _mmap(image_path), _mmap(mask_path)
        if index >= images.shape[0]:
            raise DatasetError(image_path, f"patch {index} does not exist ({images.shape[0]} patches)")
        image = np.asarray(images[index], dtype=np.float32)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise DatasetError(image_path, f"patch {index} is not (H, W, 3): {image.shape}")
        d[self.image_key] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        d[self.label_key] = torch.from_numpy(masks_to_class_map(np.asarray(masks[index]))[None])
        d["image_path"], d["mask_path"] = image_path, mask_path
        del d[self.mask_key]
        return d


# ---------------------------------------------------------------------------------------------
# synthetic folds
# ---------------------------------------------------------------------------------------------
# per cell type: colour (RGB 0-255), radius as a fraction of the patch size, elongation, rarity weight
_CELL_LOOK = {
    1: ((95, 35, 125), 0.085, 1.2, 3.0),   # neoplastic: big, dark purple, roundish
    2: ((35, 30, 130), 0.035, 1.0, 3.0),   # inflammatory: small, dark blue, round
    3: ((165, 85, 165), 0.05, 3.0, 2.5),   # connective: elongated spindle, light purple
    4: ((45, 25, 20), 0.03, 1.0, 0.8),     # dead: tiny, near black (rare)
    5: ((190, 120, 200), 0.06, 1.4, 2.5),  # epithelial: medium, pale purple
}
_BACKGROUND = np.array((232, 186, 208), dtype=np.float32)


def _synthetic_patch(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (size, size, 3) image and its (size, size, 6) instance masks."""
    image = np.ones((size, size, 3), np.float32) * _BACKGROUND
    image += rng.normal(0, 8, (size, size, 1)) + rng.normal(0, 4, (size, size, 3))
    types = np.zeros((size, size), np.int64)
    instances = np.zeros((size, size), np.int64)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    weights = np.array([_CELL_LOOK[t][3] for t in range(1, 6)])
    n_cells = int(rng.integers(3, 9))
    for inst in range(1, n_cells + 1):
        t = int(rng.choice(np.arange(1, 6), p=weights / weights.sum()))
        color, radius, elong, _ = _CELL_LOOK[t]
        r = max(1.5, radius * size * rng.uniform(0.85, 1.15))
        cy, cx = rng.uniform(r, size - r, 2)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        blob = (u / (r * np.sqrt(elong))) ** 2 + (v * np.sqrt(elong) / r) ** 2 <= 1.0
        types[blob] = t
        instances[blob] = inst
        shade = np.asarray(color, np.float32) * rng.uniform(0.92, 1.08)
        image[blob] = shade + rng.normal(0, 6, (int(blob.sum()), 3))
    masks = np.zeros((size, size, 6), np.float64)
    for t in range(1, 6):
        masks[..., t - 1] = np.where(types == t, instances, 0)
    masks[..., 5] = (types == 0).astype(np.float64)
    return np.clip(image, 0, 255).astype(np.float64), masks


def write_sample_pannuke(out_dir: str | Path, n_per_fold: int = 24, size: int = 64, seed: int = 0,
                         folds: Sequence[int] = (1, 2, 3), organs: Sequence[str] = ORGANS[:4]) -> Path:
    """Write synthetic folds in the published layout under ``<out_dir>/PanNuke``; returns that folder.

    Cells are blobs whose size, shape and colour depend on the type (see ``_CELL_LOOK``), so a
    model can learn the classes; arrays have the published dtypes (float64 images and masks,
    string organ names).
    """
    root = Path(out_dir) / "PanNuke"
    rng = np.random.default_rng(seed)
    for fold in folds:
        patches = [_synthetic_patch(size, rng) for _ in range(n_per_fold)]
        images = np.stack([p[0] for p in patches])
        masks = np.stack([p[1] for p in patches])
        types = np.array([organs[int(rng.integers(len(organs)))] for _ in range(n_per_fold)])
        files = fold_candidates(root, fold)[0]
        for name, array in (("images.npy", images), ("masks.npy", masks), ("types.npy", types)):
            files[name].parent.mkdir(parents=True, exist_ok=True)
            np.save(files[name], array)
    return root


def ensure_sample_pannuke(out_dir: str | Path = "sample_data", n_per_fold: int = 24, size: int = 64,
                          seed: int = 0) -> str:
    """The synthetic PanNuke folder under ``out_dir``, written first if it is not complete (demo.yaml)."""
    root = Path(out_dir) / "PanNuke"

    def complete() -> bool:
        for f in (1, 2, 3):
            files = fold_candidates(root, f)[0]
            if not all(files[n].is_file() for n in FILES):
                return False
            shape = np.load(files["images.npy"], mmap_mode="r").shape
            if shape[:3] != (n_per_fold, size, size):  # written with other settings: write again
                return False
        return True

    if not complete():
        print(f"writing {n_per_fold} synthetic {size}x{size} PanNuke patches per fold to {root}", flush=True)
        write_sample_pannuke(out_dir, n_per_fold=n_per_fold, size=size, seed=seed)
    return str(root)
