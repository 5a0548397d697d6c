"""The Ray Tune backend on a real local Ray (2 CPUs, one *declared* GPU so that fractional GPU
requests schedule on this CPU machine): the same objective and records as the Optuna backend,
schedulers (ASHA, PBT), stoppers, trial retries from checkpoints, and a killed driver resumed.

Skipped when Ray is not importable, except with SPEECHTUNE_REQUIRE_SERVICES=1 (CI), where it fails.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from speechtune.data import Manifest, PreparedData
from speechtune.tuning.objectives import (
    CONTINUE_MARKER,
    FunctionObjective,
    RecipeObjective,
)
from speechtune.tuning.spec import RaySpec, build_spec, load_tuning
from speechtune.tuning.spec._ray import PbtSpec, PlateauSpec, ResourcesSpec, StopSpec
from tests.helpers.services import require_ray_tune

require_ray_tune()
import ray  # noqa: E402

from speechtune.reports import write_study_outputs  # noqa: E402
from speechtune.tuning.backends import run_study  # noqa: E402
from speechtune.tuning.backends.ray import RayBackend  # noqa: E402

pytestmark = pytest.mark.services


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module: 2 CPUs, and 1 GPU declared (fractional GPU requests schedule)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=2,
        num_gpus=1,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


# ---------------------------------------------------------------------------------------------
# objectives (module level: Ray workers import them from this module)
# ---------------------------------------------------------------------------------------------
def curve(config: dict, reporter) -> dict:
    """WER falls from x + 0.3 to x over 4 epochs; the conditional y (kind b) lowers it a little."""
    x = config["x"] - (0.01 * config["y"] if config["kind"] == "b" else 0.0)
    assert ("y" in config) == (config["kind"] == "b")
    epochs = int(config.get("epochs", 4))
    for epoch in range(1, epochs + 1):
        if reporter.report(epoch, wer=x + 0.1 * (epochs - epoch)):
            return None
    return {"wer": x}


def plateau_fn(config: dict, reporter) -> dict:
    """Improves for two epochs, then stays flat for the remaining eight."""
    for epoch in range(1, 11):
        reporter.report(
            epoch, wer=config["x"] + (0.2 if epoch == 1 else 0.1 if epoch == 2 else 0.0)
        )
    return {"wer": config["x"]}


def gpu_fn(config: dict, reporter) -> dict:
    """Records the resources Ray gave this trial."""
    res = ray.get_runtime_context().get_assigned_resources()
    reporter.report(
        1, wer=config["x"], gpu=float(res.get("GPU", 0.0)), cpu=float(res.get("CPU", 0.0))
    )
    return {"wer": config["x"], "gpu": float(res.get("GPU", 0.0))}


def crash_once(config: dict, reporter, trial_dir: Path) -> dict:
    """Saves its epoch in trial_dir; the first attempt's worker dies hard in epoch 3.

    After the retry it continues from the saved epoch (trial_dir holds the checkpoint and the
    continuation marker), and appends the epochs it ran to the file ``config["log"]``.
    """
    log_file = Path(config["log"])
    state = trial_dir / "state.json"
    start = (
        json.loads(state.read_text())["epoch"] + 1 if (trial_dir / CONTINUE_MARKER).exists() else 1
    )
    ran = []
    for epoch in range(start, 6):
        if epoch == 3 and not (log_file.parent / "crashed").exists():
            (log_file.parent / "crashed").write_text("1")
            os._exit(1)  # the worker process dies, as on a lost node
        ran.append(epoch)
        state.write_text(json.dumps({"epoch": epoch}))
        reporter.report(epoch, wer=config["x"] + 0.1 / epoch)
    with log_file.open("a") as fh:
        fh.write(json.dumps({"start": start, "ran": ran}) + "\n")
    return {"wer": config["x"]}


SPACE = {
    "x": {"type": "float", "low": 0.0, "high": 1.0},
    "kind": {"type": "categorical", "choices": ["a", "b"]},
    "y": {"type": "int", "low": 1, "high": 4, "when": {"kind": ["b"]}},
}


def _spec(
    ray_spec: RaySpec, n_trials: int = 4, space: dict | None = None, name: str = "ray"
) -> object:
    spec = build_spec(
        space or SPACE, study_name=name, n_trials=n_trials, sampler="random", pruner="none", seed=0
    )
    return dataclasses.replace(spec, ray=ray_spec)


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------
def test_same_records_and_outputs_as_the_optuna_backend(tmp_path: Path) -> None:
    spec = _spec(RaySpec(max_t=4))
    study = run_study(
        spec,
        FunctionObjective(curve),
        tmp_path,
        backend=RayBackend(),
        progress=False,
        outputs=write_study_outputs,
    )
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        a = t.user_attrs
        assert a["status"] == "complete" and a["metrics"]["wer"] == pytest.approx(t.values[0])
        assert [r["epoch"] for r in a["history"]] == [1, 2, 3, 4]
        assert set(a["config"]) == set(t.params) and ("y" in t.params) == (t.params["kind"] == "b")
        assert Path(a["trial_dir"]).is_dir() and a["ray_trial_id"] in a["trial_dir"]
        assert sorted(t.intermediate_values) == [1, 2, 3, 4]
        # Measured inside the trainable's process and passed back with the final report.
        assert (
            a["cost"]["energy_source"] == "tdp-estimate"
            and "basis" not in a["cost"]
            and a["cost"]["wall_s"] > 0
        )
    assert study.user_attrs["cost_total"]["trials"] == 4
    assert {t.params["kind"] for t in trials} == {
        "a",
        "b",
    }  # both branches of the conditional space
    for name in ("study.db", "best.yaml", "trials.csv", "spec.yaml"):
        assert (tmp_path / name).is_file(), name
    stored = optuna.load_study(study_name="ray", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert len(stored.get_trials(states=(TrialState.COMPLETE,))) == 4
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert json.dumps(best)  # a real document


def test_asha_stops_bad_trials(tmp_path: Path) -> None:
    space = {
        "x": {"type": "float", "low": 0.0, "high": 1.0},
        "epochs": {"type": "fixed", "value": 9},
    }
    spec = _spec(
        RaySpec(
            scheduler="asha", grace_period=1, reduction_factor=3, max_t=9, max_concurrent_trials=2
        ),
        n_trials=6,
        space=space,
        name="asha",
    )
    study = run_study(
        spec, FunctionObjective(curve_a), tmp_path, backend=RayBackend(), progress=False
    )
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 6
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [t.user_attrs["reason"] for t in trials]
    for t in pruned:
        assert t.user_attrs["status"] == "stopped" and t.user_attrs["reason"].startswith(
            "pruned-by-asha"
        )
        assert len(t.user_attrs["history"]) < 9
        # Ended by the scheduler before its final report: cost estimated from Ray's wall time.
        assert (
            t.user_attrs["cost"]["basis"] == "ray-wall-time" and t.user_attrs["cost"]["wall_s"] > 0
        )
    assert any(
        t.state == TrialState.COMPLETE and len(t.user_attrs["history"]) == 9 for t in trials
    )
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.values[0])
    assert all(best.params["x"] <= t.params["x"] for t in pruned)


def curve_a(config: dict, reporter) -> dict:
    return curve({**config, "kind": "a"}, reporter)


def test_plateau_stopper_ends_a_flat_trial_with_its_best_epoch(tmp_path: Path) -> None:
    space = {"x": {"type": "float", "low": 0.0, "high": 1.0}}
    stop = StopSpec(plateau=PlateauSpec(metric="wer", patience=2, min_delta=0.001))
    spec = _spec(RaySpec(max_t=10, stop=stop), n_trials=2, space=space, name="plateau")
    study = run_study(
        spec, FunctionObjective(plateau_fn), tmp_path, backend=RayBackend(), progress=False
    )
    for t in study.trials:
        assert t.state == TrialState.COMPLETE, t.user_attrs["reason"]
        assert "plateau" in t.user_attrs["reason"]
        assert [r["epoch"] for r in t.user_attrs["history"]] == [
            1,
            2,
            3,
            4,
            5,
        ]  # best at 3, then 2 flat epochs
        assert t.values[0] == pytest.approx(t.params["x"])


def test_compute_budget_stops_the_experiment(tmp_path: Path) -> None:
    space = {
        "x": {"type": "float", "low": 0.0, "high": 1.0},
        "epochs": {"type": "fixed", "value": 4},
        "kind": {"type": "fixed", "value": "a"},
    }
    stop = StopSpec(compute_budget_epochs=6)
    spec = _spec(
        RaySpec(max_t=4, stop=stop, max_concurrent_trials=1),
        n_trials=6,
        space=space,
        name="budget",
    )
    t0 = time.monotonic()
    study = run_study(
        spec, FunctionObjective(curve), tmp_path, backend=RayBackend(), progress=False
    )
    trials = study.trials
    assert 2 <= len(trials) < 6, [t.user_attrs["reason"] for t in trials]
    assert sum(len(t.user_attrs["history"]) for t in trials) <= 6 + 1
    assert any(
        "compute budget of 6 epochs" in t.user_attrs["reason"]
        for t in trials
        if t.state == TrialState.PRUNED
    )
    assert time.monotonic() - t0 < 120


def test_fractional_gpu_resources(tmp_path: Path) -> None:
    cfg = tmp_path / "tuning.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "objective": {"kind": "python"},
                "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
                "study": {"n_trials": 4, "sampler": "random"},
                "ray": {"resources_per_trial": {"cpu": 0.5, "gpu": 0.25}},
            }
        )
    )
    spec = load_tuning(cfg)
    assert spec.ray.resources_per_trial == ResourcesSpec(cpu=0.5, gpu=0.25)
    study = run_study(
        spec, FunctionObjective(gpu_fn), tmp_path / "run", backend=RayBackend(), progress=False
    )
    assert len(study.trials) == 4
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        row = t.user_attrs["history"][0]
        assert row["gpu"] == pytest.approx(0.25) and row["cpu"] == pytest.approx(0.5)


def test_dead_worker_is_retried_from_its_checkpoint(tmp_path: Path) -> None:
    log_file = tmp_path / "attempts.jsonl"
    space = {
        "x": {"type": "float", "low": 0.0, "high": 1.0},
        "log": {"type": "fixed", "value": str(log_file)},
    }
    spec = _spec(RaySpec(max_t=5, max_failures=2), n_trials=1, space=space, name="retry")
    study = run_study(
        spec, FunctionObjective(crash_once), tmp_path / "run", backend=RayBackend(), progress=False
    )
    (t,) = study.trials
    assert t.state == TrialState.COMPLETE, t.user_attrs["reason"]
    assert t.user_attrs["ray_failures"] == 1
    attempts = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert attempts == [{"start": 3, "ran": [3, 4, 5]}]  # continued after epoch 2's checkpoint
    assert [r["epoch"] for r in t.user_attrs["history"]] == [1, 2, 3, 4, 5]
    assert t.user_attrs["continued_from"]["epoch"] == 2


def lr_wer(config: dict, reporter) -> dict:
    """Smallest at lr 1e-2, away from the recipe's default."""
    reporter.report(1, wer=abs(config["optim.lr"] - 0.01))
    return {"wer": abs(config["optim.lr"] - 0.01)}


