"""The trainer's speed levers (issue 16) as switches: data held on the device, a deferred check of the loss,
the fused optimiser. Each is off by default; on, it changes where work happens, not what is computed."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, ThreadDataLoader
from monai.transforms import Compose, Lambdad, RandFlipd, ToDeviced

from transforms.base.errors import ConfigurationError
from common.engine.device_data import dataloader, to_device
from bundle_runner import bundle_parser

ROOT = Path(__file__).resolve().parents[1]


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
    with pytest.raises(ConfigurationError, match=r"the move to the device \(ToDeviced\) comes after RandFlipd \(transform 0\), where the cache stops \(random\)"):
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


def _linear_trainer(batches, accumulation=1, epochs=1, lr=0.1, loss=None, interval=1):
    from monai.engines.utils import default_prepare_batch

    from common.engine.trainer import TextGuidedTrainer

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    return net, TextGuidedTrainer(device="cpu", max_epochs=epochs, train_data_loader=batches, network=net,
                                  optimizer=torch.optim.SGD(net.parameters(), lr=lr),
                                  loss_function=loss or torch.nn.MSELoss(), prepare_batch=default_prepare_batch,
                                  accumulation_steps=accumulation, finite_check_interval=interval, decollate=False)


def _batches(n, size=2):
    g = torch.Generator().manual_seed(1)
    return [{"image": torch.randn(size, 3, generator=g), "label": torch.randn(size, 1, generator=g)} for _ in range(n)]


def test_the_epochs_last_short_cycle_is_the_mean_of_its_own_batches():
    """3 batches with accumulation 2: the second step holds one batch, whose gradient must not be halved."""
    b = _batches(3)
    accumulated, trainer = _linear_trainer(b, accumulation=2)
    trainer.run()
    joined = {k: torch.cat([b[0][k], b[1][k]]) for k in ("image", "label")}
    plain, trainer = _linear_trainer([joined, b[2]])
    trainer.run()
    assert torch.allclose(accumulated.weight, plain.weight, atol=1e-6)


class _Budget:
    """TimeBudget whose clock runs out after ``n`` iterations (no sleeping, no timing in the test)."""

    def __init__(self, n):
        from common.engine.trainer import TimeBudget

        self.budget, self.n = TimeBudget(1e9), n

    def attach(self, engine):
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED(once=self.n), lambda e: setattr(self.budget, "seconds", 0.0))
        self.budget.attach(engine)   # after the line above: it checks the clock at the same iteration


def test_a_time_budget_closes_the_running_epoch_and_ends_the_run():
    """The epoch in which the budget runs out completes its iteration and fires EPOCH_COMPLETED (validation
    and model savers run), and no further epoch starts. (The clock is made to run out at iteration 3:
    nothing here depends on how fast the machine is.)"""
    from ignite.engine import Events

    from common.engine.trainer import TimeBudget

    _, trainer = _linear_trainer(_batches(10), epochs=5)
    budget = _Budget(3)
    budget.attach(trainer)
    closed = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: closed.append((e.state.epoch, e.state.iteration)))
    trainer.run()
    assert budget.budget.stopped_at == (1, 3) and closed == [(1, 3)] and trainer.state.max_epochs == 1
    TimeBudget(None).attach(trainer)  # no budget: nothing attached
    assert TimeBudget("null").seconds is None and TimeBudget("240").seconds == 240.0   # --time_budget_s null / 240
    with pytest.raises(ValueError, match="time_budget_s must be positive"):
        TimeBudget(0)


def test_a_budget_cut_inside_an_accumulation_cycle_steps_what_it_accumulated():
    from ignite.engine import Events

    b = _batches(4)
    net, trainer = _linear_trainer(b, accumulation=4)
    # the budget check runs after the iteration; make it run out at the 2nd (the cycle of 4 holds 2 batches)
    budget = _Budget(2)
    budget.attach(trainer)
    steps = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: steps.append(e.state.iteration))
    trainer.run()
    assert budget.budget.stopped_at == (1, 2) and steps == [2]
    joined = {k: torch.cat([b[0][k], b[1][k]]) for k in ("image", "label")}
    plain, trainer = _linear_trainer([joined])
    trainer.run()
    assert torch.allclose(net.weight, plain.weight, atol=1e-6)   # before: the two batches were thrown away


def test_a_budget_cut_reads_the_deferred_loss_check():
    losses = [{"image": torch.ones(1, 3), "label": torch.full((1, 1), v)} for v in (1.0, math.nan, 1.0, 1.0)]
    _, trainer = _linear_trainer(losses, interval=50)
    _Budget(3).attach(trainer)
    with pytest.raises(FloatingPointError, match="iterations 1-3"):
        trainer.run()


@pytest.mark.parametrize("epochs, cut_at, validated", [(12, None, [5, 10, 12]), (12, 7, [5, 7]), (3, None, [3])])
def test_validation_runs_every_interval_and_on_the_last_epoch(epochs, cut_at, validated):
    from common.engine.trainer import PeriodicValidation

    class Validator:
        def __init__(self):
            self.at = []

        def run(self, epoch):
            self.at.append(epoch)

    b = _batches(1)
    _, trainer = _linear_trainer(b, epochs=epochs)
    validator = Validator()
    handler = PeriodicValidation(validator=None, interval=5)
    handler.validator = validator
    handler.attach(trainer)
    if cut_at:
        _Budget(cut_at).attach(trainer)
    trainer.run()
    assert validator.at == validated


def test_a_loader_the_cache_stops_at_is_refused_naming_it():
    """CacheDataset caches nothing from a plain callable on (nor from a nested Compose): the move after it
    would leave every item loaded again, on the host, each epoch."""
    def plain(d):
        return d

    with pytest.raises(ConfigurationError, match=r"comes after function \(transform 0\), where the cache stops "
                                                 r"\(not a MONAI Transform\)"):
        dataloader(_dataset(plain, *to_device(True, "cpu")), batch_size=2, on_device=True)


@pytest.mark.parametrize("dataset_format", ["pannuke", "datalist"])
def test_monchs_data_is_cached_on_the_device_for_either_reader(tmp_path, dataset_format):
    import json

    from PIL import Image

    from common.data.pannuke.synthetic import write_sample_pannuke

    folder = ROOT / "bundles" / "monch"
    if dataset_format == "pannuke":
        data = write_sample_pannuke(tmp_path, n_per_fold=4, size=32)
    else:
        data = tmp_path / "pngs"
        data.mkdir()
        records = []
        for i in range(4):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(data / f"i{i}.png")
            Image.fromarray(np.full((32, 32), i % 3, np.uint8)).save(data / f"m{i}.png")
            records.append({"image": f"i{i}.png", "label": f"m{i}.png"})
        for split in ("train", "val"):
            (data / f"{split}.json").write_text(json.dumps(records))
    parser = bundle_parser(folder, "train", "tiny", "demo", overrides={
        "dataset_dir": str(data), "dataset_format": dataset_format, "data_on_device": True, "cache_rate": 1.0,
        "device": "cpu", "image_size": 32})
    loader = parser.get_parsed_content("train#dataloader", lazy=False)
    dataset = loader.dataset
    assert isinstance(loader, ThreadDataLoader) and len(dataset._cache) == len(dataset.data) > 0
    assert tuple(dataset._cache[0]["image"].shape) == (3, 32, 32)   # decoded, resized and moved, once


def test_puma_and_pannuke_loaders_are_cached():
    from monai.transforms import Transform

    from transforms.pannuke import LoadPanNukePatchd
    from transforms.puma import LoadPumaROId

    assert isinstance(LoadPanNukePatchd(), Transform) and isinstance(LoadPumaROId(), Transform)
