"""Flips that keep a prompt true: a mirrored image turns "located in top left" into "top right".

Poudel et al.'s prompts (p6, p9) name where the target lies in the picture. A plain flip would teach the
model that "left" means either side; :class:`RandFlipWithTextd` flips the image and mask and swaps the
words of the flipped axis in the text (every alternative of a list), so augmentation never contradicts the
prompt. It flips torch tensors where they are (GPU tensors stay on the GPU).

Axes are those of a picture read as (C, rows, columns), as the 2-D PIL/JPEG/PNG readers give it: spatial
axis 0 is top-bottom, 1 is left-right. Volumes read by NIfTI/ITK readers are (C, x, y, z): there axis 0 is
left-right, so do not use this transform on them as configured here (the referring-CT expressions speak of
the patient's side, which a flip of the picture does swap, but the axes would be the other way round).
"""

from __future__ import annotations

import re
from typing import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

# (C, H, W): spatial axis 0 is vertical (rows), 1 is horizontal (columns)
SWAPS = {0: (("top", "bottom"), ("upper", "lower"), ("above", "below")), 1: (("left", "right"),)}


def _pattern(axis: int) -> tuple[re.Pattern, dict[str, str]]:
    table = {}
    for a, b in SWAPS[axis]:
        table[a], table[b] = b, a
    return re.compile(r"\b(" + "|".join(table) + r")\b", re.IGNORECASE), table


def mirror_words(text, axis: int):
    """``text`` (a string or a list of strings) as it reads after a flip along spatial ``axis`` (0: top <->
    bottom, 1: left <-> right); the case of each word is kept ("Left" -> "Right")."""
    if isinstance(text, (list, tuple)):
        return [mirror_words(t, axis) for t in text]
    if not isinstance(text, str):
        return text
    pattern, table = _pattern(axis)

    def swap(match: re.Match) -> str:
        word = match.group(0)
        new = table[word.lower()]
        return new.upper() if word.isupper() else new.capitalize() if word[0].isupper() else new

    return pattern.sub(swap, text)


class RandFlipWithTextd(RandomizableTransform, MapTransform):
    """With probability ``prob``, flip ``keys`` (channel-first arrays/tensors) along each of
    ``spatial_axes`` (independently drawn) and mirror the words of ``text_key`` to match.

    Args:
        keys: image and mask keys.
        text_key: the record's text (a string or a list of alternatives).
        prob: probability of each axis' flip.
        spatial_axes: 1 (left-right, the default), 0 (top-bottom), or both.
    """

    def __init__(self, keys: KeysCollection, text_key: str = "text", prob: float = 0.5,
                 spatial_axes: Sequence[int] | int = (1,), allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        axes = [spatial_axes] if isinstance(spatial_axes, int) else list(spatial_axes)
        if not axes or any(a not in SWAPS for a in axes):
            raise ValueError(f"spatial_axes must be 0 (top-bottom) and/or 1 (left-right), got {spatial_axes!r}")
        self.text_key, self.spatial_axes = text_key, axes
        self._flips: list[int] = []

    def randomize(self, data=None) -> None:
        self._flips = [a for a in self.spatial_axes if self.R.rand() < self.prob]

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize()
        for axis in self._flips:
            for key in self.key_iterator(d):
                value = d[key]
                dim = axis + 1  # after the channel
                d[key] = torch.flip(value, dims=(dim,)) if isinstance(value, torch.Tensor) else value[
                    (slice(None),) * dim + (slice(None, None, -1),)].copy()
            if self.text_key in d:
                d[self.text_key] = mirror_words(d[self.text_key], axis)
        return d
