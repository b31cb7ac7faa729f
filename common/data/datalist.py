"""Datalists for the published text-guided segmentation datasets, and for any other as a file.

:func:`build_datalist` returns the records ``{"image", "label", "text", "name"}`` of one split
(paths absolute, ``text`` a string or a list of strings) for a ``dataset_format``:

* ``qata``, ``mosmed``: :mod:`common.data.lvit`;
* ``kvasir``, ``bkai``: :mod:`common.data.prompt_json`;
* ``refct``: referring lesion records in CT, :mod:`common.data.referring_ct`;
* ``datalist``: a JSON list, JSONL or CSV file of ``image, label, text`` records (paths relative
  to the file), for anything else.

Every row of a text file must resolve to an existing image and mask; anything that does not
raises :class:`~transforms.base.errors.DatasetError` naming the file, and no sample is dropped
silently. ``check_files`` additionally opens each image and mask header to catch unreadable
files and size mismatches before training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from transforms.base.describe import typed
from transforms.base.errors import DatasetError

from .file_reading import read_json_lines
from .files import IMAGE_SUFFIXES, find_file, read_csv_rows
from .lvit import lvit_datalist
from .prompt_json import prompt_json_datalist

FORMATS = ("qata", "mosmed", "kvasir", "bkai", "refct", "datalist")
# above which value a mask pixel is the target: JPEG masks are lossy at the edges, PNG masks are labels
MASK_THRESHOLDS = {"qata": 0, "mosmed": 0, "kvasir": 127, "bkai": 127, "datalist": 0}


def mask_threshold(dataset_format: str) -> float:
    """The foreground threshold of a format's masks (:class:`transforms.BinarizeMaskd`)."""
    if dataset_format not in MASK_THRESHOLDS:
        raise ValueError(f"dataset_format {dataset_format!r} has no binary masks; one of {sorted(MASK_THRESHOLDS)}")
    return MASK_THRESHOLDS[dataset_format]

def file_datalist(path: str | Path, required: Sequence[str] = ("image", "text")) -> list[dict]:
    """A JSON list, JSONL or CSV (``image,label,text``; comma, semicolon or tab separated) of records; relative
    paths are relative to the file.

    Every record needs the ``required`` keys (training and evaluation also need ``label``); a missing one
    raises, naming the file, the record and the columns it has.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "datalist file does not exist")
    try:
        if path.suffix == ".jsonl":
            entries = [entry for _, entry in read_json_lines(path)]
        elif path.suffix == ".json":
            entries = json.loads(path.read_text())
        else:
            entries = _csv_records(path)
    except DatasetError:
        raise
    except Exception as err:
        raise DatasetError(path, f"cannot parse datalist ({type(err).__name__}: {err})") from err
    if not isinstance(entries, list):
        raise DatasetError(path, "a datalist must be a list of records")
    records = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DatasetError(path, f"record {n} is not a record of named fields: {entry!r}")
        missing = [k for k in required if not entry.get(k)]
        if missing:
            names = " and ".join(f"'{k}'" for k in missing)
            raise DatasetError(path, f"record {n} has no {names} (columns: {', '.join(entry)})")
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


def _csv_records(path: Path) -> list[dict]:
    """The rows of a CSV datalist (separated by comma, semicolon or tab) as records named by its header.

    A row with more non-empty fields than the header has columns raises: its extra fields (a text with an
    unquoted separator) would otherwise be lost."""
    header, rows = read_csv_rows(path)
    header = [name.strip() for name in header]  # "image; label; text"
    records = []
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        if not row:  # a blank line
            continue
        if any(cell.strip() for cell in row[len(header):]):
            raise DatasetError(path, f"row {number} has {len(row)} fields but the header has {len(header)} "
                                     f"({', '.join(header)}); put a text that holds the separator in double quotes")
        records.append(dict(zip(header, row)))
    return records


def check_records(records: Sequence[dict], keys: Sequence[str] = ("image", "label"), progress: bool = True) -> None:
    """Decode every raster image/mask once before training: unreadable or truncated files and image/mask
    size mismatches raise here, naming the file, instead of aborting a data-loader worker later."""
    from PIL import Image

    rasters = [rec for rec in records if any(str(rec.get(k, "")).lower().endswith(IMAGE_SUFFIXES) for k in keys)]
    iterator = rasters
    if progress and len(rasters) > 200:
        from tqdm import tqdm

        iterator = tqdm(rasters, desc="checking image files", unit="record")
    for rec in iterator:
        sizes = {}
        for key in keys:
            path = rec.get(key)
            if not path or not str(path).lower().endswith(IMAGE_SUFFIXES):
                continue
            try:
                with Image.open(path) as im:
                    sizes[key] = im.size
                    im.load()  # decode: a truncated file passes the header and fails only here
            except Exception as err:
                what = "cannot decode image" if key in sizes else f"cannot read {key}"
                raise DatasetError(path, f"{what} ({type(err).__name__}: {err})") from err
        if len(set(sizes.values())) > 1:
            raise DatasetError(rec.get("label"), f"mask size {sizes.get('label')} differs from image size "
                               f"{sizes.get('image')} ({rec.get('image')})")


@typed
def build_datalist(
    dataset_format: str,
    dataset_dir: str | Path,
    split: str,
    prompt_level: str = "p6",
    val_fraction: float = 0.2,
    text_file: str | Path | None = None,
    check_files: bool = True,
    limit: int | None = None,
    text: bool = True,
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
        text: records need a text (False for image-only bundles reading a ``datalist``).
    """
    if dataset_format not in FORMATS:
        raise ValueError(f"dataset_format must be one of {FORMATS}, got {dataset_format!r}")
    if dataset_format in ("qata", "mosmed"):
        records = lvit_datalist(dataset_dir, split, text_file=text_file, val_fraction=val_fraction)
    elif dataset_format in ("kvasir", "bkai"):
        records = prompt_json_datalist(dataset_dir, split, prompt_level=prompt_level, prompt_file=text_file)
    elif dataset_format == "refct":
        from .referring_ct.records import referring_datalist

        records = referring_datalist(text_file or dataset_dir, split)
    else:
        path = Path(text_file or dataset_dir)
        if path.is_dir():
            found = find_file([path], [f"{split}.json", f"{split}.jsonl", f"{split}.csv"])
            if found is None:
                raise DatasetError(path, f"no {split}.json / {split}.jsonl / {split}.csv datalist")
            path = found
        records = file_datalist(path, required=("image", "label", "text") if text else ("image", "label"))
    if limit:
        records = records[: int(limit)]
    if check_files:
        check_records(records)
    for rec in records:
        rec["dataset"] = dataset_format
        rec["label_path"] = rec.get("label", "")
    return records

