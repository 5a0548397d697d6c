"""The study engine: reproducibility, pruning, failures, seeds, multi-objective, OOM retry, CLI."""

from __future__ import annotations

import argparse
import math
import os
import statistics
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from speechtune.api import tune
from speechtune.cli import tune as tune_cli
from speechtune.config import ConfigError
from speechtune.data import Manifest
from speechtune.tuning.backends import run_study
from speechtune.tuning.objectives import (
    FunctionObjective,
    RecipeObjective,
    TrialOutcome,
)
from speechtune.tuning.spec import build_spec
from speechtune.tuning.study import (
    StudyExistsError,
    device_slots,
    make_pruner,
    make_sampler,
    make_storage,
)
from speechtune.tuning.study._progress import ProgressState
from speechtune.tuning.study._samplers import PRUNERS, SAMPLERS

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {
    "optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
    "model.num_layers": [1, 2, 3],
    "model.d_model": {"type": "int", "low": 32, "high": 256, "step": 32},
}


def quadratic(config: dict, reporter) -> dict:
    """A synthetic 'WER' with a known minimum near lr=1e-2, 2 layers, d_model 128."""
    wer = (math.log10(config["optim.lr"]) + 2) ** 2 + 0.1 * (config["model.num_layers"] - 2) ** 2
    wer += ((config["model.d_model"] - 128) / 256) ** 2
    return {"wer": wer}


def by_state(study: optuna.Study, state: TrialState) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(state,))


# ---------------------------------------------------------------------------------------------
# factories
# ---------------------------------------------------------------------------------------------
def test_factories_build_every_name_and_list_valid_ones(tmp_path: Path) -> None:
    for name in SAMPLERS:
        assert isinstance(make_sampler(name, seed=1), optuna.samplers.BaseSampler)
    for name in PRUNERS:
        assert isinstance(make_pruner(name, max_resource=8), optuna.pruners.BasePruner)
    with pytest.raises(ValueError, match="expected one of: cmaes, gp, nsga2, qmc, random, tpe"):
        make_sampler("bayes")
    with pytest.raises(ValueError, match="hyperband, median, none, percentile, sha, wilcoxon"):
        make_pruner("asha")
    assert make_sampler("tpe", n_jobs=4)._constant_liar is True
    assert make_sampler("tpe", n_jobs=1)._constant_liar is False
    rdb = make_storage(None, tmp_path / "run")
    assert isinstance(rdb, optuna.storages.RDBStorage) and rdb.heartbeat_interval == 30
    assert (tmp_path / "run" / "study.db").exists()
    journal = make_storage("journal", tmp_path / "run")
    assert isinstance(journal, optuna.storages.JournalStorage)
    optuna.create_study(storage=journal, study_name="j").optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=1
    )
    assert (tmp_path / "run" / "journal.log").stat().st_size > 0
    with pytest.raises(ValueError, match="cannot open 'redis://x'"):
        make_storage("redis://x", tmp_path)


def test_progress_eta_from_mean_duration() -> None:
    state = ProgressState(n_trials=10, n_jobs=2, complete=3, pruned=1, durations=[2.0, 4.0])
    assert state.eta_s() == pytest.approx(3.0 * 6 / 2)
    assert "4/10 done (3 complete, 1 pruned" in state.line()


# ---------------------------------------------------------------------------------------------
# reproducibility
# ---------------------------------------------------------------------------------------------
def _configs(study: optuna.Study) -> list[dict]:
    return [t.user_attrs["config"] for t in study.trials]


def test_same_seed_same_configs_other_seed_differs() -> None:
    a = tune(quadratic, SPACE, n_trials=12, seed=3, pruner="none")
    b = tune(quadratic, SPACE, n_trials=12, seed=3, pruner="none")
    c = tune(quadratic, SPACE, n_trials=12, seed=4, pruner="none")
    assert _configs(a) == _configs(b)  # past the 10 random startup trials: TPE proposals too
    assert _configs(a) != _configs(c)
    assert len(by_state(a, TrialState.COMPLETE)) == 12
    best = a.best_trial
    assert best.value == pytest.approx(quadratic(best.user_attrs["config"], None)["wer"])
    assert best.user_attrs["status"] == "complete"
    assert a.user_attrs["objective_names"] == ["wer"]


# ---------------------------------------------------------------------------------------------
# pruning with scripted curves
# ---------------------------------------------------------------------------------------------
GOOD = [0.8, 0.6, 0.4, 0.3]
BAD = [0.9, 0.95, 0.97, 0.99]


