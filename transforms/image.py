"""Channel handling for 2-D images of any source (grey X-ray, RGB endoscopy, RGBA PNG)."""

from __future__ import annotations

from typing import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform


def without_alpha(img: torch.Tensor) -> torch.Tensor:
    """A channel-first image of 2 (grey + alpha) or 4 (RGBA) channels without its last, alpha, channel;
    any other image as it is. Alpha is transparency, never image content or mask foreground."""
    if img.shape[0] in (2, 4):
        return img[: img.shape[0] - 1]
    return img


class EnsureChannelsd(MapTransform):
    """Make channel-first images have exactly ``channels`` channels.

    Grey (1 channel) is repeated, an alpha channel is dropped, RGB is converted
    to grey for ``channels=1`` (mean of the channels).
    """

    def __init__(self, keys: KeysCollection, channels: int = 3, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = without_alpha(d[key])
            if img.shape[0] == self.channels:
                pass
            elif img.shape[0] == 1:
                img = img.repeat(self.channels, *([1] * (img.ndim - 1)))
            elif self.channels == 1:
                img = img.float().mean(dim=0, keepdim=True)
            else:
                raise ValueError(f"cannot turn {img.shape[0]} channels into {self.channels}")
            d[key] = img
        return d
