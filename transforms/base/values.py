"""Reading a value given on the command line: ``python -m monai.bundle run ... --use_ltem false --limit null``
passes the strings ``"false"`` and ``"null"`` (fire only converts Python literals such as ``False``/``None``).
:mod:`transforms.base.describe` applies these where config values enter typed constructors; a few config
expressions call them directly (``common.core.config.as_bool``)."""

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", "none", "null", ""}


def as_bool(value) -> bool:
    """``True``/``False`` for bools, numbers and strings such as ``"false"``, ``"yes"``, ``"0"``."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        raise ValueError(f"cannot read {value!r} as true/false")
    return bool(value)


def as_optional(value):
    """``None`` for ``None``, ``"null"``, ``"none"`` and ``""``; the value otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "")):
        return None
    return value
