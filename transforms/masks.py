"""Mask decoding: binarising lossy masks and colour-coded masks."""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform


class BinarizeMaskd(MapTransform):
    """(C, H, W) mask of any channel count -> (1, H, W) float {0, 1}.

    A pixel is foreground where any channel exceeds ``threshold``. The default
    ``threshold=None`` uses 0.5 for masks already in [0, 1] and 127 for 8-bit
    masks (Kvasir-SEG's JPEG masks need the threshold: their edges are lossy).
    """

    def __init__(self, keys: KeysCollection, threshold: float | None = None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            threshold = self.threshold
            if threshold is None:
                threshold = 0.5 if float(mask.max()) <= 1.0 else 127.0
            d[key] = (mask > threshold).any(dim=0, keepdim=True).to(torch.float32)
        return d


class ColorMaskToLabeld(MapTransform):
    """RGB colour-coded mask (3, H, W) -> (1, H, W) integer labels.

    ``colors`` maps a label to an RGB triple; each pixel gets the label of the
    colour it is nearest to, and 0 where it is nearer to black than to every
    colour (JPEG noise tolerant). BKAI-IGH NeoPolyp: ``{1: [255, 0, 0], 2: [0, 255, 0]}``
    (red neoplastic, green non-neoplastic).
    """

    def __init__(
        self,
        keys: KeysCollection,
        colors: Mapping[int, Sequence[float]],
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.labels = [0] + [int(k) for k in colors]
        self.palette = torch.tensor([[0.0, 0.0, 0.0]] + [list(map(float, v)) for v in colors.values()])

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            if mask.shape[0] != 3:
                src = getattr(mask, "meta", {}).get("filename_or_obj", key)
                raise ValueError(f"{src}: colour mask needs 3 channels, got {mask.shape[0]}")
            pixels = torch.as_tensor(mask, dtype=torch.float32).reshape(3, -1).T  # (N, 3)
            nearest = torch.cdist(pixels, self.palette.to(pixels.device)).argmin(dim=1)
            labels = torch.tensor(self.labels, device=pixels.device)[nearest]
            out = labels.reshape(1, *mask.shape[1:]).to(torch.float32)
            d[key] = type(mask)(out, meta=mask.meta) if hasattr(mask, "meta") else out
        return d
