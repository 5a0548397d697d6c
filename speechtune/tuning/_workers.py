"""``speechtune worker``: join a study on a shared database and run its trials.

Any number of workers, on any number of machines, point at one study in PostgreSQL (or a
journal file on a shared file system)::

    speechtune tune --config conf/tuning.yaml --storage postgresql+psycopg://user@db:5432/tuning   # or:
    speechtune worker --study NAME --storage postgresql+psycopg://user@db:5432/tuning [--config YAML]

Each worker pulls the next trial from the study (Optuna's sampler reads every worker's results)
and stops once the study-wide count of complete + pruned trials reaches ``--n-trials`` (default
``study.n_trials``), the rule of Optuna's ``MaxTrialsCallback``: every worker checks the count
after each of its trials, so trials already running elsewhere when the target is reached still
finish, and the study may end with up to ``workers - 1`` trials more than the target.

Without ``--config`` the worker rebuilds the tuning spec the study was created with (stored in
the study's user attrs ``spec`` and ``base_recipe``): the stored base recipe is written into the
worker's run directory and the spec points at it, so a worker on another machine needs none of
the driver's files. A command objective then runs in the worker's current directory. With
``--config`` the worker creates the study when it does not exist yet, or joins it.

Fault tolerance: every running trial beats a heartbeat (``--heartbeat-s``); when a worker dies,
its trial goes stale after two intervals, another worker fails it and re-queues its params once,
and the retry resumes from the dead trial's checkpoint when that trial's directory is reachable
(shared file system): the recipe continues from ``last.pt``; a command finds the dead trial's
files copied into its output dir (``$SPEECHTUNE_TRIAL_DIR``) and can resume from its own
checkpoint there. The storage rides out a database restart (see :mod:`._optuna`).

SQLite is refused: concurrent processes on one SQLite file lock each other out (and NFS breaks
its locking); use PostgreSQL or the journal storage.

``--function MODULE:ATTR`` runs a study whose ``objective.kind`` is ``python``: the worker imports
``ATTR`` from ``MODULE`` (importable on the worker's ``PYTHONPATH``) and calls it as a
:class:`~speechtune.tuning.FunctionObjective`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
import yaml

from ._objectives import Objective
from ._optuna import (
    DEFAULT_HEARTBEAT_S,
    RECONNECT_ENV,
    StorageUnavailableError,
    make_storage,
    mask_url,
    reconnect_bound,
)
from ._study import COUNTED_STATES, WORKER_ID

log = logging.getLogger("speechtune.tuning")

#: The message a worker gives for a SQLite URL.
SQLITE_REFUSAL = (
    "speechtune worker: SQLite cannot be shared by several worker processes (its file locks make "
    "concurrent workers fail with 'database is locked', and they do not work over NFS). Put the study in "
    "PostgreSQL, e.g. --storage postgresql+psycopg://user@host:5432/dbname, or, for workers on one "
    "machine or a shared file system, in the journal storage: --storage journal:///path/to/study.log"
)

#: Exit codes of ``speechtune worker``.
EXIT_OK, EXIT_UNFINISHED, EXIT_USAGE, EXIT_STORAGE = 0, 1, 2, 3


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``speechtune worker`` options to ``parser``."""
    parser.add_argument("--study", required=True, help="name of the study to join")
    parser.add_argument(
        "--storage", required=True,
        help="shared study storage: postgresql+psycopg://user@host:port/db or journal:///path.log (not SQLite)",
    )
    parser.add_argument("--config", default=None, help="tuning YAML; creates the study if missing (default: the spec stored with the study)")
    parser.add_argument("--run-dir", default=None, help="this worker's trial outputs (default: runs/<study>)")
    parser.add_argument(
        "--n-trials", type=int, default=None,
        help="study-wide complete + pruned trials to reach (default: study.n_trials); may overshoot by workers-1",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (recipe objective; default: %(default)s)")
    parser.add_argument("--gpu-slots", type=int, default=None, help="concurrent trials per GPU (GPU packing; cuda/auto only)")
    parser.add_argument("--gpu-mem-per-trial", type=float, default=None, metavar="MB", help="GPU memory one trial needs (skips fuller GPUs)")
    parser.add_argument("--cache-dir", default=".cache/speechtune", help="corpus and feature cache (default: %(default)s)")
    parser.add_argument(
        "--heartbeat-s", type=int, default=DEFAULT_HEARTBEAT_S,
        help="seconds between heartbeats of a running trial; a trial silent for twice that is re-queued (default: %(default)s)",
    )
    parser.add_argument(
        "--reconnect-s", type=float, default=None,
        help="how long a storage call retries through a database outage before the worker stops "
        "(default: $SPEECHTUNE_RECONNECT_S or 60)",
    )
    parser.add_argument("--function", default=None, metavar="MODULE:ATTR", help="the Python function of an objective.kind: python study")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: a local store in the run dir)")
    parser.add_argument("--no-tracking", action="store_true", help="do not log trials to MLflow")
    parser.add_argument("--no-report", action="store_true", help="do not write trials.csv, best.yaml and report.html at the end")
    parser.add_argument("--quiet", action="store_true", help="no live progress display")


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def is_sqlite(url: str | None) -> bool:
    """True for a SQLite storage (a ``sqlite:`` URL, or no URL: the default SQLite file)."""
    return url is None or url.strip().lower().startswith("sqlite")


