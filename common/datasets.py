"""Datalists for the published text-guided segmentation datasets, read as their publishers ship them.

Each function returns a list of records ``{"image", "label", "text", "name"}``
(paths absolute, ``text`` a string or a list of strings) for one split. Every
row of a text file must resolve to an existing image and mask; anything that
does not raises :class:`~common.errors.DatasetError` naming the file, and no
sample is dropped silently. ``check_files`` additionally opens each image and
mask header to catch unreadable files and size mismatches before training.

Layouts (``dataset_dir`` is the folder the dataset was unpacked into):

* ``qata`` QaTa-COV19 with LViT / Ariadne text: ``Train Set/`` and ``Test Set/``
  (or LViT's ``Train_Folder/``, ``Val_Folder/``, ``Test_Folder/``) holding
  ``Images/`` or ``img/`` and ``Ground-truths/`` or ``labelcol/`` with
  ``mask_<image name>`` masks; text in a CSV ``Image,Description`` (Image = the
  mask file name) or LViT's ``Train_text.xlsx`` / ``Val_text.xlsx`` /
  ``Test_text.xlsx``. Without a validation file, validation is the last
  ``val_fraction`` of the training rows (as Ariadne does).
* ``mosmed`` MosMedData+ (LViT): ``Train Set/``, ``Val Set/``, ``Test Set/``
  (or ``*_Folder``) with ``img/``, ``labelcol/`` and ``{Train,Val,Test}_text.xlsx``.
* ``kvasir`` / ``bkai`` with Poudel et al.'s prompts: ``images/``, ``masks/`` and a
  JSON list per split (``train.json``, ``val.json``, ``test.json``, found in
  ``anns/``, ``prompts/`` or the top folder) of ``{img_name, mask_name, bbox,
  prompts: {p0..p9}}``; ``prompt_level`` picks the prompt (p7-p9 are lists,
  sampled during training).
* ``refct``: referring lesion records in CT, ``{train,val,test}.jsonl`` as
  :mod:`common.referring_ct` defines them (what ``scripts/build_referring_ct.py`` writes).
* ``datalist``: a JSON list, JSONL or CSV file of ``image, label, text``
  records (paths relative to the file), for anything else.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Sequence

from .config import as_bool, as_optional
from .errors import DatasetError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FORMATS = ("qata", "mosmed", "kvasir", "bkai", "refct", "datalist")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_SPLIT_DIRS = {
    "train": ("Train Set", "Train_Folder", "train", "Train"),
    "val": ("Val Set", "Val_Folder", "val", "Val"),
    "test": ("Test Set", "Test_Folder", "test", "Test"),
}
_IMAGE_DIRS = ("Images", "images", "img")
_MASK_DIRS = ("Ground-truths", "Ground-Truths", "masks", "labelcol", "labels")


def _first_existing(base: Path, names: Sequence[str], kind: str, want_dir: bool = True) -> Path:
    for name in names:
        candidate = base / name
        if candidate.is_dir() if want_dir else candidate.is_file():
            return candidate
    raise DatasetError(base, f"no {kind} found; looked for {', '.join(names)}")


def _find_file(bases: Sequence[Path], names: Sequence[str]) -> Path | None:
    for base in bases:
        for name in names:
            if (base / name).is_file():
                return base / name
    return None


def read_text_table(path: str | Path) -> list[tuple[str, str]]:
    """Rows ``(Image, Description)`` of a CSV or LViT XLSX text file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "text file does not exist")
    try:
        if path.suffix.lower() in (".xlsx", ".xls"):
            import pandas as pd

            frame = pd.read_excel(path)
            header = [str(c) for c in frame.columns]
            rows = frame.astype(object).values.tolist()
        else:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                header = next(reader, [])
                rows = list(reader)
    except DatasetError:
        raise
    except Exception as err:
        raise DatasetError(path, f"cannot read text file ({type(err).__name__}: {err})") from err
    header = [h.strip() for h in header]
    if "Image" not in header or "Description" not in header:
        raise DatasetError(path, f"text file needs columns 'Image' and 'Description', found {header}")
    i_img, i_txt = header.index("Image"), header.index("Description")
    out = []
    for n, row in enumerate(rows, start=2):
        name = row[i_img] if i_img < len(row) else None
        text = row[i_txt] if i_txt < len(row) else None
        if name is None or (isinstance(name, float) and math.isnan(name)) or not str(name).strip():
            raise DatasetError(path, f"row {n} has no Image name")
        if text is None or (isinstance(text, float) and math.isnan(text)) or not str(text).strip():
            raise DatasetError(path, f"row {n} ({name}) has an empty Description")
        out.append((str(name).strip(), str(text).strip()))
    if not out:
        raise DatasetError(path, "text file has no rows")
    return out


