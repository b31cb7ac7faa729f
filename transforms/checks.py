"""Consistency checks that fail with the file names in the message."""

from __future__ import annotations

from typing import Hashable, Mapping

from monai.transforms import MapTransform

from transforms.base.errors import DatasetError


def _source(value, data: Mapping, key: str) -> str:
    meta = getattr(value, "meta", None) or {}
    return str(meta.get("filename_or_obj", data.get(f"{key}_path", key)))


class CheckSameSized(MapTransform):
    """Raise if the spatial sizes of the given keys differ (image/mask mismatch)."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if len(keys) < 2:
            return d
        ref = keys[0]
        ref_shape = tuple(d[ref].shape[1:])
        for key in keys[1:]:
            shape = tuple(d[key].shape[1:])
            if shape != ref_shape:
                raise DatasetError(
                    _source(d[key], d, key),
                    f"{key} size {shape} differs from {ref} size {ref_shape} ({_source(d[ref], d, ref)})",
                )
        return d
