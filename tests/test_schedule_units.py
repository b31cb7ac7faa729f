"""Every epoch-sized schedule is sized in the unit the engine steps it: ``--lr_epoch_level false`` steps it per
iteration, and the decay must still take the whole training (TMCA's cosine, MONCH's step decay, Co-Seg's
exponential decay; LSMS's polynomial decay is in tests/test_lsms_schedule.py)."""

from pathlib import Path

import pytest

from bundle_runner import bundle_parser

ROOT = Path(__file__).resolve().parents[1]


def _scheduler(name: str, key: str, **overrides):
    # the training loader stands in as 7 batches (the config reads its length when epoch_length is null)
    parser = bundle_parser(ROOT / "bundles" / name, "train",
                           overrides={"epochs": 3, "train#dataloader": list(range(7)), **overrides})
    return parser.get_parsed_content(f"lr_scheduler#{key}"), parser


@pytest.mark.parametrize("overrides, steps", [({"lr_epoch_level": True}, 1), ({"lr_epoch_level": False}, 7),
                                              ({"lr_epoch_level": "false", "epoch_length": 4}, 4)])
def test_epoch_sized_schedules_count_the_steps_the_engine_takes(overrides, steps):
    t_max, _ = _scheduler("tmca", "T_max", **overrides)
    assert t_max == 3 * steps  # one cosine half-period over all of training, not `epochs` iterations
    step_size, parser = _scheduler("monch", "step_size", **overrides)
    assert step_size == parser.get_parsed_content("lr_decay_epochs") * steps
    gamma, parser = _scheduler("coseg", "gamma", **overrides)
    assert gamma ** steps == pytest.approx(parser.get_parsed_content("lr_decay"))  # the same decay per epoch
