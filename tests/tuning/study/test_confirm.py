"""``study.confirm_top`` / ``speechtune confirm``: the best configs trained again on new seeds.

The function objective below has one lucky seed: with the study's seed 1, one layer scores
0.10 although its true value (every other seed) is 0.30, so the search picks it; on new seeds
the confirmation sees through it and picks the config that is better on average.
"""

from __future__ import annotations

import copy
import re
import threading
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from speechtune.cli._main import main
from speechtune.config import ConfigError
from speechtune.reports import write_best_yaml, write_study_outputs
from speechtune.tuning.backends import run_study
from speechtune.tuning.objectives import FunctionObjective
from speechtune.tuning.spec import TuningSpec, load_tuning
from speechtune.tuning.study import (
    CONFIRMATION_ATTR,
    confirm_candidates,
    confirm_seeds_for,
    confirmation_rows,
    confirmed_choice,
    is_baseline,
    load_study,
    run_confirmation,
    select_best,
    trial_config,
)
from tests.helpers.recipes import TINY_RECIPE, write_tiny_recipe_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: The true dev WER of each ``model.num_layers`` (2 is the recipe's default).
TRUE = {1: 0.30, 2: 0.25, 3: 0.20}


class Calls:
    """The objective, counting its calls as (layers, seed); ``fail`` makes some calls error."""

    def __init__(self, fail: set[tuple[int, int]] | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.fail = fail or set()
        self._lock = threading.Lock()

    def __call__(self, config: dict[str, Any], reporter: Any, seed: int) -> dict[str, float]:
        layers = int(config["model.num_layers"])
        with self._lock:
            self.calls.append((layers, seed))
        if (layers, seed) in self.fail:
            raise RuntimeError(f"broken run: {layers} layers, seed {seed}")
        lucky = -0.20 if (layers, seed) == (1, 1) else 0.0
        # A small config-dependent term keeps distinct lr values apart (no exact ties).
        return {"wer": TRUE[layers] + lucky + 1e-4 * config["optim.lr"]}


def _spec(tmp_path: Path, **study: Any) -> TuningSpec:
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["model"]["num_layers"] = 2
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    tuning = {
        "recipe": "recipe.yaml",
        "space": {
            "model.num_layers": [1, 2, 3],
            "optim.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
        },
        "study": {
            "name": "c",
            "sampler": "random",
            "pruner": "none",
            "n_trials": 10,
            "seed": 3,
            **study,
        },
        "objective": {"kind": "recipe", "seeds": [1]},
    }
    (tmp_path / "tuning.yaml").write_text(yaml.safe_dump(tuning))
    return load_tuning(tmp_path / "tuning.yaml")


def _layers(trial: optuna.trial.FrozenTrial) -> int:
    return int(trial_config(trial)["model.num_layers"])


def test_the_confirmation_sees_through_a_lucky_seed_and_best_yaml_follows(tmp_path: Path) -> None:
    calls = Calls()
    spec = _spec(tmp_path, confirm_top=2, confirm_seeds=[2, 3])
    run_dir = tmp_path / "run"
    study = run_study(
        spec, FunctionObjective(calls), run_dir, progress=False, outputs=write_study_outputs
    )
    searched = [c for c in calls.calls if c[1] == 1]
    assert {layers for layers, _ in searched} == {1, 2, 3}  # the search tried every layer count
    # Without the confirmation the lucky config would win: it has the best study value.
    by_value = min(study.get_trials(deepcopy=False), key=lambda t: t.values[0])
    assert _layers(by_value) == 1

    rows = confirmation_rows(study)
    # The two best distinct configs, then the baseline (the recipe's defaults, 2 layers).
    assert [_layers(study.trials[r.trial]) for r in rows][:1] == [1]
    assert rows[-1].baseline and _layers(study.trials[rows[-1].trial]) == 2
    assert len(rows) == 3
    assert all(sorted(r.values) == [2, 3] for r in rows)
    confirm_calls = [c for c in calls.calls if c[1] != 1]
    assert sorted(s for _, s in confirm_calls) == [2, 2, 2, 3, 3, 3]

    choice = select_best(study)
    assert choice is not None
    assert _layers(choice.trial) == 3  # the best mean on seeds 2 and 3
    assert "new seeds 2, 3" in choice.note
    best = (tmp_path / "run" / "best.yaml").read_text()
    assert f"trial {choice.trial.number}" in best.splitlines()[0]
    assert "new seeds 2, 3" in best
    assert yaml.safe_load(best)["model"]["num_layers"] == 3
    report = (run_dir / "report.html").read_text()
    assert "Confirmation on new seeds" in report and f"trial #{choice.trial.number}" in report
    # Every run has its own directory beside the study's trials.
    runs = study.user_attrs[CONFIRMATION_ATTR]["runs"]
    dirs = {r["dir"] for by_seed in runs.values() for r in by_seed.values()}
    assert len(dirs) == 6
    assert all(Path(d).parent.parent == (run_dir / "confirm").resolve() for d in dirs)


def test_a_resumed_confirmation_runs_only_what_is_missing(tmp_path: Path) -> None:
    calls = Calls()
    spec = _spec(tmp_path)
    study = run_study(spec, FunctionObjective(calls), tmp_path / "run", progress=False)
    assert CONFIRMATION_ATTR not in study.user_attrs  # confirm_top 0: off by default
    before = len(calls.calls)
    run_confirmation(
        study, FunctionObjective(calls), spec.objective, tmp_path / "run", top=1, seeds=[5]
    )
    assert len(calls.calls) == before + 2  # the best config and the baseline, one seed
    # Again with one more config: the recorded runs are kept, only the new one trains.
    run_confirmation(
        study, FunctionObjective(calls), spec.objective, tmp_path / "run", top=2, seeds=[5]
    )
    assert len(calls.calls) == before + 3
    # Other seeds are a new confirmation.
    run_confirmation(
        study, FunctionObjective(calls), spec.objective, tmp_path / "run", top=1, seeds=[6]
    )
    assert len(calls.calls) == before + 5
    assert study.user_attrs[CONFIRMATION_ATTR]["seeds"] == [6]


def test_a_failed_run_leaves_its_config_out_and_never_stops_the_others(tmp_path: Path) -> None:
    calls = Calls(fail={(3, 3)})
    spec = _spec(tmp_path, confirm_top=2, confirm_seeds=[2, 3])
    study = run_study(spec, FunctionObjective(calls), tmp_path / "run", progress=False)
    rows = {_layers(study.trials[r.trial]): r for r in confirmation_rows(study)}
    assert 3 in rows[3].failed and "broken run" in rows[3].failed[3]
    assert sorted(rows[1].values) == sorted(rows[2].values) == [2, 3]
    choice = confirmed_choice(study)
    assert choice is not None and is_baseline(choice[0])  # 0.25 beats the lucky config's 0.30


def test_confirmation_checks_its_seeds_and_its_study(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"study\.confirm_seeds.*objective\.seeds"):
        _spec(tmp_path, confirm_top=2, confirm_seeds=[1, 2])
    with pytest.raises(ConfigError, match=r"study\.confirm_top"):
        _spec(tmp_path, confirm_top=-1)
    assert confirm_seeds_for(_spec(tmp_path, confirm_top=2)) == [2, 3]  # after objective.seeds

    calls = Calls()
    spec = _spec(tmp_path)
    study = run_study(spec, FunctionObjective(calls), tmp_path / "run", progress=False)
    objective = FunctionObjective(calls)
    with pytest.raises(ValueError, match="objective.seeds"):
        run_confirmation(study, objective, spec.objective, tmp_path, top=1, seeds=[1])
    with pytest.raises(ValueError, match="top must be >= 1"):
        run_confirmation(study, objective, spec.objective, tmp_path, top=0, seeds=[4])
    # Candidates are distinct configs: a repeated config is confirmed once.
    configs = [str(trial_config(t)) for t in confirm_candidates(study, 20)]
    assert len(configs) == len(set(configs))


def test_speechtune_confirm_on_a_real_recipe_study(tmp_path: Path, capsys) -> None:
    tuning = write_tiny_recipe_study(tmp_path, "real", n_trials=3)
    run_dir = tmp_path / "run"
    common = ["--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--threads", "1"]
    argv = ["tune", "--config", str(tuning), "--run-dir", str(run_dir)]
    assert main([*argv, *common, "--quiet", "--no-tracking"]) == 0
    capsys.readouterr()

    assert main(["confirm", str(run_dir), "--top", "1", "--seeds", "7", *common]) == 0
    out = capsys.readouterr().out
    study = load_study(run_dir)
    rows = confirmation_rows(study)
    assert len(rows) == 2 and sum(r.baseline for r in rows) == 1  # the best and the defaults
    assert all(list(r.values) == [7] for r in rows)
    for r in rows:  # each value is what that run measured, in its own directory
        metrics = yaml.safe_load(
            (run_dir / "confirm" / f"trial-{r.trial:04d}" / "seed7" / "metrics.json").read_text()
        )
        assert metrics["dev_loss"] == pytest.approx(r.values[7])
    picked = min(rows, key=lambda r: r.values[7])
    assert re.search(rf"confirmed: trial {picked.trial}\b", out), out
    assert "(* the baseline" in out
    best = (run_dir / "best.yaml").read_text()
    assert f"trial {picked.trial}," in best.splitlines()[0] and "new seeds 7" in best
    # The written best.yaml is the one write_best_yaml makes from the study.
    assert write_best_yaml(study, tmp_path / "again.yaml").read_text() == best
    # A second run has nothing left to train.
    assert main(["confirm", str(run_dir), "--top", "1", "--seeds", "7", *common]) == 0
    assert "confirm trial" not in capsys.readouterr().out


def test_speechtune_tune_confirms_a_python_function(tmp_path: Path) -> None:
    import speechtune

    def fn(config: dict[str, Any], reporter: Any, seed: int) -> dict[str, float]:
        # x = 0.1 is lucky at the study's seed 0 only; x = 0.9 is better on every other seed.
        lucky = -0.5 if (seed == 0 and config["x"] == 0.1) else 0.0
        return {"wer": {0.1: 0.4, 0.5: 0.5, 0.9: 0.3}[config["x"]] + lucky}

    study = speechtune.tune(
        fn,
        {"x": [0.1, 0.5, 0.9]},
        n_trials=12,
        sampler="random",
        pruner="none",
        seed=3,
        seeds=[0],
        run_dir=tmp_path / "run",
        confirm_top=2,
        confirm_seeds=[1, 2],
    )
    assert {t.params["x"] for t in study.trials} == {0.1, 0.5, 0.9}
    choice = select_best(study)
    assert choice is not None and choice.trial.params["x"] == 0.9
    assert [r.baseline for r in confirmation_rows(study)] == [False, False]
    with pytest.raises(ValueError, match="confirm_seeds"):
        speechtune.tune(fn, {"x": [0.1]}, seeds=[0], confirm_top=1, confirm_seeds=[0])


def test_an_unfinished_confirmation_picks_nothing_yet(tmp_path: Path) -> None:
    calls = Calls()
    spec = _spec(tmp_path)
    study = run_study(spec, FunctionObjective(calls), tmp_path / "run", progress=False)
    before = select_best(study)
    assert before is not None
    run_confirmation(study, FunctionObjective(calls), spec.objective, tmp_path, top=2, seeds=[4])
    record = dict(study.user_attrs[CONFIRMATION_ATTR])
    # As if interrupted after the first config's run: the others have none yet.
    first = str(record["candidates"][0])
    record["runs"] = {first: record["runs"][first]}
    study.set_user_attr(CONFIRMATION_ATTR, record)
    assert confirmed_choice(study) is None
    choice = select_best(study)
    assert choice is not None and choice.trial.number == before.trial.number
    # Resuming trains only the missing runs, and then the pick is made.
    n = len(calls.calls)
    run_confirmation(study, FunctionObjective(calls), spec.objective, tmp_path, top=2, seeds=[4])
    assert len(calls.calls) == n + len(record["candidates"]) - 1
    assert confirmed_choice(study) is not None
