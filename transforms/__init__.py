"""Shared MONAI dictionary transforms (``...d``) for the text-guided bundles, and the ground floor of all the
shared code, :mod:`transforms.base` (errors, typed and self-describing construction, pretrained loading).

Nothing here imports :mod:`common` (which reads its files with these transforms) or a bundle.
"""

from . import base, checks, flip, geojson, image, io, masks, pannuke, puma, referring, text, volumes
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
