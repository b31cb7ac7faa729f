"""PUMA (melanoma tissue + nuclei) as published: ROI images with GeoJSON annotations (:mod:`.reader`), and a
synthetic copy in the same layout (:mod:`.synthetic`).
"""

import importlib

__all__ = ['reader', 'synthetic']


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
