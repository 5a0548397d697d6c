"""Kill a study mid-trial with SIGKILL, resume it, and check nothing finished was lost.

The first run is a real subprocess (so SIGKILL leaves a trial RUNNING in SQLite, as a crashed
machine would); the resume runs in-process against the same storage.
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
from optuna.trial import TrialState

from speechtune.tuning.backends import LocalBackend, run_study
from speechtune.tuning.objectives import FunctionObjective
from speechtune.tuning.spec import build_spec
from tests.helpers.paths import REPO
from tests.helpers.workers import wait_until_stale

pytestmark = pytest.mark.faults

N_TRIALS = 5
HEARTBEAT_S = 1  # stale after 2 s without a heartbeat
SLOW_FROM_ENV = "SPEECHTUNE_TEST_SLOW_FROM"


def sleepy(config: dict, reporter, trial_dir: Path) -> dict:
    """Three short 'epochs'; trials numbered >= $SLOW_FROM hang in their second epoch (to be killed)."""
    slow_from = int(os.environ.get(SLOW_FROM_ENV, "1000000"))
    for epoch in range(3):
        time.sleep(0.05)
        if epoch == 1 and int(trial_dir.name) >= slow_from:
            time.sleep(120)
        reporter.report(epoch, wer=config["x"] + 0.1 * (2 - epoch))
    return {"wer": config["x"]}


def _spec():
    return build_spec(
        {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        study_name="resume",
        n_trials=N_TRIALS,
        sampler="random",
        pruner="none",
        seed=0,
    )


def _run(run_dir: Path, resume: bool) -> optuna.Study:
    return run_study(
        _spec(),
        FunctionObjective(sleepy),
        run_dir,
        backend=LocalBackend(heartbeat_s=HEARTBEAT_S),
        resume=resume,
        progress=False,
    )


def _load(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="resume", storage=f"sqlite:///{run_dir / 'study.db'}")


def _wait_for(predicate, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"the study process exited early with code {proc.returncode}: {proc.stderr.read()}"
            )
        try:
            if predicate():
                return
        except Exception:  # the database or the study may not exist yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"condition not reached within {timeout_s} s")


def test_sigkill_mid_trial_then_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, SLOW_FROM_ENV: "2", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.tuning.study.test_study_resume", str(run_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def two_done_one_mid_trial() -> bool:
            trials = _load(run_dir).trials
            running = [t for t in trials if t.state == TrialState.RUNNING]
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            return len(complete) >= 2 and len(running) == 1 and 0 in running[0].intermediate_values

        _wait_for(two_done_one_mid_trial, timeout_s=60, proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = {t.number: t for t in _load(run_dir).trials}
    killed = [t for t in before.values() if t.state == TrialState.RUNNING]
    assert len(killed) == 1 and killed[0].number == 2
    assert list(killed[0].intermediate_values) == [0]  # killed in its second epoch
    wait_until_stale(
        f"sqlite:///{run_dir / 'study.db'}", "resume", HEARTBEAT_S
    )  # the killed trial's heartbeat

    study = _run(run_dir, resume=True)

    after = {t.number: t for t in study.trials}
    for number, old in before.items():
        if old.state == TrialState.COMPLETE:
            assert after[number].state == TrialState.COMPLETE
            assert after[number].values == old.values and after[number].params == old.params
            assert after[number].user_attrs == old.user_attrs
    assert after[2].state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == 2]
    assert len(retries) == 1, "the killed trial is re-queued exactly once"
    assert retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed[0].params
    assert retries[0].user_attrs["status"] == "complete"
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == N_TRIALS
    assert all(t.state != TrialState.RUNNING for t in study.trials)


if __name__ == "__main__":  # the study process of the test above
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _run(Path(sys.argv[1]), resume=False)
    sys.exit(3)  # unreachable: the test kills this process mid-trial
