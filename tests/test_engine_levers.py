"""The trainer's speed levers (issue 16) as switches: data held on the device, a deferred check of the loss,
the fused optimiser. Each is off by default; on, it changes where work happens, not what is computed."""

import math

import pytest
import torch
from monai.data import CacheDataset, DataLoader, ThreadDataLoader
from monai.transforms import Compose, Lambdad, RandFlipd, ToDeviced

from common.core.errors import ConfigurationError
from common.engine.device_data import dataloader, to_device


def _dataset(*transforms, cache_rate=1.0):
    data = [{"image": torch.full((1, 4, 4), float(i)), "label": torch.zeros(1, 4, 4)} for i in range(6)]
    return CacheDataset(data, Compose(list(transforms)), cache_rate=cache_rate, progress=False)


def test_off_adds_nothing_and_keeps_monais_dataloader_with_workers():
    assert to_device(False, "cpu") == [] and to_device("false", "cpu") == []
    loader = dataloader(_dataset(Lambdad("image", lambda x: x + 1)), batch_size=2, num_workers=2, on_device=False)
    assert type(loader) is DataLoader and loader.num_workers == 2


def test_on_caches_the_moved_data_and_batches_in_the_main_process():
    move = to_device(True, "cpu")
    assert len(move) == 1 and isinstance(move[0], ToDeviced) and move[0].keys == ("image", "label")
    flip = RandFlipd(["image", "label"], prob=1.0, spatial_axis=0)
    dataset = _dataset(Lambdad("image", lambda x: x + 1), *move, flip)
    loader = dataloader(dataset, batch_size=2, shuffle=True, num_workers=4, on_device="true")
    assert isinstance(loader, ThreadDataLoader) and loader.num_workers == 0
    assert len(dataset._cache) == 6  # what ends with the move is cached; the flip runs per item afterwards
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 1, 4, 4)


def test_on_is_refused_without_a_move_after_a_random_transform_or_where_not_offered():
    flip = RandFlipd(["image"], prob=1.0)
    with pytest.raises(ConfigurationError, match="do not move the data to the device: add .*to_device"):
        dataloader(_dataset(flip), batch_size=2, on_device=True)
    with pytest.raises(ConfigurationError, match="the move to the device \\(ToDeviced\\) comes after the random RandFlipd"):
        dataloader(_dataset(flip, *to_device(True, "cpu")), batch_size=2, on_device=True)
    with pytest.raises(ConfigurationError, match="not offered by this bundle: its targets are made in NumPy"):
        dataloader(_dataset(*to_device(True, "cpu")), batch_size=2, on_device=True,
                   reason_not_offered="its targets are made in NumPy")


def _run(losses, interval):
    """A trainer whose loss at iteration i is ``losses[i - 1]`` (times a weight, so there is a gradient)."""
    from monai.engines.utils import default_prepare_batch

    from common.engine.trainer import TextGuidedTrainer

    net = torch.nn.Linear(1, 1, bias=False)
    batches = [{"image": torch.ones(1, 1), "label": torch.full((1, 1), v)} for v in losses]
    trainer = TextGuidedTrainer(device="cpu", max_epochs=1, train_data_loader=batches, network=net,
                                optimizer=torch.optim.SGD(net.parameters(), lr=0.0),
                                loss_function=lambda pred, label: (pred * label).sum(), prepare_batch=default_prepare_batch,
                                finite_check_interval=interval, decollate=False)
    trainer.run()
    return trainer


def test_a_deferred_check_names_the_iterations_since_the_last_one():
    losses = [1.0, 1.0, math.nan, 1.0, 1.0, 1.0, 1.0]
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 1, iteration 3"):
        _run(losses, 1)
    with pytest.raises(FloatingPointError, match="not finite at one or more of iterations 1-4 \\(epoch 1; checked every 4\\)"):
        _run(losses, 4)
    with pytest.raises(FloatingPointError, match="iterations 5-7"):  # the epoch's end checks too
        _run([1.0] * 6 + [math.inf], 4)
    assert _run([1.0] * 7, 4).state.iteration == 7
    with pytest.raises(ValueError, match="finite_check_interval must be at least 1"):
        _run([1.0], 0)


def test_a_time_budget_closes_the_running_epoch_and_ends_the_run():
    """The epoch in which the budget runs out completes its iteration and fires EPOCH_COMPLETED (validation
    and model savers run), and no further epoch starts."""
    import time

    from ignite.engine import Events
    from monai.engines.utils import default_prepare_batch

    from common.engine.trainer import TextGuidedTrainer, TimeBudget

    net = torch.nn.Linear(1, 1)

    def slow_loss(pred, label):
        time.sleep(0.05)
        return ((pred - label) ** 2).mean()

    batches = [{"image": torch.ones(1, 1), "label": torch.ones(1, 1)}] * 10
    trainer = TextGuidedTrainer(device="cpu", max_epochs=5, train_data_loader=batches, network=net,
                                optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=slow_loss,
                                prepare_batch=default_prepare_batch, decollate=False)
    budget = TimeBudget(0.12)
    budget.attach(trainer)
    closed = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: closed.append((e.state.epoch, e.state.iteration)))
    trainer.run()
    epoch, iteration = budget.stopped_at
    assert epoch == 1 and 2 <= iteration < 10 and closed == [(1, iteration)]
    TimeBudget(None).attach(trainer)  # no budget: nothing attached
    with pytest.raises(ValueError, match="time_budget_s must be positive"):
        TimeBudget(0)
