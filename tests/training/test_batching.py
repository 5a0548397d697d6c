"""BucketBatchSampler: coverage, determinism, resume, padding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from speechtune.training import BucketBatchSampler
from speechtune.training._batching import padding_ratio


def _durations(n: int = 203, seed: int = 0) -> list[float]:
    return np.random.default_rng(seed).uniform(0.5, 15.0, size=n).tolist()


def _sampler(**kw: object) -> BucketBatchSampler:
    args = {"batch_size": 8, "num_buckets": 6, "seed": 3, **kw}
    return BucketBatchSampler(_durations(), **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("bucketed", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_exactly_once_per_epoch(bucketed: bool, shuffle: bool) -> None:
    s = _sampler(bucketed=bucketed, shuffle=shuffle)
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s) == 26  # ceil(203 / 8)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(203))
        assert sum(len(b) < 8 for b in batches) == 1  # one short batch at most


def test_drop_last_drops_the_short_batch() -> None:
    s = _sampler(drop_last=True)
    batches = list(s)
    assert len(batches) == len(s) == 25
    assert all(len(b) == 8 for b in batches)
    assert len({i for b in batches for i in b}) == 200


def test_deterministic_per_seed_and_epoch() -> None:
    a, b = _sampler(), _sampler()
    for epoch in (0, 1, 5):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert list(a) == list(b)
    assert _sampler().batches(0) != _sampler().batches(1)
    assert _sampler(seed=3).batches(0) != _sampler(seed=4).batches(0)


def test_eval_order_is_sorted_by_duration_and_epoch_independent() -> None:
    d = _durations()
    s = _sampler(shuffle=False)
    flat = [i for b in s.batches(0) for i in b]
    assert [d[i] for i in flat] == sorted(d)
    assert s.batches(0) == s.batches(7)
    plain = _sampler(shuffle=False, bucketed=False)
    assert [i for b in plain.batches(0) for i in b] == list(range(203))


def test_resume_mid_epoch_yields_exactly_the_remaining_batches() -> None:
    full = _sampler()
    full.set_epoch(2)
    expected = list(full)

    first = _sampler()
    first.set_epoch(2)
    seen = list(itertools.islice(iter(first), 11))
    state = first.state_dict()
    assert state == {"epoch": 2, "position": 11}

    resumed = _sampler()
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a trainer re-selecting the same epoch must not lose the position
    rest = list(resumed)
    assert seen + rest == expected
    assert resumed.state_dict() == {"epoch": 2, "position": 26}

    resumed.set_epoch(3)
    assert resumed.position == 0
    assert len(list(resumed)) == 26


def test_finished_epoch_replays_when_iterated_again() -> None:
    s = _sampler(shuffle=False)
    assert list(s) == list(s)


def test_bucketing_reduces_padding() -> None:
    d = _durations(n=500, seed=1)
    bucketed = BucketBatchSampler(d, 16, num_buckets=10, seed=0)
    plain = BucketBatchSampler(d, 16, bucketed=False, seed=0)
    b_ratio = padding_ratio(bucketed.batches(0), d)
    p_ratio = padding_ratio(plain.batches(0), d)
    assert b_ratio < 0.5 * p_ratio
    assert 0.0 <= b_ratio < 0.15


def test_padding_ratio_hand_computed() -> None:
    assert padding_ratio([[0, 1], [2]], [1.0, 3.0, 2.0]) == pytest.approx(1 - 6.0 / 8.0)
    assert padding_ratio([], [1.0]) == 0.0


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"durations\[2\]=-1"):
        BucketBatchSampler([1.0, 2.0, -1.0], 2)
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler([1.0], 0)
    with pytest.raises(ValueError, match="position=99"):
        _sampler().load_state_dict({"epoch": 0, "position": 99})


def test_small_datasets() -> None:
    assert list(BucketBatchSampler([], 4)) == []
    s = BucketBatchSampler([2.0, 1.0, 3.0], 4, num_buckets=10)
    assert [sorted(b) for b in s] == [[0, 1, 2]]
