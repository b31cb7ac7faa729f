"""Inference glue: the records to predict and a handler that writes masks and overlays."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ignite.engine import Events

from common.data.datalist import file_datalist
from common.evaluation.visualize import save_overlay

logger = logging.getLogger(__name__)

MASK_EXTENSIONS = (".png", ".nii.gz", ".nii")


def inference_records(image: str | None = None, text: str | None = None, datalist: str | None = None,
                      slice: int | None = None) -> list[dict]:
    """One record from ``image`` + ``text``, or all records of a datalist file (JSON/JSONL/CSV: image, text).

    ``slice``: the axial index when ``image`` is a 3-D volume (records of a datalist carry their own).
    """
    if datalist:
        return file_datalist(datalist)
    if not image:
        raise ValueError("give --image PATH and --text '...', or --datalist FILE with image and text columns")
    if not Path(image).is_file():
        raise FileNotFoundError(f"--image {image} does not exist")
    if text is None or not str(text).strip():
        raise ValueError(f"--text is empty for {image}: this model needs a text prompt")
    record = {"image": str(image), "text": str(text)}
    if slice is not None:
        record["slice"] = int(slice)
    return [record]


def _filename(value) -> str:
    meta = getattr(value, "meta", None) or {}
    name = meta.get("filename_or_obj", "")
    return str(name[0] if isinstance(name, (list, tuple)) else name)


def save_mask(path: Path, mask: np.ndarray, reference: str | None = None, slice_index: int | None = None) -> Path:
    """Write a (H, W) {0,1} mask as PNG (0/255) or NIfTI.

    NIfTI: for one axial slice of a volume (``slice_index`` given, ``mask`` in display orientation), a
    volume of the source's shape and affine with the mask at that slice and the rest empty; for a 2-D
    NIfTI input, the mask with the input's affine; otherwise an identity affine.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = (np.asarray(mask) > 0.5).astype(np.uint8)
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        affine = np.eye(4)
        if slice_index is not None:
            from transforms.volumes import slice_into_volume

            mask, affine = slice_into_volume(mask, reference, slice_index)
        elif reference and str(reference).endswith((".nii", ".nii.gz")):
            affine = nib.load(reference).affine
        nib.save(nib.Nifti1Image(mask, affine), str(path))
    else:
        from PIL import Image

        Image.fromarray(mask * 255).save(path)
    return path


def output_name(record: dict, source: str, used: set[str]) -> str:
    """A file-name stem for one prediction, unique within ``used`` (which it extends).

    The record's ``name`` (else the image's file name), its slice (``_z057``) and referred lesion
    (``_lesion2``) when it has them; a name already taken in this run gets ``_2``, ``_3``, ... so that
    two images called ``img.jpg`` in different folders, or three prompts on one slice, never overwrite
    each other.
    """
    stem = str(record.get("name") or Path(source).name.split(".")[0] or "image")
    if record.get("slice") is not None and "_z" not in stem:
        stem = f"{stem}_z{int(record['slice']):03d}"
    if record.get("lesion_id") is not None and "lesion" not in stem:
        stem = f"{stem}_lesion{int(record['lesion_id'])}"
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name


class WriterHandler:
    """Base of the inference writers: attached to the evaluator, it handles every decollated item
    (:meth:`__call__`, per iteration) and reports at the end (:meth:`report`); outputs get unique names
    (:meth:`name`) and one row each in ``self.written``, the ``predictions.csv`` index (:meth:`write_index`)."""

    def __init__(self, output_dir: str):
        self.output_dir = Path(output_dir)
        self.written: list[dict] = []
        self._names: set[str] = set()

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.report)

    def name(self, record: dict, source: str) -> str:
        return output_name(record, source, self._names)

    def write_index(self) -> None:
        import csv

        if self.written:
            with open(self.output_dir / "predictions.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(self.written[0]))
                writer.writeheader()
                writer.writerows(self.written)

    def __call__(self, engine) -> None:
        raise NotImplementedError

    def report(self, engine) -> None:
        self.write_index()


class PredictionWriter(WriterHandler):
    """Handler: for each predicted item write ``<name>_mask<ext>`` and ``<name>_overlay.png``, and at the end
    ``predictions.csv``: one row per prediction (image, slice, text, mask, overlay, foreground pixels).

    Names come from :func:`output_name` (unique within a run). Expects decollated outputs whose ``pred``
    is the binary mask in the original image's geometry (after ``Invertd``), and the prompt in the
    batch's ``text``. PNG masks are in the image's row/column order (for a slice of a volume: its
    display orientation); NIfTI masks of a slice of a volume are that volume with the slice filled in
    (:func:`save_mask`), other NIfTI masks are in the order of the input array (with its affine when it
    is NIfTI).
    """

    def __init__(self, output_dir: str, mask_ext: str = ".png", overlay: bool = True):
        if mask_ext not in MASK_EXTENSIONS:
            raise ValueError(f"mask_ext must be one of {MASK_EXTENSIONS}, got {mask_ext!r}")
        super().__init__(output_dir)
        self.mask_ext = mask_ext
        self.overlay = overlay

    def __call__(self, engine) -> None:
        from transforms.io import LoadImageSafed

        # MONAI engines decollate: state.batch and state.output are lists of per-sample dicts
        loader = LoadImageSafed(keys="image")
        for record, item in zip(engine.state.batch, engine.state.output):
            source = _filename(item["image"])
            text, slice_index = record.get("text", ""), record.get("slice")
            name = output_name(record, source, self._names)
            pred = item["pred"].detach().float().cpu().numpy()
            mask = pred[0] if pred.ndim == 3 else pred
            mask_path = save_mask(self.output_dir / f"{name}_mask{self.mask_ext}", mask, reference=source,
                                  slice_index=None if slice_index is None else int(slice_index))
            entry = {"image": source, "slice": "" if slice_index is None else int(slice_index), "text": text,
                     "mask": str(mask_path), "overlay": "", "foreground_pixels": int((mask > 0.5).sum())}
            if self.overlay:
                original = loader({"image": source})["image"].float().numpy() if source else item["image"].numpy()
                if original.shape[-2:] != mask.shape[-2:]:
                    original = item["image"].detach().float().cpu().numpy()
                entry["overlay"] = str(save_overlay(
                    self.output_dir / f"{name}_overlay.png", original, mask, None,
                    title=f"prompt: {text}", caption="red: predicted mask",
                ))
            self.written.append(entry)

    def report(self, engine) -> None:
        self.write_index()
        for entry in self.written:
            logger.info("%s -> %s", entry["image"], entry["mask"])
        files = sum(Path(e["mask"]).is_file() for e in self.written)
        print(f"wrote {files} mask(s) for {len(self.written)} prediction(s) to {self.output_dir} "
              f"(index: predictions.csv)")
