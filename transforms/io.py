"""Image loading that reports which file failed."""

from __future__ import annotations

import os
from typing import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import PILReader
from monai.transforms import LoadImage, MapTransform

from transforms.base.errors import DatasetError

# 2-D raster formats read with PIL in (row, column) order, i.e. as they are viewed
PIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class LoadImageSafed(MapTransform):
    """Load image files with MONAI's ``LoadImage`` and name the file on failure.

    PNG/JPEG/BMP/TIFF are read with PIL in row-major (H, W[, C]) order, so
    "top left" in a prompt is the top left of the array, and channel-first
    arrays (C, H, W) come out. Other formats (NIfTI, DICOM, MHA, ...) use
    MONAI's default readers (nibabel / ITK). A file with NaN or infinite pixels
    (float TIFF, NIfTI) raises, naming it, rather than becoming an empty prediction.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self._pil = LoadImage(reader=PILReader(reverse_indexing=False), image_only=True, ensure_channel_first=True)
        self._other = LoadImage(image_only=True, ensure_channel_first=True)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if not isinstance(path, (str, os.PathLike)):
                raise DatasetError(None, f"'{key}' must be a file path, got {type(path).__name__}")
            if not os.path.isfile(path):
                raise DatasetError(path, f"{key} file does not exist")
            loader = self._pil if str(path).lower().endswith(PIL_EXTENSIONS) else self._other
            try:
                d[key] = loader(path)
            except Exception as err:  # readers raise many types; report the file either way
                raise DatasetError(path, f"cannot read {key} file ({type(err).__name__}: {err})") from err
            refuse_non_finite(d[key], path, key)
        return d


def refuse_non_finite(image: torch.Tensor, path: str | os.PathLike, key: str) -> None:
    """Raise, naming the file, if a loaded image holds NaN or infinite values."""
    if not torch.is_floating_point(image):
        return
    finite = torch.isfinite(image)
    if not finite.all():
        bad, total = int(finite.numel() - finite.sum()), finite.numel()
        raise DatasetError(path, f"{key} has non-finite pixel values (NaN or inf): {bad} of {total} values; "
                                 "replace them (e.g. numpy.nan_to_num) or leave the file out")
