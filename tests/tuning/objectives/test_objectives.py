"""The recipe and Python-function objectives: a real (tiny) recipe trial, a pruned one, a bad
config, and functions that succeed, raise, or stop when told."""

from __future__ import annotations

from pathlib import Path

import pytest

from speechtune.config import config_to_dict, unflatten
from speechtune.data import Manifest, PreparedData
from speechtune.training import CallbackReporter, NullReporter
from speechtune.tuning.objectives import (
    FunctionObjective,
    Objective,
    RecipeObjective,
    TrialOutcome,
    merge_config,
)
from tests.helpers.recipes import tiny_config


@pytest.fixture(scope="module")
def small_data(synth_data: PreparedData) -> PreparedData:
    """A slice of the session corpus (both accent groups in dev), so that a trial takes seconds."""
    dev = [
        u
        for g in synth_data.dev.groups
        for u in synth_data.dev.filter(lambda u, g=g: u.group == g)[:12]
    ]
    return PreparedData(
        train=synth_data.train[:96],
        dev=Manifest(dev, "dev", synth_data.dev.root),
        report=synth_data.report,
    )


def recipe_objective(data: PreparedData, tmp_path: Path) -> RecipeObjective:
    base = config_to_dict(tiny_config(train={"epochs": 1, "batch_size": 16}))
    return RecipeObjective(
        base, device="cpu", cache_dir=tmp_path.parent / "shared_cache", data=data
    )


def test_recipe_trial_pruned_after_epoch_one(small_data: PreparedData, tmp_path: Path) -> None:
    # One real trial (the slow part of this file): 2 epochs asked, the reporter stops it after 1.
    obj = recipe_objective(small_data, tmp_path)
    assert isinstance(obj, Objective)
    seen: list[tuple[int, dict]] = []

    def prune_after_one(epoch: int, metrics: dict) -> bool:
        seen.append((epoch, metrics))
        return epoch >= 1

    config = {"model.d_model": 48, "optim.lr": 0.004, "train.epochs": 2}
    out = obj(config, CallbackReporter(prune_after_one), tmp_path / "a", seed=3)
    assert out.status == "stopped", out.reason
    assert [e for e, _ in seen] == [1]
    assert [row["epoch"] for row in out.history] == [1]
    assert out.history[0]["wer"] == seen[0][1]["wer"]
    # stopped, yet the best epoch's model is still measured on dev
    for key in (
        "wer",
        "cer",
        "worst_group_wer",
        "latency_ms_per_audio_s",
        "num_parameters",
        "best_epoch",
    ):
        assert isinstance(out.metrics[key], float), key
    assert out.metrics["best_epoch"] == 1.0
    assert 0.0 <= out.metrics["wer"] <= 1.5
    assert set(out.extra["group_wer"]) == {"en-us", "en-gb-scotland"}
    assert out.extra["output_dir"] == str(tmp_path / "a")
    assert (tmp_path / "a" / "model.pt").is_file()
    # the trial's keys and seed reached the recipe
    saved = (tmp_path / "a" / "config.yaml").read_text()
    assert "d_model: 48" in saved and "seed: 3" in saved and "epochs: 2" in saved
    # the trial dir has its training log: the epoch's line (a quiet run too) and how it ended
    train_log = (tmp_path / "a" / "train.log").read_text()
    assert "epoch 1/2  train_loss" in train_log and "WER" in train_log
    assert "finished: stopped (stopped by the reporter after epoch 1)" in train_log


def test_recipe_invalid_config_is_an_error_naming_the_key(
    small_data: PreparedData, tmp_path: Path
) -> None:
    obj = recipe_objective(small_data, tmp_path)
    out = obj(
        {"model.num_layers": 0, "optim.name": "rmsprop"}, NullReporter(), tmp_path / "bad", seed=0
    )
    assert out.status == "error"
    assert "model.num_layers" in out.reason and "optim.name" in out.reason
    assert not (tmp_path / "bad" / "model.pt").exists()


def test_recipe_unexpected_exception_is_recorded(tmp_path: Path) -> None:
    # a manifest that does not exist: the recipe raises while preparing data
    base = config_to_dict(
        tiny_config(data={"corpus": "manifest", "manifest": str(tmp_path / "missing.jsonl")})
    )
    out = RecipeObjective(base, device="cpu", cache_dir=tmp_path / "cache")(
        {}, NullReporter(), tmp_path / "t", seed=0
    )
    assert out.status == "error"
    assert out.reason.startswith("error: ") and ":" in out.reason[len("error: ") :]
    assert "Traceback" in (tmp_path / "t" / "error.log").read_text()
    assert "Traceback" in (tmp_path / "t" / "train.log").read_text()


