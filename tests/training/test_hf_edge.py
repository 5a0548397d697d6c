"""Edge knobs on a fine-tuned Hugging Face encoder (``hf_wav2vec2``, ``hf_whisper``): int8
(dynamic, static, QAT), int4 weights and magnitude pruning through the real recipe on generated
speech; the quantised ``model.pt`` is what quantising the float model in memory gives, it loads
with the pretrained directory gone, and pruned weights are zeros in the file."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from speechtune.data import PreparedData, load_audio
from speechtune.inference import Recognizer
from speechtune.inference._quantize import quantize_model
from speechtune.training import train
from speechtune.training._pruning import measured_sparsity, prunable_weights
from tests.helpers.hf import hf_config, save_tiny_wav2vec2, save_tiny_whisper
from tests.helpers.recipes import run_options

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("transformers") is None, reason="needs transformers (`hf` extra)"
    ),
    pytest.mark.usefixtures("one_torch_thread"),
]

ENCODERS = ("hf_wav2vec2", "hf_whisper")
PRUNE = {"prune_sparsity": 0.5, "prune_start": 0.0, "prune_end": 0.5}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {
        "hf_wav2vec2": save_tiny_wav2vec2(root / "w2v"),
        "hf_whisper": save_tiny_whisper(root / "whisper"),
    }


@pytest.fixture(scope="module")
def small_data(synth_data: PreparedData) -> PreparedData:
    return PreparedData(
        train=synth_data.train[:24], dev=synth_data.dev[:6], report=synth_data.report
    )


def _int8_linears(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if type(m).__module__.startswith("torch.ao.nn.quantized") and type(m).__name__ == "Linear"
    ]


def _waves(data: PreparedData) -> list[torch.Tensor]:
    return [load_audio(data.dev, u, 16000) for u in list(data.dev)[:3]]


@pytest.mark.parametrize("encoder", ENCODERS)
def test_pruned_dynamic_int8_is_the_in_memory_model_and_loads_without_the_directory(
    encoder: str, pretrained: dict[str, Path], small_data: PreparedData, tmp_path: Path
) -> None:
    cfg = hf_config(encoder, pretrained[encoder], edge={"quantize": "dynamic_int8", **PRUNE})
    result = train(cfg, run_options(tmp_path), data=small_data)
    assert result.status == "complete", result.reason
    assert result.metrics["sparsity"] == pytest.approx(0.5, abs=2e-3)
    run = tmp_path / "run"

    # The float model of the best epoch is pruned: every prunable weight half zeros.
    float_rec = Recognizer.load(run / "model_float.pt")
    assert measured_sparsity(float_rec.model) == pytest.approx(0.5, abs=2e-3)
    quantize_model(float_rec.model, "dynamic_int8", "minmax")
    waves = _waves(small_data)

    moved = pretrained[encoder].with_name(pretrained[encoder].name + "-gone")
    shutil.move(pretrained[encoder], moved)
    try:
        saved = Recognizer.load(run / "model.pt")
    finally:
        shutil.move(moved, pretrained[encoder])
    assert saved.quantization == "int8"
    linears = _int8_linears(saved.model)
    # The encoder's own attention and feed-forward layers are int8, not only speechtune's head.
    assert len(linears) >= 1 + 2 * 6, [type(m) for m in saved.model.modules()][:20]
    assert saved.transcribe(waves) == float_rec.transcribe(waves)
    # int8 keeps the pruned zeros (symmetric per-channel weights: zero point 0).
    weights = torch.cat([m.weight().dequantize().flatten() for m in linears])
    assert float((weights == 0).float().mean()) >= 0.5 - 2e-3
    assert (run / "model.pt").stat().st_size < (run / "model_float.pt").stat().st_size


@pytest.mark.parametrize(
    "encoder,scheme",
    [
        ("hf_wav2vec2", "static_int8"),
        ("hf_whisper", "qat_int8"),
        ("hf_wav2vec2", "weight_int4"),
        ("hf_whisper", "weight_int4"),
    ],
)
def test_other_schemes_train_save_and_decode(
    encoder: str,
    scheme: str,
    pretrained: dict[str, Path],
    small_data: PreparedData,
    tmp_path: Path,
) -> None:
    edge = {"quantize": scheme, "calibration_batches": 2}
    result = train(
        hf_config(encoder, pretrained[encoder], edge=edge), run_options(tmp_path), data=small_data
    )
    assert result.status == "complete", result.reason
    rec = Recognizer.load(tmp_path / "run" / "model.pt")
    assert rec.quantization == ("int4" if scheme == "weight_int4" else "int8")
    texts = rec.transcribe(_waves(small_data))
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert 0.0 <= result.metrics["wer"] < float("inf")
    float_size = (tmp_path / "run" / "model_float.pt").stat().st_size
    assert result.metrics["model_size_mb"] * 1e6 < float_size


def test_pruning_leaves_the_weight_normalised_positional_convolution_dense(
    pretrained: dict[str, Path], small_data: PreparedData, tmp_path: Path
) -> None:
    from torch.nn.utils import parametrize

    cfg = hf_config(
        "hf_wav2vec2", pretrained["hf_wav2vec2"], edge={**PRUNE, "sparse_storage": False}
    )
    result = train(cfg, run_options(tmp_path), data=small_data)
    assert result.status == "complete", result.reason
    rec = Recognizer.load(tmp_path / "run" / "model.pt")
    convs = [m for m in rec.model.modules() if parametrize.is_parametrized(m, "weight")]
    assert len(convs) == 1  # Wav2Vec2's positional convolution (weight norm)
    assert float((convs[0].weight == 0).float().mean()) < 0.01
    for module, name in prunable_weights(rec.model):
        share = float((getattr(module, name) == 0).float().mean())
        assert share == pytest.approx(0.5, abs=0.02), module