def _check_args(args: argparse.Namespace) -> str | None:
    """The first usage problem, or None."""
    if is_sqlite(args.storage):
        return SQLITE_REFUSAL
    if args.storage in ("memory", "journal"):
        return (
            f"--storage {args.storage!r} is not a shared storage URL; use postgresql+psycopg://user@host:5432/dbname "
            "or journal:///path/to/study.log"
        )
    if args.reconnect_s is None:
        args.reconnect_s = reconnect_bound()
    checks: list[tuple[bool, str]] = [
        (args.n_trials is not None and args.n_trials < 1, f"--n-trials must be >= 1, got {args.n_trials}"),
        (args.heartbeat_s < 1, f"--heartbeat-s must be >= 1, got {args.heartbeat_s}"),
        (args.reconnect_s < 0, f"--reconnect-s must be >= 0, got {args.reconnect_s}"),
        (args.gpu_slots is not None and args.gpu_slots < 1, f"--gpu-slots must be >= 1, got {args.gpu_slots}"),
        (args.gpu_mem_per_trial is not None and args.gpu_mem_per_trial <= 0, f"--gpu-mem-per-trial must be > 0 MB, got {args.gpu_mem_per_trial}"),
        (not args.study.strip(), "--study must be a non-empty name"),
    ]
    return next((message for bad, message in checks if bad), None)


