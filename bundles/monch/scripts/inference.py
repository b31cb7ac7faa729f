"""MONCH inference glue: image records (PNG/JPEG/TIFF files or a .npy stack of patches), a loader
for both, and a handler that writes a class-map PNG and a colour overlay PNG per image."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch

from transforms.base.errors import DatasetError
from common.data.pannuke.reader import CLASS_COLORS, CLASS_NAMES
from common.engine.inference import WriterHandler
from common.networks.clip_encoders import CLIP_MEAN, CLIP_STD


logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def clip_denormalize(image: torch.Tensor) -> torch.Tensor:
    """Undo the CLIP normalisation of a (3, H, W) image: back to 0-1 RGB (for pictures)."""
    mean = torch.as_tensor(CLIP_MEAN, dtype=image.dtype).reshape(3, 1, 1)
    std = torch.as_tensor(CLIP_STD, dtype=image.dtype).reshape(3, 1, 1)
    return (image * std + mean).clamp(0, 1)


def _check_patches(array: np.ndarray, path: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise DatasetError(path, f"a .npy of patches must be (N, H, W, 3) or (H, W, 3) RGB, got shape {array.shape}")
    if array.dtype.kind not in "uif":
        raise DatasetError(path, f"patches must be numbers 0-255, got dtype {array.dtype}")
    return array


def inference_records(image: str | None = None, images: Sequence[str] | None = None,
                      index: int | None = None) -> list[dict]:
    """Records for ``--image`` (one file) or ``--images`` (a list): PNG/JPEG/TIFF, or ``.npy`` patch stacks
    ((N, H, W, 3), values 0-255, as PanNuke's ``images.npy``), one record per patch, or only patch
    ``--index`` of a stack."""
    paths = [image] if image else list(images or [])
    if not paths:
        raise ValueError("give --image PATH (PNG/JPEG/TIFF or a .npy of (N, H, W, 3) patches)")
    records = []
    for path in paths:
        p = Path(str(path))
        if not p.is_file():
            raise FileNotFoundError(f"--image {p} does not exist")
        if p.suffix.lower() == ".npy":
            try:
                array = np.load(p, mmap_mode="r", allow_pickle=False)
            except Exception as err:
                raise DatasetError(p, f"cannot read ({type(err).__name__}: {err})") from err
            array = _check_patches(array, str(p))
            if index is not None and not 0 <= int(index) < array.shape[0]:
                raise DatasetError(p, f"--index {index} is outside its {array.shape[0]} patches")
            wanted = range(array.shape[0]) if index is None else [int(index)]
            records += [{"image": str(p), "index": i, "name": f"{p.stem}_{i:04d}"} for i in wanted]
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            records.append({"image": str(p), "name": p.stem})
        else:
            raise DatasetError(p, f"unsupported image type {p.suffix!r}; use {IMAGE_EXTENSIONS} or .npy")
    return records


class LoadPatchd:
    """Load a record's ``image`` (a file, or patch ``index`` of a .npy) as (3, H, W) float32 0-255;
    keeps the file in ``source``, the original size in ``orig_size`` and the RGB patch in ``original``."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        from PIL import Image

        d = dict(data)
        path = str(d["image"])
        if path.lower().endswith(".npy"):
            array = _check_patches(np.load(path, mmap_mode="r", allow_pickle=False), path)
            rgb = np.asarray(array[int(d.get("index", 0))], dtype=np.float32)
        else:
            try:
                with Image.open(path) as img:
                    rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
            except Exception as err:
                raise DatasetError(path, f"cannot read image ({type(err).__name__}: {err})") from err
        d["source"] = path
        d["image"] = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        d["orig_size"] = torch.tensor(rgb.shape[:2])
        d["original"] = torch.from_numpy(np.ascontiguousarray(rgb.clip(0, 255).astype(np.uint8)))
        return d


class ClassMapWriter(WriterHandler):
    """Handler: per image, ``<name>_classes.png`` (uint8 class indices 0..K-1 at the input's size) and
    ``<name>_overlay.png`` (input | prediction in the paper's colours, with a legend). ``pred`` is the
    class map inference's post-processing made (:class:`scripts.decode.ClassMapd`)."""

    def __init__(self, output_dir: str, class_names: Sequence[str] = CLASS_NAMES,
                 colors: Mapping[int, Sequence[int]] = CLASS_COLORS):
        super().__init__(output_dir)
        self.class_names, self.colors = list(class_names), dict(colors)

    def __call__(self, engine) -> None:
        from PIL import Image

        from common.evaluation.visualize import class_overlay_panel

        self.output_dir.mkdir(parents=True, exist_ok=True)
        for record, item in zip(engine.state.batch, engine.state.output):
            classes = torch.as_tensor(item["pred"]).detach().cpu().numpy().astype(np.uint8)[0]
            name = self.name(record, str(record.get("source", "")))
            class_path = self.output_dir / f"{name}_classes.png"
            Image.fromarray(classes).save(class_path)
            original = torch.as_tensor(record["original"]).cpu().numpy()
            overlay_path = self.output_dir / f"{name}_overlay.png"
            counts = {self.class_names[c]: int((classes == c).sum()) for c in range(1, len(self.class_names))}
            class_overlay_panel(original.transpose(2, 0, 1).astype(np.float32) / 255.0, classes, None, self.colors,
                                self.class_names, title=name, min_side=256).save(overlay_path)
            self.written.append({"image": str(record.get("source", name)), "classes": str(class_path),
                                 "overlay": str(overlay_path), "pixels": counts})

    def report(self, engine) -> None:
        for entry in self.written:
            logger.info("%s -> %s %s", entry["image"], entry["classes"], entry["pixels"])
        print(f"wrote {len(self.written)} class map(s) and overlay(s) to {self.output_dir}")
