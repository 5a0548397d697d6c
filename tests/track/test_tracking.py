"""MLflow tracking of a study against a real local MLflow store in a temp dir."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from speechtune.track import StudyTracker, default_tracking_uri
from speechtune.tuning.study import trial_config, trial_status
from tests.helpers.reports import make_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
EXPERIMENT = "speechtune-test"


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A fixture study logged trial by trial from 4 threads, as a study with n_jobs=4 would."""
    run_dir = tmp_path_factory.mktemp("run")
    study = make_study(f"sqlite:///{run_dir / 'study.db'}", "tracked")
    tracker = StudyTracker(None, EXPERIMENT, run_dir)
    parent = tracker.start_study("tracked", study.user_attrs["spec"])

    def log(trial: optuna.trial.FrozenTrial) -> str:
        status, reason = trial_status(trial)
        config_path = run_dir / "trials" / str(trial.number) / "config.yaml"
        config_path.parent.mkdir(parents=True)
        config_path.write_text(f"trial: {trial.number}\n")
        return tracker.log_trial(
            trial.number,
            trial_config(trial),
            trial.user_attrs.get("history", []),
            trial.user_attrs.get("metrics", {}),
            status,
            reason,
            config_path,
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        children = dict(zip((t.number for t in study.trials), pool.map(log, study.trials)))
    best = study.best_trial
    tracker.end_study(
        best.value, best.params, cost={"gpu_hours": 0.25, "co2e_g": 12.0, "energy_source": "nvml"}
    )
    return {
        "run_dir": run_dir,
        "study": study,
        "parent": parent,
        "children": children,
        "tracker": tracker,
    }


def _client(run_dir: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=default_tracking_uri(run_dir))


def _experiment_id(client: MlflowClient) -> str:
    return client.get_experiment_by_name(EXPERIMENT).experiment_id


def test_store_lives_in_the_run_dir(logged: dict) -> None:
    run_dir = logged["run_dir"]
    assert logged["tracker"].tracking_uri.startswith("sqlite:///")
    assert (run_dir / "mlflow.db").is_file()
    assert list((run_dir / "mlruns").rglob("config.yaml")), (
        "artifacts belong under <run_dir>/mlruns"
    )


def test_one_parent_and_a_nested_child_per_trial(logged: dict) -> None:
    client = _client(logged["run_dir"])
    runs = client.search_runs([_experiment_id(client)], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [r.info.run_id for r in parents] == [logged["parent"]]
    assert len(children) == len(logged["study"].trials) == 12
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {logged["parent"]}
    parent = parents[0]
    assert parent.data.tags["speechtune.study"] == "tracked"
    assert parent.data.params["study.pruner"] == "median"
    assert parent.data.params["objective.metric"] == "wer"
    assert '"log": true' in parent.data.params["space.optim.lr"]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_value"] == pytest.approx(logged["study"].best_value)
    assert (
        parent.data.metrics["cost.gpu_hours"] == 0.25
        and parent.data.metrics["cost.co2e_g"] == 12.0
    )
    assert parent.data.tags["best.model.num_layers"] == str(
        logged["study"].best_params["model.num_layers"]
    )


def test_child_runs_carry_params_metrics_tags_and_artifact(logged: dict) -> None:
    client = _client(logged["run_dir"])
    for trial in logged["study"].trials:
        run = client.get_run(logged["children"][trial.number])
        config = trial.user_attrs["config"]
        assert run.data.params["optim.lr"] == str(config["optim.lr"])
        assert run.data.params["model.encoder"] == config["model.encoder"]
        assert ("model.conv_kernel" in run.data.params) == ("model.conv_kernel" in config)
        status, reason = trial_status(trial)
        assert run.data.tags["status"] == status and run.data.tags["reason"] == reason
        assert run.data.tags["state"] == trial.state.name
        history = client.get_metric_history(run.info.run_id, "wer")
        history = sorted(history, key=lambda m: m.step)
        assert [m.step for m in history] == [row["epoch"] for row in trial.user_attrs["history"]]
        assert [m.value for m in history] == pytest.approx(
            [row["wer"] for row in trial.user_attrs["history"]]
        )
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert run.data.metrics["final_wer"] == pytest.approx(
                trial.user_attrs["metrics"]["wer"]
            )
            assert run.info.status == "FINISHED"
        else:
            assert "final_wer" not in run.data.metrics
            assert run.info.status == ("KILLED" if status == "stopped" else "FAILED")
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.yaml"]


def test_a_resumed_study_reuses_its_parent_run(logged: dict) -> None:
    tracker = StudyTracker(None, EXPERIMENT, logged["run_dir"])
    assert tracker.start_study("tracked", logged["study"].user_attrs["spec"]) == logged["parent"]
    child = tracker.log_trial(99, {"optim.lr": 0.1}, [], {"wer": 0.5}, "complete", "done")
    run = tracker.client.get_run(child)
    assert (
        run.data.tags["mlflow.parentRunId"] == logged["parent"]
        and run.data.metrics["final_wer"] == 0.5
    )


def test_a_trial_cost_becomes_metrics_and_a_tag(logged: dict) -> None:
    cost = {
        "wall_s": 12.5,
        "cpu_core_hours": 0.004,
        "gpu_hours": 0.0035,
        "energy_kwh": 0.001,
        "energy_source": "nvml",
        "co2e_g": 0.48,
        "money": 0.01,
        "currency": "USD",
    }
    child = logged["tracker"].log_trial(
        98, {"optim.lr": 0.1}, [], {"wer": 0.5}, "complete", "done", cost=cost
    )
    run = _client(logged["run_dir"]).get_run(child)
    assert run.data.metrics["cost.gpu_hours"] == pytest.approx(0.0035)
    assert run.data.metrics["cost.co2e_g"] == pytest.approx(0.48)
    assert (
        "cost.currency" not in run.data.metrics and run.data.tags["cost.energy_source"] == "nvml"
    )


def test_an_explicit_sqlite_store_keeps_artifacts_in_the_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd, run_dir = tmp_path / "cwd", tmp_path / "run"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    tracker = StudyTracker(f"sqlite:///{tmp_path / 'elsewhere.db'}", "explicit", run_dir)
    tracker.start_study("s", {})
    config = tmp_path / "config.yaml"
    config.write_text("a: 1\n")
    tracker.log_trial(0, {"optim.lr": 0.1}, [], {"wer": 0.5}, "complete", "done", config)
    assert not (cwd / "mlruns").exists(), "artifacts must not land in the current directory"
    assert list((run_dir / "mlruns").rglob("config.yaml"))


def test_logging_before_start_is_an_error(logged: dict) -> None:
    # Reuses the module's store: creating a fresh MLflow database costs ~7 s of migrations.
    tracker = StudyTracker(None, EXPERIMENT, logged["run_dir"])
    with pytest.raises(RuntimeError, match="before start_study"):
        tracker.log_trial(0, {}, [], {}, "complete", "", None)


def test_a_storage_password_never_becomes_a_param(logged: dict) -> None:
    # Reuses the module's store; the spec is one recorded before masking existed.
    tracker = StudyTracker(None, EXPERIMENT, logged["run_dir"])
    spec = {"study": {"name": "pw", "storage": "postgresql+psycopg://u:pw-8Q7Z@db/st"}}
    run_id = tracker.start_study("pw", spec)
    params = MlflowClient(tracker.tracking_uri).get_run(run_id).data.params
    assert params["study.storage"] == "postgresql+psycopg://u:***@db/st"


def test_a_store_that_cannot_open_is_named_without_its_password(tmp_path: Path) -> None:
    # MLflow's own message quotes the URI, password included.
    with pytest.raises(
        RuntimeError, match=r"cannot open the MLflow store nosuch://u:\*\*\*@h/x"
    ) as err:
        StudyTracker("nosuch://u:pw-4471@h/x", EXPERIMENT, tmp_path)
    assert "pw-4471" not in str(err.value)
