"""Fault injection on real processes and a real PostgreSQL server.

Each test starts a private PostgreSQL cluster (``tests/pg_server.py``), real ``speechtune worker``
or ``speechtune tune`` processes on a tiny ``objective.kind: command`` study whose script sleeps
per epoch and checkpoints itself (``fixtures_scripts/ckpt_epochs.py``), and injects the fault
with real signals: SIGKILL of a worker, SIGKILL of the driver, a server restart, and a crowd of
8 workers. Every wait is bounded; every process is killed at the end, also on failure.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import psutil
import pytest
from optuna.trial import TrialState

from speechtune._urls import mask_url
from tests.helpers.pg_server import PgServer
from tests.helpers.workers import (
    Procs,
    command_spec,
    python_spec,
    speechtune_argv,
    states,
    trials,
    wait_for,
    wait_until_stale,
)

pytestmark = [pytest.mark.services, pytest.mark.faults]

HEARTBEAT = "1"  # s: a dead worker's trial is stale after 2 s


_DB_COUNTER = iter(range(10_000))


def _database(pg: PgServer, tag: str) -> str:
    if not pg.running:  # a previous test stopped it on purpose
        pg.start()
    return pg.create_database(f"{tag}_{next(_DB_COUNTER)}")


def _worker(
    procs: Procs,
    name: str,
    url: str,
    study: str,
    run_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
):
    # The URL (password included) goes in the environment, as the packed backend passes it.
    argv = speechtune_argv(
        "worker",
        "--study",
        study,
        "--run-dir",
        str(run_dir),
        "--heartbeat-s",
        HEARTBEAT,
        "--no-tracking",
        "--quiet",
        "--no-report",
        *extra,
    )
    return procs.start(name, argv, env={**(env or {}), "SPEECHTUNE_STORAGE": url})


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started (as a machine crash would end them)."""
    try:
        parent = psutil.Process(pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)


def _running_trial_of(url: str, study: str, worker: str | None = None):
    """A RUNNING trial (of ``worker``, a ``host:pid``) that has reported its first epoch (only),
    once one trial is complete: killed now, it leaves a checkpoint and epochs still to run."""
    all_trials = trials(url, study)
    if not any(t.state == TrialState.COMPLETE for t in all_trials):
        return None
    for t in all_trials:
        mine = worker is None or t.user_attrs.get("worker") == worker
        if t.state == TrialState.RUNNING and mine and list(t.intermediate_values) == [1]:
            return t
    return None


def _complete_values(url: str, study: str) -> dict[int, list[float]]:
    return {t.number: list(t.values) for t in trials(url, study) if t.state == TrialState.COMPLETE}


def _assert_no_loss(
    url: str, study: str, before: dict[int, list[float]], n_trials: int, n_workers: int
) -> list:
    after = trials(url, study)
    numbers = [t.number for t in after]
    assert len(numbers) == len(set(numbers)), f"duplicated trial numbers: {sorted(numbers)}"
    complete = {t.number: list(t.values) for t in after if t.state == TrialState.COMPLETE}
    for number, values in before.items():
        assert complete.get(number) == values, (
            f"trial {number} completed before the fault but is now {complete.get(number)}"
        )
    assert n_trials <= len(complete) <= n_trials + n_workers - 1, states(after)
    return after


