"""Multi-fidelity studies stored in Optuna: job records, continuation, budget, pruning per rung, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import speechtune
from speechtune.tuning.backends._mf_driver import RungPruner
from speechtune.tuning.spec import load_tuning

SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}}


class Curve:
    """A learning curve that keeps its state in trial_dir, so a promoted config continues."""

    def __init__(self, interrupt_at_call: int | None = None) -> None:
        self.calls = 0
        self.interrupt_at_call = interrupt_at_call

    def __call__(self, config: dict, reporter, trial_dir: Path) -> dict | None:
        self.calls += 1
        if self.interrupt_at_call is not None and self.calls == self.interrupt_at_call:
            raise KeyboardInterrupt  # the process dies mid-trial
        trial_dir = Path(trial_dir)
        start = 0
        if (trial_dir / "continue_from.json").exists():
            start = json.loads((trial_dir / "state.json").read_text())["epoch"]
        value = None
        for epoch in range(start + 1, config["epochs"] + 1):
            value = (config["x"] - 0.3) ** 2 + 1.0 / epoch
            if reporter.report(epoch, wer=value):
                return None
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / "state.json").write_text(json.dumps({"epoch": config["epochs"]}))
        return {"wer": value, "start_epoch": start}


def _tune(run_dir: Path, fn, budget: float, **kw) -> optuna.Study:
    return speechtune.tune(
        fn.__call__ if isinstance(fn, Curve) else fn,
        SPACE,
        fidelity={"epochs": [1, 3, 9]},
        strategy="hyperband",
        budget=budget,
        run_dir=run_dir,
        pruner="none",
        **kw,
    )


def _jobs(study: optuna.Study) -> list[tuple]:
    done = [t for t in study.trials if "told" in t.user_attrs]
    done.sort(key=lambda t: t.user_attrs["told"])
    return [
        (t.user_attrs["config_id"], t.user_attrs["rung"], round(t.params["x"], 12), t.state.name)
        for t in done
    ]


def test_jobs_are_trials_with_records_and_promotions_continue(tmp_path: Path) -> None:
    study = _tune(tmp_path / "run", Curve(), budget=4)
    fid = study.user_attrs["fidelity"]
    assert fid["strategy"] == "hyperband" and [r["name"] for r in fid["rungs"]] == [
        "epochs=1",
        "epochs=3",
        "epochs=9",
    ]
    trials = study.trials
    assert [t.user_attrs["rung"] for t in trials[:13]] == [0] * 9 + [1] * 3 + [2]
    promoted = [t for t in trials if t.user_attrs["source"] == "promotion"]
    assert promoted
    for t in promoted:
        parent = study.trials[t.user_attrs["parent_trial"]]
        assert parent.user_attrs["config_id"] == t.user_attrs["config_id"]
        assert parent.user_attrs["rung"] == t.user_attrs["rung"] - 1
        # It continued from its parent's epochs instead of training anew.
        assert t.user_attrs["metrics"]["start_epoch"] == [1, 3, 9][parent.user_attrs["rung"]]
        assert (tmp_path / "run" / "trials" / f"{t.number:04d}" / "continue_from.json").exists()
    # The budget is spent, and not overspent by more than one job.
    used = study.user_attrs["budget_used"]
    assert 4 <= used < 4 + 1
    assert sum(t.user_attrs["job_cost"] for t in trials) == pytest.approx(used)
    # best.yaml holds the best config measured at the top rung.
    best = yaml.safe_load((tmp_path / "run" / "best.yaml").read_text())
    top = [t for t in trials if t.user_attrs["rung"] == 2 and t.state == TrialState.COMPLETE]
    winner = min(top, key=lambda t: t.value)
    assert best["x"] == pytest.approx(winner.params["x"])


def test_a_budget_that_ends_below_the_top_rung_still_ends_with_a_top_rung_result(
    tmp_path: Path,
) -> None:
    # Hyperband's first bracket (9 configs at 1 epoch, 3 at 3, 1 at 9) costs 2 full trainings:
    # a budget of 1.5 ends while its configs continue to 3 epochs.
    study = _tune(tmp_path / "run", Curve(), budget=1.5)
    trials = sorted(study.trials, key=lambda t: t.user_attrs["told"])
    top = [t for t in trials if t.user_attrs["rung"] == 2]
    assert len(top) == 1 and top[0] is trials[-1] and top[0].state == TrialState.COMPLETE
    # The closing job continued the best config of the highest rung reached (3 epochs).
    at_3 = [t for t in trials if t.user_attrs["rung"] == 1 and t.state == TrialState.COMPLETE]
    best_at_3 = min(at_3, key=lambda t: t.value)
    assert top[0].user_attrs["config_id"] == best_at_3.user_attrs["config_id"]
    assert study.trials[top[0].user_attrs["parent_trial"]].user_attrs["rung"] == 1
    assert top[0].user_attrs["metrics"]["start_epoch"] == 3
    # Over the budget by the job that crossed it (2/9) and the closing one (6/9) at most, and
    # the study has a result to ship.
    assert 1.5 <= study.user_attrs["budget_used"] <= 1.5 + 2 / 9 + 6 / 9 + 1e-9
    best = yaml.safe_load((tmp_path / "run" / "best.yaml").read_text())
    assert best["x"] == pytest.approx(top[0].params["x"])


def test_a_study_resumed_after_a_kill_makes_the_same_decisions(tmp_path: Path) -> None:
    whole = _tune(tmp_path / "whole", Curve(), budget=5)
    with pytest.raises(KeyboardInterrupt):
        _tune(tmp_path / "killed", Curve(interrupt_at_call=11), budget=5)
    left = optuna.load_study(
        study_name="speechtune", storage=f"sqlite:///{tmp_path / 'killed' / 'study.db'}"
    )
    assert any(t.state == TrialState.RUNNING for t in left.trials)
    resumed = _tune(tmp_path / "killed", Curve(), budget=5, resume=True)
    assert _jobs(resumed) == _jobs(whole)
    assert not any(t.state == TrialState.RUNNING for t in resumed.trials)
    assert any(
        t.user_attrs.get("reason") == "interrupted: re-run on resume" for t in resumed.trials
    )


def test_extending_the_budget_on_resume_continues_the_same_sequence(tmp_path: Path) -> None:
    whole = _tune(tmp_path / "whole", Curve(), budget=6)
    _tune(tmp_path / "part", Curve(), budget=2)
    resumed = _tune(tmp_path / "part", Curve(), budget=6, resume=True)
    assert _jobs(resumed) == _jobs(whole)


def test_a_failing_config_is_recorded_and_the_study_goes_on(tmp_path: Path) -> None:
    def flaky(config: dict, reporter, trial_dir: Path) -> dict:
        if config["x"] > 0.6:
            raise RuntimeError("diverged: loss is nan")
        return {"wer": config["x"] + 1.0 / config["epochs"]}

    study = _tune(tmp_path / "run", flaky, budget=3)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and all("diverged" in t.user_attrs["reason"] for t in failed)
    assert all(t.params["x"] <= 0.6 for t in study.trials if t.user_attrs["source"] == "promotion")


def test_rung_pruner_compares_a_trial_with_its_own_rung_only() -> None:
    study = optuna.create_study(
        pruner=RungPruner(optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    )
    for value in (0.1, 0.2, 0.3):
        t = study.ask()
        t.set_user_attr("rung", 0)
        t.report(value, step=1)
        study.tell(t, value)
    # A rung-1 trial (more data: a different curve) far above rung 0 at the same epoch.
    t = study.ask()
    t.set_user_attr("rung", 1)
    t.report(5.0, step=1)
    assert not t.should_prune()
    study.tell(t, 5.0)
    t2 = study.ask()
    t2.set_user_attr("rung", 1)
    t2.report(9.0, step=1)
    assert t2.should_prune()  # now there is a rung-1 trial to compare with
    t3 = study.ask()
    t3.set_user_attr("rung", 0)
    t3.report(9.0, step=1)
    assert t3.should_prune()


def test_tune_rejects_a_bad_fidelity(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="budgets for 'epochs' must increase"):
        speechtune.tune(Curve().__call__, SPACE, fidelity={"epochs": [3, 1]}, budget=2)
    with pytest.raises(ValueError, match="unknown strategy 'grid'"):
        speechtune.tune(
            Curve().__call__, SPACE, fidelity={"epochs": [1, 3]}, strategy="grid", budget=2
        )
    with pytest.raises(ValueError, match="warm_start: .*does not exist"):
        speechtune.tune(
            Curve().__call__,
            SPACE,
            fidelity={"epochs": [1, 3]},
            budget=2,
            warm_start=tmp_path / "nope",
        )
    with pytest.raises(ValueError, match="need a fidelity"):
        speechtune.tune(Curve().__call__, SPACE, budget=2)


#: One Hyperband bracket of two 1-epoch configs, the better continued to epoch 2 (1.5 trainings).
ONE_BRACKET = {
    "strategy": "hyperband",
    "eta": 2,
    "budget": 1.5,
    "baseline": False,  # the tests follow one bracket's promotion
    "rungs": [
        {"name": "e1", "overrides": {"train.epochs": 1}},
        {"name": "e2", "overrides": {"train.epochs": 2}},
    ],
}


def test_recipe_study_promotes_by_continuing_from_the_checkpoint(
    synth_corpus, tmp_path: Path, capsys
) -> None:
    from speechtune.cli import tune as tune_cli

    run_dir, args = _tiny_recipe_study(
        synth_corpus,
        tmp_path,
        schedule={"name": "warmup_cosine", "warmup_steps": 2},
        study={"name": "mf", "n_trials": 20},
        fidelity=ONE_BRACKET,
    )
    assert tune_cli.run(args) == 0
    out = capsys.readouterr().out
    assert "compute spent: 1.50 full-training equivalents" in out
    study = optuna.load_study(study_name="mf", storage=f"sqlite:///{run_dir / 'study.db'}")
    rungs = [t.user_attrs["rung"] for t in study.trials]
    assert rungs == [0, 0, 1] and all(t.state == TrialState.COMPLETE for t in study.trials)
    low = [t for t in study.trials if t.user_attrs["rung"] == 0]
    promoted = study.trials[2]
    parent = study.trials[promoted.user_attrs["parent_trial"]]
    assert parent.value == min(t.value for t in low)  # the better config went up
    # The cheap run followed the 2-epoch schedule it may be continued to ...
    saved = yaml.safe_load(
        (run_dir / "trials" / f"{parent.number:04d}" / "config.yaml").read_text()
    )
    assert saved["train"]["epochs"] == 1 and saved["train"]["schedule_epochs"] == 2
    # ... and the promoted trial trained only epoch 2, from the parent's checkpoint.
    assert sorted(promoted.intermediate_values) == [2]
    assert [row["epoch"] for row in promoted.user_attrs["history"]] == [1, 2]
    assert promoted.user_attrs["history"][0]["wer"] == pytest.approx(
        parent.user_attrs["history"][0]["wer"], abs=0
    )
    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    assert best["optim"]["lr"] == pytest.approx(promoted.params["optim.lr"])
    assert best["train"]["epochs"] == 2


def test_a_worst_group_study_ranks_its_cheap_rung_by_the_worst_groups_dev_loss(
    synth_corpus, tmp_path: Path
) -> None:
    from speechtune.cli import tune as tune_cli

    run_dir, args = _tiny_recipe_study(
        synth_corpus,
        tmp_path,
        schedule={"name": "warmup_cosine", "warmup_steps": 2},
        study={"name": "wg", "n_trials": 20},
        fidelity=ONE_BRACKET,
        objective={"group": "worst_group"},
    )
    # No rank_metric in the YAML: the default for a worst-group objective, which the driver reads
    # from each cheap trial's metrics (a trial without it would stop the study with an error).
    assert load_tuning(tmp_path / "tuning.yaml").fidelity.rank_metric == "worst_group_dev_loss"
    assert tune_cli.run(args) == 0
    study = optuna.load_study(study_name="wg", storage=f"sqlite:///{run_dir / 'study.db'}")
    low = [t for t in study.trials if t.user_attrs["rung"] == 0]
    top = [t for t in study.trials if t.user_attrs["rung"] == 1]
    assert len(low) == 2 and len(top) == 1
    for t in low:  # each accent's dev loss is measured; the worst one ranks the cheap rung
        m = t.user_attrs["metrics"]
        assert set(t.user_attrs["group_dev_loss"]) == {"en-us", "en-gb-scotland"}
        assert m["worst_group_dev_loss"] == max(t.user_attrs["group_dev_loss"].values())
    # (every WER is 1.0 after one epoch here: the objective alone could not rank them)
    parent = study.trials[top[0].user_attrs["parent_trial"]]
    loss = {t.number: t.user_attrs["metrics"]["worst_group_dev_loss"] for t in low}
    assert parent.number == min(loss, key=loss.__getitem__)
    # the top rung is judged by the objective itself: the worst group's WER
    assert top[0].value == pytest.approx(top[0].user_attrs["metrics"]["worst_group_wer"])


def test_parallel_workers_promote_asynchronously(tmp_path: Path) -> None:
    def fn(config: dict, reporter, trial_dir: Path) -> dict:
        return {"wer": (config["x"] - 0.3) ** 2 + 1.0 / config["epochs"]}

    study = speechtune.tune(
        fn,
        SPACE,
        fidelity={"epochs": [1, 3, 9]},
        strategy="asha",
        budget=4,
        run_dir=tmp_path / "run",
        pruner="none",
        n_jobs=2,
    )
    trials = study.trials
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.user_attrs["job"]["number"] for t in trials) == list(range(len(trials)))
    assert {t.user_attrs["rung"] for t in trials} == {0, 1, 2}
    # Every promotion's parent was finished, and was among the best third of its rung when promoted.
    for t in trials:
        if t.user_attrs["source"] == "promotion":
            parent = study.trials[t.user_attrs["parent_trial"]]
            assert (
                parent.state == TrialState.COMPLETE
                and parent.user_attrs["config_id"] == t.user_attrs["config_id"]
            )
    assert (
        4 <= study.user_attrs["budget_used"] < 4 + 2
    )  # two jobs may be in flight when the budget is reached


def test_warm_start_tries_the_previous_best_configs_first(tmp_path: Path) -> None:
    def fn(config: dict, reporter, trial_dir: Path) -> dict:
        return {"wer": (config["x"] - 0.3) ** 2 + 1.0 / config["epochs"]}

    first = speechtune.tune(
        fn,
        SPACE,
        fidelity={"epochs": [1, 3, 9]},
        strategy="hyperband",
        budget=4,
        run_dir=tmp_path / "a",
        pruner="none",
    )
    top = sorted(
        (t for t in first.trials if t.user_attrs["rung"] == 2 and t.state == TrialState.COMPLETE),
        key=lambda t: t.value,
    )
    second = speechtune.tune(
        fn,
        SPACE,
        fidelity={"epochs": [1, 3, 9]},
        strategy="speechtune",
        budget=1,
        run_dir=tmp_path / "b",
        pruner="none",
        warm_start=tmp_path / "a",
        seed=5,
    )
    warm = [t for t in second.trials if t.user_attrs["source"] == "warm_start"]
    assert warm and warm[0].number == 0
    assert warm[0].params["x"] == pytest.approx(top[0].params["x"])


def test_rank_metric_ranks_cheap_rungs_where_the_objective_ties(tmp_path: Path) -> None:
    def fn(config: dict, reporter, trial_dir: Path) -> dict:
        loss = (config["x"] - 0.3) ** 2 + 1.0 / config["epochs"]
        # Like CTC early on: every config's WER is 1.0 (all blank) until the last budget.
        wer = 1.0 if config["epochs"] < 9 else loss
        reporter.report(config["epochs"], wer=wer, dev_loss=loss)
        return {"wer": wer, "dev_loss": loss}

    def promoted_x(rank_metric: str | None, name: str) -> list[float]:
        study = speechtune.tune(
            fn,
            SPACE,
            fidelity={"epochs": [1, 3, 9]},
            strategy="hyperband",
            budget=1.6,
            run_dir=tmp_path / name,
            pruner="none",
            rank_metric=rank_metric,
        )
        low = [t for t in study.trials if t.user_attrs["rung"] == 0]
        up = [t for t in study.trials if t.user_attrs["rung"] == 1]
        best3 = sorted(low, key=lambda t: abs(t.params["x"] - 0.3))[:3]
        return sorted(t.params["x"] for t in up), sorted(t.params["x"] for t in best3)

    up, best = promoted_x("dev_loss", "loss")
    assert up == best  # dev loss picked the three configs closest to the optimum
    # Below the top rung the pruner sees the rank metric too (trials compete on what promotes them).
    study = optuna.load_study(
        study_name="speechtune", storage=f"sqlite:///{tmp_path / 'loss' / 'study.db'}"
    )
    low = next(t for t in study.trials if t.user_attrs["rung"] == 0)
    assert low.intermediate_values[1] == pytest.approx(low.user_attrs["metrics"]["dev_loss"])
    up, best = promoted_x(None, "wer")
    assert up != best  # tied WERs promote arbitrary configs


def test_cheap_rungs_rank_by_the_last_epochs_value_not_the_best_wer_epochs(
    tmp_path: Path,
) -> None:
    # A recipe's final metrics are its best-WER epoch's; while every WER ties near 1.0 that is
    # any epoch (on AN4, often the first), whose dev loss says little about the config.
    def fn(config: dict, reporter, trial_dir: Path) -> dict:
        gap = (config["x"] - 0.3) ** 2
        for epoch in range(1, config["epochs"] + 1):
            wer = 1.0 if config["epochs"] < 9 else gap + 1.0 / epoch
            reporter.report(epoch, wer=wer, dev_loss=gap + 1.0 / epoch)
        # final metrics of an early epoch: a dev loss that ranks the configs backwards
        return {"wer": wer, "dev_loss": 5.0 - gap}

    study = speechtune.tune(
        fn,
        SPACE,
        fidelity={"epochs": [1, 3, 9]},
        strategy="hyperband",
        budget=1.6,
        run_dir=tmp_path / "run",
        pruner="none",
        rank_metric="dev_loss",
    )
    low = [t for t in study.trials if t.user_attrs["rung"] == 0]
    up = sorted(t.params["x"] for t in study.trials if t.user_attrs["rung"] == 1)
    assert up == sorted(
        t.params["x"] for t in sorted(low, key=lambda t: abs(t.params["x"] - 0.3))[:3]
    )
    # trials.csv shows what each cheap-rung trial was ranked by beside its (best-epoch) value.
    with (tmp_path / "run" / "trials.csv").open() as fh:
        rows = {int(r["number"]): r for r in csv.DictReader(fh)}
    for t in low:
        last = (t.params["x"] - 0.3) ** 2 + 1.0 / t.user_attrs["config"]["epochs"]
        assert float(rows[t.number]["rank_value"]) == pytest.approx(last)
        assert float(rows[t.number]["metrics.dev_loss"]) != pytest.approx(last)
    assert all(
        rows[t.number]["rank_value"] == "" for t in study.trials if t.user_attrs["rung"] == 2
    )


def test_default_ladder_is_scaled_to_the_prepared_corpus(synth_corpus, tmp_path: Path) -> None:
    from speechtune.cli import tune as tune_cli

    run_dir, args = _tiny_recipe_study(
        synth_corpus,
        tmp_path,
        schedule={"name": "constant", "warmup_steps": 2},
        study={"name": "ladder", "n_trials": 1},
        fidelity={"strategy": "hyperband", "baseline": False},
    )
    tune_cli.run(args)
    study = optuna.load_study(study_name="ladder", storage=f"sqlite:///{run_dir / 'study.db'}")
    rungs = study.user_attrs["fidelity"]["rungs"]
    # ~120 training utterances, once prepared, is a small corpus: the 2-epoch recipe's ladder
    # cuts epochs only (30 % and 60 % of 2 both round to 1), on all of the data.
    assert [r["overrides"] for r in rungs] == [{"train.epochs": 1}, {"train.epochs": 2}]
    assert len(study.trials) == 1
    assert study.trials[0].user_attrs["config"]["train.epochs"] == 1
    assert "data.proxy_fraction" not in rungs[0]["overrides"]


def test_a_recipe_study_trains_its_defaults_first_at_full_fidelity(
    synth_corpus, tmp_path: Path
) -> None:
    from speechtune.cli import tune as tune_cli

    run_dir, args = _tiny_recipe_study(
        synth_corpus,
        tmp_path,
        schedule={"name": "constant", "warmup_steps": 2},
        study={"name": "base", "n_trials": 2},
        fidelity={"strategy": "speechtune"},
    )
    tune_cli.run(args)
    study = optuna.load_study(study_name="base", storage=f"sqlite:///{run_dir / 'study.db'}")
    first, second = sorted(study.trials, key=lambda t: t.number)
    top = len(study.user_attrs["fidelity"]["rungs"]) - 1
    assert first.user_attrs["source"] == "baseline" and first.user_attrs["rung"] == top
    assert first.user_attrs["config"]["optim.lr"] == pytest.approx(1e-3)  # the recipe default
    assert first.user_attrs["job_cost"] == pytest.approx(1.0)
    assert second.user_attrs["source"] != "baseline" and second.user_attrs["rung"] < top
    assert "baseline" in (run_dir / "trials.csv").read_text()


def test_a_pruned_job_costs_only_the_epochs_it_ran(tmp_path: Path) -> None:
    def fn(config: dict, reporter, trial_dir: Path) -> dict | None:
        value = None
        for epoch in range(1, config["epochs"] + 1):
            value = config["x"] + 1.0 / epoch
            if reporter.report(epoch, wer=value):
                return None
        return {"wer": value}

    study = speechtune.tune(
        fn,
        SPACE,
        fidelity={"epochs": [3, 27]},
        eta=9,
        strategy="hyperband",
        budget=1.5,
        run_dir=tmp_path / "run",
        pruner="median",
    )
    pruned = [
        t for t in study.trials if t.state == TrialState.PRUNED and t.user_attrs["rung"] == 0
    ]
    assert pruned
    for t in pruned:
        ran = max(t.intermediate_values)
        assert ran < 3 and t.user_attrs["job_cost"] == pytest.approx((3 / 27) * ran / 3)
    assert study.user_attrs["budget_used"] == pytest.approx(
        sum(t.user_attrs["job_cost"] for t in study.trials)
    )


def _tiny_recipe_study(
    synth_corpus,
    tmp_path: Path,
    schedule: dict,
    study: dict,
    fidelity: dict,
    objective: dict | None = None,
) -> tuple[Path, object]:
    """A tuning YAML over a tiny LSTM recipe on a third of the session corpus, and its CLI args."""
    from speechtune.cli import build_parser
    from speechtune.data import Manifest

    manifest = tmp_path / "corpus.jsonl"
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
        "schedule": schedule,
        "train": {"epochs": 2, "batch_size": 16, "flatline_patience": 0},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    tuning = {
        "recipe": "recipe.yaml",
        "space": {"optim.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}},
        "study": {"pruner": "none", "seed": 0, **study},
        "objective": {"kind": "recipe", "seeds": [1], **(objective or {})},
        "fidelity": fidelity,
    }
    (tmp_path / "tuning.yaml").write_text(yaml.safe_dump(tuning))
    run_dir = tmp_path / "runs" / study["name"]
    args = build_parser().parse_args(
        [
            "tune",
            "--config",
            str(tmp_path / "tuning.yaml"),
            "--run-dir",
            str(run_dir),
            "--device",
            "cpu",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--quiet",
            "--no-tracking",
        ]
    )
    return run_dir, args


def test_a_maximised_metric_promotes_the_highest_values(tmp_path: Path) -> None:
    """direction="maximize": the engine ranks the negation, so promotions and best go to high
    accuracies, exactly mirroring a minimised study of the negated metric."""

    def accuracy(config: dict, reporter, trial_dir: Path) -> dict | None:
        value = 0.0
        for epoch in range(1, config["epochs"] + 1):
            value = 1.0 - (config["x"] - 0.3) ** 2 - 1.0 / epoch
            if reporter.report(epoch, acc=value):
                return None
        return {"acc": value}

    def negated(config: dict, reporter, trial_dir: Path) -> dict | None:
        value = 0.0
        for epoch in range(1, config["epochs"] + 1):
            value = -(1.0 - (config["x"] - 0.3) ** 2 - 1.0 / epoch)
            if reporter.report(epoch, acc=value):
                return None
        return {"acc": value}

    up = _tune(tmp_path / "up", accuracy, budget=4, metric="acc", direction="maximize")
    down = _tune(tmp_path / "down", negated, budget=4, metric="acc")
    assert [j[:3] for j in _jobs(up)] == [j[:3] for j in _jobs(down)]
    assert up.best_value == pytest.approx(-down.best_value)
    assert up.best_value > 0.8  # a config near x = 0.3 at the top rung


def test_a_prior_study_starts_with_the_priors_config_at_the_top_and_resumes(
    tmp_path: Path,
) -> None:
    space = {"x": {"type": "float", "low": 0.0, "high": 1.0, "prior": 0.35}}

    def tune(run_dir: Path, fn: Curve, **kw) -> optuna.Study:
        return speechtune.tune(
            fn.__call__, space, fidelity={"epochs": [1, 3, 9]}, budget=4,
            run_dir=run_dir, pruner="none", **kw,
        )  # fmt: skip

    whole = tune(tmp_path / "whole", Curve())
    first = min(whole.trials, key=lambda t: t.number)
    assert first.user_attrs["source"] == "prior_default"
    assert (first.user_attrs["rung"], first.params["x"]) == (2, 0.35)
    with pytest.raises(KeyboardInterrupt):
        tune(tmp_path / "killed", Curve(interrupt_at_call=6))
    resumed = tune(tmp_path / "killed", Curve(), resume=True)
    assert _jobs(resumed) == _jobs(whole)
