"""Helpers shared by the worker and fault-injection tests: tuning YAMLs, worker processes, waits.

Every wait is bounded; every process started here is tracked by :class:`Procs` and killed (its
whole process group) when the test ends, also on failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml

from tests.helpers.paths import REPO, SCRIPTS


def command_spec(
    path: Path,
    *,
    name: str,
    storage: str | None = None,
    n_trials: int = 6,
    epochs: int = 3,
    sleep_s: float = 0.3,
    sampler: str = "random",
) -> Path:
    """Write a tiny ``objective.kind: command`` tuning YAML running ``ckpt_epochs.py``; return its path."""
    spec: dict[str, Any] = {
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "study": {
            "name": name,
            "sampler": sampler,
            "pruner": "none",
            "n_trials": n_trials,
            "seed": 0,
        },
        "objective": {"kind": "command", "metric": "wer", "seeds": [0]},
        "command": {
            "argv": [
                sys.executable,
                str(SCRIPTS / "ckpt_epochs.py"),
                "{config}",
                str(epochs),
                str(sleep_s),
            ]
        },
    }
    if storage is not None:
        spec["study"]["storage"] = storage
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def speechtune_argv(*args: str) -> list[str]:
    """argv running the ``speechtune`` CLI of this interpreter (works without the console script)."""
    return [
        sys.executable,
        "-c",
        "import sys; from speechtune.cli import main; sys.exit(main())",
        *args,
    ]


class Procs:
    """Processes started by a test: each in its own process group, all killed at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` with stdout+stderr to ``<log_dir>/<name>.log``."""
        log = self.log_dir / f"{name}.log"
        full_env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "SPEECHTUNE_TEST_THREADS": "1",
            **(env or {}),
        }
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                cwd=cwd or REPO,
                start_new_session=True,
            )
        self.procs.append((proc, log))
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        """The output of ``proc`` so far."""
        path = next(p for q, p in self.procs if q is proc)
        return path.read_text(errors="replace")

    def wait(self, proc: subprocess.Popen[bytes], timeout_s: float) -> int:
        """Bounded wait for ``proc``; on timeout its output is in the assertion message."""
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"process {proc.args!r} still running after {timeout_s} s; output:\n{self.log(proc)[-4000:]}"
            ) from None

    @staticmethod
    def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process group of ``proc`` (its trial command too)."""
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """SIGKILL every group still alive and reap it."""
        for proc, _ in self.procs:
            self.kill(proc)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def kill_process_only(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process itself, leaving its children (e.g. a trial command) as a crash would."""
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for(
    predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def wait_until_stale(
    url: str, study_name: str, heartbeat_s: float, timeout_s: float = 60.0
) -> list[int]:
    """Poll until a trial of the study has missed its heartbeats (two intervals): a dead process's trial.

    Reads with Optuna's own staleness rule (``RDBStorage._get_stale_trial_ids``), without
    failing the trial: that is the job of the process under test.
    """
    with warnings.catch_warnings():  # heartbeats are an experimental Optuna feature: no news here
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            url, heartbeat_interval=int(heartbeat_s), grace_period=int(2 * heartbeat_s)
        )
    study_id = storage.get_study_id_from_name(study_name)
    try:
        return wait_for(
            lambda: storage._get_stale_trial_ids(study_id), timeout_s, "a trial to go stale", 0.1
        )
    finally:
        storage.remove_session()
        storage.engine.dispose()


def trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, read with a plain storage (no heartbeat, no retry)."""
    storage = optuna.storages.RDBStorage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        return study.get_trials(deepcopy=False)
    except KeyError:
        return []
    finally:
        storage.engine.dispose()


def states(all_trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """Counts of trial states by lower-case name."""
    out: dict[str, int] = {}
    for t in all_trials:
        out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
    return out


def quick_objective(config: dict[str, Any], reporter: Any) -> dict[str, float]:
    """A trivial ``objective.kind: python`` function for many-worker tests (``--function``)."""
    x = float(config["x"])
    wer = (x - 0.3) ** 2 + 0.1
    reporter.report(1, wer=wer)
    return {"wer": wer}


def python_spec(path: Path, *, name: str, n_trials: int, sampler: str = "random") -> Path:
    """A tuning YAML of ``objective.kind: python`` (workers get the function with ``--function``)."""
    spec = {
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "study": {
            "name": name,
            "sampler": sampler,
            "pruner": "none",
            "n_trials": n_trials,
            "seed": 0,
        },
        "objective": {"kind": "python", "metric": "wer", "seeds": [0]},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
