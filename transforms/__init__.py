"""Shared MONAI dictionary transforms (``...d``) for the text-guided bundles."""

from .checks import CheckSameSized
from .flip import RandFlipWithTextd
from .image import EnsureChannelsd
from .io import LoadImageSafed
from .masks import BinarizeMaskd, ColorMaskToLabeld
from .referring import LoadReferringSliced, SelectLesiond
from .text import SelectTextd, ShuffleTexts, TokenizeTextd

__all__ = [
    "BinarizeMaskd",
    "CheckSameSized",
    "ColorMaskToLabeld",
    "EnsureChannelsd",
    "LoadImageSafed",
    "LoadReferringSliced",
    "RandFlipWithTextd",
    "SelectLesiond",
    "SelectTextd",
    "ShuffleTexts",
    "TokenizeTextd",
]

_MODULES = ("checks", "flip", "geojson", "image", "io", "masks", "pannuke", "puma", "referring", "text", "volumes")


def __getattr__(name):
    """``transforms.puma`` and the other modules load when a config first names them."""
    if name in _MODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
