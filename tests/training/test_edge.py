"""Edge knobs end to end: int8 quantisation (dynamic, static, QAT) and gradual magnitude pruning
on tiny models trained on real (synthesised) speech, the metrics an edge study trades, export
and transcription of the quantised model, the edge preset and its config errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from torch import nn

from speechtune.config import ConfigError, config_from_dict, merge
from speechtune.data import Manifest, PreparedData, load_audio
from speechtune.inference import (
    Recognizer,
    activation_observers,
    evaluate_model,
    export_model,
    quantize_model,
    transcribe_files,
)
from speechtune.inference._quantize import prepare_static
from speechtune.training import CallbackReporter, TrainResult, train
from speechtune.training._pruning import (
    GradualPruner,
    measured_sparsity,
    prunable_weights,
    sparsity_at,
)
from speechtune.tuning.spec import PRESET_DIR, load_tuning
from tests.helpers.paths import CONF
from tests.helpers.recipes import TINY_RECIPE, run_options, tiny_config

#: A Conformer small enough to train an epoch in under a second on one thread.
TINY_CONFORMER = {
    "encoder": "conformer",
    "d_model": 32,
    "num_layers": 1,
    "num_heads": 2,
    "ff_dim": 64,
    "conv_kernel": 7,
}


@pytest.fixture(scope="module")
def small_data(synth_data: PreparedData) -> PreparedData:
    """96 training and 16 dev utterances of the session's synthetic corpus."""
    return PreparedData(
        train=synth_data.train[:96], dev=synth_data.dev[:16], report=synth_data.report
    )


@pytest.fixture(scope="module")
def learning_data(synth_data: PreparedData) -> PreparedData:
    """160 training utterances: enough for a tiny model to emit characters after 8 epochs."""
    return PreparedData(
        train=synth_data.train[:160], dev=synth_data.dev[:16], report=synth_data.report
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _edge_config(edge: dict[str, Any], epochs: int = 2, **sections: dict[str, Any]) -> Any:
    """The tiny Conformer recipe with ``edge`` settings (``sections`` override the rest)."""
    base: dict[str, dict[str, Any]] = {"model": TINY_CONFORMER, "train": {"epochs": epochs}}
    return tiny_config(edge=edge, **{**base, **sections})


def _train(
    cfg: Any, data: PreparedData, tmp_path: Path, name: str = "run", **kw: Any
) -> TrainResult:
    result = train(cfg, run_options(tmp_path, name, **kw), data=data)
    assert result.status == "complete", result.reason
    return result


def _waves(data: PreparedData, n: int = 4) -> list[Any]:
    return [load_audio(data.dev, u, 16000) for u in list(data.dev)[:n]]


def _is_int8(model: nn.Module) -> bool:
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


# --------------------------------------------------------------------------- pruning schedule


def test_linear_and_cubic_schedules_at_intermediate_steps() -> None:
    # Before the start and from the end on, both schedules agree.
    for schedule in ("linear", "cubic"):
        assert sparsity_at(0, 0.8, 10, 110, schedule) == 0.0
        assert sparsity_at(10, 0.8, 10, 110, schedule) == 0.0
        assert sparsity_at(110, 0.8, 10, 110, schedule) == 0.8
        assert sparsity_at(500, 0.8, 10, 110, schedule) == 0.8
    # Halfway: linear is at half the target; cubic (Zhu & Gupta) at 1 - 0.5^3 = 7/8 of it.
    assert sparsity_at(60, 0.8, 10, 110, "linear") == pytest.approx(0.4)
    assert sparsity_at(60, 0.8, 10, 110, "cubic") == pytest.approx(0.7)
    assert sparsity_at(35, 0.8, 10, 110, "linear") == pytest.approx(0.2)
    assert sparsity_at(35, 0.8, 10, 110, "cubic") == pytest.approx(0.8 * (1 - 0.75**3))
    # Cubic prunes faster early on, and both only ever grow.
    linear = [sparsity_at(s, 0.8, 10, 110, "linear") for s in range(120)]
    cubic = [sparsity_at(s, 0.8, 10, 110, "cubic") for s in range(120)]
    assert all(c >= lin for c, lin in zip(cubic, linear))
    assert linear == sorted(linear) and cubic == sorted(cubic)
    with pytest.raises(ValueError, match="end after it starts"):
        sparsity_at(5, 0.5, 10, 10, "linear")
    with pytest.raises(ValueError, match="prune_schedule"):
        sparsity_at(5, 0.5, 0, 10, "quadratic")


def test_pruner_masks_follow_the_schedule_and_block_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))
    pruner = GradualPruner(model, final=0.6, start=0, end=10, schedule="cubic")
    pruner.begin_epoch(0)
    assert measured_sparsity(model) == 0.0
    for step in range(1, 13):
        model(torch.randn(4, 20)).sum().backward()
        for module, name in prunable_weights(model):
            grad = (
                getattr(module, f"{name}_orig").grad if hasattr(module, f"{name}_orig") else None
            )
            if grad is not None:  # pruned entries get no gradient
                assert torch.all(grad[getattr(module, f"{name}_mask") == 0] == 0)
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
                p.grad = None
        pruner.step(step)
        expected = sparsity_at(step, 0.6, 0, 10, "cubic")
        for module, name in prunable_weights(model):
            w = getattr(module, name)
            assert int((w == 0).sum()) == round(expected * w.numel()), step
    pruner.end_epoch()
    assert not any(hasattr(m, "weight_orig") for m in model.modules())
    assert measured_sparsity(model) == pytest.approx(0.6, abs=1e-3)


