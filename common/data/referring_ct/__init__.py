"""Referring lesion segmentation in CT: the record and its reader, lesion geometry, expressions,
the builder, synthetic volumes.
"""

import importlib

__all__ = ['builder', 'expressions', 'geometry', 'records', 'synthetic']


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