def _assert_retried_from_checkpoint(all_trials: list, killed: int) -> None:
    by_number = {t.number: t for t in all_trials}
    assert by_number[killed].state == TrialState.FAIL, by_number[killed].state
    retries = [t for t in all_trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1, f"trial {killed} retried {len(retries)} times"
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE, retry.state
    assert retry.params == by_number[killed].params
    assert retry.user_attrs.get("resumed_from_trial") == killed
    first_epoch = retry.user_attrs["history"][0]["epoch"]
    assert first_epoch > 1, (
        f"the retry started again at epoch {first_epoch} instead of resuming the checkpoint"
    )
    assert Path(retry.user_attrs["trial_dir"], "ckpt.json").is_file()


def test_sigkill_one_of_two_workers_mid_trial(pg: PgServer, procs: Procs, tmp_path: Path) -> None:
    url = _database(pg, "kill_worker")
    n_trials = 6
    cfg = command_spec(
        tmp_path / "study.yaml", name="kw", n_trials=n_trials, epochs=4, sleep_s=0.4
    )
    victim = _worker(procs, "victim", url, "kw", tmp_path / "victim", "--config", str(cfg))
    survivor = _worker(procs, "survivor", url, "kw", tmp_path / "survivor", "--config", str(cfg))
    victim_id = f"{__import__('socket').gethostname()}:{victim.pid}"

    running = wait_for(
        lambda: _running_trial_of(url, "kw", victim_id),
        90,
        "the victim worker to be mid-trial",
        0.05,
    )
    before = _complete_values(url, "kw")
    _kill_tree(victim.pid)
    assert procs.wait(survivor, 120) == 0, procs.log(survivor)[-3000:]

    after = _assert_no_loss(url, "kw", before, n_trials, n_workers=2)
    _assert_retried_from_checkpoint(after, running.number)


def test_sigkill_driver_then_resume(pg: PgServer, procs: Procs, tmp_path: Path) -> None:
    url = _database(pg, "kill_driver")
    n_trials = 4
    cfg = command_spec(
        tmp_path / "study.yaml", name="kd", n_trials=n_trials, epochs=4, sleep_s=0.3
    )
    argv = speechtune_argv(
        "tune",
        "--config",
        str(cfg),
        "--storage",
        url,
        "--run-dir",
        str(tmp_path / "run"),
        "--no-tracking",
        "--quiet",
    )
    env = {"SPEECHTUNE_HEARTBEAT_S": HEARTBEAT}
    driver = procs.start("driver", argv, env=env)

    running = wait_for(
        lambda: _running_trial_of(url, "kd"), 90, "the driver to be mid-trial", 0.05
    )
    before = _complete_values(url, "kd")
    _kill_tree(driver.pid)
    wait_until_stale(url, "kd", float(HEARTBEAT))  # past the grace period (2 heartbeats)
    resumed = procs.start("resume", [*argv, "--resume"], env=env)
    assert procs.wait(resumed, 120) == 0, procs.log(resumed)[-3000:]

    after = _assert_no_loss(url, "kd", before, n_trials, n_workers=1)
    _assert_retried_from_checkpoint(after, running.number)
    assert (tmp_path / "run" / "best.yaml").is_file()


def test_postgres_restart_during_study(pg: PgServer, procs: Procs, tmp_path: Path) -> None:
    url = _database(pg, "restart")
    n_trials = 8
    cfg = command_spec(
        tmp_path / "study.yaml", name="rs", n_trials=n_trials, epochs=3, sleep_s=0.3
    )
    # A 3 s heartbeat: the outage (~2 s) stays inside the 6 s grace period, so no live trial is failed.
    workers = [
        _worker(
            procs,
            f"w{i}",
            url,
            "rs",
            tmp_path / f"w{i}",
            "--config",
            str(cfg),
            "--heartbeat-s",
            "3",
        )
        for i in range(2)
    ]
    wait_for(lambda: len(_complete_values(url, "rs")) >= 2, 90, "two complete trials")
    before = _complete_values(url, "rs")
    pg.restart(down_s=1.5)
    for w in workers:
        assert procs.wait(w, 120) == 0, procs.log(w)[-3000:]
    _assert_no_loss(url, "rs", before, n_trials, n_workers=2)
    logs = "".join(procs.log(w) for w in workers)
    assert "reconnecting" in logs, "the workers never saw the restart"


def test_postgres_gone_workers_stop_with_clear_error(
    pg: PgServer, procs: Procs, tmp_path: Path
) -> None:
    url = _database(pg, "gone")
    cfg = command_spec(tmp_path / "study.yaml", name="gone", n_trials=50, epochs=2, sleep_s=0.2)
    worker = _worker(
        procs, "w", url, "gone", tmp_path / "w", "--config", str(cfg), "--reconnect-s", "3"
    )
    wait_for(lambda: len(_complete_values(url, "gone")) >= 1, 90, "a complete trial")
    before = _complete_values(url, "gone")
    pg.stop()
    try:
        rc = procs.wait(worker, 60)
    finally:
        pg.start()
    out = procs.log(worker)
    assert rc == 3, out[-3000:]
    last_line = out.strip().splitlines()[-1]
    expected = f"error: the study storage {mask_url(url)} is unreachable"
    assert last_line.startswith(expected), out[-3000:]
    assert pg.password_token not in out and "warning: --storage holds a password" not in out
    complete = _complete_values(url, "gone")
    assert all(complete.get(n) == v for n, v in before.items())


def test_eight_workers_200_trials(pg: PgServer, procs: Procs, tmp_path: Path) -> None:
    url = _database(pg, "crowd")
    n_trials, n_workers = 200, 8
    cfg = python_spec(tmp_path / "study.yaml", name="crowd", n_trials=n_trials)
    workers = [
        _worker(
            procs,
            f"w{i}",
            url,
            "crowd",
            tmp_path / f"w{i}",
            "--config",
            str(cfg),
            "--function",
            "tests.helpers.workers:quick_objective",
        )
        for i in range(n_workers)
    ]
    for w in workers:
        assert procs.wait(w, 300) == 0, procs.log(w)[-3000:]
    after = _assert_no_loss(url, "crowd", {}, n_trials, n_workers)
    assert all(t.state == TrialState.COMPLETE for t in after), states(after)
    assert len({t.user_attrs["worker"] for t in after}) == n_workers, "some worker ran no trial"
    lock_error = re.compile(
        r"deadlock|could not serialize|\block\b|locked|Traceback", re.IGNORECASE
    )
    for w in workers:
        match = lock_error.search(procs.log(w))
        assert match is None, f"{match.group(0)!r} in a worker's output:\n{procs.log(w)[-3000:]}"
