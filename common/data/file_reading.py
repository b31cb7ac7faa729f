"""Reading a stranger's JSON, JSONL and image files: a file that cannot be read raises
:class:`~transforms.base.errors.DatasetError` naming the file (and, for JSON, the line), not a bare
``JSONDecodeError`` or ``OSError`` that leaves the user guessing which of many files is broken."""

from __future__ import annotations

import json
from pathlib import Path

from transforms.base.errors import DatasetError


def read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(path, f"cannot read the file ({type(err).__name__}: {err})") from err


def read_json(path: str | Path):
    """The value of a JSON file; invalid JSON raises naming the file, the line and the column."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DatasetError(path, f"line {err.lineno} column {err.colno}: not valid JSON ({err.msg})") from None


def read_json_lines(path: str | Path) -> list[tuple[int, object]]:
    """``(line number, value)`` of every non-blank line of a JSONL file; a line that is not JSON raises
    naming the file and its line number."""
    values = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise DatasetError(path, f"line {number}: not valid JSON ({err.msg} at column {err.colno})") from None
    return values


def read_image(path: str | Path, mode: str | None = None):
    """The decoded PIL image (converted to ``mode`` if given); a truncated or unreadable file raises naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file passes Image.open and fails only here
            return image.convert(mode) if mode else image.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(path, f"cannot read image file ({type(err).__name__}: {err})") from err
