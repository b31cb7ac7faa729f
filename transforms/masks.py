"""Mask decoding: binarising lossy masks and colour-coded masks."""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from common.core.errors import DatasetError


class BinarizeMaskd(MapTransform):
    """(C, H, W) mask of any channel count -> (1, H, W) float {0, 1}: foreground where any channel exceeds
    ``threshold``.

    The threshold belongs to the dataset format (:func:`common.data.datalist.mask_threshold`): 127 for
    Kvasir-SEG's lossy JPEG masks, 0 (any non-zero label) for lossless PNG masks. A mask that has
    non-zero values but none above the threshold (labels 0/3 under 127) would silently become an empty
    target: that raises, naming the file.
    """

    def __init__(self, keys: KeysCollection, threshold: float, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.threshold = float(threshold)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            binary = (mask > self.threshold).any(dim=0, keepdim=True).to(torch.float32)
            if not binary.any():
                peak = float(torch.as_tensor(mask).max()) if torch.as_tensor(mask).numel() else 0.0
                if peak > 0:
                    source = getattr(mask, "meta", {}).get("filename_or_obj") or d.get(f"{key}_path") or key
                    raise DatasetError(source, f"mask has values up to {peak:g} but none above the threshold "
                                               f"{self.threshold:g}, so its target would be empty; check the "
                                               "dataset_format (its mask threshold) or the mask's values")
            d[key] = binary
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
