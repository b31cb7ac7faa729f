"""Each process's share of the records under ``torchrun`` (``multi_gpu_train.yaml``)."""

from __future__ import annotations

from typing import Sequence

import torch
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



def sync_batchnorm(network: torch.nn.Module, device) -> torch.nn.Module:
    """On CUDA, ``network`` with its BatchNorm layers as SyncBatchNorm, so that their statistics are those of
    the whole batch across processes (LSMS's encoder and decoder; the other bundles have none). gloo on the
    CPU has no SyncBatchNorm: there the network is returned as it is."""
    if torch.device(device).type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
    return network


def ddp_network(network: torch.nn.Module, device, find_unused_parameters: bool = False) -> torch.nn.Module:
    """``network`` (already on ``device``: :func:`common.engine.network.prepare_network`) wrapped for
    DistributedDataParallel, one device per process."""
    device = torch.device(device)
    return torch.nn.parallel.DistributedDataParallel(
        network, device_ids=[device] if device.type == "cuda" else None,
        find_unused_parameters=bool(find_unused_parameters))
