"""Synthetic PanNuke folds in the published layout (float64 images and masks, string organ names)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..synthetic.ownership import claim_folder, is_sample_folder
from .reader import FILES, ORGANS, fold_candidates

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
    root = claim_folder(Path(out_dir) / "PanNuke")
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
        if not is_sample_folder(root):
            return False
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