def scripted(curves: list[list[float]]):
    """A function whose k-th call reports the k-th curve, one value per epoch."""
    queue = list(curves)

    def fn(config: dict, reporter) -> dict | None:
        curve = queue.pop(0)
        for epoch, wer in enumerate(curve):
            if reporter.report(epoch, wer=wer):
                return None
        return {"wer": curve[-1]}

    return fn


def test_median_pruner_stops_bad_curves() -> None:
    order = [GOOD, GOOD, GOOD, BAD, GOOD, BAD, BAD]
    study = tune(
        scripted(order), {"x": {"type": "float", "low": 0, "high": 1}}, n_trials=7, pruner="median"
    )
    states = [t.state for t in study.trials]
    P, C = TrialState.PRUNED, TrialState.COMPLETE
    assert states == [C, C, C, P, C, P, P]
    for trial in by_state(study, P):
        assert trial.user_attrs["status"] == "stopped"
        assert trial.user_attrs["reason"] == "pruned-by-median"
        # warm-up of 1 step: the first check (and the prune) is at epoch 1
        assert [row["epoch"] for row in trial.user_attrs["history"]] == [0, 1]
        assert trial.intermediate_values == {0: BAD[0], 1: BAD[1]}
    assert [t.value for t in by_state(study, C)] == [GOOD[-1]] * 4


def test_space_constraint_violation_prunes_with_reason() -> None:
    space = {"a": [1, 2, 3, 4], "b": [1, 2]}
    from speechtune.tuning.space import parse_space

    study = tune(
        quadratic_ab,
        parse_space(space, ["a + b <= 4"]),
        n_trials=10,
        sampler="random",
        pruner="none",
    )
    pruned = by_state(study, TrialState.PRUNED)
    assert pruned, "some sampled configs break a + b <= 4"
    for t in pruned:
        assert t.user_attrs["reason"].startswith("constraint: ")
        assert t.params["a"] + t.params["b"] > 4
    assert all(t.params["a"] + t.params["b"] <= 4 for t in by_state(study, TrialState.COMPLETE))


def quadratic_ab(config: dict, reporter) -> dict:
    return {"wer": (config["a"] - 2) ** 2 + config["b"]}


