"""Finding the files of a dataset split: split names, image suffixes, folder and file look-ups."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from transforms.base.errors import DatasetError

SPLITS = ("train", "val", "test")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# separators a CSV file may use: comma, semicolon (spreadsheets in many locales), tab
CSV_SEPARATORS = (",", ";", "\t")


def first_existing(base: Path, names: Sequence[str], kind: str, want_dir: bool = True) -> Path:
    for name in names:
        candidate = base / name
        if candidate.is_dir() if want_dir else candidate.is_file():
            return candidate
    raise DatasetError(base, f"no {kind} found; looked for {', '.join(names)}")


def find_file(bases: Sequence[Path], names: Sequence[str]) -> Path | None:
    for base in bases:
        for name in names:
            if (base / name).is_file():
                return base / name
    return None


def csv_separator(header_line: str) -> str:
    """The separator of a CSV file: whichever of :data:`CSV_SEPARATORS` its header line holds most
    (a comma when it holds none: one column)."""
    counts = {sep: header_line.count(sep) for sep in CSV_SEPARATORS}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def read_csv_rows(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of a CSV file separated by comma, semicolon or tab (:func:`csv_separator`)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        separator = csv_separator(f.readline())
        f.seek(0)
        reader = csv.reader(f, delimiter=separator)
        header = next(reader, [])
        return header, list(reader)
