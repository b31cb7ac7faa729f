"""Write small synthetic datasets in the published layouts (see :mod:`common.data.datalist`).

The scenes come from :mod:`common.data.synthetic.scenes`: several blobs per image, the
prompt names one by size and position, the mask holds that one. The layouts
are those the readers accept, so the demo and the tests go through the real
reading code:

* ``QaTa-COV19/``: ``Train Set/`` and ``Test Set/`` with ``Images/``,
  ``Ground-truths/mask_*.png``; Ariadne-style ``prompt/train.csv``,
  ``prompt/test.csv`` (``Image,Description``; Image is the mask name).
* ``MosMedData+/``: ``{Train,Val,Test} Set/`` with ``img/``, ``labelcol/`` and
  LViT's ``{Train,Val,Test}_text.xlsx``.
* ``Kvasir-SEG/``: ``images/*.jpg``, JPEG ``masks/*.jpg``, ``kavsir_bboxes.json``
  and Poudel et al.'s ``anns/{train,val,test}.json``.
* ``BKAI-IGH/``: ``images/*.jpeg``, RGB colour-coded ``masks/*.jpeg`` (red
  neoplastic, green non-neoplastic) and ``anns/{train,val,test}.json``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from .ownership import claim_folder, is_sample_folder
from .scenes import Scene, chest_scene, endoscopy_scene

DATASETS = ("qata", "mosmed", "kvasir", "bkai")
FOLDERS = {"qata": "QaTa-COV19", "mosmed": "MosMedData+", "kvasir": "Kvasir-SEG", "bkai": "BKAI-IGH"}

_COLORS = {1: "pink", 2: "white"}
_SHAPES = ("round", "oval")


def chest_text(scene: Scene) -> str:
    """LViT-style report: presence, number and location of the infected region."""
    b = scene.target_blob
    return f"Unilateral pulmonary infection, one {b.size} infected area, {b.where}."


def polyp_prompts(scene: Scene, rng: np.random.Generator) -> dict:
    """Poudel et al.-style prompts p0..p9; p0-p6 strings of growing detail, p7-p9 lists."""
    b = scene.target_blob
    color = _COLORS.get(b.kind, "pink")
    shape = _SHAPES[int(b.radii[0] / max(b.radii[1], 1e-6) > 0.9)]
    where = f"{b.where} of the image"
    p6 = f"one {b.size} {color} {shape} polyp, located in {where}"
    return {
        "p0": "polyp",
        "p1": "a polyp",
        "p2": "one polyp",
        "p3": f"one {b.size} polyp",
        "p4": f"one {b.size} {color} polyp",
        "p5": f"one {b.size} {color} {shape} polyp",
        "p6": p6,
        "p7": [p6, f"a {b.size} polyp in the {where}"],
        "p8": [f"{b.size} {shape} polyp at the {b.where}", f"the {b.size} one, {b.where}"],
        "p9": [f"{color} polyp, {b.size}, {b.where}"],
    }


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def _save_grey(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)


def _save_rgb(path: Path, img: np.ndarray, quality: int = 92) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path, quality=quality)


def _split_counts(n: int, val: float = 0.1, test: float = 0.2) -> dict[str, int]:
    n_val, n_test = max(1, round(n * val)), max(1, round(n * test))
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def write_qata(root: Path, n: int, size: int, rng: np.random.Generator) -> Path:
    out = claim_folder(root / FOLDERS["qata"])
    counts = _split_counts(n, val=0.0)  # QaTa has no validation set: readers carve it from train
    counts["train"] += counts.pop("val")
    for split, folder in (("train", "Train Set"), ("test", "Test Set")):
        rows = []
        for i in range(counts[split]):
            scene = chest_scene(rng, size)
            name = f"sample_{split}_{i:04d}.png"
            _save_grey(out / folder / "Images" / name, scene.image)
            _save_grey(out / folder / "Ground-truths" / f"mask_{name}", scene.target_mask().astype(np.float32))
            rows.append((f"mask_{name}", chest_text(scene)))
        (out / "prompt").mkdir(parents=True, exist_ok=True)
        with open(out / "prompt" / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["Image", "Description"])
            writer.writerows(rows)
    return out


def write_mosmed(root: Path, n: int, size: int, rng: np.random.Generator) -> Path:
    import pandas as pd

    out = claim_folder(root / FOLDERS["mosmed"])
    for split, count in _split_counts(n).items():
        folder = out / f"{split.capitalize()} Set"
        rows = []
        for i in range(count):
            scene = chest_scene(rng, size, ct=True)
            name = f"sample_{split}_{i:04d}.png"
            _save_grey(folder / "img" / name, scene.image)
            _save_grey(folder / "labelcol" / name, scene.target_mask().astype(np.float32))
            rows.append({"Image": name, "Description": chest_text(scene)})
        pd.DataFrame(rows, columns=["Image", "Description"]).to_excel(
            folder / f"{split.capitalize()}_text.xlsx", index=False
        )
    return out


def _write_polyps(root: Path, dataset: str, n: int, size: int, rng: np.random.Generator) -> Path:
    out = claim_folder(root / FOLDERS[dataset])
    ext = ".jpg" if dataset == "kvasir" else ".jpeg"
    bboxes = {}
    for split, count in _split_counts(n).items():
        entries = []
        for i in range(count):
            classes = (1,) if dataset == "kvasir" else (1, 2)
            scene = endoscopy_scene(rng, size, classes=classes)
            stem = f"sample_{split}_{i:04d}"
            _save_rgb(out / "images" / f"{stem}{ext}", scene.image)
            mask = scene.target_mask()
            if dataset == "kvasir":
                mask_img = np.repeat(mask[..., None].astype(np.float32), 3, axis=-1)
            else:  # BKAI colour code: red neoplastic, green non-neoplastic
                color = np.array([1.0, 0.0, 0.0]) if scene.target_blob.kind == 1 else np.array([0.0, 1.0, 0.0])
                mask_img = mask[..., None] * color[None, None, :]
            _save_rgb(out / "masks" / f"{stem}{ext}", mask_img, quality=90)
            box = _bbox(mask)
            entries.append({
                "img_name": f"{stem}{ext}", "mask_name": f"{stem}{ext}", "bbox": [box],
                "prompts": polyp_prompts(scene, rng),
            })
            bboxes[stem] = {"height": size, "width": size, "bbox": [
                {"label": "polyp", "xmin": box[0], "ymin": box[1], "xmax": box[2], "ymax": box[3]}]}
        (out / "anns").mkdir(parents=True, exist_ok=True)
        (out / "anns" / f"{split}.json").write_text(json.dumps(entries, indent=1))
    if dataset == "kvasir":
        (out / "kavsir_bboxes.json").write_text(json.dumps(bboxes, indent=1))
    return out


def write_sample_dataset(dataset: str, out_dir: str | Path, n: int = 60, size: int = 128, seed: int = 0) -> Path:
    """Write ``n`` synthetic samples of ``dataset`` under ``out_dir``; returns the dataset folder."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if n < 5:
        raise ValueError("n must be at least 5 (every split needs a sample)")
    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    if dataset == "qata":
        return write_qata(root, n, size, rng)
    if dataset == "mosmed":
        return write_mosmed(root, n, size, rng)
    return _write_polyps(root, dataset, n, size, rng)


_MARKERS = {
    "qata": "prompt/test.csv",
    "mosmed": "Test Set/Test_text.xlsx",
    "kvasir": "anns/test.json",
    "bkai": "anns/test.json",
}


def ensure_sample_dataset(dataset: str, out_dir: str | Path, n: int = 240, size: int = 128, seed: int = 0) -> str:
    """The folder of a sample dataset under ``out_dir``, written first if it is not there yet.

    ``demo.yaml`` uses it as its ``dataset_dir``, so the demo config runs on a fresh clone. A folder of
    that name that the writer did not make is refused, not used or written into (:mod:`.ownership`).
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    folder = Path(out_dir) / FOLDERS[dataset]
    if not (is_sample_folder(folder) and (folder / _MARKERS[dataset]).is_file()):
        print(f"writing {n} synthetic {size}x{size} {dataset} images to {folder}", flush=True)
        write_sample_dataset(dataset, out_dir, n=n, size=size, seed=seed)
    return str(folder)
