"""Data held on the training device (``data_on_device: true`` in a bundle's train.yaml).

MONAI's fast-training recipe: the deterministic transforms (loading, resizing, normalising) run once and
their results are cached *on the GPU* (``CacheDataset`` with :func:`to_device` at the end of the
deterministic part), the random augmentation that follows runs on the GPU tensors, and batches are
assembled in the main process (``ThreadDataLoader``, no worker processes: CUDA tensors do not cross
process boundaries). No host-to-device copy or CPU decoding is left in the step.

Off (the default), nothing changes: :func:`to_device` adds no transform and :func:`dataloader` is MONAI's
``DataLoader`` with worker processes.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from monai.data import DataLoader, ThreadDataLoader
from monai.transforms import Compose, ToDeviced, Transform
from monai.transforms.traits import RandomizableTrait

from transforms.base.values import as_bool
from transforms.base.errors import ConfigurationError

logger = logging.getLogger(__name__)


def to_device(on_device, device, keys: Sequence[str] = ("image", "label")) -> list:
    """``[ToDeviced(keys, device)]`` when data live on the device, else ``[]``: put it after the
    deterministic transforms (what ``CacheDataset`` caches) and before the random ones."""
    return [ToDeviced(keys=list(keys), device=torch.device(device))] if as_bool(on_device) else []


def _moves_to_device(transform) -> bool:
    transforms = transform.transforms if isinstance(transform, Compose) else [transform]
    return any(isinstance(t, ToDeviced) for t in transforms)


def _not_cached(t) -> bool:
    """MONAI's ``CacheDataset`` caches the transforms before the first one that is random or is not a MONAI
    ``Transform`` (a plain callable, or a nested ``Compose``, which counts as random)."""
    return isinstance(t, RandomizableTrait) or not isinstance(t, Transform)


def _check_order(transform) -> None:
    """The move must come before the first transform the cache stops at, or the cache holds host tensors
    (or nothing at all, and every item is loaded again in the main process each epoch)."""
    transforms = list(transform.transforms) if isinstance(transform, Compose) else [transform]
    move = next(i for i, t in enumerate(transforms) if isinstance(t, ToDeviced))
    stop = next((i for i, t in enumerate(transforms) if _not_cached(t)), len(transforms))
    if move > stop:
        what = "random" if isinstance(transforms[stop], RandomizableTrait) else "not a MONAI Transform"
        raise ConfigurationError(f"data_on_device: the move to the device ({type(transforms[move]).__name__}) comes "
                                 f"after {type(transforms[stop]).__name__} (transform {stop}), where the cache stops "
                                 f"({what}); the move must end the deterministic MONAI transforms, whose results are "
                                 "cached")


def dataloader(dataset, batch_size: int, shuffle: bool = False, drop_last: bool = False, num_workers: int = 0,
               on_device=False, reason_not_offered: str | None = None):
    """The bundle's data loader: MONAI's ``DataLoader`` with ``num_workers`` processes, or with
    ``on_device`` a ``ThreadDataLoader`` in the main process over a dataset whose transforms move the data
    to the device (:func:`to_device`; refused, naming what is missing, when they do not).
    ``reason_not_offered``: why a bundle has no device-resident path (the error says it)."""
    if not as_bool(on_device):
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers)
    if reason_not_offered:
        raise ConfigurationError(f"data_on_device is not offered by this bundle: {reason_not_offered}")
    transform = getattr(dataset, "transform", None)
    if transform is None or not _moves_to_device(transform):
        raise ConfigurationError("data_on_device: true, but the dataset's transforms do not move the data to the "
                                 "device: add \"$common.engine.device_data.to_device(@data_on_device, @device)\" after "
                                 "the deterministic transforms")
    _check_order(transform)
    if getattr(dataset, "cache_num", None) == 0:
        logger.warning("data_on_device with cache_rate 0: every item is loaded and moved to the device each epoch; "
                       "set cache_rate 1.0 to keep the data there")
    return ThreadDataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=0)
