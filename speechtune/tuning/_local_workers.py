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

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.trial import TrialState

from ._gpu import GpuMonitor
from ._optuna import storage_url
from ._study import COUNTED_STATES, _jsonable, _write_spec, open_study, record_cost_total, write_study_outputs

log = logging.getLogger("speechtune.tuning")

#: Seconds a worker gets to exit after SIGTERM before it is killed.
TERMINATE_GRACE_S = 10.0
#: The package root, put on the workers' PYTHONPATH so that an uninstalled checkout works too.
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def worker_argv(
    storage_url: str,
    study_name: str,
    run_dir: str | Path,
    *,
    config: str | Path | None = None,
    device: str = "auto",
    n_trials: int | None = None,
    extra_argv: Sequence[str] = (),
) -> list[str]:
    """The argv of one ``speechtune worker`` process (no shell involved)."""
    argv = [
        sys.executable,
        "-m",
        "speechtune.cli",
        "worker",
        "--study",
        study_name,
        "--storage",
        storage_url,
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


def _child_env(env: Mapping[str, str] | None, index: int) -> dict[str, str]:
    merged = {**os.environ, **(env or {})}
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


def _terminate_all(procs: Sequence[subprocess.Popen[bytes]], grace_s: float = TERMINATE_GRACE_S) -> None:
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
    SIGKILL after :data:`TERMINATE_GRACE_S`.

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
        storage_url, study_name, run_dir, config=config, device=device, n_trials=n_trials, extra_argv=extra_argv
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
                    env=_child_env(env, i),
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
        for fh in logs:
            fh.close()
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
            log.warning("study.storage %s is SQLite, which refuses concurrent worker processes: using %s", storage, journal)
        return journal
    return url


def run_packed_study(
    spec: Any,
    run_dir: str | Path,
    n_workers: int,
    *,
    storage: str | None = None,
    device: str = "auto",
    gpu_slots: int | None = None,
    gpu_mem_per_trial_mb: float | None = None,
    n_trials: int | None = None,
    config_path: str | Path | None = None,
    resume: bool = False,
    enqueue: Sequence[Mapping[str, Any]] = (),
    extra_argv: Sequence[str] = (),
    timeout_s: float | None = None,
    monitor_interval_s: float = 0.5,
    env: Mapping[str, str] | None = None,
) -> optuna.Study:
    """Run a study with ``n_workers`` concurrent worker processes on this machine.

    Creates (or, with ``resume``, reopens) the study, launches the workers under a
    :class:`GpuMonitor`, then records on the study ``gpu_utilization`` (the monitor's summary),
    ``gpu_timeline`` (``[unix time, busy %]`` per sample), ``wall_s``, ``n_workers`` and
    ``worker_exit_codes``, and writes trials.csv, best.yaml and report.html.

    Args:
        spec: the tuning spec.
        run_dir: run directory (storage, trials, ``workers/*.log``, ``.gpu-slots``).
        n_workers: concurrent worker processes.
        storage: storage URL; default ``spec.study.storage``. SQLite (also the default) is
            replaced by ``journal:///<run_dir>/journal.log``.
        device: worker ``--device``.
        gpu_slots: trials per GPU (``--gpu-slots``; default: the workers' own default).
        gpu_mem_per_trial_mb: GPU memory one trial needs (``--gpu-mem-per-trial``).
        n_trials: study-wide target of complete + pruned trials (default ``spec.study.n_trials``).
        config_path: tuning YAML passed to the workers (default: the spec stored with the study).
        resume: continue an existing study of that name.
        enqueue: param dicts to enqueue before the workers start (they run first, in order).
        extra_argv: more worker arguments (``--no-tracking``, ``--cache-dir D``...).
        timeout_s: stop the workers after this many seconds.
        monitor_interval_s: GPU sampling interval.
        env: environment variables for the workers.

    Returns:
        The study.

    Raises:
        StudyExistsError: the study has trials and ``resume`` is False.
        ValueError: a multi-fidelity spec (its driver cannot be split over processes).
        RuntimeError: a worker exited with an error (after the outputs are written); the
            message names the worker logs.
    """
    if getattr(spec, "fidelity", None) is not None:
        raise ValueError(
            "a multi-fidelity study (fidelity: section) runs in one driver: use --n-jobs N instead of --workers N, "
            "or --backend ray with ray.scheduler asha/hyperband"
        )
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    url = packed_storage_url(storage if storage is not None else spec.study.storage, run_dir)
    spec = _with_storage(spec, url)
    study = open_study(spec, run_dir, resume=resume, n_jobs=n_workers)
    _write_spec(spec, run_dir)
    for params in enqueue:
        study.enqueue_trial(dict(params), skip_if_exists=False)
    target = n_trials if n_trials is not None else spec.study.n_trials
    argv: list[str] = []
    if gpu_slots is not None:
        argv += ["--gpu-slots", str(int(gpu_slots))]
    if gpu_mem_per_trial_mb is not None:
        argv += ["--gpu-mem-per-trial", f"{float(gpu_mem_per_trial_mb):g}"]
    argv += [str(a) for a in extra_argv]
    t0 = time.perf_counter()
    with GpuMonitor(interval_s=monitor_interval_s) as monitor:
        codes = launch_local_workers(
            url,
            spec.study.name,
            run_dir,
            n_workers,
            config=config_path,
            device=device,
            n_trials=target,
            extra_argv=argv,
            timeout_s=timeout_s,
            env=env,
        )
    wall = time.perf_counter() - t0
    study.set_user_attr("gpu_utilization", _jsonable(monitor.summary()))
    # (unix time, busy %) per sample: lets a report judge utilisation while trials ran only.
    study.set_user_attr("gpu_timeline", [[round(t, 3), round(u, 1)] for t, u in monitor.timeline()])
    study.set_user_attr("wall_s", round(wall, 3))
    study.set_user_attr("n_workers", int(n_workers))
    study.set_user_attr("worker_exit_codes", codes)
    counted = len(study.get_trials(deepcopy=False, states=COUNTED_STATES))
    failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    log.info("%d workers: %d trials complete or pruned, %d failed, in %.1f s", n_workers, counted, failed, wall)
    record_cost_total(study)  # the workers' trials, summed once they have all finished
    write_study_outputs(study, run_dir, spec)
    bad = [i for i, c in enumerate(codes) if c != 0]
    if bad:
        logs = ", ".join(str(run_dir / "workers" / f"worker-{i}.log") for i in bad)
        raise RuntimeError(f"{len(bad)} of {n_workers} workers exited with an error (codes {codes}); see {logs}")
    return study


def _with_storage(spec: Any, url: str) -> Any:
    """``spec`` with ``study.storage`` set to ``url`` (also in the stored ``raw`` YAML)."""
    study_spec = dataclasses.replace(spec.study, storage=url)
    raw = dict(getattr(spec, "raw", {}) or {})
    if raw:
        raw["study"] = {**dict(raw.get("study") or {}), "storage": url}
    return dataclasses.replace(spec, study=study_spec, raw=raw)
