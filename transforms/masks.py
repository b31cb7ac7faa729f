"""Mask decoding: binarising lossy masks and colour-coded masks."""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from transforms.base.errors import DatasetError

from .image import without_alpha


def _source(mask, data: Mapping, key: Hashable):
    return getattr(mask, "meta", {}).get("filename_or_obj") or data.get(f"{key}_path") or key


class BinarizeMaskd(MapTransform):
    """(C, H, W) mask of any channel count -> (1, H, W) float {0, 1}.

    The channel rule: an alpha channel (the last of 2 or 4 channels: grey + alpha, RGBA) is dropped
    first and never counts; then a pixel is foreground where any remaining channel exceeds
    ``threshold``, so a white, red or green stroke on black is foreground alike.

    The threshold belongs to the dataset format (:func:`common.data.datalist.mask_threshold`): 127 for
    Kvasir-SEG's lossy JPEG masks, 0 (any non-zero label) for lossless PNG masks. A mask that has
    non-zero values but none above the threshold (labels 0/3 under 127) would silently become an empty
    target: that raises, naming the file; so does a mask drawn only in its alpha channel.
    """

    def __init__(self, keys: KeysCollection, threshold: float, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.threshold = float(threshold)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            colours = without_alpha(mask)
            binary = (colours > self.threshold).any(dim=0, keepdim=True).to(torch.float32)
            if not binary.any():
                self._refuse_hidden_foreground(mask, colours, _source(mask, d, key))
            d[key] = binary
        return d

    def _refuse_hidden_foreground(self, mask, colours, source) -> None:
        """An empty target is fine for an empty mask; not for one whose drawing the threshold or alpha hides."""
        colours = torch.as_tensor(colours)
        peak = float(colours.max()) if colours.numel() else 0.0
        if peak > 0:
            raise DatasetError(source, f"mask has values up to {peak:g} but none above the threshold "
                                       f"{self.threshold:g}, so its target would be empty; check the "
                                       "dataset_format (its mask threshold) or the mask's values")
        if colours.shape[0] < mask.shape[0]:
            alpha = torch.as_tensor(mask)[-1]
            if alpha.numel() and alpha.min() != alpha.max():
                raise DatasetError(source, "mask is drawn only in its alpha channel (its colour channels are all "
                                           "0); alpha never counts as foreground: draw the foreground in colour")


class ColorMaskToLabeld(MapTransform):
    """RGB colour-coded mask (3, H, W; an RGBA mask loses its alpha first) -> (1, H, W) integer labels.

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
            mask = without_alpha(d[key])
            if mask.shape[0] != 3:
                src = getattr(mask, "meta", {}).get("filename_or_obj", key)
                raise ValueError(f"{src}: colour mask needs 3 channels, got {mask.shape[0]}")
            pixels = torch.as_tensor(mask, dtype=torch.float32).reshape(3, -1).T  # (N, 3)
            nearest = torch.cdist(pixels, self.palette.to(pixels.device)).argmin(dim=1)
            labels = torch.tensor(self.labels, device=pixels.device)[nearest]
            out = labels.reshape(1, *mask.shape[1:]).to(torch.float32)
            d[key] = type(mask)(out, meta=mask.meta) if hasattr(mask, "meta") else out
        return d
