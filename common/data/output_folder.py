"""A dataset a tool writes appears whole or not at all, and never replaces a folder it was not asked to.

:func:`staged_folder` hands the tool a new folder beside ``out_dir`` (``.<name>.partial-<random>``) and renames
it to ``out_dir`` once the tool is done; a failure (a bad file, a full disk, Ctrl-C) removes it, so a rerun
finds ``out_dir`` as it was. An existing ``out_dir`` that holds anything is refused unless ``overwrite``, and
even then only one that an earlier run of the tool wrote (it holds ``written_by``, the file the tool writes
last), so ``--overwrite`` never deletes a folder of other files.
"""

from __future__ import annotations

import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from transforms.base.errors import DatasetError


def refuse_existing_output(out_dir: str | Path, overwrite: bool = False, written_by: str | None = None) -> None:
    """Raise unless ``out_dir`` is new or empty, or (with ``overwrite``) an earlier output of the tool."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DatasetError(out, "is a file, not a folder: choose another --out_dir (nothing was written)")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise DatasetError(out, "exists; pass --overwrite true to replace it, or choose a new --out_dir "
                                "(it is not an empty folder; nothing was written)")
    if written_by and not (out / written_by).exists():
        raise DatasetError(out, f"holds files this tool did not write (it has no {written_by}), so --overwrite "
                                "does not replace it: choose a new --out_dir (nothing was written)")


@contextmanager
def staged_folder(out_dir: str | Path, overwrite: bool = False, written_by: str | None = None) -> Iterator[Path]:
    """Yield an empty folder to write into; it becomes ``out_dir`` when the block completes (module doc)."""
    out = Path(out_dir)
    refuse_existing_output(out, overwrite, written_by)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _beside(out, "partial")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _put_in_place(staging, out)


def _beside(out: Path, what: str) -> Path:
    return out.with_name(f".{out.name}.{what}-{uuid.uuid4().hex[:8]}")


def _put_in_place(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``; an old ``out`` (empty, or replaced with ``overwrite``) goes once that worked."""
    if not out.exists():
        staging.rename(out)
        return
    old = _beside(out, "replaced")
    out.rename(old)
    try:
        staging.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old)