def test_unflatten_and_merge() -> None:
    assert unflatten({"a.b": 1, "a.c.d": 2, "e": 3}) == {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    assert merge_config({"a": {"b": 0, "x": 9}}, {"a.b": 1}) == {"a": {"b": 1, "x": 9}}
    with pytest.raises(ValueError, match=r"a\.b: conflicts"):
        unflatten({"a": 1, "a.b": 2})


# ---------------------------------------------------------------------------------------------
# FunctionObjective
# ---------------------------------------------------------------------------------------------
def quadratic(config: dict, reporter) -> dict[str, float]:
    """A scripted learning curve: the loss falls towards (x - 2)^2."""
    x = config["x"]
    for epoch in range(1, 6):
        loss = (x - 2) ** 2 + 1.0 / epoch
        if reporter.report(epoch, loss=loss):
            return {}
    return {"loss": (x - 2) ** 2}


def test_function_objective_success(tmp_path: Path) -> None:
    reports: list[tuple[int, dict]] = []
    out = FunctionObjective(quadratic)(
        {"x": 3.0}, CallbackReporter(lambda e, m: reports.append((e, m))), tmp_path, seed=0
    )
    assert out.status == "complete" and out.metrics == {"loss": 1.0}
    assert [r["epoch"] for r in out.history] == [1, 2, 3, 4, 5]
    assert reports[0] == (1, {"loss": 2.0})


def test_function_objective_stopped_by_reporter(tmp_path: Path) -> None:
    calls: list[int] = []

    def stop_at_two(epoch: int, metrics: dict) -> bool:
        calls.append(epoch)
        return epoch >= 2

    out = FunctionObjective(quadratic)({"x": 2.0}, CallbackReporter(stop_at_two), tmp_path, seed=0)
    assert out.status == "stopped" and "epoch 2" in out.reason
    assert calls == [1, 2]
    assert out.metrics == {"loss": 0.5}  # the last reported row stands for the pruned trial
    assert len(out.history) == 2


def test_function_objective_exception_is_an_error(tmp_path: Path) -> None:
    def broken(config: dict, reporter) -> dict[str, float]:
        reporter.report(1, loss=1.0)
        raise KeyError("model.d_model")

    out = FunctionObjective(broken)({}, NullReporter(), tmp_path, seed=0)
    assert out.status == "error"
    assert out.reason == "error: KeyError: 'model.d_model'"
    assert len(out.history) == 1
    assert "KeyError" in (tmp_path / "error.log").read_text()


def test_function_objective_bad_return_and_extras(tmp_path: Path) -> None:
    out = FunctionObjective(lambda config, reporter: 0.3)({}, NullReporter(), tmp_path, seed=0)
    assert out.status == "error" and "dict[str, float]" in out.reason
    out = FunctionObjective(lambda config, reporter: {"wer": "low"})(
        {}, NullReporter(), tmp_path, seed=0
    )
    assert out.status == "error" and "'wer'" in out.reason

    def with_seed(config: dict, reporter, seed: int, trial_dir: Path) -> TrialOutcome:
        return TrialOutcome("diverged", f"seed {seed} in {trial_dir.name}", metrics={"wer": 1.0})

    out = FunctionObjective(with_seed)({}, NullReporter(), tmp_path / "t9", seed=7)
    assert (out.status, out.reason) == ("diverged", "seed 7 in t9")


def test_outcome_from_result_keeps_numbers_and_moves_the_rest(tmp_path: Path) -> None:
    from speechtune.training import TrainResult
    from speechtune.tuning.objectives._recipe import outcome_from_result

    result = TrainResult(
        "complete",
        "completed 2 epochs",
        history=[{"epoch": 1, "wer": 0.5}, {"epoch": 2, "wer": 0.4}],
        metrics={
            "wer": 0.4,
            "num_parameters": 1000,
            "split": "dev",
            "group_wer": {"a": 0.3, "b": 0.5},
            "worst_group": "b",
            "examples": [{"id": "x"}],
        },
        output_dir=tmp_path,
    )
    out = outcome_from_result(result)
    assert (out.status, out.reason) == ("complete", "completed 2 epochs")
    assert out.metrics == {"wer": 0.4, "num_parameters": 1000.0}
    assert out.extra == {
        "output_dir": str(tmp_path),
        "group_wer": {"a": 0.3, "b": 0.5},
        "worst_group": "b",
    }
    assert out.history == result.history and out.history is not result.history
