"""Every encoder, head, tokenizer, optimiser and schedule runs through the real recipe end to end
(one or two short epochs on generated speech), and its model file reloads and decodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from speechtune.data import PreparedData
from speechtune.inference import Recognizer
from speechtune.training import train
from tests.helpers.recipes import run_options, tiny_config

VARIANTS = {
    "bpe-ctc_attention-beam": dict(
        tokenizer={"kind": "bpe", "vocab_size": 40},
        model={
            "encoder": "transformer",
            "d_model": 32,
            "num_heads": 2,
            "ff_dim": 64,
            "num_layers": 1,
            "head": "ctc_attention",
            "ctc_weight": 0.3,
            "decoder_layers": 1,
        },
        decode={"method": "beam", "beam_size": 2, "ctc_weight": 0.3, "max_len_ratio": 0.5},
        schedule={"name": "noam", "warmup_steps": 5},
    ),
    "bgru-sgd-plateau": dict(
        model={"encoder": "bgru", "d_model": 32},
        optim={"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
        schedule={"name": "plateau", "plateau_patience": 0},
    ),
    "blstm-adafactor-cyclic-accum": dict(
        model={"encoder": "blstm", "d_model": 32, "subsampling": 2},
        optim={"name": "adafactor", "lr": 0.01},
        schedule={"name": "cyclic", "cycle_steps": 6},
        train={"grad_accum": 2, "lr_scaling": "sqrt", "reference_batch": 16},
    ),
    "conformer-deepnorm-interctc-exponential": dict(
        model={
            "encoder": "conformer",
            "d_model": 32,
            "num_heads": 2,
            "ff_dim": 64,
            "num_layers": 2,
            "conv_kernel": 7,
            "init": "deepnorm",
            "subsampling": 6,
            "interctc_weight": 0.3,
        },
        optim={"name": "adam", "lr": 0.002},
        schedule={"name": "warmup_exponential", "warmup_steps": 3, "gamma": 0.95},
        features={"n_mels": 40, "sample_rate": 8000, "window_ms": 32, "hop_ms": 16},
        specaugment={"enabled": True, "num_time_masks": 1, "num_freq_masks": 1},
    ),
}


@pytest.fixture(scope="module")
def small_data(synth_data: PreparedData) -> PreparedData:
    return PreparedData(
        train=synth_data.train[:48], dev=synth_data.dev[:12], report=synth_data.report
    )


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_trains_and_reloads(name: str, small_data: PreparedData, tmp_path: Path) -> None:
    sections = {k: v for k, v in VARIANTS[name].items()}
    sections.setdefault("train", {})
    sections["train"] = {"epochs": 2, "batch_size": 8, **sections["train"]}
    cfg = tiny_config(**sections)
    result = train(cfg, run_options(tmp_path), data=small_data)
    assert result.status == "complete", result.reason
    assert all(r["grad_norm"] > 0 for r in result.history)
    assert result.history[1]["lr"] != result.history[0]["lr"] or cfg.schedule.name == "plateau"
    rec = Recognizer.load(tmp_path / "run" / "model.pt")
    assert rec.cfg == cfg
    texts = rec.transcribe([__import__("numpy").zeros(cfg.features.sample_rate, dtype="float32")])
    assert len(texts) == 1 and isinstance(texts[0], str)
    assert 0.0 <= result.metrics["cer"] and result.metrics["num_parameters"] > 0
