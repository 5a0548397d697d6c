"""Training the TTS recipe: the acoustic model overfits a few utterances; the run's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from speechtune.training import NullReporter
from speechtune.tts import Synthesizer, prepare_tts_data, train_tts
from speechtune.tts._train import train_acoustic
from tests.tts.conftest import tiny_config

#: The acoustic model memorises 8 utterances: its mel L1 falls at least this many times.
OVERFIT_FACTOR = 3.0


def test_the_acoustic_model_overfits_a_few_utterances(tts_cache: Path) -> None:
    # 100 steps on one batch of 8 utterances, no dropout (~25 s at one thread).
    cfg = tiny_config(
        "train.epochs=100",
        "train.lr=0.005",
        "train.warmup_steps=5",
        "model.d_model=64",
        "model.ff_dim=128",
        "model.decoder_layers=2",
        "model.dropout=0.0",
        "model.duration_channels=32",
        "aligner.channels=32",
    )
    data = prepare_tts_data(cfg, tts_cache)
    assert len(data.train) == 8
    _, _, _, history, stopped = train_acoustic(cfg, data, NullReporter())
    first, last = history[0], history[-1]
    assert not stopped
    assert last["mel_loss"] * OVERFIT_FACTOR <= first["mel_loss"], (first, last)
    assert last["align_loss"] < 0.5 * first["align_loss"]  # the aligner learned too
    assert last["duration_loss"] < 0.1 * first["duration_loss"]


def test_a_run_writes_its_model_metrics_and_wavs(tts_cache: Path, tmp_path: Path) -> None:
    cfg = tiny_config("vocoder.kind=neural")
    stops = []

    class StopAfterOne:
        def report(self, epoch: int, **metrics: float) -> bool:
            stops.append((epoch, metrics))
            return False

    result = train_tts(cfg, tmp_path / "run", cache_dir=tts_cache, reporter=StopAfterOne())
    assert result.status == "completed"
    assert [e for e, _ in stops] == [1, 2] and "mel_loss" in stops[0][1]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["mcd"] > 0 and metrics["rtf"] > 0
    assert len(list((tmp_path / "run" / "wavs").glob("*.wav"))) == 2
    payload = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert payload["format"] == "speechtune-tts" and payload["vocoder"] is not None
    syn = Synthesizer.load(tmp_path / "run")
    wave = syn.synthesize("A B", syn.speakers[-1])
    assert wave.ndim == 1 and wave.size > 0 and abs(wave).max() <= 1.0
    with pytest.raises(ValueError, match="unknown speaker 'nobody'"):
        syn.synthesize("A", "nobody")


def test_a_frozen_acoustic_model_is_reused_and_must_match(tts_cache: Path, tmp_path: Path) -> None:
    first = train_tts(tiny_config(), tmp_path / "a", cache_dir=tts_cache)
    second = train_tts(
        tiny_config("vocoder.griffin_lim.n_iter=8"),
        tmp_path / "b",
        cache_dir=tts_cache,
        acoustic_from=tmp_path / "a",
    )
    assert second.history == []  # no acoustic training
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["acoustic"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["acoustic"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.metrics["mcd"] > 0 and second.metrics["mcd"] > 0
    with pytest.raises(ValueError, match="different 'model' section"):
        train_tts(
            tiny_config("model.d_model=16"),
            tmp_path / "c",
            cache_dir=tts_cache,
            acoustic_from=tmp_path / "a",
        )


def test_same_seed_same_model_other_seed_other_model(tts_cache: Path, tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        runs[name] = train_tts(tiny_config(f"seed={seed}"), tmp_path / name, cache_dir=tts_cache)
    weights = {
        n: torch.load(tmp_path / n / "model.pt", weights_only=True)["acoustic"] for n in runs
    }
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert runs["a"].metrics["mcd"] == runs["b"].metrics["mcd"]
    assert runs["a"].history == runs["b"].history
    assert not all(torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])
