"""Fine-tuning a local Hugging Face Whisper directory (``model.encoder: hf_whisper``) through the
real recipe on generated speech: a tiny random Whisper is saved with ``save_pretrained``, its
encoder trained under speechtune's CTC head on Whisper's own log-mels, saved, reloaded without
the directory and decoded. The features are checked against transformers' extractor."""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from speechtune.config import ConfigError, RecipeConfig
from speechtune.data import PreparedData, load_audio
from speechtune.features import WhisperLogMel
from speechtune.inference import Recognizer
from speechtune.models import FRONTEND, build_model, layer_of
from speechtune.training import train
from tests.helpers.hf import hf_config, save_tiny_whisper
from tests.helpers.recipes import run_options, tiny_config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="needs transformers (`hf` extra)"
)


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_whisper(tmp_path_factory.mktemp("hf") / "whisper")


@pytest.fixture(scope="module")
def small_data(synth_data: PreparedData) -> PreparedData:
    return PreparedData(
        train=synth_data.train[:24], dev=synth_data.dev[:6], report=synth_data.report
    )


def _cfg(path: Path, **sections: dict[str, Any]) -> RecipeConfig:
    return hf_config("hf_whisper", path, **sections)


def _encoder_state(path: Path) -> dict[str, torch.Tensor]:
    from transformers import WhisperModel

    return WhisperModel.from_pretrained(path, local_files_only=True).get_encoder().state_dict()


def test_the_features_are_whisper_extractors(tmp_path: Path) -> None:
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) * np.exp(-t) + 0.01 * rng.standard_normal(t.size)
    wave = wave.astype(np.float32)
    theirs = WhisperFeatureExtractor(feature_size=80)(
        wave, sampling_rate=16000, return_tensors="np"
    )
    theirs = theirs["input_features"][0].T  # [3000, 80]: padded to 30 s
    feats, frames = WhisperLogMel(80)(torch.from_numpy(wave)[None], torch.tensor([wave.size]))
    assert frames.tolist() == [200] and feats.shape == (1, 200, 80)
    # The last frames see the end of the audio (reflect padding here, zeros there).
    ours = feats[0, :-2].numpy()
    assert np.abs(ours - theirs[: ours.shape[0]]).max() < 2e-3
    # Each utterance of a batch gets what it gets alone; padding frames are zero.
    short = torch.from_numpy(wave[:8000])
    batch = torch.zeros(2, 32000)
    batch[0], batch[1, :8000] = torch.from_numpy(wave), short
    both, lens = WhisperLogMel(80)(batch, torch.tensor([32000, 8000]))
    alone, _ = WhisperLogMel(80)(short[None], torch.tensor([8000]))
    assert lens.tolist() == [200, 50]
    assert torch.allclose(both[1, :50], alone[0]) and bool((both[1, 50:] == 0).all())


def test_fine_tunes_saves_reloads_and_decodes_with_the_frontend_frozen(
    whisper_dir: Path, small_data: PreparedData, tmp_path: Path
) -> None:
    pretrained = _encoder_state(whisper_dir)
    cfg = _cfg(whisper_dir, finetune={"freeze_frontend": True}, model={"whisper_window_s": 4.0})
    result = train(cfg, run_options(tmp_path), data=small_data)
    assert result.status == "complete", result.reason
    assert all(0 < h["train_loss"] < float("inf") for h in result.history)
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"model.init_from {whisper_dir}: Whisper encoder" in log and "a 4 s window" in log

    moved = whisper_dir.with_name("gone")
    shutil.move(whisper_dir, moved)
    try:  # model.pt is self-contained: it loads with the directory gone
        rec = Recognizer.load(tmp_path / "run" / "model.pt")
    finally:
        shutil.move(moved, whisper_dir)
    state = rec.model.state_dict()
    # The window's 200 positions are the first rows of the pretrained table.
    positions = state["encoder.model.embed_positions.weight"]
    assert positions.shape == (200, 32)
    assert torch.equal(positions, pretrained["embed_positions.weight"][:200])
    for key in ("conv1.weight", "conv2.bias"):  # the frozen convolutions, bit for bit
        assert torch.equal(state[f"encoder.model.{key}"], pretrained[key]), key
    key = "layers.1.fc1.weight"  # ...and the layers trained
    assert not torch.equal(state[f"encoder.model.{key}"], pretrained[key])

    utt = small_data.dev[0]
    texts = rec.transcribe([load_audio(small_data.dev, utt, 16000)])
    assert len(texts) == 1 and isinstance(texts[0], str)
    # A batch decodes each utterance as it decodes alone (padding to the window is masked out).
    audio = [load_audio(small_data.dev, u, 16000) for u in small_data.dev[:3]]
    assert rec.transcribe(audio) == [rec.transcribe([a])[0] for a in audio]


