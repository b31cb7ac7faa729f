"""From MONCH's per-class logits to a class map.

Each class has its own sigmoid map (eq. 9 trains them as independent binary problems). With the
background map trained (``include_background: true``, the paper's N+1 prompts) a pixel takes the
class with the highest logit. Without it the background map is untrained noise, so a pixel is
background unless one of the cell maps says "cell" (sigmoid above ``threshold``), and then it takes
the most likely cell class.
"""

from __future__ import annotations

from typing import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from transforms.base.describe import configurable


def decode_classes(logits: torch.Tensor, include_background: bool = True, threshold: float = 0.5) -> torch.Tensor:
    """(..., K, H, W) logits -> (..., H, W) int64 class indices (0 background)."""
    if include_background:
        return logits.argmax(dim=-3)
    cells = logits[..., 1:, :, :]
    best, index = cells.max(dim=-3)
    return torch.where(torch.sigmoid(best.float()) > threshold, index + 1, torch.zeros_like(index))


@configurable
class DecodeClassesd(MapTransform):
    """``pred`` (K, H, W) logits -> one-hot (K, H, W) of the decoded classes (:func:`decode_classes`),
    the form MONAI's Dice and IoU metrics take."""

    def __init__(self, keys: KeysCollection = "pred", include_background: bool = True, threshold: float = 0.5,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.include_background = include_background
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            logits = d[key]
            classes = decode_classes(torch.as_tensor(logits), self.include_background, self.threshold)
            onehot = torch.nn.functional.one_hot(classes, logits.shape[-3]).movedim(-1, -3).to(torch.float32)
            d[key] = type(logits)(onehot, meta=logits.meta) if hasattr(logits, "meta") else onehot
        return d


@configurable
class ClassMapd(MapTransform):
    """``pred`` (K, h, w) logits -> (1, H, W) uint8 class map at the input image's size (``size_key``: the
    record's original (H, W)), decoded by :func:`decode_classes`: inference's post-processing."""

    def __init__(self, keys: KeysCollection = "pred", include_background: bool = True, threshold: float = 0.5,
                 size_key: str = "orig_size", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.include_background, self.threshold, self.size_key = include_background, threshold, size_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            logits = torch.as_tensor(d[key]).detach().float()
            if self.size_key in d:
                size = tuple(int(s) for s in torch.as_tensor(d[self.size_key]).tolist())
                logits = torch.nn.functional.interpolate(logits[None], size=size, mode="bilinear",
                                                         align_corners=False)[0]
            d[key] = decode_classes(logits, self.include_background, self.threshold)[None].to(torch.uint8)
        return d
