"""Edge knobs that shrink the file: int4 weights (``edge.quantize: weight_int4``) and sparse
storage of pruned weights (``edge.sparse_storage``), unit by unit and end to end on tiny models
trained on the synthetic corpus."""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from speechtune.config import ConfigError, config_from_dict
from speechtune.data import PreparedData, load_audio
from speechtune.inference import (
    Recognizer,
    evaluate_model,
    export_model,
    quantize_model,
    transcribe_files,
)
from speechtune.inference._int4 import (
    Int4Conv1d,
    Int4Conv2d,
    Int4Linear,
    dequantize_int4,
    quantize_int4,
    quantize_weight_int4,
)
from speechtune.inference._sparse_store import (
    SPARSE_KEY,
    decode_payload,
    decode_tensor,
    encode_state_dict,
    encode_tensor,
)
from speechtune.metrics import parameter_count
from speechtune.training import TrainResult, train
from tests.helpers.recipes import TINY_RECIPE, run_options, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: A Conformer small enough to train an epoch in under a second on one thread (its conv module
#: has a depthwise Conv1d, whose rows of 7 are groups of their own, as are the 9 of the first
#: subsampling Conv2d).
TINY_CONFORMER = {
    "encoder": "conformer",
    "d_model": 48,
    "num_layers": 1,
    "num_heads": 2,
    "ff_dim": 96,
    "conv_kernel": 7,
}


@pytest.fixture(scope="module")
def small_data(synth_data: PreparedData) -> PreparedData:
    """96 training and 16 dev utterances of the session's synthetic corpus."""
    return PreparedData(
        train=synth_data.train[:96], dev=synth_data.dev[:16], report=synth_data.report
    )


def _train(edge: dict[str, Any], data: PreparedData, tmp_path: Path, name: str) -> TrainResult:
    cfg = tiny_config(edge=edge, model=TINY_CONFORMER, train={"epochs": 2})
    result = train(cfg, run_options(tmp_path, name), data=data)
    assert result.status == "complete", result.reason
    return result


def _waves(data: PreparedData, n: int = 4) -> list[Any]:
    return [load_audio(data.dev, u, 16000) for u in list(data.dev)[:n]]


def _int4_layers(model: nn.Module) -> dict[str, Int4Linear | Int4Conv1d | Int4Conv2d]:
    kinds = (Int4Linear, Int4Conv1d, Int4Conv2d)
    return {n: m for n, m in model.named_modules() if isinstance(m, kinds)}


def _within_half_a_step(
    original: torch.Tensor, back: torch.Tensor, scale: torch.Tensor, group_size: int
) -> bool:
    """Every dequantised entry is within half its group's scale of the original (rounding to
    the nearest of 16 codes), up to float rounding."""
    cols = math.prod(original.shape[1:])
    group = min(group_size, cols)
    step = scale.float().repeat_interleave(group, dim=1)[:, :cols].reshape(original.shape)
    return bool(torch.all((back - original).abs() <= step / 2 * (1 + 1e-5) + 1e-7))


# --------------------------------------------------------------------------- int4 codes


@pytest.mark.parametrize("shape", [(64, 96), (10, 33), (48, 1, 7), (5, 3)])
@pytest.mark.parametrize("group_size", [16, 32, 64])
def test_int4_codes_are_within_half_a_step_and_keep_zeros(
    shape: tuple[int, ...], group_size: int
) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=gen) * 0.1
    w[torch.rand(shape, generator=gen) < 0.5] = 0.0  # pruned entries
    q = quantize_int4(w, group_size)
    cols = math.prod(shape[1:])
    groups = math.ceil(cols / min(group_size, cols))
    assert q["packed"].dtype == torch.uint8 and q["scale"].dtype == torch.float16
    assert q["scale"].shape == q["zero"].shape == (shape[0], groups)
    assert q["packed"].numel() == math.ceil(shape[0] * groups * min(group_size, cols) / 2)
    back = dequantize_int4(q["packed"], q["scale"], q["zero"], shape, group_size)
    assert _within_half_a_step(w, back, q["scale"], group_size)
    # ... with a tight step: a 15th of the group's range (the largest group's at most)
    assert float(q["scale"].float().max()) <= float(w.max() - w.min()) / 15 * 1.002
    assert torch.all(back[w == 0] == 0)  # a pruned weight stays exactly zero


