"""WER/CER against jiwer, group WER, latency and size."""

from __future__ import annotations

import random

import jiwer
import pytest
import torch

from speechtune.metrics import (
    ErrorCounts,
    LatencyResult,
    cer,
    error_counts,
    group_wer,
    measure_latency,
    parameter_count,
    size_on_disk,
    wer,
    worst_group,
)

VOCAB = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "up", "hill", "x"]


def _sentence(rng: random.Random, max_words: int) -> str:
    words = [rng.choice(VOCAB) for _ in range(rng.randint(0, max_words))]
    sep = rng.choice([" ", "  "])  # jiwer collapses repeated spaces for WER, keeps them for CER
    return (" " if rng.random() < 0.2 else "") + sep.join(words)


def _corpus(seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    n = rng.randint(1, 12)
    refs = [_sentence(rng, 8) for _ in range(n)]
    if not any(r.strip() for r in refs):
        refs[0] = "the cat"
    hyps = [_sentence(rng, 8) for _ in range(n)]
    return refs, hyps


@pytest.mark.parametrize("seed", range(60))
def test_wer_and_cer_match_jiwer(seed: int) -> None:
    refs, hyps = _corpus(seed)
    assert wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert cer(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_edit_breakdown_matches_jiwer(seed: int) -> None:
    refs, hyps = _corpus(seed)
    ours = error_counts(refs, hyps, "word")
    theirs = jiwer.process_words(refs, hyps)
    assert ours.errors == theirs.substitutions + theirs.deletions + theirs.insertions
    assert ours.errors == ours.substitutions + ours.deletions + ours.insertions
    assert ours.ref_len == theirs.hits + theirs.substitutions + theirs.deletions


def test_hand_computed_counts() -> None:
    c = error_counts(["a b c d"], ["a x c d e"])
    assert c == ErrorCounts(errors=2, ref_len=4, substitutions=1, deletions=0, insertions=1)
    assert c.rate == 0.5
    assert cer(["ab c"], ["a c"]) == 0.25  # the inner space is a character
    total = c + ErrorCounts(1, 6, deletions=1)
    assert (total.errors, total.ref_len, total.deletions, total.rate) == (3, 10, 1, 0.3)


def test_empty_references() -> None:
    # An empty reference adds its hypothesis as insertions and nothing to the length.
    assert wer(["", "a b"], ["x y", "a b"]) == 1.0
    assert wer(["", "a b"], ["", "a c"]) == 0.5
    with pytest.raises(ValueError, match="all 2 reference"):
        wer(["", "  "], ["x", ""])
    with pytest.raises(ValueError, match="no reference tokens"):
        _ = ErrorCounts(1, 0).rate
    with pytest.raises(ValueError, match="2 refs and 1 hyps"):
        wer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="unit"):
        error_counts(["a"], ["a"], unit="phone")


def test_group_wer_and_worst_group() -> None:
    refs = ["a b", "c d", "e f g h", "i j"]
    hyps = ["a b", "c x", "e f", "i j"]
    groups = ["us", "gb", "gb", "sc"]
    rates = group_wer(refs, hyps, groups)
    assert list(rates) == ["gb", "sc", "us"]
    assert rates == {"gb": pytest.approx(3 / 6), "sc": 0.0, "us": 0.0}
    assert worst_group(rates) == ("gb", pytest.approx(0.5))
    assert worst_group({"b": 0.2, "a": 0.2, "c": 0.1}) == ("a", 0.2)
    with pytest.raises(ValueError, match="'z'"):
        group_wer(["", "a"], ["b", "a"], ["z", "y"])
    with pytest.raises(ValueError, match="at least one"):
        worst_group({})


def test_measure_latency_counts_calls_and_normalises() -> None:
    calls = []
    x = torch.randn(64, 64)

    def decode() -> object:
        calls.append(1)
        return x @ x

    result = measure_latency(decode, audio_seconds=2.0, device="cpu", repeats=5, warmup=2)
    assert isinstance(result, LatencyResult)
    assert len(calls) == 7
    assert result.seconds > 0
    assert result.real_time_factor == pytest.approx(result.seconds / 2.0)
    assert result.ms_per_audio_second == pytest.approx(500.0 * result.seconds)
    with pytest.raises(ValueError, match="audio_seconds"):
        measure_latency(decode, 0.0, "cpu")


def test_parameter_count_counts_trainable_once() -> None:
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=True)
    head.weight = emb.weight  # tied: counted once
    model = torch.nn.Sequential(emb, head, torch.nn.LayerNorm(4))
    model[2].weight.requires_grad_(False)
    assert parameter_count(model) == 40 + 10 + 4  # emb, head bias, layernorm bias


def test_size_on_disk_file_and_directory(tmp_path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.bin").write_bytes(b"y" * 23)
    assert size_on_disk(tmp_path / "a.bin") == 100
    assert size_on_disk(tmp_path) == 123
    with pytest.raises(FileNotFoundError, match="missing"):
        size_on_disk(tmp_path / "missing")
