"""``speechtune worker``: join a study on a shared database and run its trials.

See :mod:`speechtune.tuning.backends._worker` for how workers share a study, rebuild its spec,
and survive each other's deaths and database restarts. The storage URL comes from ``--storage``
or, keeping a password off the command line, from ``$SPEECHTUNE_STORAGE``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from speechtune.cli._common import (
    DEFAULT_CACHE_DIR,
    add_study_name_argument,
    add_threads_argument,
    add_tracking_arguments,
    apply_threads,
    make_tracker,
)

HELP = (
    "join a study on PostgreSQL (or a journal file) and run its trials; start any number of them"
)

#: Exit codes of ``speechtune worker``.
EXIT_OK, EXIT_UNFINISHED, EXIT_USAGE, EXIT_STORAGE = 0, 1, 2, 3
#: The heartbeat interval when neither ``--heartbeat-s`` nor ``$SPEECHTUNE_HEARTBEAT_S`` says.
HEARTBEAT_HELP = "(default: $SPEECHTUNE_HEARTBEAT_S or 30)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``speechtune worker``."""
    # Not required=True: the hidden --study alias fills the same dest (checked in _check_args).
    add_study_name_argument(parser, "name of the study to join (required)")
    parser.add_argument(
        "--storage",
        default=None,
        help="shared study storage: postgresql+psycopg://user@host:port/db, journal:////abs/path.log, "
        "or 'journal' (RUN_DIR/journal.log); not SQLite (default: $SPEECHTUNE_STORAGE; put a URL "
        "with a password there: a command line is visible to every user in `ps`)",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="tuning YAML; creates the study if missing (default: the spec stored with the study)",
    )
    parser.add_argument(
        "--run-dir", default=None, help="this worker's trial outputs (default: runs/<study>)"
    )
    parser.add_argument(
        "--n-trials",
        type=int,
        default=None,
        help="study-wide complete + pruned trials to reach (default: study.n_trials); may overshoot by workers-1",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto, cpu, cuda, cuda:1 ... (recipe objective; default: %(default)s)",
    )
    parser.add_argument(
        "--gpu-slots",
        type=int,
        default=None,
        help="concurrent trials per GPU (GPU packing; cuda/auto only)",
    )
    parser.add_argument(
        "--gpu-mem-per-trial",
        type=float,
        default=None,
        metavar="MB",
        help="GPU memory one trial needs (skips fuller GPUs)",
    )
    parser.add_argument(
        "--cache-dir",
        default=DEFAULT_CACHE_DIR,
        help="corpus and feature cache (default: %(default)s)",
    )
    add_threads_argument(parser)
    parser.add_argument(
        "--heartbeat-s",
        type=int,
        default=None,
        help="seconds between heartbeats of a running trial; a trial silent for twice that is "
        f"re-queued {HEARTBEAT_HELP}",
    )
    parser.add_argument(
        "--reconnect-s",
        type=float,
        default=None,
        help="how long a storage call retries through a database outage before the worker stops "
        "(default: $SPEECHTUNE_RECONNECT_S or 60)",
    )
    parser.add_argument(
        "--function",
        default=None,
        metavar="MODULE:ATTR",
        help="the Python function of an objective.kind: python study",
    )
    add_tracking_arguments(parser)
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="do not write trials.csv, best.yaml and report.html at the end",
    )
    parser.add_argument("--quiet", action="store_true", help="no live progress display")


def _check_args(args: argparse.Namespace) -> str | None:
    """The first usage problem, or None (fills in the defaults that depend on the environment)."""
    from speechtune._urls import has_password
    from speechtune.tuning.backends import SQLITE_REFUSAL, is_sqlite
    from speechtune.tuning.study import DEFAULT_HEARTBEAT_S, STORAGE_ENV, reconnect_bound

    if args.study is None or not args.study.strip():
        return "--study-name is required: the name of the study to join"
    if args.storage is None:
        # Taken out of the environment: the trials' own processes (command objectives) inherit
        # it otherwise, and have no business with the database password.
        args.storage = os.environ.pop(STORAGE_ENV, "").strip() or None
        if args.storage is None:
            return (
                f"--storage (or ${STORAGE_ENV}) is required: the URL of the study's shared storage"
            )
    elif has_password(args.storage):
        print(
            "warning: --storage holds a password, which every user of this machine can read in `ps`; "
            f"pass the URL in ${STORAGE_ENV} instead",
            file=sys.stderr,
        )
    if is_sqlite(args.storage):
        return SQLITE_REFUSAL
    if args.storage == "memory":
        return (
            f"--storage {args.storage!r} is not a shared storage URL; use postgresql+psycopg://user@host:5432/dbname "
            "or journal:///path/to/study.log"
        )
    if args.reconnect_s is None:
        args.reconnect_s = reconnect_bound()
    if args.heartbeat_s is None:
        args.heartbeat_s = DEFAULT_HEARTBEAT_S
    checks: list[tuple[bool, str]] = [
        (
            args.n_trials is not None and args.n_trials < 1,
            f"--n-trials must be >= 1, got {args.n_trials}",
        ),
        (args.heartbeat_s < 1, f"--heartbeat-s must be >= 1, got {args.heartbeat_s}"),
        (args.reconnect_s < 0, f"--reconnect-s must be >= 0, got {args.reconnect_s}"),
        (
            args.gpu_slots is not None and args.gpu_slots < 1,
            f"--gpu-slots must be >= 1, got {args.gpu_slots}",
        ),
        (
            args.gpu_mem_per_trial is not None and args.gpu_mem_per_trial <= 0,
            f"--gpu-mem-per-trial must be > 0 MB, got {args.gpu_mem_per_trial}",
        ),
        (
            args.threads is not None and args.threads < 1,
            f"--threads must be >= 1, got {args.threads}",
        ),
    ]
    return next((message for bad, message in checks if bad), None)