# --------------------------------------------------------------------------- pruning in training


@pytest.mark.parametrize("target", [0.5, 0.75])
def test_saved_model_has_the_target_sparsity(
    target: float, small_data: PreparedData, tmp_path: Path
) -> None:
    cfg = _edge_config(
        {
            "prune_sparsity": target,
            "prune_schedule": "linear",
            "prune_start": 0.0,
            "prune_end": 0.5,
        },
        epochs=2,
    )
    result = _train(cfg, small_data, tmp_path)
    rec = Recognizer.load(tmp_path / "run" / "model.pt")
    for module, name in prunable_weights(rec.model):
        w = getattr(module, name)
        assert int((w == 0).sum()) == round(target * w.numel()), module
    assert result.metrics["sparsity"] == pytest.approx(target, abs=1e-3)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["sparsity"] == result.metrics["sparsity"]
    assert all(isinstance(t, str) for t in rec.transcribe(_waves(small_data)))


def test_a_resumed_pruning_run_matches_an_uninterrupted_one(
    small_data: PreparedData, tmp_path: Path
) -> None:
    cfg = _edge_config({"prune_sparsity": 0.5, "prune_start": 0.0, "prune_end": 0.6}, epochs=3)
    full = _train(cfg, small_data, tmp_path, "full")
    stop_after_1 = CallbackReporter(lambda epoch, m: epoch == 1)
    train(cfg, run_options(tmp_path, "part"), stop_after_1, data=small_data)
    resumed = _train(cfg, small_data, tmp_path, "part", resume=True)
    for a, b in zip(full.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6), a["epoch"]
    sd_full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    sd_resumed = torch.load(tmp_path / "part" / "last.pt", weights_only=True)["model"]
    for key, value in sd_full.items():
        assert torch.allclose(value, sd_resumed[key], atol=1e-6), key


# --------------------------------------------------------------------------- quantisation


def test_dynamic_int8_is_smaller_decodes_and_exports_with_the_same_transcripts(
    learning_data: PreparedData, tmp_path: Path
) -> None:
    cfg = _edge_config(
        {"quantize": "dynamic_int8"},
        epochs=8,
        model={**TINY_CONFORMER, "d_model": 48, "ff_dim": 96},
        optim={"lr": 0.005},
        schedule={"name": "constant", "warmup_steps": 20},
        train={"epochs": 8, "batch_size": 8},
    )
    result = _train(cfg, learning_data, tmp_path)
    run = tmp_path / "run"
    int8_path, float_path = run / "model.pt", run / "model_float.pt"
    assert int8_path.stat().st_size < 0.75 * float_path.stat().st_size
    assert result.metrics["model_size_mb"] == pytest.approx(int8_path.stat().st_size / 1e6)
    assert result.metrics["cpu_latency_ms_per_audio_s"] > 0
    assert "sparsity" not in result.metrics

    saved = Recognizer.load(int8_path)
    assert saved.quantization == "int8" and _is_int8(saved.model)
    # The quantised model in memory, made from the float one, is what the file holds.
    in_memory = Recognizer.load(float_path)
    quantize_model(in_memory.model, "dynamic_int8", "minmax")
    waves = _waves(learning_data)
    texts = in_memory.transcribe(waves)
    assert any(t.strip() for t in texts), texts  # a model that emits characters
    assert saved.transcribe(waves) == texts
    # metrics.json reports the quantised model's dev WER
    assert evaluate_model(int8_path, learning_data.dev)["wer"] == pytest.approx(
        result.metrics["wer"]
    )
    # export -> load -> transcribe gives the same transcripts; ONNX is refused in one line
    paths = [learning_data.dev.resolve(u) for u in list(learning_data.dev)[:4]]
    export_model(int8_path, tmp_path / "export", "torchscript")
    assert transcribe_files(tmp_path / "export", paths) == transcribe_files(int8_path, paths)
    assert transcribe_files(int8_path, paths) == texts
    with pytest.raises(ValueError, match="exports to torchscript only"):
        export_model(int8_path, tmp_path / "onnx", "onnx")


