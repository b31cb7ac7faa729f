"""Loading referring-lesion records (see :mod:`common.data.referring_ct.records`): one slice, one lesion."""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from transforms.base.errors import DatasetError
from transforms.volumes import ABDOMINAL_WINDOW, load_volume, to_display, window

from .io import PIL_EXTENSIONS, LoadImageSafed


class LoadReferringSliced(MapTransform):
    """Load the image and mask of a referring record as (1, H, W) arrays in display orientation.

    A 2-D raster (the builder's PNG slices) is loaded as it is. A 3-D volume is
    reoriented to RAS, the axial slice ``data[slice_key]`` is taken and turned to
    radiological display orientation; CT images (``image_key``) are windowed to
    [0, 255] with ``window_hu``, as the builder does for its PNGs, so both kinds of
    record give the same arrays. Non-finite voxels raise, naming the file. The last
    ``volume_cache`` volumes stay loaded: a case's records follow each other, so each
    volume is read once rather than once per lesion.
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), image_key: str = "image", slice_key: str = "slice",
                 window_hu: Sequence[float] = ABDOMINAL_WINDOW, volume_cache: int = 2, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.volume_cache = volume_cache
        self._volumes: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self.image_key = image_key
        self.slice_key = slice_key
        self.window_hu = window_hu
        self._raster = LoadImageSafed(keys=list(self.keys), allow_missing_keys=True)

    def _volume(self, path: str, key: str) -> torch.Tensor:
        cache_key = (path, key)
        if cache_key in self._volumes:
            self._volumes.move_to_end(cache_key)
            return self._volumes[cache_key]
        volume = load_volume(path, key)
        if self.volume_cache > 0:
            self._volumes[cache_key] = volume
            while len(self._volumes) > self.volume_cache:
                self._volumes.popitem(last=False)
        return volume

    def _volume_slice(self, path: str, key: str, index) -> MetaTensor:
        volume = self._volume(path, key)
        if index is None:
            raise DatasetError(path, f"{key} is a 3-D volume but the record has no '{self.slice_key}' index")
        depth = volume.shape[-1]
        if not 0 <= int(index) < depth:
            raise DatasetError(path, f"slice {index} is outside the volume's {depth} axial slices")
        array = np.asarray(volume[0, :, :, int(index)], dtype=np.float32)
        if not np.all(np.isfinite(array)):
            raise DatasetError(path, f"non-finite voxels in slice {index}")
        array = to_display(array)
        if key == self.image_key:
            array = window(array, self.window_hu)
        return MetaTensor(torch.from_numpy(array.copy())[None], meta={"filename_or_obj": path, "slice": int(index)})

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            if path.lower().endswith(PIL_EXTENSIONS):
                d[key] = self._raster({key: path})[key]
            else:
                d[key] = self._volume_slice(path, key, d.get(self.slice_key))
            if not torch.isfinite(torch.as_tensor(d[key])).all():
                raise DatasetError(path, f"non-finite values in {key}")
        return d


class SelectLesiond(MapTransform):
    """Turn a lesion-id mask into the binary mask of the referred lesion: ``label == data[lesion_key]``.

    A slice that does not contain the referred lesion raises, naming the mask
    file: a referring record must point at something.
    """

    def __init__(self, keys: KeysCollection = "label", lesion_key: str = "lesion_id", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.lesion_key = lesion_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        lesion_id = d.get(self.lesion_key)
        if lesion_id is None:
            raise DatasetError(d.get("label_path") or d.get("mask"), f"record has no '{self.lesion_key}'")
        for key in self.key_iterator(d):
            mask = d[key]
            selected = (torch.as_tensor(mask) == int(lesion_id)).to(torch.float32)
            if not selected.any():
                source = getattr(mask, "meta", {}).get("filename_or_obj") or d.get("mask") or d.get("label_path")
                slice_note = f" slice {d.get('slice')}" if d.get("slice") is not None else ""
                raise DatasetError(source, f"lesion {lesion_id} is not in this{slice_note} mask")
            d[key] = MetaTensor(selected, meta=dict(getattr(mask, "meta", {}))) if isinstance(mask, MetaTensor) else selected
        return d
