"""``objective.kind: python`` with ``objective.function: MODULE:ATTR``: from the CLI and from workers."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from speechtune.config import ConfigError
from speechtune.tuning.spec import load_tuning
from tests.helpers.paths import REPO
from tests.helpers.workers import speechtune_argv

FUNCTION = textwrap.dedent(
    """
    def objective(config, reporter):
        x = float(config["x"])
        for epoch in range(1, 3):
            if reporter.report(epoch, wer=(x - 0.3) ** 2 + 1.0 / epoch):
                return None
        return {"wer": (x - 0.3) ** 2}
    """
)


def _spec(tmp_path: Path, **objective: object) -> Path:
    (tmp_path / "my_objective.py").write_text(FUNCTION)
    spec = {
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "study": {"name": "fn", "sampler": "random", "pruner": "none", "n_trials": 3, "seed": 1},
        "objective": {"kind": "python", "metric": "wer", "seeds": [0], **objective},
    }
    path = tmp_path / "tuning.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_function_must_look_like_module_attr_and_needs_kind_python(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_tuning(_spec(tmp_path, function="my_objective.objective"))
    assert "objective.function" in str(err.value) and "MODULE:ATTR" in str(err.value)
    path = _spec(tmp_path, function="my_objective:objective")
    path.write_text(path.read_text().replace("kind: python", "kind: recipe"))
    with pytest.raises(ConfigError) as err:
        load_tuning(path)
    assert "is only used with objective.kind: python" in str(err.value)


def test_cli_runs_a_function_beside_the_yaml_and_a_worker_joins_from_the_stored_spec(
    tmp_path: Path,
) -> None:
    config = _spec(tmp_path, function="my_objective:objective")
    storage = f"journal:///{tmp_path / 'study.log'}"
    run = subprocess.run(
        speechtune_argv("tune", "--config", str(config), "--storage", storage, "--run-dir", str(tmp_path / "a"), "--quiet", "--no-tracking"),
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    # A worker elsewhere (another cwd) needs neither the YAML nor --function; the module is found
    # from its own working directory, here the folder that holds it.
    worker = subprocess.run(
        speechtune_argv("worker", "--study", "fn", "--storage", storage, "--n-trials", "5", "--run-dir", str(tmp_path / "b"), "--quiet", "--no-tracking"),
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
    study = optuna.load_study(
        study_name="fn",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.log"))
        ),
    )
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(done) == 5
    for t in done:
        assert t.values[0] == pytest.approx((t.params["x"] - 0.3) ** 2)
        assert [row["epoch"] for row in t.user_attrs["history"]] == [1, 2]


def test_tune_takes_the_storage_from_the_environment_and_warns_about_a_password_on_argv(
    tmp_path: Path,
) -> None:
    import os

    config = _spec(tmp_path, function="my_objective:objective")
    log = tmp_path / "env.log"
    env = {**os.environ, "SPEECHTUNE_STORAGE": f"journal:///{log}"}
    run = subprocess.run(
        speechtune_argv("tune", "--config", str(config), "--run-dir", str(tmp_path / "a"), "--quiet", "--no-tracking"),
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert log.is_file() and not (tmp_path / "a" / "study.db").exists()
    study = optuna.load_study(
        study_name="fn", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(log))
        ),
    )  # fmt: skip
    assert len(study.get_trials(states=[TrialState.COMPLETE])) == 3
    # A password on the command line still works, with a warning; it is never echoed.
    bad = subprocess.run(
        speechtune_argv("tune", "--config", str(config), "--storage", "postgresql://u:s3cr3t-pw@127.0.0.1:1/x", "--run-dir", str(tmp_path / "b"), "--quiet", "--no-tracking"),
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert "--storage holds a password" in bad.stderr and "$SPEECHTUNE_STORAGE" in bad.stderr
    assert "s3cr3t-pw" not in bad.stdout + bad.stderr
