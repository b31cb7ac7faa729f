"""Each process's share of the records under torchrun."""

import pytest

from common.engine.distributed import rank_share


def test_validation_shares_cover_every_record_once():
    records = list(range(5))
    shares = [rank_share(records, "the validation data", rank=r, world_size=2) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == records


def test_training_shares_are_even():
    shares = [rank_share(list(range(5)), "the training data", shuffle=True, even_divisible=True, seed=0,
                         rank=r, world_size=2) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 3 and set(shares[0] + shares[1]) == set(range(5))


def test_fewer_validation_records_than_processes_is_a_clear_error():
    with pytest.raises(ValueError, match=r"the validation data has 1 record\(s\), fewer than the 2 processes"):
        rank_share([{"image": "a.tif"}], "the validation data", rank=1, world_size=2)
    assert rank_share([], "the validation data", rank=1, world_size=2) == []