def test_a_new_recipe_study_runs_the_recipe_defaults_first(tmp_path: Path) -> None:
    # study.baseline on a recipe study: OptunaSearch gets the defaults as its first point (a
    # trial enqueued in the stored study would wait there forever) and the record is marked.
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"optim": {"lr": 0.002}}))
    tuning = {
        "recipe": "recipe.yaml",
        "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
        "study": {"name": "base", "sampler": "tpe", "pruner": "none", "n_trials": 3, "seed": 0},
        "objective": {"kind": "recipe"},
    }
    (tmp_path / "tuning.yaml").write_text(yaml.safe_dump(tuning))
    spec = dataclasses.replace(load_tuning(tmp_path / "tuning.yaml"), ray=RaySpec(max_t=1))
    study = run_study(
        spec, FunctionObjective(lr_wer), tmp_path / "run", backend=RayBackend(), progress=False
    )
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    baseline = [t for t in trials if t.user_attrs.get("source") == "baseline"]
    assert len(baseline) == 1
    assert baseline[0].params == {"optim.lr": 0.002}
    assert baseline[0].user_attrs["config"]["optim.lr"] == 0.002


# ---------------------------------------------------------------------------------------------
# PBT on the real recipe
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_data(synth_data: PreparedData) -> PreparedData:
    dev = [
        u
        for g in synth_data.dev.groups
        for u in synth_data.dev.filter(lambda u, g=g: u.group == g)[:4]
    ]
    return PreparedData(
        train=synth_data.train[:32],
        dev=Manifest(dev, "dev", synth_data.dev.root),
        report=synth_data.report,
    )


