"""Synthetic abdominal CT volumes with lesions, and the demo's referring dataset built from them."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..synthetic.ownership import claim_folder, is_sample_folder
from .builder import find_pairs, write_referring_dataset

def write_sample_ct(out_dir: str | Path, n_cases: int = 8, size: int = 96, depth: int = 16, seed: int = 0,
                    spacing: Sequence[float] = (0.8, 0.8, 2.5)) -> Path:
    """Synthetic abdominal CT volumes (HU) with 2-4 liver-like lesions each, and their lesion-id volumes.

    Writes ``ct/case_XXX.nii.gz`` and ``labels/case_XXX.nii.gz`` (same names, RAS
    affine with the given spacing). Lesions differ in size and side, so the
    referring expressions tell them apart.
    """
    import nibabel as nib

    rng = np.random.default_rng(seed)
    root = claim_folder(out_dir)
    (root / "ct").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    affine = np.diag([*map(float, spacing), 1.0])
    x, y = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    cx = cy = (size - 1) / 2
    for i in range(n_cases):
        body = ((x - cx) / (0.45 * size)) ** 2 + ((y - cy) / (0.36 * size)) ** 2 <= 1
        organ = ((x - cx) / (0.36 * size)) ** 2 + ((y - cy) / (0.26 * size)) ** 2 <= 1
        hu = np.full((size, size, depth), -1000.0, dtype=np.float32)
        hu[body] = -90.0
        hu[organ] = 60.0
        hu += rng.normal(0, 12, hu.shape).astype(np.float32)
        labels = np.zeros((size, size, depth), dtype=np.int16)
        n_lesions = int(rng.integers(2, 5))
        placed = []
        for lesion_id in range(1, n_lesions + 1):
            for _ in range(50):
                radius = float(rng.uniform(0.04, 0.13) * size)
                side = 1 if lesion_id % 2 else -1  # alternate patient right (+x) and left
                px = cx + side * rng.uniform(0.08, 0.26) * size
                py = cy + rng.uniform(-0.14, 0.14) * size
                pz = rng.uniform(0.3, 0.7) * depth
                if all(np.hypot(px - qx, py - qy) > radius + qr + 2 for qx, qy, qr in placed):
                    break
            placed.append((px, py, radius))
            z = np.arange(depth)[None, None, :]
            ball = ((x[..., None] - px) ** 2 + (y[..., None] - py) ** 2) / radius ** 2 \
                + ((z - pz) * spacing[2] / (radius * spacing[0] * 1.5)) ** 2 <= 1
            labels[ball & (labels == 0)] = lesion_id
            hu[ball] = float(rng.uniform(-5, 20)) + rng.normal(0, 8, int(ball.sum()))
        name = f"case_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(hu, affine), str(root / "ct" / name))
        nib.save(nib.Nifti1Image(labels, affine), str(root / "labels" / name))
    return root


def ensure_sample_referring_ct(out_dir: str | Path, n_cases: int = 12, size: int = 96, depth: int = 16,
                               seed: int = 0) -> str:
    """``<out_dir>/refct``: synthetic volumes under ``volumes/`` and the built dataset, written on first use."""
    root = Path(out_dir) / "refct"
    if not (is_sample_folder(root) and (root / "test.jsonl").is_file()):
        claim_folder(root)
        print(f"writing {n_cases} synthetic CT volumes ({size}x{size}x{depth}) and building the referring dataset "
              f"in {root}", flush=True)
        volumes = write_sample_ct(root / "volumes", n_cases, size, depth, seed)
        write_referring_dataset(find_pairs(volumes / "ct", volumes / "labels"), root, lesion_values="all",
                                progress=False)  # beside the volumes, in the folder the sample writer owns
    return str(root)

