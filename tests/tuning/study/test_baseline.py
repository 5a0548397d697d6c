"""``study.baseline``: a new plain recipe study trains the base recipe's defaults as trial 0."""

from __future__ import annotations

import csv
import math
import threading
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from speechtune.config import ConfigError
from speechtune.reports import write_trials_csv
from speechtune.tuning.backends import run_study
from speechtune.tuning.objectives import FunctionObjective
from speechtune.tuning.spec import TuningSpec, build_spec, load_tuning
from speechtune.tuning.study import (
    BASELINE_SOURCE,
    StudySession,
    baseline_params,
    is_baseline,
    make_storage,
    open_study,
    sample_space,
)
from speechtune.tuning.study._retry import requeue_or_give_up

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: The base recipe's values of the tuned keys (three kinds of param: log float, choice, float).
DEFAULTS = {"optim.lr": 0.002, "model.num_layers": 2, "model.dropout": 0.1}


def _spec(tmp_path: Path, study: dict[str, Any] | None = None, **extra: Any) -> TuningSpec:
    """A recipe study of ``DEFAULTS``'s keys; the tests run it with a function objective."""
    recipe = {
        "seed": 1,
        "model": {"encoder": "lstm", "d_model": 64, "num_layers": 2, "dropout": 0.1},
        "optim": {"lr": 0.002},
        "train": {"epochs": 1},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    tuning = {
        "recipe": "recipe.yaml",
        "space": {
            "optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
            "model.num_layers": [1, 2, 3],
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
        },
        "study": {
            "name": "s",
            "sampler": "tpe",
            "pruner": "none",
            "n_trials": 3,
            "seed": 0,
            **(study or {}),
        },
        "objective": {"kind": "recipe", "seeds": [1]},
        **extra,
    }
    path = tmp_path / "tuning.yaml"
    path.write_text(yaml.safe_dump(tuning))
    return load_tuning(path)


def wer(config: dict[str, Any], reporter: Any) -> dict[str, float]:
    # Smallest at lr 1e-2: the defaults (lr 2e-3) are not the optimum, nor drawn by chance.
    return {"wer": (math.log10(config["optim.lr"]) + 2) ** 2, "size": config["model.num_layers"]}


def _run(spec: TuningSpec, run_dir: Path, **kwargs: Any) -> optuna.Study:
    return run_study(spec, FunctionObjective(wer), run_dir, progress=False, **kwargs)


def _baselines(study: optuna.Study) -> list[int]:
    return [t.number for t in study.get_trials(deepcopy=False) if is_baseline(t)]


def test_a_new_recipe_study_trains_the_defaults_first_and_marks_the_trial(tmp_path: Path) -> None:
    study = _run(_spec(tmp_path), tmp_path / "run")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    first = trials[0]
    assert first.params == DEFAULTS
    assert {k: first.user_attrs["config"][k] for k in DEFAULTS} == DEFAULTS
    assert first.user_attrs["source"] == BASELINE_SOURCE
    assert _baselines(study) == [0]  # the sampler's draws are not marked
    # trials.csv says which row is the defaults, as it does for a multi-fidelity baseline
    with write_trials_csv(study, tmp_path / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["source"] for r in rows] == [BASELINE_SOURCE, "", ""]


def test_a_resumed_study_gets_no_second_baseline(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    _run(spec, tmp_path / "run")
    study = _run(spec, tmp_path / "run", n_trials=5, resume=True)
    assert len(study.trials) == 5 and _baselines(study) == [0]


def test_a_study_begun_without_a_baseline_is_resumed_without_one(tmp_path: Path) -> None:
    # As a study created before study.baseline existed: its resume must not add the defaults.
    _run(_spec(tmp_path, {"baseline": False}), tmp_path / "run")
    study = _run(_spec(tmp_path), tmp_path / "run", n_trials=5, resume=True)
    assert len(study.trials) == 5 and _baselines(study) == []


def test_baseline_false_keeps_the_samplers_first_draw(tmp_path: Path) -> None:
    off = _run(_spec(tmp_path, {"baseline": False}), tmp_path / "off")
    assert _baselines(off) == [] and off.trials[0].params != DEFAULTS
    # With it on, the sampler's draws follow the defaults: the same seed asks the same configs.
    on = _run(_spec(tmp_path), tmp_path / "on")
    assert on.trials[1].params == off.trials[0].params


def test_a_python_objective_has_no_baseline(tmp_path: Path) -> None:
    spec = build_spec(
        {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
        study_name="py",
        n_trials=2,
        sampler="random",
        pruner="none",
        seed=0,
    )
    assert spec.objective.kind == "python" and baseline_params(spec) is None
    study = run_study(
        spec,
        FunctionObjective(lambda c, r: {"wer": c["optim.lr"]}),
        tmp_path,
        progress=False,
    )
    assert len(study.trials) == 2 and _baselines(study) == []


def test_a_multi_objective_recipe_study_has_no_baseline(tmp_path: Path) -> None:
    _spec(tmp_path, {"sampler": "nsga2"})
    raw = yaml.safe_load((tmp_path / "tuning.yaml").read_text())
    raw["objective"]["extra_objectives"] = ["size"]
    (tmp_path / "tuning.yaml").write_text(yaml.safe_dump(raw))
    spec = load_tuning(tmp_path / "tuning.yaml")
    assert spec.objective.is_multi_objective and baseline_params(spec) is None
    study = _run(spec, tmp_path / "run")
    assert len(study.trials) == 3 and _baselines(study) == []


def test_only_the_process_that_begins_a_shared_study_enqueues_it(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"storage": "journal"})
    run_dir = tmp_path / "run"
    with StudySession(spec, run_dir, resume=True) as creator:
        assert creator.baseline == DEFAULTS
    # A worker joining the study (it always resumes) leaves the queued baseline alone.
    with StudySession(spec, run_dir, resume=True) as worker:
        assert worker.baseline is None
    study = open_study(spec, run_dir, resume=True)
    waiting = study.get_trials(deepcopy=False)
    assert len(waiting) == 1 and waiting[0].state.name == "WAITING" and is_baseline(waiting[0])


def test_on_new_is_called_when_a_study_begins_and_not_on_resume(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"baseline": False})
    calls: list[str] = []
    open_study(spec, tmp_path, on_new=lambda s: calls.append(s.study_name))
    assert calls == ["s"]
    open_study(spec, tmp_path, resume=True, on_new=lambda s: calls.append("resumed"))
    assert calls == ["s"]
    # Without resume, an existing study with no trials (a run stopped before its first) begins again.
    open_study(spec, tmp_path, on_new=lambda s: calls.append("again"))
    assert calls == ["s", "again"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_retry_of_the_baseline_is_still_the_baseline(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    with StudySession(spec, tmp_path) as session:
        study = session.study
    trial = study.ask()  # the enqueued baseline
    sample_space(spec.space, trial, spec.base_flat)  # as a trial runner does: params recorded
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    failed = study.trials[0]
    assert is_baseline(failed)
    assert requeue_or_give_up(study, failed, "killed while running", max_retries=2)
    retry = study.trials[-1]
    assert retry.state.name == "WAITING" and retry.params == DEFAULTS and is_baseline(retry)


def test_a_base_value_outside_the_space_is_clipped_into_it(tmp_path: Path) -> None:
    _spec(tmp_path)
    raw = yaml.safe_load((tmp_path / "tuning.yaml").read_text())
    raw["space"]["optim.lr"]["low"] = 0.005  # the recipe's 0.002 is below the range
    raw["space"]["model.num_layers"] = [1, 3]  # the recipe's 2 is not offered
    (tmp_path / "tuning.yaml").write_text(yaml.safe_dump(raw))
    spec = load_tuning(tmp_path / "tuning.yaml")
    params = baseline_params(spec)
    assert params is not None
    assert params["optim.lr"] == pytest.approx(0.005) and params["model.dropout"] == 0.1
    assert "model.num_layers" not in params  # left to the sampler


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_bad_baseline_value_is_one_clear_problem(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigError) as err:
        _spec(tmp_path, {"baseline": value})
    problems = err.value.problems
    assert len(problems) == 1 and problems[0].key == "study.baseline"
    assert "true or false" in problems[0].rule


def test_workers_beginning_one_journal_study_at_once_enqueue_one_baseline(tmp_path: Path) -> None:
    # Each thread opens the study through its own storage object, as worker processes do: the
    # journal's ordered log lets exactly one create succeed, and only that one enqueues.
    spec = _spec(tmp_path, {"storage": "journal"})
    barrier = threading.Barrier(4)
    found: list[dict[str, Any] | None] = []

    def join() -> None:
        barrier.wait()
        with StudySession(spec, tmp_path / "run", resume=True) as session:
            found.append(session.baseline)

    threads = [threading.Thread(target=join) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(found, key=lambda b: b is None) == [DEFAULTS, None, None, None]
    study = open_study(spec, tmp_path / "run", resume=True)
    assert [t.number for t in study.trials if is_baseline(t)] == [0] and len(study.trials) == 1


@pytest.mark.parametrize("rep", range(3))
def test_runners_asking_at_once_on_sqlite_train_the_waiting_baseline_once(
    tmp_path: Path, rep: int
) -> None:
    # SQLite ignores SELECT ... FOR UPDATE: Optuna's own RDBStorage gave the enqueued trial to
    # two of four threads asking together in 8 of 10 tries (the baseline trained twice, the
    # second tell failed with "Cannot tell a COMPLETE trial" and the CLI exited 1).
    study = optuna.create_study(storage=make_storage(None, tmp_path), study_name=f"race{rep}")
    study.enqueue_trial({"x": 1.0}, user_attrs={"source": BASELINE_SOURCE})
    barrier = threading.Barrier(4)
    got: list[int] = []

    def ask() -> None:
        barrier.wait()
        got.append(study.ask().number)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [0, 1, 2, 3]
    first = study.get_trials(deepcopy=False)[0]
    assert first.state.name == "RUNNING" and first.datetime_start is not None
    study.tell(0, 1.0)  # a finished trial is no longer claimable: the next ask makes a new one
    assert study.ask().number == 4


def test_a_recipe_study_with_two_jobs_on_sqlite_completes_every_trial(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"n_trials": 4, "n_jobs": 2})
    study = _run(spec, tmp_path / "run")
    trials = study.get_trials(deepcopy=False)
    # (two threads may start one trial past n_trials: at least 4, every one complete)
    assert len(trials) >= 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert _baselines(study) == [0] and trials[0].params == DEFAULTS
    assert sum(t.params == DEFAULTS for t in trials) == 1
