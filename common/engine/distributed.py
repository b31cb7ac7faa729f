"""Each process's share of the records under ``torchrun`` (``multi_gpu_train.yaml``)."""

from __future__ import annotations

from typing import Sequence

import torch.distributed as dist
from monai.data import partition_dataset


def rank_share(records: Sequence, what: str, *, shuffle: bool = False, even_divisible: bool = False,
               seed: int = 0, rank: int | None = None, world_size: int | None = None) -> list:
    """This process's part of ``records``.

    Training parts are ``even_divisible`` (records repeat so that every process runs the same number of
    iterations); validation parts are not (no record counted twice), so there must be at least one record
    per process: an evaluator cannot run on nothing, and every process takes part in gathering the metrics.
    """
    rank = dist.get_rank() if rank is None else rank
    world_size = dist.get_world_size() if world_size is None else world_size
    if not records:
        return []  # nothing to share (e.g. no validation data: the bundle then does not validate)
    if len(records) < world_size:
        raise ValueError(f"{what} has {len(records)} record(s), fewer than the {world_size} processes: each "
                         f"process needs one; give it at least {world_size} or run fewer processes (--nproc_per_node)")
    return list(partition_dataset(list(records), num_partitions=world_size, shuffle=shuffle,
                                  even_divisible=even_divisible, seed=seed)[rank])
