"""Learning-rate schedules stepped per iteration."""

from __future__ import annotations

import torch


def warmup_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                 accumulation_steps: int = 1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the optimiser's learning rate over ``warmup_steps`` optimiser steps, then
    linear decay to 0 at ``total_steps`` (DeepSpeed's ``WarmupDecayLR`` with linear warm-up, as LISA/GSVA/LTSE
    train). Stepped once per iteration (``LrScheduleHandler(epoch_level=False)``); with gradient
    accumulation one optimiser step is ``accumulation_steps`` iterations."""
    if total_steps < 1 or warmup_steps < 0:
        raise ValueError(f"warmup_decay needs total_steps >= 1 and warmup_steps >= 0, got {total_steps}, {warmup_steps}")
    acc = max(1, int(accumulation_steps))

    def factor(iteration: int) -> float:
        step = iteration // acc
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_per_epoch(lr_epoch_level, epoch_length, loader) -> int:
    """How often the engine steps a schedule in one epoch: once (``lr_epoch_level`` true), or once per
    iteration (``epoch_length``, else the training loader's length). Schedules sized in epochs multiply by it,
    so ``--lr_epoch_level false`` keeps the same decay over training instead of finishing it in ``epochs``
    iterations."""
    from transforms.base.values import as_bool

    if as_bool(lr_epoch_level):
        return 1
    return int(epoch_length or len(loader))