def test_layers_freezing_and_the_window_are_checked(whisper_dir: Path) -> None:
    from speechtune.data import build_tokenizer
    from speechtune.training import prepare_finetune

    cfg = _cfg(whisper_dir, finetune={"freeze_layers": 1})
    tok = build_tokenizer("char", ["A B C"], 16)
    model = build_model(cfg.model, cfg.features.n_mels, tok.vocab_size)
    prepare_finetune(model, cfg, tok)
    depths = {n: layer_of(n) for n, _ in model.named_parameters()}
    assert depths["encoder.model.conv1.weight"] == FRONTEND
    assert depths["encoder.model.layers.1.self_attn.q_proj.weight"] == 1
    assert depths["encoder.model.layer_norm.weight"] is None
    trains = {n: p.requires_grad for n, p in model.named_parameters()}
    assert not trains["encoder.model.layers.0.self_attn.q_proj.weight"]
    assert trains["encoder.model.layers.1.self_attn.q_proj.weight"]
    assert trains["ctc.proj.weight"]

    # The pretrained window (6 s) is the default; an utterance past it is one line, not a crash.
    encoder = model.encoder
    assert encoder.window_frames == 600
    with pytest.raises(ValueError, match="longer than the Whisper encoder's window of 6 s"):
        encoder(torch.zeros(1, 601, 80), torch.tensor([601]))
    with pytest.raises(ValueError, match="set features.n_mels: 80"):
        encoder(torch.zeros(1, 10, 128), torch.tensor([10]))
    out, lens = encoder(torch.randn(2, 7, 80), torch.tensor([7, 4]))
    assert out.shape == (2, 4, 32) and lens.tolist() == [4, 2]
    assert bool((out[1, 2:] == 0).all())

    with pytest.raises(ConfigError, match="whisper_window_s"):
        build_model(_cfg(whisper_dir, model={"whisper_window_s": 8.0}).model, 80, 8)


def test_inputs_and_sizes_are_checked(whisper_dir: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"features.kind.*'whisper' for model.encoder=hf_whisper"
    ):
        tiny_config(
            features={"kind": "logmel"},
            model={"encoder": "hf_whisper", "init_from": str(whisper_dir)},
        )
    with pytest.raises(ConfigError, match=r"features.kind.*needs model.encoder=hf_whisper"):
        tiny_config(features={"kind": "whisper"})
    with pytest.raises(ConfigError, match=r"model.whisper_window_s.*only used with"):
        tiny_config(model={"whisper_window_s": 4.0})
    with pytest.raises(ConfigError, match=r"model.d_model.*must be 32"):
        build_model(_cfg(whisper_dir, model={"d_model": 64}).model, 80, 8)
    with pytest.raises(ConfigError, match=r"model_type 'wav2vec2'"):
        bad = whisper_dir.parent / "not_whisper"
        bad.mkdir(exist_ok=True)
        (bad / "config.json").write_text('{"model_type": "wav2vec2"}')
        build_model(_cfg(bad).model, 80, 8)
    assert math.isclose(WhisperLogMel.hop_length / 16000, 0.01)
