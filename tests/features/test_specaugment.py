"""SpecAugment: mask bounds, padding, determinism, eval and config behaviour."""

from __future__ import annotations

import torch

from speechtune.config import SpecAugmentConfig
from speechtune.features import SpecAugment


def _batch(lengths: list[int], n_bins: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    # Strictly positive features so a 0.0 can only come from a mask.
    feats = (
        torch.rand(len(lengths), max(lengths), n_bins, generator=torch.Generator().manual_seed(3))
        + 1.0
    )
    return feats, torch.tensor(lengths)


def _runs(flags: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    out, run = [], 0
    for f in flags.tolist():
        if f:
            run += 1
        elif run:
            out.append(run)
            run = 0
    return out + ([run] if run else [])


def test_mask_bounds_and_padding_untouched() -> None:
    aug = SpecAugment(time_mask_width=7, freq_mask_width=4, num_time_masks=2, num_freq_masks=3)
    feats, lengths = _batch([60, 33, 5, 60])
    gen = torch.Generator().manual_seed(0)
    saw_time = saw_freq = False
    for _ in range(50):
        out = aug(feats, lengths, generator=gen)
        for b, n in enumerate(lengths.tolist()):
            # Padding is never written.
            assert torch.equal(out[b, n:], feats[b, n:])
            zero = out[b, :n] == 0.0
            time_rows = zero.all(1)  # frames masked across all bins
            freq_cols = zero.all(0)  # bins masked across all frames
            # Every zero is explained by a time or a frequency mask.
            assert torch.equal(zero, time_rows[:, None] | freq_cols[None, :])
            if not freq_cols.all():
                assert sum(_runs(time_rows)) <= 2 * 7
                assert all(r <= 2 * 7 for r in _runs(time_rows))
            if not time_rows.all():
                assert sum(_runs(freq_cols)) <= 3 * 4
            saw_time |= bool(time_rows.any()) and not freq_cols.all()
            saw_freq |= bool(freq_cols.any()) and not time_rows.all()
            # Unmasked values are unchanged.
            assert torch.equal(out[b, :n][~zero], feats[b, :n][~zero])
    assert saw_time and saw_freq


def test_time_mask_width_capped_at_short_utterance() -> None:
    aug = SpecAugment(time_mask_width=50, freq_mask_width=0, num_time_masks=1, num_freq_masks=0)
    feats, lengths = _batch([3, 80])
    gen = torch.Generator().manual_seed(1)
    widths = set()
    for _ in range(200):
        out = aug(feats, lengths, generator=gen)
        assert torch.equal(out[0, 3:], feats[0, 3:])
        widths.add(int((out[0, :3, 0] == 0).sum()))
    assert widths == {0, 1, 2, 3}


def test_same_seed_same_masks_other_seed_other_masks() -> None:
    aug = SpecAugment(10, 5, 2, 2)
    feats, lengths = _batch([40, 25, 40])
    a = aug(feats, lengths, generator=torch.Generator().manual_seed(7))
    b = aug(feats, lengths, generator=torch.Generator().manual_seed(7))
    c = aug(feats, lengths, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # The input is not modified in place.
    assert torch.all(feats > 0)


def test_eval_mode_and_zero_counts_are_no_ops() -> None:
    feats, lengths = _batch([10, 7])
    aug = SpecAugment(5, 5, 2, 2).eval()
    assert aug(feats, lengths, generator=torch.Generator().manual_seed(0)) is feats
    none = SpecAugment(5, 5, 0, 0)
    assert none.training and none(feats, lengths) is feats


def test_global_rng_path_and_from_config() -> None:
    torch.manual_seed(0)
    feats, lengths = _batch([30, 30])
    out = SpecAugment(8, 6, 1, 1)(feats, lengths)
    assert out.shape == feats.shape and bool((out == 0).any())
    assert SpecAugment.from_config(SpecAugmentConfig(enabled=False)) is None
    aug = SpecAugment.from_config(SpecAugmentConfig(time_mask_width=9, num_freq_masks=1))
    assert aug is not None and (aug.time_mask_width, aug.num_freq_masks, aug.num_time_masks) == (
        9,
        1,
        2,
    )
