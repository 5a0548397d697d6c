"""End to end: the recipe trains on real (synthesised) speech, resumes exactly, and ends runs
that diverge, flatline or run out of memory with a named reason."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from speechtune.config import RecipeConfig
from speechtune.data import Manifest, PreparedData
from speechtune.inference import Recognizer, evaluate_model, transcribe_files
from speechtune.training import CallbackReporter, TrainResult, _loop, evaluate_dev, train
from tests.helpers.recipes import run_options, tiny_config

# Golden figure: measured for this exact config and corpus (seeded), with a tolerance for
# platform differences in float arithmetic. A model that learns nothing sits at CER ~1.0.
GOLDEN_CER = 0.226
CER_TOLERANCE = 0.08


def test_training_reaches_golden_cer(trained) -> None:
    assert trained.status == "complete", trained.reason
    first, last = trained.history[0], trained.history[-1]
    assert last["train_loss"] < 0.5 * first["train_loss"]
    # two-sided: a much *better* figure would be as suspicious (a leak from dev) as a worse one
    assert abs(trained.metrics["cer"] - GOLDEN_CER) <= CER_TOLERANCE, trained.metrics["cer"]
    for key in (
        "wer",
        "worst_group_wer",
        "latency_ms_per_audio_s",
        "rtf",
        "num_parameters",
        "model_bytes",
    ):
        assert key in trained.metrics
    assert set(trained.metrics["group_wer"]) == {"en-us", "en-gb-scotland"}
    assert trained.metrics["worst_group_wer"] == max(trained.metrics["group_wer"].values())


def test_outputs_on_disk_and_reload(trained, synth_data: PreparedData) -> None:
    out = trained.output_dir
    for name in (
        "model.pt",
        "last.pt",
        "metrics.json",
        "history.json",
        "config.yaml",
        "result.json",
    ):
        assert (out / name).is_file(), name
    history = json.loads((out / "history.json").read_text())
    assert len(history) == len(trained.history)
    for row in history:
        assert {"train_loss", "dev_loss", "grad_norm", "lr", "overfit_gap", "wer", "cer"} <= set(
            row
        )
    # the saved model reproduces the reported dev WER through the public evaluate path
    result = evaluate_model(out / "model.pt", synth_data.dev, name="dev_check")
    assert result["wer"] == pytest.approx(trained.metrics["wer"], abs=1e-9)
    assert (out / "eval_dev_check.json").is_file()


def test_transcribe_files(trained, synth_data: PreparedData) -> None:
    utts = list(synth_data.dev)[:3]
    paths = [synth_data.dev.resolve(u) for u in utts]
    texts = transcribe_files(trained.output_dir / "model.pt", paths)
    rec = Recognizer.load(trained.output_dir / "model.pt")
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    # at the golden CER most characters come out right
    from speechtune.metrics import cer

    assert cer([u.text for u in utts], texts) < 0.5, list(zip(texts, [u.text for u in utts]))
    assert rec.cfg.model.encoder == "conformer"


def test_resume_gives_same_metrics_as_uninterrupted(
    synth_data: PreparedData, tmp_path: Path
) -> None:
    cfg = tiny_config(
        specaugment={"enabled": True, "time_mask_width": 8, "freq_mask_width": 4},
        model={"dropout": 0.1, "num_layers": 2},
        train={"epochs": 3},
    )
    full = train(cfg, run_options(tmp_path, "full"), data=synth_data)
    stop_after_1 = CallbackReporter(lambda epoch, m: epoch == 1)
    part = train(cfg, run_options(tmp_path, "part"), stop_after_1, data=synth_data)
    assert part.status == "stopped" and len(part.history) == 1
    resumed = train(cfg, run_options(tmp_path, "part", resume=True), data=synth_data)
    assert resumed.status == "complete"
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for a, b in zip(full.history, resumed.history):
        for key in ("train_loss", "dev_loss", "wer", "cer", "grad_norm", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["epoch"], key)


def test_resume_refuses_a_changed_config(synth_data: PreparedData, tmp_path: Path) -> None:
    cfg = tiny_config(train={"epochs": 1})
    train(cfg, run_options(tmp_path), data=synth_data)
    changed = tiny_config(train={"epochs": 1}, optim={"lr": 0.01})
    with pytest.raises(ValueError, match="optim.lr"):
        train(changed, run_options(tmp_path, resume=True), data=synth_data)


def test_reporter_can_stop_training(synth_data: PreparedData, tmp_path: Path) -> None:
    seen: list[tuple[int, dict]] = []

    def fn(epoch: int, metrics: dict) -> bool:
        seen.append((epoch, metrics))
        return epoch >= 2

    result = train(
        tiny_config(train={"epochs": 5}),
        run_options(tmp_path),
        CallbackReporter(fn),
        data=synth_data,
    )
    assert result.status == "stopped" and "epoch 2" in result.reason
    assert [e for e, _ in seen] == [1, 2]
    assert {"wer", "dev_loss", "train_loss", "lr", "grad_norm"} <= set(seen[0][1])


def _inject_fault(model: torch.nn.Module, at_call: int, fault: str) -> torch.nn.Module:
    """Make the model's ``at_call``-th training forward raise OOM or return a NaN loss."""
    real_forward = model.forward
    calls = 0

    def forward(*args, **kwargs):
        nonlocal calls
        out = real_forward(*args, **kwargs)
        if model.training:
            calls += 1
            if calls == at_call:
                if fault == "oom":
                    raise torch.OutOfMemoryError(
                        "CUDA out of memory. Tried to allocate 2.00 GiB (injected)"
                    )
                out = {**out, "loss": out["loss"] * float("nan")}
        return out

    model.forward = forward  # instance attribute: nn.Module.__call__ picks it up
    return model


