"""PanNuke: the fold reader and class table, and synthetic folds in the same layout.
"""

import importlib

__all__ = ['reader', 'synthetic']


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