def test_static_int8_calibrates_with_the_chosen_observer_and_decodes(
    small_data: PreparedData, tmp_path: Path
) -> None:
    runs = {
        obs: _train(
            _edge_config({"quantize": "static_int8", "observer": obs, "calibration_batches": 3}),
            small_data,
            tmp_path,
            obs,
        )
        for obs in ("minmax", "moving_average")
    }
    float_a = Recognizer.load(tmp_path / "minmax" / "model_float.pt").model.state_dict()
    float_b = Recognizer.load(tmp_path / "moving_average" / "model_float.pt").model.state_dict()
    assert all(torch.equal(float_a[k], float_b[k]) for k in float_a)  # same training ...
    int8_a = Recognizer.load(tmp_path / "minmax" / "model.pt").model.state_dict()
    int8_b = Recognizer.load(tmp_path / "moving_average" / "model.pt").model.state_dict()
    scales = [k for k in int8_a if k.endswith("quant.scale")]
    assert scales and any(
        not torch.equal(int8_a[k], int8_b[k]) for k in scales
    )  # ... other ranges
    for obs, result in runs.items():
        rec = Recognizer.load(tmp_path / obs / "model.pt")
        assert _is_int8(rec.model)
        assert all(isinstance(t, str) for t in rec.transcribe(_waves(small_data)))
        assert 0.0 <= result.metrics["wer"] < float("inf")
        prepared = prepare_static(Recognizer.load(tmp_path / obs / "model_float.pt").model, obs)
        kinds = {type(o).__name__ for o in activation_observers(prepared)}
        assert kinds == {"MinMaxObserver" if obs == "minmax" else "MovingAverageMinMaxObserver"}
    # the static int8 model also exports and serves the same transcripts
    paths = [small_data.dev.resolve(u) for u in list(small_data.dev)[:3]]
    model = tmp_path / "minmax" / "model.pt"
    export_model(model, tmp_path / "export", "torchscript")
    assert transcribe_files(tmp_path / "export", paths) == transcribe_files(model, paths)


@pytest.mark.parametrize(
    "observer,kind",
    [("minmax", "MinMaxObserver"), ("moving_average", "MovingAverageMinMaxObserver")],
)
def test_qat_int8_trains_fake_quantised_and_decodes(
    observer: str, kind: str, small_data: PreparedData, tmp_path: Path
) -> None:
    cfg = _edge_config({"quantize": "qat_int8", "observer": observer})
    result = _train(cfg, small_data, tmp_path)
    qat = Recognizer.load(tmp_path / "run" / "model_float.pt")
    assert qat.quantization == "qat"
    assert {type(o).__name__ for o in activation_observers(qat.model)} == {kind}
    rec = Recognizer.load(tmp_path / "run" / "model.pt")
    assert rec.quantization == "int8" and _is_int8(rec.model)
    assert all(isinstance(t, str) for t in rec.transcribe(_waves(small_data)))
    assert result.metrics["model_size_mb"] > 0 and result.metrics["cpu_latency_ms_per_audio_s"] > 0
    # the float architecture's size is reported, not the int8 layers' (which hold no Parameter)
    plain = _train(_edge_config({}), small_data, tmp_path, "plain")
    assert result.metrics["num_parameters"] == plain.metrics["num_parameters"]


