"""A small synthetic BCSS in the published layout (:mod:`.reader`): H&E-like ROIs of a few tissue regions with
distinct textures, integer-coded masks, and BCSS's class table. For demos and tests; no real tissue."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from common.data.synthetic.ownership import claim_folder, is_sample_folder, mark_folder

from .reader import MASK_FOLDER

IMAGE_FOLDER = "rgbs_colorNormalized"
# BCSS's meta/gtruth_codes.tsv (github.com/PathologyDataScience/BCSS)
CODE_TABLE = ["outside_roi", "tumor", "stroma", "lymphocytic_infiltrate", "necrosis_or_debris", "glandular_secretions",
              "blood", "exclude", "metaplasia_NOS", "fat", "plasma_cells", "other_immune_infiltrate",
              "mucoid_material", "normal_acinus_or_duct", "lymphatics", "undetermined", "nerve", "skin_adnexa",
              "blood_vessel", "angioinvasion", "dcis", "other"]
SYNTHETIC_CLASSES = (1, 2, 3, 4, 9)   # tumor, stroma, lymphocytic infiltrate, necrosis or debris, fat


def _texture(code: int, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    noise = rng.normal(0, 1, (h, w, 1))
    if code == 1:      # tumour: dense purple with dark nuclei
        base = np.array([150, 80, 170.0]) + 12 * noise
        base[rng.random((h, w)) < 0.25] = [70, 30, 110]
    elif code == 2:    # stroma: pink with fibre streaks
        base = np.array([230, 150, 190.0]) + 25 * np.sin((xx + 0.4 * yy) / 2.5)[..., None] + 6 * noise
    elif code == 3:    # lymphocytic infiltrate: pale with many small dark-blue cells
        base = np.array([215, 185, 215.0]) + 6 * noise
        base[rng.random((h, w)) < 0.45] = [60, 40, 140]
    elif code == 4:    # necrosis or debris: grey-pink, coarse granules
        base = np.array([200, 170, 190.0]) + 30 * rng.normal(0, 1, (h // 4 + 1, w // 4 + 1, 1)).repeat(4, 0).repeat(4, 1)[:h, :w]
    elif code == 9:    # fat: white with thin cell borders
        base = np.full((h, w, 3), 245.0) + 3 * noise
        base[(xx % 9 == 0) | (yy % 9 == 0)] = [225, 160, 200]
    else:              # outside the ROI
        base = np.full((h, w, 3), 250.0) + 2 * noise
    return np.broadcast_to(base, (h, w, 3))


def synthetic_roi(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(size, size, 3) uint8 image and (size, size) uint8 mask: Voronoi regions of 2-4 tissue classes."""
    classes = rng.choice(SYNTHETIC_CLASSES, size=int(rng.integers(2, 5)), replace=False)
    seeds = rng.uniform(0, size, (len(classes) * 2, 2))
    labels = np.concatenate([classes, rng.choice(classes, len(classes))])
    yy, xx = np.mgrid[0:size, 0:size]
    wobble = 4 * np.sin(yy / 7.0) + 4 * np.cos(xx / 5.0)
    dist = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None] + wobble[None]) ** 2
    mask = labels[dist.argmin(0)].astype(np.uint8)
    if rng.random() < 0.3:  # a strip outside the annotated ROI
        mask[: int(size * rng.uniform(0.05, 0.2))] = 0
    image = np.zeros((size, size, 3))
    for code in np.unique(mask):
        where = mask == code
        image[where] = _texture(int(code), (size, size), rng)[where]
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_sample_bcss(out_dir: str | Path, n: int = 20, size: int = 128, seed: int = 0) -> Path:
    """Write ``n`` synthetic ROIs (one per made-up slide) under ``<out_dir>/BCSS``; returns that folder."""
    from PIL import Image

    root = claim_folder(Path(out_dir) / "BCSS")
    for folder in (IMAGE_FOLDER, MASK_FOLDER, "meta"):
        (root / folder).mkdir(exist_ok=True)
    (root / "meta" / "gtruth_codes.tsv").write_text(
        "label\tGT_code\n" + "".join(f"{name}\t{code}\n" for code, name in enumerate(CODE_TABLE)))
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, mask = synthetic_roi(size, rng)
        name = f"TCGA-SY-{i:04d}-DX1_xmin{1000 * i}_ymin{500 * i}_MPP-0.2500.png"
        Image.fromarray(image).save(root / IMAGE_FOLDER / name)
        Image.fromarray(mask).save(root / MASK_FOLDER / name)
    return root


def ensure_sample_bcss(out_dir: str | Path = "sample_data", n: int = 20, size: int = 128, seed: int = 0) -> str:
    """The synthetic BCSS folder under ``out_dir``, written first if it is not complete (demo.yaml)."""
    root = Path(out_dir) / "BCSS"
    images = list((root / IMAGE_FOLDER).glob("*.png")) if (root / IMAGE_FOLDER).is_dir() else []
    if not (is_sample_folder(root) and len(images) >= n):
        print(f"writing {n} synthetic BCSS ROIs ({size}x{size}) in {root}")
        write_sample_bcss(out_dir, n=n, size=size, seed=seed)
    return str(root)


def ensure_sample_bcss_ref(out_dir: str | Path = "sample_data", n: int = 20, size: int = 128, patch_size: int = 64,
                           seed: int = 0) -> str:
    """Referring records built (:func:`..referring.build_referring_records`) from the synthetic BCSS, written
    first if missing; returns the records file (demo.yaml)."""
    from .referring import build_referring_records

    records = Path(out_dir) / "BCSS-Ref" / "records.jsonl"
    if not records.is_file():
        if records.parent.exists():
            claim_folder(records.parent)  # refuses a folder of files the sample writers did not make
            shutil.rmtree(records.parent)  # ours, without records: the builder writes a new one
        bcss = ensure_sample_bcss(out_dir, n=n, size=size, seed=seed)
        print(f"building referring records from {bcss} in {records.parent}")
        build_referring_records(bcss, records.parent, patch_size=patch_size, seed=seed, progress=False)
        mark_folder(records.parent)
    return str(records)
