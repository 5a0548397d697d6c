"""Speaker-disjoint dev splits and stratified proxy subsets."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from speechtune.data import Manifest, Utterance, proxy_subset, split_dev
from speechtune.data import TestSplitError as SplitRefused


def _corpus(seed: int = 0) -> Manifest:
    """Metadata-only corpus: groups with 12, 8, 3 and 1 speakers, 5-25 utterances each."""
    rng = np.random.default_rng(seed)
    utts = []
    for group, n_spk in (("female", 12), ("male", 8), ("accent_x", 3), ("solo", 1)):
        for s in range(n_spk):
            spk = f"{group}_{s}"
            for k in range(int(rng.integers(5, 26))):
                utts.append(
                    Utterance(
                        f"{spk}_{k}",
                        f"{spk}_{k}.wav",
                        float(rng.uniform(1.0, 6.0)),
                        "A",
                        spk,
                        group,
                    )
                )
    return Manifest(utts, "train")


def test_split_dev_is_speaker_disjoint_and_sized() -> None:
    m = _corpus()
    train, dev = split_dev(m, 0.15, seed=0)
    assert train.split == "train" and dev.split == "dev"
    assert not set(train.speakers) & set(dev.speakers)
    assert len(train) + len(dev) == len(m)
    assert {u.id for u in train} | {u.id for u in dev} == {u.id for u in m}
    assert 0.08 <= len(dev) / len(m) <= 0.25


def test_split_dev_covers_groups_with_two_or_more_speakers() -> None:
    m = _corpus()
    for seed in range(5):
        train, dev = split_dev(m, 0.1, seed=seed)
        assert set(dev.groups) == {"female", "male", "accent_x"}
        assert "solo" not in dev.groups  # a lone speaker stays in train
        assert set(train.groups) == set(m.groups)  # and every group keeps training data


def test_split_dev_deterministic_per_seed() -> None:
    m = _corpus()
    a = split_dev(m, 0.2, seed=3)[1]
    b = split_dev(m, 0.2, seed=3)[1]
    c = split_dev(m, 0.2, seed=4)[1]
    assert [u.id for u in a] == [u.id for u in b]
    assert set(a.speakers) != set(c.speakers)


def test_split_dev_refusals() -> None:
    m = _corpus()
    for split in ("test", "golden"):
        with pytest.raises(SplitRefused):
            split_dev(m.with_split(split), 0.1, seed=0)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            split_dev(m, bad, seed=0)
    one = m.filter(lambda u: u.speaker == "solo_0")
    with pytest.raises(ValueError, match="two or more speakers"):
        split_dev(one, 0.1, seed=0)


def _seconds(m: Manifest) -> float:
    return sum(u.duration for u in m)


def test_proxy_subset_fraction_and_strata() -> None:
    m = _corpus()
    sub = proxy_subset(m, fraction=0.3, seed=0)
    assert sub.split == m.split
    assert _seconds(sub) <= 0.3 * _seconds(m) + 1e-9
    assert _seconds(sub) >= 0.3 * _seconds(m) - 6.0  # within one utterance of the budget
    assert sub.speakers == m.speakers  # every speaker contributes
    # each group contributes in proportion to its share of the audio
    for g in m.groups:
        share = _seconds(sub.filter(lambda u: u.group == g)) / _seconds(
            m.filter(lambda u: u.group == g)
        )
        assert 0.2 <= share <= 0.45, (g, share)
    ids = [u.id for u in sub]
    assert ids == [u.id for u in m if u.id in set(ids)]  # original order kept


def test_proxy_subset_hours_and_tight_budget() -> None:
    m = _corpus()
    sub = proxy_subset(m, hours=0.05, seed=1)
    assert 0.05 * 3600 - 6.0 <= _seconds(sub) <= 0.05 * 3600
    # A budget below one utterance per speaker: spread over speakers first.
    tiny = proxy_subset(m, hours=30 / 3600, seed=1)
    assert _seconds(tiny) <= 30
    assert len(tiny.speakers) >= 5 and max(Counter(u.speaker for u in tiny).values()) <= 2
    assert len(proxy_subset(m, hours=1000.0)) == len(m)  # budget above the total: everything


def test_proxy_subset_deterministic_per_seed() -> None:
    m = _corpus()
    a = [u.id for u in proxy_subset(m, fraction=0.25, seed=7)]
    assert a == [u.id for u in proxy_subset(m, fraction=0.25, seed=7)]
    assert a != [u.id for u in proxy_subset(m, fraction=0.25, seed=8)]


def test_proxy_subset_refusals() -> None:
    m = _corpus()
    with pytest.raises(SplitRefused):
        proxy_subset(m.with_split("test"), fraction=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        proxy_subset(m)
    with pytest.raises(ValueError, match="exactly one"):
        proxy_subset(m, fraction=0.5, hours=1.0)
    with pytest.raises(ValueError, match="fraction"):
        proxy_subset(m, fraction=1.5)
    with pytest.raises(ValueError, match="hours"):
        proxy_subset(m, hours=0.0)