# ---------------------------------------------------------------------------------------------
# failures
# ---------------------------------------------------------------------------------------------
def test_failing_trials_fail_with_reason_and_study_reaches_n_trials(tmp_path: Path) -> None:
    calls = iter(["ok", "raise", "ok", "diverged", "ok", "ok"])

    def fn(config: dict, reporter):
        what = next(calls)
        if what == "raise":
            raise RuntimeError("boom in the trainer")
        if what == "diverged":
            return TrialOutcome(
                "diverged", "loss is nan at epoch 2", history=[{"epoch": 0, "wer": 1.0}]
            )
        return {"wer": config["x"]}

    study = tune(fn, {"x": {"type": "float", "low": 0, "high": 1}}, n_trials=4, run_dir=tmp_path)
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 4
    failed = by_state(study, TrialState.FAIL)
    assert [t.number for t in failed] == [1, 3]
    assert failed[0].user_attrs["status"] == "error"
    assert "RuntimeError: boom in the trainer" in failed[0].user_attrs["reason"]
    assert failed[1].user_attrs["status"] == "diverged"
    assert failed[1].user_attrs["reason"] == "loss is nan at epoch 2"
    assert failed[1].user_attrs["history"] == [{"epoch": 0, "wer": 1.0}]
    rows = (tmp_path / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 and "diverged" in rows[4]
    assert (tmp_path / "best.yaml").exists() and (tmp_path / "report.html").exists()


def test_missing_metric_fails_the_trial() -> None:
    study = tune(lambda config, reporter: {"cer": 0.1}, {"x": [1]}, n_trials=1, timeout_s=5)
    failed = by_state(study, TrialState.FAIL)
    assert failed and "did not report metric 'wer'" in failed[0].user_attrs["reason"]
    assert "cer" in failed[0].user_attrs["reason"]


# ---------------------------------------------------------------------------------------------
# seeds, groups, multi-objective, scalarization
# ---------------------------------------------------------------------------------------------
def test_seeds_mean_and_std(tmp_path: Path) -> None:
    dirs: list[Path] = []

    def fn(config: dict, reporter, trial_dir: Path, seed: int) -> dict:
        dirs.append(trial_dir)
        return {"wer": config["x"] + 0.1 * seed}

    study = tune(
        fn,
        {"x": {"type": "float", "low": 0, "high": 1}},
        n_trials=2,
        seeds=(0, 1, 2),
        run_dir=tmp_path,
    )
    for trial in study.trials:
        x = trial.params["x"]
        expected = [x, x + 0.1, x + 0.2]
        assert trial.user_attrs["seed_values"] == pytest.approx(expected)
        assert trial.value == pytest.approx(statistics.fmean(expected))
        assert trial.user_attrs["objective_std"] == pytest.approx(statistics.pstdev(expected))
    assert dirs[:3] == [tmp_path / "trials" / "0000" / f"seed{s}" for s in (0, 1, 2)]


def test_worst_group_is_optimised_and_reported() -> None:
    def fn(config: dict, reporter) -> dict:
        for epoch in range(2):
            reporter.report(epoch, wer=0.2, worst_group_wer=0.5 + epoch)
        return {"wer": 0.2, "worst_group_wer": 0.5 + config["x"]}

    study = tune(
        fn, {"x": {"type": "float", "low": 0, "high": 1}}, n_trials=2, group="worst_group"
    )
    trial = study.trials[0]
    assert trial.value == pytest.approx(0.5 + trial.params["x"])
    assert trial.intermediate_values == {0: 0.5, 1: 1.5}
    assert trial.user_attrs["metrics"]["wer"] == 0.2
    assert study.user_attrs["objective_names"] == ["worst_group_wer"]


def test_worst_group_wer_always_recorded_from_group_wer() -> None:
    def fn(config: dict, reporter) -> TrialOutcome:
        return TrialOutcome(
            "complete",
            "done",
            metrics={"wer": 0.3},
            extra={"group_wer": {"en-us": 0.2, "en-sc": 0.45}},
        )

    trial = tune(fn, {"x": [1]}, n_trials=1).trials[0]
    assert trial.user_attrs["metrics"] == {"wer": 0.3, "worst_group_wer": 0.45}
    assert trial.user_attrs["group_wer"] == {"en-us": 0.2, "en-sc": 0.45}


def latency_fn(config: dict, reporter) -> dict:
    x = config["x"]
    return {"wer": x, "latency": 10 * (1 - x)}


def test_multi_objective_pareto_and_constraints() -> None:
    study = tune(
        latency_fn,
        {"x": {"type": "float", "low": 0, "high": 1}},
        n_trials=16,
        sampler="nsga2",
        pruner="none",
        extra_objectives=["latency"],
        constraints=["latency <= 5"],
    )
    assert study.user_attrs["objective_names"] == ["wer", "latency"]
    assert len(study.directions) == 2
    for trial in study.trials:
        x = trial.params["x"]
        assert trial.values == pytest.approx([x, 10 * (1 - x)])
        assert trial.user_attrs["constraints"] == pytest.approx([10 * (1 - x) - 5])
        assert trial.system_attrs["constraints"] == pytest.approx(
            (10 * (1 - x) - 5,)
        )  # seen by Optuna
    front = study.best_trials
    assert front and all(
        t.user_attrs["constraints"][0] <= 0 for t in front
    )  # only feasible trials
    front_x = sorted(t.params["x"] for t in front)
    assert all(x >= 0.5 for x in front_x)


@pytest.mark.parametrize("second", ["minimize", "maximize"])
def test_the_knee_is_the_front_trial_nearest_the_ideal_point(second: str) -> None:
    """WER against latency: the ends of the front are the best WER (slow) and the fastest
    model (bad WER); the knee gives up least of both, scaled to the front's ranges."""
    from speechtune.tuning.study import pareto_front, pareto_knee

    sign = 1.0 if second == "minimize" else -1.0
    study = optuna.create_study(directions=["minimize", second])
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    points = [(0.0, 1.0), (0.1, 0.3), (0.6, 0.6), (0.5, 0.1), (1.0, 0.0)]  # (0.6, 0.6) dominated
    for x, y in points:
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": x}, distributions={"x": dist}, values=[x, sign * y]
            )
        )
    assert [t.number for t in pareto_front(study)] == [0, 1, 3, 4]
    knee = pareto_knee(study)
    assert (
        knee is not None and knee.number == 1
    )  # (0.1, 0.3): 0.32 from the ideal; (0.5, 0.1): 0.51


def test_a_single_objective_study_has_no_front_or_knee() -> None:
    from speechtune.tuning.study import pareto_front, pareto_knee

    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(value=1.0))
    assert pareto_front(study) == [] and pareto_knee(study) is None


def test_scalarized_objective() -> None:
    study = tune(
        latency_fn,
        {"x": {"type": "float", "low": 0, "high": 1}},
        n_trials=3,
        scalarize={"latency": 0.01},
    )
    for trial in study.trials:
        x = trial.params["x"]
        assert trial.value == pytest.approx(x + 0.01 * 10 * (1 - x))
        assert trial.user_attrs["metrics"]["latency"] == pytest.approx(10 * (1 - x))
    assert len(study.directions) == 1


