"""Fine-tuning a local Hugging Face Wav2Vec2 directory (``model.encoder: hf_wav2vec2``) through
the real recipe on generated speech: a tiny random Wav2Vec2 is saved with ``save_pretrained``,
trained with speechtune's CTC head on raw waveforms, saved, reloaded without the directory and
decoded; frozen parts stay bit-identical and LoRA trains only adapters and the head."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from speechtune.config import ConfigError, RecipeConfig
from speechtune.data import PreparedData, load_audio
from speechtune.features import Waveform
from speechtune.inference import Recognizer
from speechtune.inference._recognizer import read_model_payload
from speechtune.models import FRONTEND, layer_of
from speechtune.training import train
from tests.helpers.hf import hf_config, save_tiny_wav2vec2
from tests.helpers.recipes import run_options, tiny_config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="needs transformers (`hf` extra)"
)
needs_peft = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None, reason="LoRA needs the `finetune` extra (peft)"
)


@pytest.fixture(scope="module")
def w2v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_wav2vec2(tmp_path_factory.mktemp("hf") / "w2v")


@pytest.fixture(scope="module")
def small_data(synth_data: PreparedData) -> PreparedData:
    return PreparedData(
        train=synth_data.train[:24], dev=synth_data.dev[:6], report=synth_data.report
    )


def _cfg(w2v: Path, **sections: dict[str, Any]) -> RecipeConfig:
    optim = {"weight_decay": 0.1, **sections.pop("optim", {})}
    return hf_config("hf_wav2vec2", w2v, optim=optim, **sections)


def _pretrained_state(w2v: Path) -> dict[str, torch.Tensor]:
    from transformers import Wav2Vec2Model

    return Wav2Vec2Model.from_pretrained(w2v, local_files_only=True).state_dict()


def test_waveform_front_end_normalises_each_utterance_apart_from_padding() -> None:
    waves = torch.zeros(2, 6)
    waves[0] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    waves[1, :3] = torch.tensor([3.0, 3.5, 4.0])
    feats, lens = Waveform()(waves, torch.tensor([6, 3]))
    assert feats.shape == (2, 6, 1) and lens.tolist() == [6, 3]
    alone, _ = Waveform()(waves[1:, :3], torch.tensor([3]))
    assert torch.allclose(feats[1, :3], alone[0]) and bool((feats[1, 3:] == 0).all())
    assert (
        abs(float(feats[0].mean())) < 1e-6 and abs(float(feats[0].std(unbiased=False)) - 1) < 1e-4
    )


def test_fine_tunes_saves_reloads_and_decodes_with_the_frontend_frozen(
    w2v_dir: Path, small_data: PreparedData, tmp_path: Path
) -> None:
    pretrained = _pretrained_state(w2v_dir)
    cfg = _cfg(w2v_dir, finetune={"freeze_frontend": True})
    result = train(cfg, run_options(tmp_path), data=small_data)
    assert result.status == "complete", result.reason
    assert all(0 < h["train_loss"] < float("inf") for h in result.history)
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"model.init_from {w2v_dir}: wav2vec2 encoder" in log

    # model.pt is self-contained: it loads with the directory gone, weights_only.
    moved = w2v_dir.with_name("gone")
    shutil.move(w2v_dir, moved)
    try:
        payload = read_model_payload(tmp_path / "run" / "model.pt")
        assert isinstance(payload["encoder_config"], str)
        rec = Recognizer.load(tmp_path / "run" / "model.pt")
    finally:
        shutil.move(moved, w2v_dir)
    state = rec.model.state_dict()
    for key, value in payload["model"].items():
        assert torch.equal(state[key], value), key
    # The frozen CNN feature encoder is the directory's, bit for bit, after training.
    frontend = [k for k in pretrained if k.startswith("feature_extractor.")]
    assert frontend
    for key in frontend:
        assert torch.equal(state[f"encoder.model.{key}"], pretrained[key]), key
    # ...and the rest moved (it trained).
    key = "encoder.layers.1.feed_forward.output_dense.weight"
    assert not torch.equal(state[f"encoder.model.{key}"], pretrained[key])

    utt = small_data.dev[0]
    texts = rec.transcribe([load_audio(small_data.dev, utt, 16000)])
    assert len(texts) == 1 and isinstance(texts[0], str)
    # CTC lengths follow the CNN: (T - 20) // 20 + 1, then (. - 8) // 8 + 1 frames.
    n = torch.tensor([16000, 4000])
    assert rec.model.encoder.output_lengths(n).tolist() == [100, 25]


def test_freeze_layers_and_the_layer_names(w2v_dir: Path) -> None:
    from speechtune.data import build_tokenizer
    from speechtune.models import build_model
    from speechtune.training import prepare_finetune

    cfg = _cfg(w2v_dir, finetune={"freeze_layers": 1})
    tok = build_tokenizer("char", ["A B C"], 16)
    model = build_model(cfg.model, cfg.features.n_mels, tok.vocab_size)
    prepare_finetune(model, cfg, tok)
    depths = {n: layer_of(n) for n, _ in model.named_parameters()}
    assert depths["encoder.model.feature_extractor.conv_layers.0.conv.weight"] == FRONTEND
    assert depths["encoder.model.encoder.layers.1.attention.q_proj.weight"] == 1
    assert depths["encoder.model.feature_projection.projection.weight"] == 0
    trains = {n: p.requires_grad for n, p in model.named_parameters()}
    assert not trains["encoder.model.encoder.layers.0.attention.q_proj.weight"]
    assert not trains["encoder.model.feature_projection.projection.weight"]
    assert trains["encoder.model.encoder.layers.1.attention.q_proj.weight"]
    assert trains["encoder.model.feature_extractor.conv_layers.0.conv.weight"]
    assert trains["ctc.proj.weight"]


@needs_peft
def test_lora_trains_only_adapters_and_the_head(
    w2v_dir: Path, small_data: PreparedData, tmp_path: Path
) -> None:
    pretrained = _pretrained_state(w2v_dir)
    cfg = _cfg(w2v_dir, finetune={"lora_rank": 4, "lora_targets": "attention_qv"})
    result = train(cfg, run_options(tmp_path), data=small_data)
    assert result.status == "complete", result.reason
    rec = Recognizer.load(tmp_path / "run" / "model.pt")  # adapters merged: plain names
    state = rec.model.state_dict()
    changed = {
        key
        for key, value in pretrained.items()
        if not torch.equal(state[f"encoder.model.{key}"], value)
    }
    assert changed, "LoRA merged nothing"
    assert all(k.rpartition(".")[0].endswith(("q_proj", "v_proj")) for k in changed), changed


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda d: d / "missing", "with a config.json"),
        (lambda d: (d / "hub").mkdir() or d / "hub", "with a config.json"),
    ],
)
def test_a_bad_directory_is_one_line_naming_init_from(
    tmp_path: Path, make: Any, says: str
) -> None:
    from speechtune.models import build_model

    cfg = _cfg(make(tmp_path))
    with pytest.raises(ConfigError) as err:
        build_model(cfg.model, 1, 8)
    (problem,) = err.value.problems
    assert problem.key == "model.init_from" and says in str(err.value)
    assert "\n" not in problem.rule


def test_a_model_type_other_than_wav2vec2_or_hubert_is_refused(tmp_path: Path) -> None:
    from speechtune.models import build_model

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigError, match="model_type 'bert'.*wav2vec2"):
        build_model(_cfg(tmp_path / "bert").model, 1, 8)


def test_sizes_and_input_kind_are_checked(w2v_dir: Path) -> None:
    from speechtune.models import build_model

    with pytest.raises(ConfigError) as err:
        build_model(_cfg(w2v_dir, model={"d_model": 64, "num_layers": 3}).model, 1, 8)
    assert {p.key for p in err.value.problems} == {"model.d_model", "model.num_layers"}
    with pytest.raises(ConfigError, match="features.kind"):
        tiny_config(model={"encoder": "hf_wav2vec2", "init_from": str(w2v_dir)})


def test_importing_speechtune_does_not_import_transformers() -> None:
    code = (
        "import sys, speechtune.training, speechtune.models; print('transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_transformers_it_is_one_line_naming_init_from(
    w2v_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from speechtune.models import build_model

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails
    with pytest.raises(ConfigError, match="needs transformers") as err:
        build_model(_cfg(w2v_dir).model, 1, 8)
    assert err.value.problems[0].key == "model.init_from"