def _resolve_pair(name: str, image_dir: Path, mask_dir: Path, text_file: Path) -> tuple[Path, Path]:
    """Image and mask for a text row whose ``Image`` is the mask name (``mask_x.png``) or the image name."""
    stem = name[len("mask_"):] if name.startswith("mask_") else name
    image_candidates = [image_dir / stem]
    mask_candidates = [mask_dir / name, mask_dir / f"mask_{stem}", mask_dir / stem]
    image = next((p for p in image_candidates if p.is_file()), None)
    if image is None:
        raise DatasetError(text_file, f"row '{name}': image {image_candidates[0]} does not exist")
    mask = next((p for p in mask_candidates if p.is_file()), None)
    if mask is None:
        raise DatasetError(text_file, f"row '{name}': mask {mask_candidates[0]} does not exist")
    return image, mask


def lvit_datalist(
    dataset_dir: str | Path,
    split: str,
    text_file: str | Path | None = None,
    val_fraction: float = 0.2,
) -> list[dict]:
    """QaTa-COV19 or MosMedData+ in the LViT / Ariadne layouts (see the module doc)."""
    root = Path(dataset_dir)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not root.is_dir():
        raise DatasetError(root, "dataset folder does not exist")
    has_val_folder = any((root / n).is_dir() for n in _SPLIT_DIRS["val"])
    # without a validation folder (QaTa), train and val are carved from the training rows
    carve = split in ("train", "val") and not has_val_folder
    file_split = "train" if carve else split
    split_dir = _first_existing(root, _SPLIT_DIRS[file_split], f"{file_split} folder")
    if text_file is None:
        cap = file_split.capitalize()
        names = [f"{cap}_text.xlsx", f"{file_split}.csv", f"{cap}_text.csv"]
        text_file = _find_file([split_dir, root, root / "prompt", root / "prompts", root / "text"], names)
        if text_file is None:
            raise DatasetError(split_dir, f"no text file for the {split} split; looked for {', '.join(names)} "
                               f"in {split_dir}, {root}, {root / 'prompt'}")
    text_file = Path(text_file)
    rows = read_text_table(text_file)
    if carve:
        n_val = int(round(len(rows) * val_fraction))
        rows = rows[len(rows) - n_val:] if split == "val" else rows[: len(rows) - n_val]
    image_dir = _first_existing(split_dir, _IMAGE_DIRS, "image folder")
    mask_dir = _first_existing(split_dir, _MASK_DIRS, "mask folder")
    records = []
    for name, text in rows:
        image, mask = _resolve_pair(name, image_dir, mask_dir, text_file)
        records.append({"image": str(image), "label": str(mask), "text": text, "name": image.stem})
    _warn_unlisted(image_dir, records, text_file)
    return records


def _warn_unlisted(image_dir: Path, records: list[dict], text_file: Path) -> None:
    listed = {Path(r["image"]).name for r in records}
    on_disk = {p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    unlisted = on_disk - listed
    if unlisted:
        logger.info("%d images in %s have no row in %s for this split (used by another split or unlabelled)",
                    len(unlisted), image_dir, text_file)


def _prompt_file(root: Path, split: str, prompt_file: str | Path | None) -> Path:
    if prompt_file is not None:
        path = Path(prompt_file)
        if not path.is_file():
            raise DatasetError(path, "prompt file does not exist")
        return path
    names = [f"{split}.json"] + (["testA.json"] if split == "test" else [])
    found = _find_file([root / "anns", root / "prompts", root], names)
    if found is None:
        raise DatasetError(root, f"no prompt JSON for the {split} split; looked for {names} in anns/, prompts/ and the top folder")
    return found


def prompt_json_datalist(
    dataset_dir: str | Path,
    split: str,
    prompt_level: str = "p6",
    prompt_file: str | Path | None = None,
    images_subdir: str = "images",
    masks_subdir: str = "masks",
) -> list[dict]:
    """Kvasir-SEG / BKAI-IGH with Poudel et al.'s prompt JSON (see the module doc)."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetError(root, "dataset folder does not exist")
    path = _prompt_file(root, split, prompt_file)
    try:
        entries = json.loads(path.read_text())
    except Exception as err:
        raise DatasetError(path, f"cannot parse prompt JSON ({type(err).__name__}: {err})") from err
    if not isinstance(entries, list) or not entries:
        raise DatasetError(path, "prompt JSON must be a non-empty list of records")
    image_dir, mask_dir = root / images_subdir, root / masks_subdir
    records = []
    for n, entry in enumerate(entries):
        where = f"record {n}"
        if not isinstance(entry, dict) or "img_name" not in entry or "mask_name" not in entry:
            raise DatasetError(path, f"{where} needs 'img_name' and 'mask_name'")
        prompts = entry.get("prompts") or {}
        if prompt_level not in prompts:
            raise DatasetError(path, f"{where} ({entry['img_name']}) has no prompt '{prompt_level}'; has {sorted(prompts)}")
        text = prompts[prompt_level]
        texts = [t for t in (text if isinstance(text, list) else [text]) if isinstance(t, str) and t.strip()]
        if not texts:
            raise DatasetError(path, f"{where} ({entry['img_name']}) has an empty prompt '{prompt_level}'")
        image, mask = image_dir / entry["img_name"], mask_dir / entry["mask_name"]
        if not image.is_file():
            raise DatasetError(path, f"{where}: image {image} does not exist")
        if not mask.is_file():
            raise DatasetError(path, f"{where}: mask {mask} does not exist")
        records.append({
            "image": str(image), "label": str(mask), "name": image.stem,
            "text": texts if isinstance(text, list) else texts[0],
        })
    return records


def file_datalist(path: str | Path) -> list[dict]:
    """A JSON list, JSONL or CSV (``image,label,text``) of records; relative paths are relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "datalist file does not exist")
    try:
        if path.suffix == ".jsonl":
            entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        elif path.suffix == ".json":
            entries = json.loads(path.read_text())
        else:
            with open(path, newline="", encoding="utf-8-sig") as f:
                entries = list(csv.DictReader(f))
    except Exception as err:
        raise DatasetError(path, f"cannot parse datalist ({type(err).__name__}: {err})") from err
    records = []
    for n, entry in enumerate(entries):
        missing = [k for k in ("image", "text") if not entry.get(k)]
        if missing:
            raise DatasetError(path, f"record {n} has no {missing}")
        rec = dict(entry)
        for key in ("image", "label"):
            if rec.get(key):
                p = Path(rec[key])
                p = p if p.is_absolute() else path.parent / p
                if not p.is_file():
                    raise DatasetError(path, f"record {n}: {key} {p} does not exist")
                rec[key] = str(p)
        rec.setdefault("name", Path(rec["image"]).stem)
        records.append(rec)
    return records