def test_int4_layers_replace_linear_and_convs_and_compute_as_their_weights_say() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(40, 64),
        nn.Conv1d(64, 64, 7, padding=3, groups=64),
        nn.Conv2d(1, 8, 3, stride=2),
        nn.LSTM(8, 8),
    )
    lin, conv, conv2 = (copy.deepcopy(model[i]) for i in range(3))
    quantize_weight_int4(model, 32)
    assert isinstance(model[0], Int4Linear) and isinstance(model[1], Int4Conv1d)
    assert isinstance(model[2], Int4Conv2d) and type(model[3]) is nn.LSTM  # RNNs stay float
    assert not list(model[0].parameters())
    x = torch.randn(2, 5, 40)
    lin.weight.data = model[0].dequantized_weight()
    assert torch.allclose(model[0](x), lin(x), atol=1e-6)
    y = torch.randn(2, 64, 9)
    conv.weight.data = model[1].dequantized_weight()
    assert torch.allclose(model[1](y), conv(y), atol=1e-6)
    z = torch.randn(2, 1, 9, 11)
    conv2.weight.data = model[2].dequantized_weight()
    assert torch.allclose(model[2](z), conv2(z), atol=1e-6)
    assert model[0].out_features == 64  # beam search reads it


# --------------------------------------------------------------------------- sparse codes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_sparse_encoding_is_bit_identical_and_small(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(96, 40, generator=gen).to(dtype)
    w[torch.rand(96, 40, generator=gen) < 0.9] = 0.0
    w[0, 0], w[0, 1] = -0.0, float("nan")  # the bits come back, not just the values
    entry = encode_tensor(w)
    assert entry is not None
    back = decode_tensor(entry)
    assert back.dtype == dtype and back.shape == w.shape
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[w.element_size()]
    assert torch.equal(back.view(bits), w.view(bits))
    encoded = entry["mask"].numel() + entry["values"].numel() * w.element_size()
    dense = w.numel() * w.element_size()
    assert encoded <= dense * (0.1 + 0.01 + 1 / (8 * w.element_size()))


def test_sparse_encoding_leaves_dense_biases_and_int_tensors_alone() -> None:
    dense_weight = torch.randn(8, 8)
    sparse_weight = torch.zeros(8, 8)
    sparse_weight[0, 0] = 1.0
    state = {
        "a.weight": dense_weight,
        "a.bias": torch.zeros(8),
        "b.weight": sparse_weight,
        "n": torch.zeros(4, 4, dtype=torch.long),
    }
    dense, sparse = encode_state_dict(state)
    assert set(sparse) == {"b.weight"} and set(dense) == {"a.weight", "a.bias", "n"}


@pytest.mark.parametrize("scheme", ["dynamic_int8", "static_int8"])
def test_pruned_int8_layers_store_their_codes_sparse(scheme: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.Conv1d(48, 48, 3))
    with torch.no_grad():
        for layer in model:
            layer.weight[torch.rand_like(layer.weight) < 0.9] = 0.0
    calibrate = lambda m: (m[0](torch.randn(2, 64)), m[1](torch.randn(2, 48, 5)))  # noqa: E731
    quantize_model(model, scheme, "minmax", calibrate)
    state = model.state_dict()
    dense, sparse = encode_state_dict(state)
    linear_key = next(k for k in state if k.endswith("_packed_params._packed_params"))
    assert linear_key in sparse  # the int8 (weight, bias) tuple
    back = decode_payload({"model": dense, SPARSE_KEY: sparse})["model"]
    before, after = state[linear_key][0], back[linear_key][0]
    assert after.is_quantized and after.qscheme() == before.qscheme()
    assert torch.equal(after.int_repr(), before.int_repr())
    assert torch.equal(after.dequantize(), before.dequantize())
    x = torch.randn(3, 64)
    y = model[0](x)
    model.load_state_dict(back)  # the module versions survive the split
    assert torch.equal(model[0](x), y)
    sizes = []
    for obj in ({"model": state}, {"model": dense, SPARSE_KEY: sparse}):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        sizes.append(buffer.tell())
    assert sizes[1] < 0.7 * sizes[0]