# ---------------------------------------------------------------------------------------------
# OOM retry
# ---------------------------------------------------------------------------------------------
def test_oom_retry_halves_batch_and_doubles_accumulation() -> None:
    seen: list[tuple[int, int]] = []

    def fn(config: dict, reporter) -> TrialOutcome | dict:
        batch, accum = config["train.batch_size"], config["train.grad_accum"]
        seen.append((batch, accum))
        if batch > 8:
            return TrialOutcome("oom", "CUDA out of memory at batch 16")
        return {"wer": 0.1 * accum}

    space = {"train.batch_size": 16, "train.grad_accum": 1, "x": [0]}
    study = tune(fn, space, n_trials=1, oom_retry=True)
    trial = study.trials[0]
    assert seen == [(16, 1), (8, 2)]
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(0.2)
    assert trial.user_attrs["config"]["train.batch_size"] == 8
    assert trial.user_attrs["config"]["train.grad_accum"] == 2
    assert "train.batch_size 16 -> 8" in trial.user_attrs["oom_retry"]
    assert "oom retry" in trial.user_attrs["reason"]

    seen.clear()
    study = tune(fn, space, n_trials=1, oom_retry=False, timeout_s=3)
    assert seen[0] == (16, 1) and study.trials[0].state == TrialState.FAIL
    assert study.trials[0].user_attrs["status"] == "oom"


# ---------------------------------------------------------------------------------------------
# existing studies, resume counting
# ---------------------------------------------------------------------------------------------
def test_existing_study_needs_resume_and_counts_total(tmp_path: Path) -> None:
    space = {"x": {"type": "float", "low": 0, "high": 1}}
    objective = FunctionObjective(lambda config, reporter: {"wer": config["x"]})
    spec = build_spec(space, study_name="s", n_trials=3)

    def run(n_trials: int, resume: bool) -> optuna.Study:
        return run_study(
            spec, objective, tmp_path, n_trials=n_trials, resume=resume, progress=False
        )

    first = [t.params for t in run(3, resume=False).trials]
    with pytest.raises(StudyExistsError, match="pass --resume"):
        run(3, resume=False)
    study = run(5, resume=True)
    assert len(by_state(study, TrialState.COMPLETE)) == 5  # 5 in total, not 3 + 5
    assert [t.params for t in study.trials[:3]] == first
    assert len(run(5, resume=True).trials) == 5  # already reached: nothing more runs
    assert (tmp_path / "study.db").exists() and yaml.safe_load(
        (tmp_path / "spec.yaml").read_text()
    )["study"]["name"] == "s"


def test_parallel_trials_replace_failed_ones_and_stop_at_the_count() -> None:
    calls: list[float] = []

    def flaky(config: dict, reporter) -> dict:
        calls.append(config["optim.lr"])
        if len(calls) in (2, 3):  # two failures early on, while the other thread runs
            raise RuntimeError("out of memory (a test failure)")
        return quadratic(config, reporter)

    study = tune(flaky, SPACE, n_trials=5, n_jobs=2, sampler="random", pruner="none")
    # Failed trials are replaced, and the study stops at the count.
    assert len(by_state(study, TrialState.COMPLETE)) == 5
    assert len(by_state(study, TrialState.FAIL)) == 2


