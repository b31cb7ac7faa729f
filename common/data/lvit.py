"""QaTa-COV19 and MosMedData+ with LViT / Ariadne text, read as their publishers ship them.

* ``qata`` QaTa-COV19: ``Train Set/`` and ``Test Set/`` (or LViT's ``Train_Folder/``,
  ``Val_Folder/``, ``Test_Folder/``) holding ``Images/`` or ``img/`` and ``Ground-truths/`` or
  ``labelcol/`` with ``mask_<image name>`` masks; text in a CSV ``Image,Description`` (Image = the
  mask file name) or LViT's ``Train_text.xlsx`` / ``Val_text.xlsx`` / ``Test_text.xlsx``. Without a
  validation file, validation is the last ``val_fraction`` of the training rows (as Ariadne does).
* ``mosmed`` MosMedData+ (LViT): ``Train Set/``, ``Val Set/``, ``Test Set/`` (or ``*_Folder``) with
  ``img/``, ``labelcol/`` and ``{Train,Val,Test}_text.xlsx``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from transforms.base.errors import DatasetError

from .files import IMAGE_SUFFIXES, SPLITS, find_file, first_existing, read_csv_rows

logger = logging.getLogger(__name__)

_SPLIT_DIRS = {
    "train": ("Train Set", "Train_Folder", "train", "Train"),
    "val": ("Val Set", "Val_Folder", "val", "Val"),
    "test": ("Test Set", "Test_Folder", "test", "Test"),
}


_IMAGE_DIRS = ("Images", "images", "img")


_MASK_DIRS = ("Ground-truths", "Ground-Truths", "masks", "labelcol", "labels")


def read_text_table(path: str | Path) -> list[tuple[str, str]]:
    """Rows ``(Image, Description)`` of a CSV (comma, semicolon or tab separated) or LViT XLSX text file."""
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
            header, rows = read_csv_rows(path)
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
        # LViT's MoNuSeg Test_Folder stores img/*.tif while Test_text.xlsx names *.png: match by stem
        image = _same_stem(image_dir, Path(stem).stem)
    if image is None:
        raise DatasetError(text_file, f"row '{name}': image {image_candidates[0]} does not exist")
    mask = next((p for p in mask_candidates if p.is_file()), None)
    if mask is None:
        raise DatasetError(text_file, f"row '{name}': mask {mask_candidates[0]} does not exist")
    return image, mask


def _same_stem(folder: Path, stem: str) -> Path | None:
    """The one image file in ``folder`` named ``stem`` with any image suffix; several raise (ambiguous)."""
    found = sorted(p for p in (folder / f"{stem}{s}" for s in IMAGE_SUFFIXES + tuple(x.upper() for x in IMAGE_SUFFIXES))
                   if p.is_file())
    found = sorted({p.resolve(): p for p in found}.values())
    if len(found) > 1:
        raise DatasetError(folder, f"several images share the stem '{stem}': {[p.name for p in found]}")
    return found[0] if found else None


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
        raise DatasetError(root, "dataset folder does not exist (set --dataset_dir to the folder the dataset was unpacked into)")
    has_val_folder = any((root / n).is_dir() for n in _SPLIT_DIRS["val"])
    # without a validation folder (QaTa), train and val are carved from the training rows
    carve = split in ("train", "val") and not has_val_folder
    file_split = "train" if carve else split
    split_dir = first_existing(root, _SPLIT_DIRS[file_split], f"{file_split} folder")
    if text_file is None:
        cap = file_split.capitalize()
        names = [f"{cap}_text.xlsx", f"{file_split}.csv", f"{cap}_text.csv"]
        text_file = find_file([split_dir, root, root / "prompt", root / "prompts", root / "text"], names)
        if text_file is None:
            raise DatasetError(split_dir, f"no text file for the {split} split; looked for {', '.join(names)} "
                               f"in {split_dir}, {root}, {root / 'prompt'}")
    text_file = Path(text_file)
    rows = read_text_table(text_file)
    if carve:
        n_val = int(round(len(rows) * val_fraction))
        rows = rows[len(rows) - n_val:] if split == "val" else rows[: len(rows) - n_val]
    image_dir = first_existing(split_dir, _IMAGE_DIRS, "image folder")
    mask_dir = first_existing(split_dir, _MASK_DIRS, "mask folder")
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