def import_function(path: str, search_paths: Sequence[Path] = ()) -> Callable[..., Any]:
    """Import ``MODULE:ATTR`` (``ATTR`` may be dotted: ``pkg.mod:Class.method``).

    Args:
        path: ``MODULE:ATTR``.
        search_paths: directories tried for ``MODULE`` before ``sys.path`` (the tuning YAML's
            directory, the working directory), so a script beside the YAML imports as is.

    Raises:
        ValueError: not of the form MODULE:ATTR, not importable, or not callable.
    """
    for directory in reversed([str(Path(p).resolve()) for p in search_paths]):
        if directory not in sys.path:
            sys.path.insert(0, directory)
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--function must look like MODULE:ATTR (e.g. mypkg.train:objective), got {path!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--function {path!r}: cannot import module {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"--function {path!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"--function {path!r} is a {type(target).__name__}, not a function")
    return target


# ---------------------------------------------------------------------------------------------
# the spec: from --config, or rebuilt from the study's records
# ---------------------------------------------------------------------------------------------
def _write_atomic(path: Path, text: str) -> None:
    # Workers sharing a run dir write the same content; a rename never shows a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def stored_spec_file(storage_url: str, study_name: str, run_dir: Path, *, heartbeat_s: int, reconnect_s: float) -> Path:
    """Write the tuning YAML a study was created with into ``run_dir`` and return its path.

    The stored ``base_recipe`` goes to ``run_dir/stored_recipe.yaml`` and the spec's ``recipe``
    points at it; presets are dropped (the stored ``space`` already has them folded in).

    Raises:
        ValueError: no such study, or a study created without a stored spec.
    """
    storage = make_storage(storage_url, run_dir, heartbeat_s=heartbeat_s, reconnect_s=reconnect_s)
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        names = [s.study_name for s in storage.get_all_studies()]
        raise ValueError(
            f"--study {study_name!r}: no such study in {mask_url(storage_url)} (studies there: {', '.join(names) or 'none'}); "
            "create it with `speechtune tune --storage URL ...` or give the worker --config"
        ) from None
    attrs = storage.get_study_user_attrs(study_id)
    spec = attrs.get("spec")
    if not isinstance(spec, dict) or not spec:
        raise ValueError(
            f"study {study_name!r} in {mask_url(storage_url)} has no stored tuning spec (user attr 'spec'); "
            "it was not created by speechtune: give the worker --config"
        )
    spec = dict(spec)
    spec.pop("presets", None)
    spec["study"] = {**(spec.get("study") or {}), "name": study_name, "storage": storage_url}
    if (spec.get("objective") or {}).get("kind", "recipe") == "recipe":
        recipe_path = run_dir / "stored_recipe.yaml"
        _write_atomic(recipe_path, yaml.safe_dump(attrs.get("base_recipe") or {}, sort_keys=False))
        spec["recipe"] = str(recipe_path.resolve())
    path = run_dir / "stored_spec.yaml"
    _write_atomic(path, yaml.safe_dump(spec, sort_keys=False))
    return path


def _load_spec(args: argparse.Namespace, run_dir: Path) -> tuple[Any, Path]:
    """The worker's TuningSpec (study name and storage from the flags) and its commands' cwd."""
    from ._spec import load_tuning

    if args.config:
        spec = load_tuning(args.config)
        cwd = Path(args.config).resolve().parent
    else:
        path = stored_spec_file(args.storage, args.study, run_dir, heartbeat_s=args.heartbeat_s, reconnect_s=args.reconnect_s)
        spec = load_tuning(path)
        cwd = Path.cwd()
    if getattr(spec, "fidelity", None) is not None:
        # A multi-fidelity study is one ask/tell driver (brackets, promotions, the budget):
        # independent workers would each run their own brackets over the same trials.
        raise ValueError(
            f"study {args.study!r} is multi-fidelity (a fidelity: section); workers cannot join it. Run it with "
            "`speechtune tune --n-jobs N` in one driver, or with `--backend ray` and ray.scheduler asha/hyperband"
        )
    study = dataclasses.replace(spec.study, name=args.study, storage=args.storage, seed=worker_seed(spec.study.seed))
    # The stored spec keeps the study's own seed; only this process's sampler gets its own.
    raw = {**spec.raw, "study": {**(spec.raw.get("study") or {}), "name": args.study, "storage": args.storage}}
    return dataclasses.replace(spec, study=study, raw=raw), cwd


def worker_seed(seed: int | None) -> int | None:
    """This worker's sampler seed: ``study.seed`` mixed with ``host:pid``.

    Workers sharing one seed would propose the very same configs in the same order (the random
    sampler, and TPE's random start-up trials); mixing in the worker's identity keeps each one
    reproducible given its host and pid while making the workers explore different points.
    """
    if seed is None:
        return None
    return zlib.crc32(f"{seed}:{WORKER_ID}".encode()) & 0x7FFFFFFF


# ---------------------------------------------------------------------------------------------
# the objective
# ---------------------------------------------------------------------------------------------
def build_worker_objective(spec: Any, args: argparse.Namespace, cwd: Path) -> Objective:
    """The objective of ``spec.objective.kind``, packed onto GPU slots when asked.

    Raises:
        ValueError: kind python without ``--function``, ``--function`` with another kind,
            an unknown kind, or GPU packing asked for an objective without a device.
    """
    kind = spec.objective.kind
    function = args.function or getattr(spec.objective, "function", None)
    if args.function and kind != "python":
        raise ValueError(f"--function is for objective.kind: python, but study {args.study!r} has kind {kind!r}")
    objective: Objective
    if kind == "recipe":
        from ._objectives import RecipeObjective

        objective = RecipeObjective(spec.base_recipe, device=args.device, cache_dir=args.cache_dir)
    elif kind == "command":
        from ._command import CommandObjective

        objective = CommandObjective(spec.command, spec.base_recipe or {}, cwd=cwd)
    elif kind == "python":
        if not function:
            raise ValueError(
                f"study {args.study!r} has objective.kind: python without objective.function: "
                "give the worker the function as --function MODULE:ATTR"
            )
        from ._objectives import FunctionObjective

        objective = FunctionObjective(import_function(function, search_paths=(cwd, Path.cwd())))
    else:
        raise ValueError(f"objective.kind: unknown kind {kind!r}; expected one of: recipe, command, python")
    return _maybe_slotted(objective, args, Path(args.run_dir or Path("runs") / args.study))


def _maybe_slotted(objective: Objective, args: argparse.Namespace, run_dir: Path) -> Objective:
    if args.gpu_slots is None and args.gpu_mem_per_trial is None:
        return objective
    if str(args.device) not in ("auto", "cuda"):
        log.info("--gpu-slots/--gpu-mem-per-trial ignored: --device is %s", args.device)
        return objective
    if not hasattr(objective, "device"):
        raise ValueError("--gpu-slots/--gpu-mem-per-trial need an objective with a device (objective.kind: recipe)")
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        log.info("--gpu-slots/--gpu-mem-per-trial ignored: CUDA is not available")
        return objective
    from ._gpu import GpuSlots, SlottedObjective

    slots = GpuSlots(run_dir / ".gpu-slots", slots_per_gpu=args.gpu_slots, mem_per_trial_mb=args.gpu_mem_per_trial)
    return SlottedObjective(objective, slots)


def storage_failure(exc: BaseException) -> StorageUnavailableError | None:
    """The :class:`StorageUnavailableError` behind ``exc``, if any.

    When the database is gone for good, Optuna's own bookkeeping after a failed write can raise
    a second error (e.g. an ``UnboundLocalError`` in its trial loop) whose context is ours: the
    whole chain is searched so that the user sees the storage message, not Optuna's.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageUnavailableError):
            return current
        current = current.__cause__ or current.__context__
    return None


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
def worker_command(args: argparse.Namespace) -> int:
    """Run ``speechtune worker``; return the process exit code.

    Returns:
        0 when the study reached its target (or ``study.timeout_s`` passed); 1 when this worker
        stopped before (its trials kept failing); 2 for bad usage (a SQLite URL, bad flags, no
        such study, a kind python study without ``--function``); 3 when the database stayed
        unreachable longer than ``--reconnect-s``.
    """
    from ._cli import make_tracker
    from ._study import run_study

    problem = _check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / args.study
    run_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Every storage this process opens (run_study opens its own) rides out outages this long.
    os.environ[RECONNECT_ENV] = repr(float(args.reconnect_s))
    from ..data._guard import guard_from_env

    try:
        # A workflow's worker must not read the golden set either (the variable names it).
        with guard_from_env(f"worker {args.study}"):
            spec, cwd = _load_spec(args, run_dir)
            objective = build_worker_objective(spec, args, cwd)
            target = args.n_trials if args.n_trials is not None else spec.study.n_trials
            study = run_study(
                spec,
                objective,
                run_dir,
                n_trials=target,
                resume=True,  # join: trials of other workers are expected, stale ones are re-queued
                n_jobs=1,
                tracker=make_tracker(spec, run_dir, args),
                progress=not args.quiet,
                heartbeat_s=args.heartbeat_s,
                write_outputs=not args.no_report,
                shared=True,
            )
    except KeyboardInterrupt:
        print("interrupted: this worker's running trial is re-queued once its heartbeat goes stale", file=sys.stderr)
        return 130
    except Exception as exc:
        lost = storage_failure(exc)
        if lost is not None:
            print(f"error: {lost}", file=sys.stderr)
            return EXIT_STORAGE
        if isinstance(exc, ValueError):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise
    counted = len(study.get_trials(deepcopy=False, states=COUNTED_STATES))
    print(f"worker {args.study!r}: the study has {counted} complete or pruned trials (target {target})")
    if target is not None and counted < target and getattr(spec.study, "timeout_s", None) is None:
        print("error: this worker stopped before the study reached its target (see the failed trials' reasons)", file=sys.stderr)
        return EXIT_UNFINISHED
    return EXIT_OK