def run(args: argparse.Namespace) -> int:
    """Run ``speechtune worker``; return the process exit code.

    Returns:
        0 when the study reached its target (or ``study.timeout_s`` passed); 1 when this worker
        stopped before (its trials kept failing); 2 for bad usage (a SQLite URL, bad flags, no
        such study, a kind python study without ``--function``); 3 when the database stayed
        unreachable longer than ``--reconnect-s``.
    """
    import optuna

    from speechtune._urls import scrub
    from speechtune.data import guard_from_env
    from speechtune.reports import write_study_outputs
    from speechtune.tuning.backends import (
        load_worker_spec,
        run_worker,
        slotted,
        storage_failure,
    )
    from speechtune.tuning.objectives import build_objective
    from speechtune.tuning.study import RECONNECT_ENV

    problem = _check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / args.study
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.storage == "journal":
        # As for `tune --storage journal`: the run dir's journal file, named absolutely, so that
        # the storage the study records is the same file for every process that reads it.
        from speechtune.tuning.study import storage_url

        args.storage = storage_url("journal", run_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Every storage this process opens (the study session opens its own) rides out outages this long.
    os.environ[RECONNECT_ENV] = repr(float(args.reconnect_s))
    try:
        # A workflow's worker must not read the golden set either (the variable names it).
        with guard_from_env(f"worker {args.study}"):
            spec, cwd = load_worker_spec(
                args.study,
                args.storage,
                run_dir,
                config=args.config,
                heartbeat_s=args.heartbeat_s,
                reconnect_s=args.reconnect_s,
            )
            objective = build_objective(
                spec, device=args.device, cache_dir=args.cache_dir, function=args.function, cwd=cwd
            )
            if args.threads is not None:
                apply_threads(objective, int(args.threads))
            objective = slotted(
                objective,
                device=args.device,
                run_dir=run_dir,
                gpu_slots=args.gpu_slots,
                gpu_mem_per_trial_mb=args.gpu_mem_per_trial,
            )
            target = args.n_trials if args.n_trials is not None else spec.study.n_trials
            study = run_worker(
                spec,
                objective,
                run_dir,
                n_trials=target,
                heartbeat_s=args.heartbeat_s,
                tracker=make_tracker(spec, run_dir, args),
                outputs=None if args.no_report else write_study_outputs,
                progress=not args.quiet,
            )
    except KeyboardInterrupt:
        print(
            "interrupted: this worker's running trial is recorded as interrupted; "
            "the next worker that joins (or `tune --resume`) re-runs it",
            file=sys.stderr,
        )
        return 130
    except Exception as exc:
        lost = storage_failure(exc)
        if lost is not None:
            print(f"error: {scrub(lost, [args.storage])}", file=sys.stderr)
            return EXIT_STORAGE
        if isinstance(exc, ValueError):
            print(f"error: {scrub(exc, [args.storage])}", file=sys.stderr)
            return EXIT_USAGE
        raise
    from speechtune.tuning.study import COUNTED_STATES

    counted = len(study.get_trials(deepcopy=False, states=COUNTED_STATES))
    print(
        f"worker {args.study!r}: the study has {counted} complete or pruned trials (target {target})"
    )
    if target is not None and counted < target and spec.study.timeout_s is None:
        print(
            "error: this worker stopped before the study reached its target (see the failed trials' reasons)",
            file=sys.stderr,
        )
        return EXIT_UNFINISHED
    return EXIT_OK
