"""Exceptions with messages that name the offending file or config key."""

from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or inconsistent.

    The message always names the file, so a user can fix the dataset without
    reading a traceback.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}")


class PretrainedWeightsError(FileNotFoundError):
    """A pretrained part could not be found (offline, wrong path, unknown id)."""

    def __init__(self, key: str, value: object, looked_for: str, hint: str = ""):
        self.key = key
        self.value = value
        self.looked_for = looked_for
        msg = f"config key '{key}' = {value!r}: could not load pretrained weights; looked for {looked_for}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class CheckpointError(ValueError):
    """A checkpoint is missing, of another bundle, or does not fit the network it is loaded into.

    The message is one line that names the file and says what it holds and what was asked for.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ConfigurationError(ValueError):
    """A config value that cannot be read as the type its argument takes or written as a description,
    or a command-line setting that would be ignored or cannot apply."""
