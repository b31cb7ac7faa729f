"""Checks of the values a user gives a command-line tool, made before the tool does any work.

A value out of its range (``--patch_size 0``, ``--absent_prob 2.0``), or a name that is not one of the known
ones (``--datasets kvasr``), raises :class:`~transforms.base.errors.ConfigurationError` naming the flag, what it
takes and, for a name, the closest known ones (the "did you mean" of the bundles' command-line check,
:func:`common.core.config.check_command_line`).
"""

from __future__ import annotations

import difflib
from typing import Iterable

from transforms.base.errors import ConfigurationError

NOTHING_RUN = "Nothing was run."


def did_you_mean(word: str, known: Iterable[str], prefix: str = "") -> str:
    """`` Did you mean --x or --y?`` for the known names closest to ``word``; empty when none is close."""
    close = difflib.get_close_matches(word, sorted(known), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(prefix + c for c in close)}?" if close else ""


def check_choice(flag: str, value: str, known: Iterable[str], what: str = "a choice") -> None:
    """Refuse ``value`` unless it is one of ``known``."""
    known = list(known)
    if value not in known:
        raise ConfigurationError(f"--{flag} {value!r} is not {what}; one of {', '.join(known)}."
                                 f"{did_you_mean(str(value), known)} {NOTHING_RUN}")


def check_range(flag: str, value, low=None, high=None, below_high: bool = False) -> None:
    """Refuse a number outside ``low``..``high`` (``below_high``: ``high`` itself is refused too); ``None``
    leaves that side open. NaN is refused."""
    too_low = low is not None and not value >= low
    too_high = high is not None and not (value < high if below_high else value <= high)
    if too_low or too_high or value != value:
        raise ConfigurationError(f"--{flag} must be {_allowed(low, high, below_high)}, got {value!r}. {NOTHING_RUN}")


def _allowed(low, high, below_high: bool) -> str:
    if low is None:
        return f"below {high}" if below_high else f"at most {high}"
    if high is None:
        return f"at least {low}"
    return f"at least {low} and below {high}" if below_high else f"from {low} to {high}"