def check_records(records: Sequence[dict], keys: Sequence[str] = ("image", "label")) -> None:
    """Open every raster image/mask header: unreadable files and image/mask size mismatches raise."""
    from PIL import Image

    for rec in records:
        sizes = {}
        for key in keys:
            path = rec.get(key)
            if not path or not str(path).lower().endswith(IMAGE_SUFFIXES):
                continue
            try:
                with Image.open(path) as im:
                    sizes[key] = im.size
            except Exception as err:
                raise DatasetError(path, f"cannot read {key} ({type(err).__name__}: {err})") from err
        if len(set(sizes.values())) > 1:
            raise DatasetError(rec.get("label"), f"mask size {sizes.get('label')} differs from image size "
                               f"{sizes.get('image')} ({rec.get('image')})")


def build_datalist(
    dataset_format: str,
    dataset_dir: str | Path,
    split: str,
    prompt_level: str = "p6",
    val_fraction: float = 0.2,
    text_file: str | Path | None = None,
    check_files: bool = True,
    limit: int | None = None,
) -> list[dict]:
    """The records of one split of a dataset (see the module doc for formats and layouts).

    Args:
        dataset_format: one of :data:`FORMATS`.
        dataset_dir: the dataset folder (for ``datalist``: a folder holding
            ``{split}.json``/``.jsonl``/``.csv``, or the file itself).
        split: ``train``, ``val`` or ``test``.
        prompt_level: Poudel prompt key for ``kvasir``/``bkai``.
        val_fraction: QaTa without a validation file: last fraction of the train rows.
        text_file: override the text/prompt file.
        check_files: open every image/mask header (readability, size match).
        limit: keep the first ``limit`` records (quick runs).
    """
    limit, text_file = as_optional(limit), as_optional(text_file)
    if dataset_format not in FORMATS:
        raise ValueError(f"dataset_format must be one of {FORMATS}, got {dataset_format!r}")
    if dataset_format in ("qata", "mosmed"):
        records = lvit_datalist(dataset_dir, split, text_file=text_file, val_fraction=val_fraction)
    elif dataset_format in ("kvasir", "bkai"):
        records = prompt_json_datalist(dataset_dir, split, prompt_level=prompt_level, prompt_file=text_file)
    elif dataset_format == "refct":
        from .referring_ct import referring_datalist

        records = referring_datalist(text_file or dataset_dir, split)
    else:
        path = Path(text_file or dataset_dir)
        if path.is_dir():
            found = _find_file([path], [f"{split}.json", f"{split}.jsonl", f"{split}.csv"])
            if found is None:
                raise DatasetError(path, f"no {split}.json / {split}.jsonl / {split}.csv datalist")
            path = found
        records = file_datalist(path)
    if limit:
        records = records[: int(limit)]
    if as_bool(check_files):
        check_records(records)
    for rec in records:
        rec["dataset"] = dataset_format
        rec["label_path"] = rec.get("label", "")
    return records