@pytest.mark.parametrize("fault,status", [("oom", "oom"), ("nan", "diverged")])
def test_injected_faults_end_with_a_named_reason(
    fault: str,
    status: str,
    synth_data: PreparedData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_build = _loop.build_model
    batches_per_epoch = -(-len(synth_data.train) // 16)
    at_call = batches_per_epoch + 5  # in the second epoch
    monkeypatch.setattr(
        _loop, "build_model", lambda *a, **k: _inject_fault(real_build(*a, **k), at_call, fault)
    )
    result = train(tiny_config(train={"epochs": 3}), run_options(tmp_path), data=synth_data)
    assert result.status == status
    assert status in result.reason
    # the first epoch finished and was checkpointed before the fault in epoch 2
    assert len(result.history) == 1
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == status


def test_flatline_is_detected(synth_data: PreparedData, tmp_path: Path) -> None:
    cfg = tiny_config(
        optim={"lr": 1e-12}, train={"epochs": 6, "flatline_patience": 2, "flatline_tol": 1e-3}
    )
    result = train(cfg, run_options(tmp_path), data=synth_data)
    assert result.status == "flatline", result.reason
    assert len(result.history) == 3


def test_diverging_learning_rate_is_caught(synth_data: PreparedData, tmp_path: Path) -> None:
    cfg = tiny_config(
        optim={"name": "sgd", "lr": 1e8, "momentum": 0.9}, train={"epochs": 3, "grad_clip": None}
    )
    result = train(cfg, run_options(tmp_path), data=synth_data)
    assert result.status == "diverged", result.reason


def test_running_sums_are_read_once_and_a_nan_in_them_ends_the_run() -> None:
    from speechtune.training._diagnostics import RunEnded, check_sums_finite

    assert check_sums_finite(torch.tensor(3.5), torch.tensor(1.25), 1, 10) == (3.5, 1.25)
    with pytest.raises(RunEnded, match="gradient norm became inf in epoch 2"):
        check_sums_finite(torch.tensor(1.0), torch.tensor(float("inf")), 2, 50)
    with pytest.raises(RunEnded, match="training loss became nan"):
        check_sums_finite(torch.tensor(float("nan")), torch.tensor(1.0), 2, 50)


def _trained(
    cfg: RecipeConfig, data: PreparedData, tmp_path: Path
) -> tuple[TrainResult, Recognizer, Callable[[Manifest], dict[str, Any]]]:
    """Train ``cfg`` on ``data``; its result, its model, and its dev evaluation of a manifest."""
    opts = run_options(tmp_path)
    result = train(cfg, opts, data=data)
    assert result.status == "complete", result.reason
    rec = Recognizer.load(result.output_dir / "model.pt")
    feats = _loop._features(data.dev, rec.cfg, opts, torch.device("cpu"))
    targets = {u.id: rec.tokenizer.encode(u.text) for u in data.dev}

    def evaluate(manifest: Manifest) -> dict[str, Any]:
        return evaluate_dev(
            rec, manifest, feats, targets, rec.cfg, torch.device("cpu"), full_decode=False
        )

    return result, rec, evaluate


def test_each_groups_dev_loss_is_its_utterances_dev_loss(
    synth_data: PreparedData, tmp_path: Path
) -> None:
    """Per-group dev loss (what ranks a worst-group study's cheap rungs): a group's value is the
    dev loss of its utterances alone, and splitting batches by group leaves the mean unchanged."""
    import dataclasses

    result, _, evaluate = _trained(tiny_config(train={"epochs": 1}), synth_data, tmp_path)
    dev = synth_data.dev

    grouped = evaluate(dev)
    assert set(grouped["group_dev_loss"]) == {"en-us", "en-gb-scotland"}
    assert grouped["worst_group_dev_loss"] == max(grouped["group_dev_loss"].values())
    for group, loss in grouped["group_dev_loss"].items():
        alone = evaluate(Manifest([u for u in dev if u.group == group], dev.split, dev.root))
        assert alone["dev_loss"] == pytest.approx(loss, rel=1e-4)
        assert alone["group_dev_loss"] == {}  # one group: nothing to split
        assert alone["worst_group_dev_loss"] == alone["dev_loss"]
    one_group = evaluate(
        Manifest([dataclasses.replace(u, group="all") for u in dev], dev.split, dev.root)
    )
    assert one_group["dev_loss"] == pytest.approx(grouped["dev_loss"], rel=1e-4)
    assert one_group["wer"] == grouped["wer"]
    # what a trial reports: the history and the final metrics carry it
    assert "worst_group_dev_loss" in result.history[-1]
    assert set(result.metrics["group_dev_loss"]) == {"en-us", "en-gb-scotland"}


def test_the_dev_ctc_loss_is_the_same_quantity_whatever_the_loss_weights(
    synth_data: PreparedData, tmp_path: Path
) -> None:
    """``dev_loss`` is the training objective, so the CTC weight rescales it; ``dev_ctc_loss``
    (what a study that tunes loss weights ranks cheap rungs by) is the same for the same model."""
    import dataclasses

    cfg = tiny_config(
        model={"head": "ctc_attention", "ctc_weight": 0.3, "decoder_layers": 1},
        train={"epochs": 1},
    )
    result, rec, evaluate_on = _trained(cfg, synth_data, tmp_path)

    def evaluate(ctc_weight: float) -> dict:
        rec.model.cfg = dataclasses.replace(rec.model.cfg, ctc_weight=ctc_weight)
        return evaluate_on(synth_data.dev)

    low, high = evaluate(0.3), evaluate(0.8)
    assert abs(low["dev_loss"] - high["dev_loss"]) > 0.05 * low["dev_loss"]
    assert low["dev_ctc_loss"] == pytest.approx(high["dev_ctc_loss"], rel=1e-6)
    assert low["worst_group_dev_ctc_loss"] >= low["dev_ctc_loss"]
    # the history and the final metrics carry it
    assert result.history[-1]["dev_ctc_loss"] > 0 and result.metrics["dev_ctc_loss"] > 0