@pytest.mark.parametrize(
    "scheme,sections",
    [
        ("dynamic_int8", {}),
        ("qat_int8", {"model": {"encoder": "blstm", "d_model": 32, "num_layers": 1}}),
        # the int8 attention decoder runs beam search (which reads its output layer's size)
        (
            "static_int8",
            {
                "model": {**TINY_CONFORMER, "encoder": "transformer", "head": "ctc_attention"},
                "decode": {"method": "beam", "beam_size": 2, "max_len_ratio": 0.2},
            },
        ),
    ],
)
def test_pruning_and_quantisation_together(
    scheme: str, sections: dict[str, Any], small_data: PreparedData, tmp_path: Path
) -> None:
    edge = {"quantize": scheme, "prune_sparsity": 0.5, "prune_start": 0.0, "prune_end": 0.5}
    result = _train(_edge_config(edge, **sections), small_data, tmp_path)
    assert result.metrics["sparsity"] == pytest.approx(0.5, abs=2e-3)
    rec = Recognizer.load(tmp_path / "run" / "model.pt")
    assert all(isinstance(t, str) for t in rec.transcribe(_waves(small_data)))
    # int8 keeps the pruned zeros (symmetric per-channel weights: zero point 0)
    linear = [m for m in rec.model.modules() if type(m).__name__ == "Linear" and _is_int8(m)]
    weights = torch.cat([m.weight().dequantize().flatten() for m in linear])
    assert float((weights == 0).float().mean()) >= 0.5 - 2e-3


def test_train_export_transcribe_from_the_command_line(
    synth_corpus: Manifest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from speechtune.cli import main

    manifest = tmp_path / "corpus.jsonl"
    synth_corpus[:120].to_jsonl(manifest)
    recipe = {
        "data": {"corpus": "manifest", "manifest": str(manifest), "dev_fraction": 0.25},
        **{k: v for k, v in TINY_RECIPE.items() if k != "train"},
        "model": {"encoder": "gru", "d_model": 32, "num_layers": 1},
        "train": {"epochs": 2, "flatline_patience": 0},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run, export = tmp_path / "run", tmp_path / "export"
    edge = ["--set", "edge.quantize=dynamic_int8", "edge.prune_sparsity=0.5"]
    common = ["--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    args = ["train", "--config", str(tmp_path / "recipe.yaml"), "--out", str(run)]
    assert main([*args, *edge, *common]) == 0
    printed = capsys.readouterr().out
    assert "(dynamic_int8)" in printed and "sparsity 0.5" in printed, printed
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"model_size_mb", "cpu_latency_ms_per_audio_s", "sparsity"} <= set(metrics)

    model = str(run / "model.pt")
    assert (
        main(["export", "--checkpoint", model, "--format", "torchscript", "--out", str(export)])
        == 0
    )
    audio = [str(synth_corpus.resolve(u)) for u in list(synth_corpus)[:3]]
    capsys.readouterr()
    assert main(["transcribe", "--checkpoint", model, *audio]) == 0
    from_model = capsys.readouterr().out
    assert main(["transcribe", "--checkpoint", str(export), *audio]) == 0
    assert capsys.readouterr().out == from_model and from_model.count("\n") == 3


# --------------------------------------------------------------------------- config and preset


@pytest.mark.parametrize(
    "edge,key",
    [
        ({"quantize": "int4"}, "edge.quantize"),
        ({"observer": "histogram"}, "edge.observer"),
        ({"prune_sparsity": 0.99}, "edge.prune_sparsity"),
        ({"prune_sparsity": -0.1}, "edge.prune_sparsity"),
        ({"prune_schedule": "exponential"}, "edge.prune_schedule"),
        ({"prune_sparsity": 0.5, "prune_start": 0.8, "prune_end": 0.5}, "edge.prune_start"),
        ({"calibration_batches": 0}, "edge.calibration_batches"),
    ],
)
def test_bad_edge_values_are_one_line_errors_naming_the_key(edge: dict, key: str) -> None:
    data = copy.deepcopy(TINY_RECIPE)
    data["edge"] = edge
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert [p.key for p in info.value.problems] == [key]
    assert "\n" not in str(info.value.problems[0])


def test_edge_preset_samples_valid_recipes(tmp_path: Path) -> None:
    preset = yaml.safe_load((PRESET_DIR / "edge.yaml").read_text())
    path = tmp_path / "tuning.yaml"
    recipe = str(CONF / "synthetic.yaml")
    path.write_text(yaml.safe_dump({"recipe": recipe, "presets": ["edge"]}))
    spec = load_tuning(path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: set[str] = set()
    schemes: set[str] = set()
    for _ in range(60):
        trial = study.ask()
        flat = spec.space.sample(trial)
        nested: dict[str, Any] = {}
        for dotted, value in flat.items():
            section, key = dotted.split(".")
            nested.setdefault(section, {})[key] = value
        cfg = config_from_dict(merge(spec.base_recipe, nested))
        schemes.add(cfg.edge.quantize)
        seen.update(flat)
        study.tell(trial, 0.0)
    assert seen == set(preset["space"])
    assert schemes == {"none", "dynamic_int8", "static_int8", "qat_int8", "weight_int4"}
