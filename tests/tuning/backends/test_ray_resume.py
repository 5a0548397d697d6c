"""``speechtune tune --backend ray`` killed mid-study (SIGKILL), then ``--resume`` (Tuner.restore).

In a module of its own, away from ``test_ray_backend``'s in-process Ray: the drivers here are
subprocesses with their own local Ray, and this pytest process holds no Ray connection that
killing them could take down with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.helpers.paths import REPO
from tests.helpers.services import require_ray_tune

pytestmark = [pytest.mark.services, pytest.mark.faults]

require_ray_tune()


# ---------------------------------------------------------------------------------------------
# the driver killed mid-study, then `speechtune tune --backend ray --resume`
# ---------------------------------------------------------------------------------------------
def _cli(run_dir: Path, config: Path, *extra: str) -> subprocess.Popen:
    # Never an inherited cluster address: each driver starts (and owns) its own local Ray.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Ray snapshots the experiment state every few seconds ("auto"); a trial started after the
    # last snapshot is re-run anew on restore, not continued. Snapshot often, so that the trial
    # in flight at the kill is in the state restored.
    env.update(PYTHONPATH=str(REPO), SPEECHTUNE_TEST_THREADS="1", TUNE_GLOBAL_CHECKPOINT_S="0.2")
    argv = [
        sys.executable,
        "-m",
        "speechtune.cli",
        "tune",
        "--config",
        str(config),
        "--backend",
        "ray",
        "--run-dir",
        str(run_dir),
        "--no-tracking",
        "--quiet",
        *extra,
    ]
    return subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def test_killed_driver_resumes_with_resume_flag(tmp_path: Path) -> None:
    config = tmp_path / "tuning.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "objective": {"kind": "command"},
                "command": {
                    "argv": [
                        sys.executable,
                        str(REPO / "tests/fixtures_scripts/report_epochs.py"),
                        "{config}",
                    ]
                },
                "space": {
                    "optim.lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True},
                    "train.epochs": {"type": "fixed", "value": 4},
                    "delay": {"type": "fixed", "value": 0.6},
                },
                "study": {"name": "killed", "n_trials": 3, "sampler": "random", "pruner": "none"},
                "ray": {"max_concurrent_trials": 1, "checkpoint_every": 1},
            }
        )
    )
    run_dir = tmp_path / "run"
    exp = run_dir / "ray" / "experiment"
    proc = _cli(run_dir, config)
    try:
        deadline = time.monotonic() + 120
        # Kill once one trial is recorded and the next one is in flight.
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            try:
                recorded = {
                    t.user_attrs["ray_trial_id"]
                    for t in optuna.load_study(
                        study_name="killed", storage=f"sqlite:///{run_dir / 'study.db'}"
                    ).trials
                }
            except Exception:  # no database or study yet
                recorded = set()
            ckpts = [c.parent.name for c in exp.glob("*/checkpoint_*")] if exp.is_dir() else []
            # Two checkpoints: Ray then snapshots the experiment state (num_to_keep=2), so it knows the trial.
            in_flight = {t for t in ckpts if t not in recorded and ckpts.count(t) >= 2}
            if recorded and in_flight:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the study did not get going within 120 s")
    finally:
        _kill_group(proc)
    before = optuna.load_study(
        study_name="killed", storage=f"sqlite:///{run_dir / 'study.db'}"
    ).trials
    assert 1 <= len(before) < 3
    in_flight -= {
        t.user_attrs["ray_trial_id"] for t in before
    }  # recorded in the instant before the kill
    assert in_flight, "no trial was mid-run when the driver was killed"
    resumed = _cli(run_dir, config, "--resume")
    try:
        out, _ = resumed.communicate(timeout=240)
    finally:
        if resumed.poll() is None:
            _kill_group(resumed)
    assert resumed.returncode == 0, out
    after = optuna.load_study(
        study_name="killed", storage=f"sqlite:///{run_dir / 'study.db'}"
    ).trials
    assert len(after) == 3 and all(t.state == TrialState.COMPLETE for t in after), [
        t.user_attrs.get("reason") for t in after
    ]
    for old in before:  # nothing finished is lost or re-run
        assert after[old.number].user_attrs["ray_trial_id"] == old.user_attrs["ray_trial_id"]
        assert after[old.number].values == old.values
    assert len({t.user_attrs["ray_trial_id"] for t in after}) == 3
    # Tuner.restore continued the experiment: the trial killed mid-run went on from its checkpoint.
    resumed_trials = [t for t in after if t.user_attrs["ray_trial_id"] in in_flight]
    assert resumed_trials and all(
        t.user_attrs["continued_from"]["epoch"] >= 1 for t in resumed_trials
    )
    assert (run_dir / "best.yaml").is_file() and (run_dir / "trials.csv").is_file()
