"""LSMS's polynomial learning-rate schedule is sized in the unit it steps (epochs or iterations)."""

from pathlib import Path

import pytest
import torch

from bundle_runner import bundle_parser

FOLDER = Path(__file__).resolve().parents[1] / "bundles" / "lsms"


def _total_iters(**overrides):
    # the engine's training loader stands in as 7 batches (the config reads its length when epoch_length is null)
    parser = bundle_parser(FOLDER, "train", overrides={"epochs": 3, "train#dataloader": list(range(7)), **overrides})
    return parser.get_parsed_content("lr_scheduler#total_iters")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"lr_epoch_level": True}, 3),                                           # one step an epoch
        ({"lr_epoch_level": False, "epoch_length": 5}, 15),                       # 3 epochs x 5 iterations
        ({"lr_epoch_level": False}, 21),                                          # the whole set: 7 batches
        ({"lr_epoch_level": "false", "epoch_length": 4}, 12),                     # as the command line hands it
    ],
)
def test_total_iters_counts_the_steps_the_handler_takes(overrides, expected):
    assert _total_iters(**overrides) == expected


def test_per_iteration_schedule_is_not_zero_after_epochs_iterations():
    total = _total_iters(lr_epoch_level=False, epoch_length=5)
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=0.9)
    for _ in range(3):  # `epochs` iterations: the old schedule (total_iters=epochs) had reached 0 here
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx((1 - 3 / 15) ** 0.9)
