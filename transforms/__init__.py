"""Shared MONAI dictionary transforms (``...d``) for the text-guided bundles."""

from .checks import CheckSameSized
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
    "SelectLesiond",
    "SelectTextd",
    "ShuffleTexts",
    "TokenizeTextd",
]