def test_pbt_exploits_a_checkpoint_and_explores_lr(
    tmp_path: Path, small_data: PreparedData
) -> None:
    from speechtune.config import config_to_dict
    from tests.helpers.recipes import tiny_config

    base = config_to_dict(
        tiny_config(
            schedule={"name": "constant", "warmup_steps": 0}, train={"epochs": 7, "batch_size": 16}
        )
    )
    space = {
        "optim.lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
    }
    # Perturbation points at epochs 2, 4 and 6 (three chances, so that async PBT on a busy 2-core
    # machine exploits at least once); the last one still leaves epoch 7 to train with the new lr.
    pbt = PbtSpec(perturbation_interval=2, quantile_fraction=0.5, resample_probability=0.0)
    spec = _spec(
        RaySpec(scheduler="pbt", pbt=pbt, max_concurrent_trials=2),
        n_trials=2,
        space=space,
        name="pbt",
    )
    spec = dataclasses.replace(spec, base_recipe=base)
    objective = RecipeObjective(
        base, device="cpu", cache_dir=tmp_path / "cache", num_threads=1, data=small_data
    )
    study = run_study(spec, objective, tmp_path / "run", backend=RayBackend(), progress=False)
    trials = study.trials
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials), [
        (
            t.user_attrs["reason"],
            [r["epoch"] for r in t.user_attrs["history"]],
            t.user_attrs.get("continued_from"),
            t.user_attrs["ray_failures"],
        )
        for t in trials
    ]
    exploited = [t for t in trials if (t.user_attrs.get("continued_from") or {}).get("exploited")]
    assert exploited, "PBT never exploited a donor"
    for t in exploited:
        marker = t.user_attrs["continued_from"]
        assert marker["from_trial"] != t.user_attrs["ray_trial_id"]
        assert "optim.lr" in marker["changed"] or "model.dropout" in marker["changed"]
        lr = t.user_attrs["config"]["optim.lr"]
        after = [r for r in t.user_attrs["history"] if r["epoch"] > marker["epoch"]]
        assert after, "no epoch ran after the exploit"
        assert after[-1]["lr"] == pytest.approx(lr, rel=1e-6)  # the perturbed lr took effect
        assert (Path(t.user_attrs["trial_dir"]) / CONTINUE_MARKER).is_file()
        assert [r["epoch"] for r in t.user_attrs["history"]] == [1, 2, 3, 4, 5, 6, 7]
