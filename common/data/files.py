"""Finding the files of a dataset split: split names, image suffixes, folder and file look-ups."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from common.core.errors import DatasetError

SPLITS = ("train", "val", "test")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


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