def test_pruned_int4_codes_store_sparse_and_bit_identical() -> None:
    torch.manual_seed(0)
    # An odd number of codes (7 x 5: the last byte holds one) and rows shorter than a group.
    model = nn.Sequential(nn.Linear(64, 48), nn.Conv1d(48, 48, 3), nn.Linear(5, 7))
    with torch.no_grad():
        for layer in model:
            layer.weight[torch.rand_like(layer.weight) < 0.9] = 0.0
    quantize_weight_int4(model, 32)
    state = model.state_dict()
    dense, sparse = encode_state_dict(state)
    packed_keys = [k for k in state if k.endswith(".packed")]
    assert set(packed_keys) <= set(sparse) and all(
        k in dense for k in state if k.endswith(".zero")
    )
    back = decode_payload({"model": dense, SPARSE_KEY: sparse})["model"]
    for key in state:
        assert torch.equal(back[key], state[key]), key
    x = torch.randn(2, 64)
    y = model[0](x)
    model.load_state_dict(back)
    assert torch.equal(model[0](x), y)
    # A bit per code plus half a byte per nonzero code: about 1/4 + 0.1 of the packed bytes.
    for key in packed_keys:
        entry, packed = sparse[key], state[key]
        stored = entry["mask"].numel() + entry["values"].numel()
        assert stored <= (0.25 + 0.15) * packed.numel() + 2, key
    # Unpruned int4 codes are left packed: encoding them would not save anything.
    dense_model = quantize_weight_int4(nn.Sequential(nn.Linear(64, 48)), 32)
    assert not encode_state_dict(dense_model.state_dict())[1]


# --------------------------------------------------------------------------- end to end


def test_weight_int4_trains_saves_loads_decodes_and_is_about_7x_smaller(
    small_data: PreparedData, tmp_path: Path
) -> None:
    result = _train({"quantize": "weight_int4", "int4_group_size": 32}, small_data, tmp_path, "r")
    run = tmp_path / "r"
    int4_path, float_path = run / "model.pt", run / "model_float.pt"
    raw = torch.load(int4_path, weights_only=True)  # plain tensors: no torchao, no code
    assert raw["quantization"] == "int4"
    rec = Recognizer.load(int4_path)
    flt = Recognizer.load(float_path)
    layers = _int4_layers(rec.model)
    assert layers and rec.quantization == "int4"
    float_modules = dict(flt.model.named_modules())
    float_bytes = int4_bytes = 0
    for name, layer in layers.items():
        original = float_modules[name].weight.detach()
        back = layer.dequantized_weight()
        assert _within_half_a_step(original, back, layer.scale, layer.group_size), name
        float_bytes += original.numel() * 4
        int4_bytes += sum(
            t.numel() * t.element_size() for t in (layer.packed, layer.scale, layer.zero)
        )
    # Groups of 32: 16 bytes of codes + 2 of scale + 1 of zero point for 128 bytes of fp32 (6.7x);
    # the depthwise conv's rows of 7 are groups of their own (28 bytes -> 7).
    assert 5.5 < float_bytes / int4_bytes <= 128 / 19
    # The file shrinks by what the weights save (less a few hundred bytes per extra tensor).
    saved = float_path.stat().st_size - int4_path.stat().st_size
    assert saved >= float_bytes - int4_bytes - 600 * len(layers)
    assert result.metrics["model_size_mb"] == pytest.approx(int4_path.stat().st_size / 1e6)
    assert result.metrics["num_parameters"] == parameter_count(flt.model)
    # decodes, the same from the file as from the model quantised in memory
    waves = _waves(small_data)
    quantize_weight_int4(flt.model, 32)
    texts = rec.transcribe(waves)
    assert texts == flt.transcribe(waves)
    assert evaluate_model(int4_path, small_data.dev)["wer"] == pytest.approx(result.metrics["wer"])
    # TorchScript export carries the packed codes and serves the same transcripts
    paths = [small_data.dev.resolve(u) for u in list(small_data.dev)[:3]]
    export_model(int4_path, tmp_path / "export", "torchscript")
    assert transcribe_files(tmp_path / "export", paths) == transcribe_files(int4_path, paths)
    # ONNX too (export_model checks the graph against the eager model with onnxruntime)
    if importlib.util.find_spec("onnx") is not None:
        assert export_model(int4_path, tmp_path / "onnx", "onnx").is_file()


