"""BCSS (breast cancer semantic segmentation, Amgad et al. 2019) as published (:mod:`.reader`), referring
records built from it for LTSE (:mod:`.referring`, BCSS-Ref style), and a synthetic copy in the published
layout (:mod:`.synthetic`).
"""

import importlib

__all__ = ['reader', 'referring', 'synthetic']


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
