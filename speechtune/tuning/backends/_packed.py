"""Several ``speechtune worker`` processes on this machine, sharing one study (GPU packing).

Threads of one process (``study.n_jobs``) share one Python interpreter, so small trials that
are bound by Python and kernel launches do not overlap much. Separate worker processes do:
each has its own interpreter and CUDA context, and the GPU interleaves their kernels. The
workers coordinate through the study storage (which trial runs next) and through
:class:`~speechtune.tuning._gpu.GpuSlots` lock files (which GPU a trial runs on).

SQLite refuses concurrent writers from several processes under load, so a study whose storage
is the default SQLite file is moved to a journal file (``journal:///<run_dir>/journal.log``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from optuna.trial import TrialState

from speechtune._jsonable import _jsonable
from speechtune._urls import mask_url
from speechtune.devices import GpuMonitor
from speechtune.tuning.objectives import Objective
from speechtune.tuning.spec import TuningSpec
from speechtune.tuning.study import STORAGE_ENV, OpenOptions, StudySession, storage_url

log = logging.getLogger("speechtune.tuning")


#: Seconds a worker gets to exit after SIGTERM before it is killed.
TERMINATE_GRACE_S = 10.0


#: The package root, put on the workers' PYTHONPATH so that an uninstalled checkout works too.
_PACKAGE_ROOT = Path(__file__).resolve().parents[3]


def worker_argv(
    study_name: str,
    run_dir: str | Path,
    *,
    config: str | Path | None = None,
    device: str = "auto",
    n_trials: int | None = None,
    extra_argv: Sequence[str] = (),
) -> list[str]:
    """The argv of one ``speechtune worker`` process (no shell involved).

    The storage URL is not in it: a password there would be readable by every user of the
    machine (``ps``); :func:`launch_local_workers` passes it in ``$SPEECHTUNE_STORAGE``.
    """
    argv = [
        sys.executable,
        "-m",
        "speechtune.cli",
        "worker",
        "--study-name",
        study_name,
        "--run-dir",
        str(run_dir),
        "--device",
        device,
    ]
    if config is not None:
        argv += ["--config", str(config)]
    if n_trials is not None:
        argv += ["--n-trials", str(int(n_trials))]
    return argv + [str(a) for a in extra_argv]


def _child_env(env: Mapping[str, str] | None, index: int, storage_url: str) -> dict[str, str]:
    merged = {**os.environ, **(env or {})}
    merged[STORAGE_ENV] = storage_url  # not argv: see worker_argv
    path = merged.get("PYTHONPATH", "")
    if str(_PACKAGE_ROOT) not in path.split(os.pathsep):
        merged["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), path) if p)
    merged["PYTHONUNBUFFERED"] = "1"  # a worker's log is read while it runs
    merged["SPEECHTUNE_WORKER_INDEX"] = str(index)
    return merged


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal a worker's whole process group (its own children too)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _terminate_all(
    procs: Sequence[subprocess.Popen[bytes]], grace_s: float = TERMINATE_GRACE_S
) -> None:
    """SIGTERM every live worker group, then SIGKILL what is left after ``grace_s``."""
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            _signal_group(p, signal.SIGKILL)
            p.wait(timeout=30)


def launch_local_workers(
    storage_url: str,
    study_name: str,
    run_dir: str | Path,
    n_workers: int,
    *,
    config: str | Path | None = None,
    device: str = "auto",
    n_trials: int | None = None,
    extra_argv: Sequence[str] = (),
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
) -> list[int]:
    """Start ``n_workers`` ``speechtune worker`` processes on one study and wait for them.

    Each worker writes its output to ``<run_dir>/workers/worker-<i>.log`` and runs in its own
    process group; on Ctrl-C or when ``timeout_s`` passes, every group gets SIGTERM, then
    SIGKILL after :data:`TERMINATE_GRACE_S`. The workers get ``storage_url`` in their
    environment (``$SPEECHTUNE_STORAGE``), never on their command line.

    Args:
        storage_url: the study storage (PostgreSQL or ``journal:///...``; not SQLite).
        study_name: the study every worker joins.
        run_dir: the run directory (trial outputs, logs, GPU slot locks).
        n_workers: processes to start (>= 1).
        config: tuning YAML for the workers (default: the spec stored with the study).
        device: ``auto``, ``cpu``, ``cuda``... passed as ``--device``.
        n_trials: study-wide target of complete + pruned trials (``--n-trials``).
        extra_argv: more worker arguments (``--gpu-slots 4``, ``--no-tracking``, ...).
        timeout_s: stop the workers after this many seconds (None: no limit).
        env: environment variables added to this process's for the workers.

    Returns:
        The exit codes, in worker order (negative: ended by that signal, e.g. -15 at a timeout).

    Raises:
        ValueError: ``n_workers`` < 1.
        KeyboardInterrupt: re-raised after every worker has been stopped.
    """
    if int(n_workers) < 1:
        raise ValueError(f"n_workers (--workers) must be >= 1, got {n_workers!r}")
    run_dir = Path(run_dir)
    log_dir = run_dir / "workers"
    log_dir.mkdir(parents=True, exist_ok=True)
    argv = worker_argv(
        study_name,
        run_dir,
        config=config,
        device=device,
        n_trials=n_trials,
        extra_argv=extra_argv,
    )
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []
    deadline = None if timeout_s is None else time.monotonic() + float(timeout_s)
    try:
        for i in range(int(n_workers)):
            fh = (log_dir / f"worker-{i}.log").open("wb")
            logs.append(fh)
            # A new session per worker: its group can be signalled as a whole, and a Ctrl-C in
            # the terminal reaches only us (we then stop the workers in order).
            procs.append(
                subprocess.Popen(
                    argv,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=_child_env(env, i, storage_url),
                    cwd=os.getcwd(),
                    start_new_session=True,
                )
            )
        log.info("started %d workers on study %r (logs in %s)", len(procs), study_name, log_dir)
        while any(p.poll() is None for p in procs):
            if deadline is not None and time.monotonic() >= deadline:
                log.error("workers still running after %g s: stopping them", timeout_s)
                _terminate_all(procs)
                break
            time.sleep(0.1)
    except BaseException:  # Ctrl-C (or a failed start): no worker may outlive us
        _terminate_all(procs)
        raise
    finally:
        for log_file in logs:
            log_file.close()
    codes = [int(p.returncode) for p in procs]
    for i, code in enumerate(codes):
        if code != 0:
            log.warning("worker %d exited with %d; see %s", i, code, log_dir / f"worker-{i}.log")
    return codes


def packed_storage_url(storage: str | None, run_dir: Path) -> str:
    """The storage URL of a packed study: the default SQLite file becomes a journal file."""
    url = storage_url(storage, run_dir)
    if url.startswith("sqlite"):
        journal = storage_url("journal", run_dir)
        if storage is not None:
            log.warning(
                "study.storage %s is SQLite, which refuses concurrent worker processes: using %s",
                mask_url(storage),
                journal,
            )
        return journal
    return url


@dataclass(frozen=True)
class PackedBackend:
    """``n_workers`` ``speechtune worker`` processes on this machine sharing one study (GPU packing).

    The study is created (or reopened) here; the workers build their objective from the spec
    stored with it. During the run the GPUs are sampled; the study records ``gpu_utilization``
    (the monitor's summary), ``gpu_timeline`` (``[unix time, busy %]`` per sample), ``wall_s``,
    ``n_workers`` and ``worker_exit_codes``.

    Args:
        n_workers: concurrent worker processes.
        storage: storage URL; default ``study.storage``. SQLite (also the default) is replaced by
            ``journal:///<run_dir>/journal.log``.
        device: worker ``--device``.
        gpu_slots: trials per GPU (``--gpu-slots``; default: the workers' own default).
        gpu_mem_per_trial_mb: GPU memory one trial needs (``--gpu-mem-per-trial``).
        config_path: tuning YAML passed to the workers (default: the spec stored with the study).
        enqueue: param dicts to enqueue before the workers start (they run first, in order).
        extra_argv: more worker arguments (``--no-tracking``, ``--cache-dir D``...).
        timeout_s: stop the workers after this many seconds.
        monitor_interval_s: GPU sampling interval.
        env: environment variables for the workers.
    """

    n_workers: int
    storage: str | None = None
    device: str = "auto"
    gpu_slots: int | None = None
    gpu_mem_per_trial_mb: float | None = None
    config_path: str | Path | None = None
    enqueue: Sequence[Mapping[str, Any]] = ()
    extra_argv: Sequence[str] = ()
    timeout_s: float | None = None
    monitor_interval_s: float = 0.5
    env: Mapping[str, str] | None = None

    def open_options(self, spec: TuningSpec, run_dir: Path) -> OpenOptions:
        """See :meth:`Backend.open_options`.

        Raises:
            ValueError: a multi-fidelity spec (its driver cannot be split over processes).
        """
        if spec.fidelity is not None:
            raise ValueError(
                "a multi-fidelity study (fidelity: section) runs in one driver: use --n-jobs N instead of --workers N, "
                "or --backend ray with ray.scheduler asha/hyperband"
            )
        storage = packed_storage_url(
            self.storage if self.storage is not None else spec.study.storage, run_dir
        )
        return OpenOptions(n_jobs=self.n_workers, storage=storage)

    def run(
        self,
        session: StudySession,
        objective: Objective | None,
        *,
        n_trials: int | None,
        progress: bool,
    ) -> None:
        """See :meth:`Backend.run` (``objective`` is not used: each worker builds its own).

        Raises:
            RuntimeError: a worker exited with an error; the message names the worker logs.
        """
        study, spec, run_dir = session.study, session.spec, session.run_dir
        for params in self.enqueue:
            study.enqueue_trial(dict(params), skip_if_exists=False)
        argv: list[str] = []
        if self.gpu_slots is not None:
            argv += ["--gpu-slots", str(int(self.gpu_slots))]
        if self.gpu_mem_per_trial_mb is not None:
            argv += ["--gpu-mem-per-trial", f"{float(self.gpu_mem_per_trial_mb):g}"]
        argv += [str(a) for a in self.extra_argv]
        url = spec.study.storage or packed_storage_url(None, run_dir)
        t0 = time.perf_counter()
        with GpuMonitor(interval_s=self.monitor_interval_s) as monitor:
            codes = launch_local_workers(
                url,
                spec.study.name,
                run_dir,
                self.n_workers,
                config=self.config_path,
                device=self.device,
                n_trials=session.target(n_trials),
                extra_argv=argv,
                timeout_s=self.timeout_s,
                env=self.env,
            )
        wall = time.perf_counter() - t0
        study.set_user_attr("gpu_utilization", _jsonable(monitor.summary()))
        # (unix time, busy %) per sample: lets a report judge utilisation while trials ran only.
        study.set_user_attr(
            "gpu_timeline", [[round(t, 3), round(u, 1)] for t, u in monitor.timeline()]
        )
        study.set_user_attr("wall_s", round(wall, 3))
        study.set_user_attr("n_workers", int(self.n_workers))
        study.set_user_attr("worker_exit_codes", codes)
        failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        log.info(
            "%d workers: %d trials complete or pruned, %d failed, in %.1f s",
            self.n_workers,
            session.counted(),
            failed,
            wall,
        )
        bad = [i for i, c in enumerate(codes) if c != 0]
        if bad:
            logs = ", ".join(str(run_dir / "workers" / f"worker-{i}.log") for i in bad)
            raise RuntimeError(
                f"{len(bad)} of {self.n_workers} workers exited with an error (codes {codes}); see {logs}"
            )