def test_a_pruned_int4_model_file_shrinks_with_sparse_storage(
    small_data: PreparedData, tmp_path: Path
) -> None:
    edge = {"quantize": "weight_int4", "prune_sparsity": 0.9, "prune_start": 0.0, "prune_end": 0.5}
    sparse = _train({**edge, "sparse_storage": True}, small_data, tmp_path, "sparse")
    dense = _train({**edge, "sparse_storage": False}, small_data, tmp_path, "dense")
    sparse_path, dense_path = tmp_path / "sparse" / "model.pt", tmp_path / "dense" / "model.pt"
    raw = torch.load(sparse_path, weights_only=True)
    assert any("int4" in entry for entry in raw[SPARSE_KEY].values())
    a, b = Recognizer.load(sparse_path), Recognizer.load(dense_path)
    sd_a, sd_b = a.model.state_dict(), b.model.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_b)
    waves = _waves(small_data)
    assert a.transcribe(waves) == b.transcribe(waves)
    assert sparse_path.stat().st_size < 0.8 * dense_path.stat().st_size
    assert sparse.metrics["model_size_mb"] < dense.metrics["model_size_mb"]
    assert sparse.metrics["wer"] == dense.metrics["wer"]


def test_weight_int4_keeps_pruned_zeros(small_data: PreparedData, tmp_path: Path) -> None:
    edge = {"quantize": "weight_int4", "prune_sparsity": 0.5, "prune_start": 0.0, "prune_end": 0.5}
    result = _train(edge, small_data, tmp_path, "r")
    assert result.metrics["sparsity"] == pytest.approx(0.5, abs=2e-3)
    rec = Recognizer.load(tmp_path / "r" / "model.pt")
    weights = torch.cat(
        [m.dequantized_weight().flatten() for m in _int4_layers(rec.model).values()]
    )
    assert float((weights == 0).float().mean()) >= 0.5 - 2e-3
    assert all(isinstance(t, str) for t in rec.transcribe(_waves(small_data)))


def test_sparse_storage_of_a_pruned_model_is_smaller_and_bit_identical(
    small_data: PreparedData, tmp_path: Path
) -> None:
    edge = {"prune_sparsity": 0.9, "prune_start": 0.0, "prune_end": 0.5}
    sparse = _train({**edge, "sparse_storage": True}, small_data, tmp_path, "sparse")
    dense = _train({**edge, "sparse_storage": False}, small_data, tmp_path, "dense")
    sparse_path, dense_path = tmp_path / "sparse" / "model.pt", tmp_path / "dense" / "model.pt"
    raw_sparse = torch.load(sparse_path, weights_only=True)
    assert SPARSE_KEY in raw_sparse and SPARSE_KEY not in torch.load(dense_path, weights_only=True)

    a = Recognizer.load(sparse_path)
    b = Recognizer.load(dense_path)
    sd_a, sd_b = a.model.state_dict(), b.model.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for key, value in sd_b.items():  # same seed, same training: the same bits come back
        assert value.dtype == sd_a[key].dtype and torch.equal(value, sd_a[key]), key
    waves = _waves(small_data)
    assert a.transcribe(waves) == b.transcribe(waves)

    # Each encoded weight costs (1 - sparsity) of its values + a bit per entry.
    predicted_saving = 0
    for entry in raw_sparse[SPARSE_KEY].values():
        numel = math.prod(entry["shape"])
        assert entry["values"].numel() <= round(0.1 * numel) + 1
        predicted_saving += numel * 4 - entry["values"].numel() * 4 - entry["mask"].numel()
    sparse_size, dense_size = sparse_path.stat().st_size, dense_path.stat().st_size
    assert dense_size - sparse_size >= predicted_saving - 600 * len(raw_sparse[SPARSE_KEY])
    assert sparse_size < 0.4 * dense_size
    for run, size in (("sparse", sparse_size), ("dense", dense_size)):
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        assert metrics["model_size_mb"] == pytest.approx(size / 1e6)
    assert sparse.metrics["wer"] == dense.metrics["wer"]


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "edge,key",
    [
        ({"quantize": "weight_int3"}, "edge.quantize"),
        ({"int4_group_size": 48}, "edge.int4_group_size"),
        ({"int4_group_size": 0}, "edge.int4_group_size"),
        ({"sparse_storage": "maybe"}, "edge.sparse_storage"),
    ],
)
def test_bad_int4_and_sparse_values_are_one_line_errors(edge: dict, key: str) -> None:
    data = copy.deepcopy(TINY_RECIPE)
    data["edge"] = edge
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert [p.key for p in info.value.problems] == [key]
    assert "\n" not in str(info.value.problems[0])
