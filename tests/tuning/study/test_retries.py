"""Resuming without replays, retries counted per config, the run-dir lock, a reason on every FAIL.

In-process and fast, on real SQLite storages; the subprocess faults (SIGKILL, two drivers) are
in ``test_resume_faults.py``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from speechtune.config import ConfigError
from speechtune.reports import write_trials_csv
from speechtune.tuning.backends import run_study
from speechtune.tuning.objectives import FunctionObjective, TrialOutcome
from speechtune.tuning.spec import build_spec, load_tuning
from speechtune.tuning.study import (
    INTERRUPTED_REASON,
    RunDirBusyError,
    RunDirLock,
    TrialRecord,
    fail_killed_trials,
    make_storage,
    open_study,
    pending_interrupted,
    requeue_interrupted,
    resume_seed,
)
from speechtune.tuning.study._lock import LOCK_FILE
from speechtune.tuning.study._records import UNRECORDED_FAIL_REASON
from tests.helpers.paths import CONF
from tests.helpers.workers import wait_until_stale

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}, "k": [1, 2, 3, 4]}
X = FloatDistribution(0.0, 1.0)


def _value(config: dict, reporter) -> dict:
    return {"wer": config["x"] + config["k"]}


def _copy_sqlite(src: Path, dst: Path) -> None:
    # The backup API: a plain copy could miss what is still in the write-ahead log.
    dst.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid


# ---------------------------------------------------------------------------------------------
# 1. a resumed seeded sampler proposes new configs, reproducibly
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_resumed_seeded_study_proposes_new_configs_reproducibly(
    tmp_path: Path, sampler: str
) -> None:
    spec = build_spec(SPACE, study_name="rs", n_trials=4, sampler=sampler, pruner="none", seed=0)
    objective = FunctionObjective(_value)
    run_study(spec, objective, tmp_path / "a", progress=False)
    _copy_sqlite(tmp_path / "a" / "study.db", tmp_path / "b" / "study.db")

    a = run_study(spec, objective, tmp_path / "a", n_trials=8, resume=True, progress=False)
    b = run_study(spec, objective, tmp_path / "b", n_trials=8, resume=True, progress=False)

    # The same history gives the same proposals ...
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    # ... and none of them is a config of the run before (the sampler's seed was not replayed).
    before = [t.params for t in a.trials[:4]]
    assert len(a.trials) == 8 and all(t.params not in before for t in a.trials[4:])


def test_resume_seed_mixes_in_the_trial_count_except_for_sequences() -> None:
    assert resume_seed("random", 0, 0) == 0  # a new study keeps its seed
    assert resume_seed("tpe", None, 5) is None
    assert resume_seed("qmc", 7, 5) == 7  # QMC continues its stored sequence
    seeds = {resume_seed("random", 0, n) for n in range(1, 50)}
    assert len(seeds) == 49 and 0 not in seeds
    assert (
        resume_seed("random", 0, 3) == resume_seed("random", 0, 3) != resume_seed("random", 1, 3)
    )


# ---------------------------------------------------------------------------------------------
# 2. retries counted per config, with reasons; a warning when a config is given up
# ---------------------------------------------------------------------------------------------
def test_max_retries_is_validated_in_the_spec() -> None:
    assert load_tuning(CONF / "tuning.yaml").study.max_retries == 2
    assert load_tuning(CONF / "tuning.yaml", ["study.max_retries=0"]).study.max_retries == 0
    for bad in ("-1", "true", "1.5"):
        with pytest.raises(ConfigError, match=r"study\.max_retries.*must be an int >= 0"):
            load_tuning(CONF / "tuning.yaml", [f"study.max_retries={bad}"])


def _interrupted(study: optuna.Study, history: list[int]) -> None:
    system = {"failed_trial": history[0], "retry_history": history} if history else {}
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.FAIL,
            params={"x": 0.5},
            distributions={"x": X},
            user_attrs={
                "status": "interrupted",
                "reason": INTERRUPTED_REASON,
                "interrupted": True,
            },
            system_attrs=system,
        )
    )


def test_interruptions_count_towards_the_retries_of_their_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = build_spec({"x": {"type": "float", "low": 0.0, "high": 1.0}}, study_name="ir")
    study = open_study(spec, tmp_path)
    for history in ([], [0], [0, 1]):  # one config: tried, retried, retried again
        _interrupted(study, history)

    with caplog.at_level(logging.WARNING, logger="speechtune.tuning"):
        assert requeue_interrupted(study, max_retries=2) == []
        assert requeue_interrupted(study, max_retries=2) == []  # given up once, said once
    (warning,) = [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()]
    assert warning.startswith(f"trial 2: {INTERRUPTED_REASON}, the 3rd try of its config [x=0.5]")
    assert warning.endswith("(study.max_retries: 2)")
    assert pending_interrupted(study) == []
    assert not study.get_trials(states=(TrialState.WAITING,))

    more = open_study(
        build_spec({"x": {"type": "float", "low": 0, "high": 1}}, study_name="m"), tmp_path
    )
    for history in ([], [0], [0, 1]):
        _interrupted(more, history)
    assert requeue_interrupted(more, max_retries=3) == [2]
    (retry,) = more.get_trials(states=(TrialState.WAITING,))
    assert retry.params == {"x": 0.5} and retry.user_attrs["retry"] == "3/3"
    assert retry.system_attrs == {"failed_trial": 0, "retry_history": [0, 1, 2]}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_a_trial_whose_process_is_gone_or_silent_is_failed_with_its_reason(tmp_path: Path) -> None:
    spec = build_spec({"x": {"type": "float", "low": 0.0, "high": 1.0}}, study_name="k")
    storage = make_storage(None, tmp_path, heartbeat_s=1)
    assert isinstance(storage, optuna.storages.RDBStorage)
    study = optuna.create_study(storage=storage, study_name="k")
    dead = _dead_pid()
    gone = study.ask({"x": X})
    gone.set_user_attr("worker", f"{socket.gethostname()}:{dead}")
    alive = study.ask({"x": X})  # this process: left alone
    alive.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    silent = study.ask({"x": X})  # another machine: judged by its heartbeat
    silent.set_user_attr("worker", "elsewhere:1")
    storage.record_heartbeat(silent._trial_id)
    wait_until_stale(f"sqlite:///{tmp_path / 'study.db'}", "k", 1)

    failed = fail_killed_trials(study, max_retries=spec.study.max_retries)

    assert sorted(failed) == [gone.number, silent.number]
    by_number = {t.number: t for t in study.trials}
    assert by_number[alive.number].state == TrialState.RUNNING
    assert by_number[gone.number].user_attrs["reason"] == (
        f"killed while running (process {dead} gone); retry 1/2"
    )
    assert by_number[silent.number].user_attrs["reason"] == (
        "killed while running (process elsewhere:1 silent for over 2 s); retry 1/2"
    )
    retries = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.system_attrs["failed_trial"] for t in retries) == [gone.number, silent.number]
    assert fail_killed_trials(study) == []  # each is failed once


# ---------------------------------------------------------------------------------------------
# 3. the run-dir lock
# ---------------------------------------------------------------------------------------------
def test_run_dir_lock_refuses_a_second_holder_and_takes_over_a_dead_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    with RunDirLock(run_dir):
        with pytest.raises(RunDirBusyError) as err:
            RunDirLock(run_dir).acquire()
        message = str(err.value)
        assert "\n" not in message and f"pid {os.getpid()} on {socket.gethostname()}" in message
    RunDirLock(run_dir).acquire().release()  # free again once released

    dead = _dead_pid()
    (run_dir / LOCK_FILE).write_text(f"pid {dead} host {socket.gethostname()} since x\n")
    with caplog.at_level(logging.INFO, logger="speechtune.tuning"):
        lock = RunDirLock(run_dir).acquire()
    try:
        assert f"taking over the lock of process {dead}" in caplog.text
        assert (run_dir / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} host ")
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------------
# 4. every FAIL row of trials.csv has a reason
# ---------------------------------------------------------------------------------------------
def _failing(config: dict, reporter, trial_dir: Path):
    number = int(trial_dir.name)
    if number == 0:
        return {"wer": math.nan}
    if number == 1:
        return TrialOutcome("error", "")  # an objective that gives no reason
    if number == 2:
        return {"wer": 0.5}
    return TrialOutcome("complete", "completed", metrics={"wer": "n/a"})  # type: ignore[dict-item]


def test_every_failed_trial_has_a_reason(tmp_path: Path) -> None:
    spec = build_spec(
        {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        study_name="why",
        n_trials=5,
        sampler="random",
        pruner="none",
    )
    # Trial 3's bad metric escapes the objective's own checks: the study stops on it, as before,
    # but its record says why.
    with pytest.raises(ValueError, match="could not convert string to float"):
        run_study(spec, FunctionObjective(_failing), tmp_path, progress=False)
    study = optuna.load_study(study_name="why", storage=f"sqlite:///{tmp_path / 'study.db'}")
    # A FAIL trial that recorded nothing (Optuna failed it after its process died).
    study.add_trial(
        optuna.trial.create_trial(state=TrialState.FAIL, params={"x": 0.1}, distributions={"x": X})
    )
    with open(write_trials_csv(study, tmp_path / "trials.csv")) as fh:
        rows = {int(r["number"]): r for r in csv.DictReader(fh)}

    assert {n for n, r in rows.items() if r["state"] == "FAIL"} == {0, 1, 3, 4}
    assert rows[0]["status"] == "error"
    assert rows[0]["reason"] == (
        "error: the objective value wer is NaN (completed (non-finite metrics: wer))"
    )
    assert rows[1]["reason"] == "error (the objective gave no reason)"
    assert rows[3]["reason"] == "error: ValueError: could not convert string to float: 'n/a'"
    assert rows[4]["status"] == "killed" and rows[4]["reason"] == UNRECORDED_FAIL_REASON
    assert TrialRecord.from_trial(study.trials[4]).reason == UNRECORDED_FAIL_REASON
    assert rows[2]["state"] == "COMPLETE"