def test_parallel_trials_and_device_slots() -> None:
    # Trials that end within milliseconds: Optuna starts the next thread as soon as one ends,
    # before its trial is in storage. Counting only stored trials started one too many about
    # once in 15 studies of this kind; the threads of the round are counted too now.
    for seed in range(12):
        study = tune(
            quadratic, SPACE, n_trials=6, n_jobs=2, sampler="random", pruner="none", seed=seed
        )
        complete = by_state(study, TrialState.COMPLETE)
        assert len(complete) == 6 and len(study.trials) == 6, seed
        assert len({t.number for t in complete}) == len(complete)
    recipe = RecipeObjective({}, device="cpu")
    slot = device_slots(recipe, n_jobs=2)
    assert slot is not None and slot(0).num_threads == max(1, (os.cpu_count() or 1) // 2)
    assert recipe.num_threads is None  # the shared objective is not modified
    assert device_slots(recipe, n_jobs=1) is None
    assert device_slots(FunctionObjective(quadratic), n_jobs=4) is None


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    tune_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_tune_command_validates_first_and_needs_a_function_for_python_kind(tmp_path: Path) -> None:
    bad = {
        "space": {"x": {"type": "float", "low": 2, "high": 1}},
        "study": {"sampler": "bayes"},
        "objective": {"kind": "command"},
        "command": {"argv": ["true"]},
    }
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as err:
        tune_cli.run(
            _cli_args("--config", str(tmp_path / "bad.yaml"), "--run-dir", str(tmp_path / "r"))
        )
    keys = {p.key for p in err.value.problems}
    assert {"space.x", "study.sampler"} <= keys  # every problem at once
    assert not (tmp_path / "r").exists()  # nothing ran
    python = {"space": {"x": [1, 2]}, "objective": {"kind": "python"}}
    (tmp_path / "py.yaml").write_text(yaml.safe_dump(python))
    with pytest.raises(
        ValueError, match=r"objective.kind: python needs objective.function: MODULE:ATTR"
    ):
        tune_cli.run(
            _cli_args("--config", str(tmp_path / "py.yaml"), "--run-dir", str(tmp_path / "r"))
        )


# ---------------------------------------------------------------------------------------------
# CLI smoke: a tiny recipe study on the test corpus
# ---------------------------------------------------------------------------------------------
def test_tune_command_recipe_smoke(
    synth_corpus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "corpus.jsonl"
    # A third of the fixture corpus (all speakers and groups) keeps two trials well under 40 s.
    Manifest(list(synth_corpus)[::3], split="train", root=synth_corpus.root).to_jsonl(manifest)
    recipe = {
        "seed": 1,
        "data": {"corpus": "manifest", "manifest": str(manifest), "dev_fraction": 0.25},
        "features": {"n_mels": 40},
        "specaugment": {"enabled": False},
        "model": {
            "encoder": "lstm",
            "d_model": 32,
            "num_layers": 1,
            "dropout": 0.0,
            "subsampling": 4,
        },
        "schedule": {"name": "constant", "warmup_steps": 10},
        "train": {"epochs": 1, "batch_size": 16, "flatline_patience": 0},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    tuning = {
        "recipe": "recipe.yaml",
        "space": {"optim.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}},
        "study": {
            "name": "smoke",
            "sampler": "random",
            "pruner": "none",
            "n_trials": 5,
            "seed": 0,
        },
        "objective": {"kind": "recipe", "seeds": [1]},
    }
    (tmp_path / "tuning.yaml").write_text(yaml.safe_dump(tuning))
    run_dir = tmp_path / "runs" / "smoke"
    args = _cli_args(
        "--config",
        str(tmp_path / "tuning.yaml"),
        "--n-trials",
        "2",
        "--run-dir",
        str(run_dir),
        "--device",
        "cpu",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
        "--no-tracking",
    )
    assert tune_cli.run(args) == 0
    out = capsys.readouterr().out
    assert "best trial" in out and "optim.lr" in out and "best.yaml" in out
    assert "baseline (the recipe's defaults) trial 0: wer " in out
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert len(by_state(study, TrialState.COMPLETE)) == 2
    # study.baseline: the first trial trains the recipe's own lr (the default), the second a draw
    assert study.trials[0].user_attrs["source"] == "baseline"
    assert "source" not in study.trials[1].user_attrs
    trial = study.best_trial
    assert {"wer", "worst_group_wer"} <= set(trial.user_attrs["metrics"])
    assert trial.user_attrs["history"] and trial.user_attrs["group_wer"]
    assert (run_dir / "trials" / f"{trial.number:04d}" / "config.yaml").exists()
    # every trial dir has its training log (trials run quietly: the file still gets each epoch)
    for t in study.trials:
        log_text = (run_dir / "trials" / f"{t.number:04d}" / "train.log").read_text()
        assert "epoch 1/1  train_loss" in log_text and "finished: complete" in log_text
    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    assert best["optim"]["lr"] == pytest.approx(trial.params["optim.lr"])
    assert (run_dir / "spec.yaml").exists() and (run_dir / "trials.csv").exists()
    # best.yaml is a complete recipe: training it again reproduces the best trial's figure
    from speechtune.config import RunOptions, load_config
    from speechtune.training import train

    again = train(
        load_config(run_dir / "best.yaml"),
        RunOptions(
            output_dir=str(tmp_path / "repro"),
            device="cpu",
            cache_dir=str(tmp_path / "cache"),
            progress=False,
        ),
    )
    assert again.metrics["wer"] == pytest.approx(trial.value, abs=1e-12)
    # the same study again without --resume is refused, with a hint
    assert tune_cli.run(args) == 2
    assert "--resume" in capsys.readouterr().err
