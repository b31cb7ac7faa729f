"""Sample data never lands in a user's real dataset.

Each folder a sample writer makes gets a marker file, :data:`MARKER`. A writer may write into a
folder only if the folder is new, empty, or carries the marker; a folder holding anything else (a
real Kvasir-SEG unpacked under ``sample_data/`` or passed as ``--data_dir``) is refused before a
single file is written.
"""

from __future__ import annotations

from pathlib import Path

from transforms.base.errors import DatasetError

MARKER = ".tgseg-sample-data"


def claim_folder(folder: str | Path) -> Path:
    """Make ``folder`` ours (create it and its marker), or raise if it holds files we did not write."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DatasetError(folder, "is a file; sample data needs a folder here")
    if folder.is_dir() and not (folder / MARKER).is_file() and any(folder.iterdir()):
        raise DatasetError(folder, "holds files that the sample-data writer did not make (a real dataset?); writing "
                                   "synthetic samples here would mix them in and replace its prompt files. Choose "
                                   "another output folder (--out_dir / --data_dir)")
    folder.mkdir(parents=True, exist_ok=True)
    return mark_folder(folder)


def mark_folder(folder: str | Path) -> Path:
    """Put the marker in a folder a sample writer has just made (for one it writes beside and renames into place)."""
    folder = Path(folder)
    (folder / MARKER).write_text("written by the tgseg sample-data writers; safe to delete with this folder\n")
    return folder


def is_sample_folder(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).is_file()
