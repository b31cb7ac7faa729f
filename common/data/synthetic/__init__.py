"""Synthetic scenes in which the text decides the target, written in the published dataset layouts.
"""

import importlib

__all__ = ['ownership', 'sample_datasets', 'scenes']


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
