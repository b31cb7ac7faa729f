"""Reading PanNuke patches: safe ``.npy`` loading, instance masks to a class map, one patch per record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Hashable, Mapping

import numpy as np
from monai.transforms import Transform

from transforms.base.errors import DatasetError


def load_npy(path: Path, mmap: bool = True) -> np.ndarray:
    """A ``.npy`` array, memory-mapped when ``mmap``. Pickled (object) arrays are refused, never loaded:
    unpickling a file runs whatever code it names."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise DatasetError(path, "holds Python objects (a pickled object array), which this reader never loads: "
                                     "unpickling a file can run code. If you trust the file, convert it once to a "
                                     "string array: python -c \"import numpy as np; p='" + str(path) + "'; "
                                     "np.save(p, np.load(p, allow_pickle=True).astype(str))\"") from err
        raise DatasetError(path, f"cannot read ({err})") from err
    except Exception as err:
        raise DatasetError(path, f"cannot read ({type(err).__name__}: {err})") from err


def masks_to_class_map(masks: np.ndarray) -> np.ndarray:
    """(H, W, 5 or 6) PanNuke instance masks -> (H, W) int64 class map (0 background, channel c -> c + 1)."""
    label = np.zeros(masks.shape[:2], dtype=np.int64)
    for c in reversed(range(5)):  # lower channels win where two claim a pixel
        label[np.asarray(masks[..., c]) > 0] = c + 1
    return label


_OPEN: dict[str, np.ndarray] = {}


def _mmap(path: str) -> np.ndarray:
    key = f"{os.getpid()}:{path}"
    if key not in _OPEN:
        _OPEN[key] = load_npy(Path(path))
    return _OPEN[key]


class LoadPanNukePatchd(Transform):
    """Read patch ``index`` of a record: ``image`` -> (3, H, W) float32 0-255, ``label`` -> (1, H, W) int64.

    The record keeps ``organ``, ``fold``, ``index`` and ``name``. Arrays are memory-mapped once per
    process. Errors name the file.
    """

    def __init__(self, image_key: str = "image", mask_key: str = "mask", label_key: str = "label"):
        self.image_key, self.mask_key, self.label_key = image_key, mask_key, label_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        import torch

        d = dict(data)
        index = int(d["index"])
        image_path, mask_path = str(d[self.image_key]), str(d[self.mask_key])
        images, masks = _mmap(image_path), _mmap(mask_path)
        if index >= images.shape[0]:
            raise DatasetError(image_path, f"patch {index} does not exist ({images.shape[0]} patches)")
        image = np.asarray(images[index], dtype=np.float32)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise DatasetError(image_path, f"patch {index} is not (H, W, 3): {image.shape}")
        d[self.image_key] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        d[self.label_key] = torch.from_numpy(masks_to_class_map(np.asarray(masks[index]))[None])
        d["image_path"], d["mask_path"] = image_path, mask_path
        del d[self.mask_key]
        return d

