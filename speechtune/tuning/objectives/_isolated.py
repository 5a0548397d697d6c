"""Run one trial of an objective in a child process, its reports relayed to the parent's reporter.

Parallel trials of a study (``n_jobs``) used to run as threads of one process, and threads
share torch's process-wide random generator: a trial's weights, dropout masks and batch order
depended on what the other threads drew, so the same config and seed gave another result than
``speechtune train`` (on AN4, dev WER 0.404 as a thread against 0.444 alone;
``benchmarks/parallel_trials.py`` checks it). A child process per trial reproduces the trial
run alone, and has its own interpreter (no GIL shared with the other trials) and, on a GPU, its
own CUDA context, whose kernels the GPU interleaves with the others' (packing). On 2 CPU cores
the two ways train equally fast; a child costs a few seconds to start.

The child is a fresh interpreter (running :func:`child_main`; a fork of a threaded process holding
torch's state is not safe, and multiprocessing's spawn would re-run an unguarded user script),
given the pickled objective over a socket pair. Each epoch it sends ``("report", epoch,
metrics)`` and waits for the parent's answer (stop or go), so pruning works as in-process; at
the end it sends ``("done", outcome)``. A child that dies without an outcome (killed, out of
memory) is a failed trial, never a dead study. A parent that dies (killed, not interrupted) takes
its children with it: each child watches its parent and exits once it is gone, instead of
training on, orphaned, until its next report finds nobody listening (minutes on a GPU, holding
its memory).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from speechtune.tuning.objectives._base import ERROR, TrialOutcome

if TYPE_CHECKING:  # this module stays torch-free
    from speechtune.training import Reporter

log = logging.getLogger(__name__)

#: Seconds between checks that the child is still alive while waiting for its next message.
POLL_S = 1.0
#: The package root, put on the child's PYTHONPATH so that an uninstalled checkout works too.
_PACKAGE_ROOT = Path(__file__).resolve().parents[3]
#: What the child runs (``-c``, not ``-m``: the package imports this module before ``-m`` would).
_CHILD_CODE = f"import sys; from {__name__} import child_main; child_main(*map(int, sys.argv[1:]))"
#: Seconds a child gets to exit after sending its outcome (or after being told to stop).
EXIT_GRACE_S = 30.0


class _TrialFn(Protocol):
    def __call__(
        self, config: dict[str, Any], reporter: Reporter, trial_dir: Path, seed: int
    ) -> TrialOutcome: ...


class _PipeReporter:
    """The child's reporter: each report goes to the parent, whose answer it returns."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def report(self, epoch: int, **metrics: float) -> bool:
        self._conn.send(("report", int(epoch), {k: float(v) for k, v in metrics.items()}))
        return bool(self._conn.recv())


def _child(conn: Connection) -> None:
    """The child process: receive the trial, run it, send its outcome (or what ended it)."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        objective, config, trial_dir, seed = conn.recv()
        outcome = objective(config, _PipeReporter(conn), Path(trial_dir), seed)
        conn.send(("done", outcome))
    except BaseException as exc:  # everything reaches the parent as a failed trial
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        conn.close()


def run_isolated(
    objective: _TrialFn, config: dict[str, Any], reporter: Reporter, trial_dir: Path, seed: int
) -> TrialOutcome:
    """``objective(config, reporter, trial_dir, seed)`` in a child process (module docstring).

    ``objective`` must be picklable (a recipe objective is). An exception the parent's
    reporter raises (Ctrl-C) stops the child first, then propagates.
    """
    ours, theirs = socket.socketpair()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH")) if p
    )
    argv = [sys.executable, "-c", _CHILD_CODE, str(theirs.fileno()), str(os.getpid())]
    proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), env=env)
    theirs.close()  # the child holds its end: EOF here once it exits
    conn = Connection(ours.detach())
    try:
        try:
            conn.send((objective, config, str(trial_dir), seed))
        except OSError:  # it died before reading its trial
            return _died(proc, trial_dir)
        return _relay(proc, conn, reporter, trial_dir)
    finally:
        try:
            proc.wait(EXIT_GRACE_S)
        except subprocess.TimeoutExpired:  # our own child, by its handle: never by name
            log.warning("trial in %s: child %d did not exit; killing it", trial_dir, proc.pid)
            proc.kill()
            proc.wait(EXIT_GRACE_S)
        conn.close()


def _relay(
    proc: subprocess.Popen[bytes], conn: Connection, reporter: Reporter, trial_dir: Path
) -> TrialOutcome:
    while True:
        if not conn.poll(POLL_S):
            if proc.poll() is None:
                continue
            if not conn.poll(0):  # it may have sent just before exiting
                return _died(proc, trial_dir)
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the child is gone (a reset socket, too)
            return _died(proc, trial_dir)
        if msg[0] == "report":
            try:
                stop = reporter.report(msg[1], **msg[2])
            except BaseException:
                _answer(conn, True)  # stop the child, then let the caller see the exception
                raise
            _answer(conn, bool(stop))
        elif msg[0] == "done":
            outcome: TrialOutcome = msg[1]
            return outcome
        else:
            log.error("trial in %s failed in its child process:\n%s", trial_dir, msg[2])
            return TrialOutcome(ERROR, f"error: {msg[1]}", extra={"output_dir": str(trial_dir)})


def _answer(conn: Connection, stop: bool) -> None:
    """Tell the child whether to stop; a child already gone is found by the next receive."""
    try:
        conn.send(stop)
    except OSError:
        pass


def _died(proc: subprocess.Popen[bytes], trial_dir: Path) -> TrialOutcome:
    try:
        code: int | None = proc.wait(EXIT_GRACE_S)
    except subprocess.TimeoutExpired:
        code = None
    why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    log.error("trial in %s: its child process ended without a result (%s)", trial_dir, why)
    return TrialOutcome(
        ERROR,
        f"error: the trial's process ended without a result ({why}; out of memory?)",
        extra={"output_dir": str(trial_dir)},
    )


def _exit_with_parent(parent_pid: int) -> None:
    """End this process once ``parent_pid`` is no longer its parent (it died; we were re-parented).

    A polling thread rather than Linux's ``PR_SET_PDEATHSIG``: that signal ties the child to the
    parent *thread* that started it, not to the process, and exists on Linux only.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(POLL_S)
        log.warning(
            "trial child %d: its study process %d is gone; exiting", os.getpid(), parent_pid
        )
        os._exit(1)  # from this thread, while the main one trains: no cleanup to wait for

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def child_main(fd: int, parent_pid: int | None = None) -> None:
    """The child's entry point: run the trial sent over the socket ``fd``; exit with ``parent_pid``."""
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    _child(Connection(fd))
