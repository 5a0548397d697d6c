"""``speechtune tune --workers N``: N local worker processes, one study, one set of outputs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tests.helpers.paths import REPO
from tests.helpers.workers import command_spec, speechtune_argv


def test_tune_with_local_workers_runs_one_study_and_logs_it_once(tmp_path: Path) -> None:
    config = command_spec(
        tmp_path / "tuning.yaml", name="packed", n_trials=4, epochs=2, sleep_s=0.2
    )
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        speechtune_argv(
            "tune",
            "--config",
            str(config),
            "--workers",
            "2",
            "--run-dir",
            str(run_dir),
            "--device",
            "cpu",
            "--quiet",
        ),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # SQLite is not safe for concurrent processes: the study lives in a journal file.
    assert (run_dir / "journal.log").is_file() and not (run_dir / "study.db").exists()
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_dir / "journal.log"))
    )
    study = optuna.load_study(study_name="packed", storage=storage)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert 4 <= len(done) <= 5  # the target, plus at most workers - 1 already running
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both processes ran trials
    assert study.user_attrs["n_workers"] == 2 and study.user_attrs["worker_exit_codes"] == [0, 0]
    assert (run_dir / "best.yaml").is_file() and (run_dir / "trials.csv").is_file()
    assert sorted(p.name for p in (run_dir / "workers").iterdir()) == [
        "worker-0.log",
        "worker-1.log",
    ]
    # One MLflow parent run for the study with a child per trial, logged by the driver.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("packed")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) - 1 == len(study.get_trials(deepcopy=False))


def test_tune_workers_refuses_a_multi_fidelity_study(tmp_path: Path) -> None:
    config = command_spec(tmp_path / "tuning.yaml", name="mf", n_trials=4)
    text = (
        config.read_text()
        + "fidelity:\n  strategy: hyperband\n  rungs:\n    - {name: low, overrides: {epochs: 1}, cost: 0.34}\n    - {name: high, overrides: {epochs: 3}, cost: 1.0}\n"
    )
    config.write_text(text)
    proc = subprocess.run(
        speechtune_argv(
            "tune",
            "--config",
            str(config),
            "--workers",
            "2",
            "--run-dir",
            str(tmp_path / "run"),
            "--quiet",
        ),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode != 0
    assert "multi-fidelity" in proc.stderr and "--n-jobs" in proc.stderr
