"""``speechtune tune``: run a study from a tuning YAML, in this process, in worker processes, or on Ray.

::

    speechtune tune --config conf/tuning.yaml --n-trials 100 [--backend optuna|ray] \\
        [--run-dir runs/NAME] [--resume] [--storage URL] [--n-jobs N | --workers N] [--device cuda] \\
        [--threads N] [--tracking-uri URI] [--set study.x=y ...] [-v | --quiet]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from speechtune.cli._common import (
    DEFAULT_CACHE_DIR,
    add_threads_argument,
    add_tracking_arguments,
    apply_threads,
    check_threads,
    make_tracker,
)

if TYPE_CHECKING:
    import optuna

    from speechtune.tuning.backends import Backend
    from speechtune.tuning.spec import TuningSpec
    from speechtune.tuning.study import TrialRecord

log = logging.getLogger(__name__)

HELP = "run a hyperparameter study (Optuna) on the recipe or your own script"
BACKENDS = ("optuna", "ray")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``speechtune tune``."""
    parser.add_argument("--config", required=True, help="tuning YAML (see conf/tuning.yaml)")
    parser.add_argument(
        "--n-trials",
        type=int,
        default=None,
        help="complete + pruned trials to reach (default: study.n_trials)",
    )
    parser.add_argument(
        "--backend", default="optuna", choices=BACKENDS, help="default: %(default)s"
    )
    parser.add_argument(
        "--run-dir", default=None, help="study outputs (default: runs/<study.name>)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the study; re-runs trials a killed run left and those Ctrl-C interrupted",
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL, 'journal' (RUN_DIR/journal.log) or journal:///path.log "
        "(default: $SPEECHTUNE_STORAGE, else study.storage); a URL with a password belongs in "
        "$SPEECHTUNE_STORAGE, not on the command line",
    )
    parser.add_argument(
        "--n-jobs",
        type=int,
        default=None,
        help="parallel trials in this process (default: study.n_jobs)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto, cpu, cuda, cuda:1 ... (recipe objective; default: %(default)s)",
    )
    parser.add_argument(
        "--cache-dir",
        default=DEFAULT_CACHE_DIR,
        help="corpus and feature cache (default: %(default)s)",
    )
    add_threads_argument(parser)
    add_tracking_arguments(parser)
    parser.add_argument(
        "--set",
        nargs="*",
        action="extend",
        metavar="KEY=VALUE",
        help="dotted overrides of the tuning YAML, e.g. study.sampler=gp",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no live progress display (one line per finished trial is still logged)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also log a line per epoch of every trial",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="run N worker processes on this machine (GPU packing); storage becomes a journal file unless given",
    )
    parser.add_argument(
        "--gpu-slots",
        type=int,
        default=None,
        help="--workers: concurrent trials per GPU (default: --workers)",
    )
    parser.add_argument(
        "--gpu-mem-per-trial",
        type=float,
        default=None,
        metavar="MB",
        help="--workers: GPU memory one trial needs",
    )
    parser.add_argument(
        "--heartbeat-s",
        type=int,
        default=None,
        help="seconds between heartbeats of a running trial; a silent trial is re-queued after twice that "
        "(default: $SPEECHTUNE_HEARTBEAT_S or 30)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="--backend ray: the Ray cluster (auto, ray://host:port, host:port; "
        "default: ray.address, else a local Ray)",
    )


def _check(args: argparse.Namespace) -> None:
    checks = [
        (
            args.n_trials is not None and args.n_trials < 1,
            f"--n-trials must be >= 1, got {args.n_trials}",
        ),
        (args.n_jobs is not None and args.n_jobs < 1, f"--n-jobs must be >= 1, got {args.n_jobs}"),
        (
            args.workers is not None and args.workers < 1,
            f"--workers must be >= 1, got {args.workers}",
        ),
        (
            args.workers is not None and args.workers > 1 and args.backend == "ray",
            "--workers is for the optuna backend; with --backend ray set ray.resources_per_trial (e.g. gpu: 0.25)",
        ),
    ]
    for bad, message in checks:
        if bad:
            raise ValueError(message)
    check_threads(args)


def _storage_arg(args: argparse.Namespace) -> None:
    """Fill ``args.storage`` from ``$SPEECHTUNE_STORAGE``; warn about a password on argv."""
    import os

    from speechtune._urls import has_password
    from speechtune.tuning.study import STORAGE_ENV

    if args.storage is None:
        # Taken out of the environment, as `speechtune worker` does: trials' own processes
        # (command objectives) would inherit it otherwise. Packed workers get it back explicitly.
        args.storage = os.environ.pop(STORAGE_ENV, "").strip() or None
    elif has_password(args.storage):
        print(
            "warning: --storage holds a password, which every user of this machine can read in "
            f"`ps`; pass the URL in ${STORAGE_ENV} instead",
            file=sys.stderr,
        )


def _backend(spec: TuningSpec, run_dir: Path, args: argparse.Namespace) -> Backend:
    """The backend the flags ask for."""
    from speechtune.tuning.backends import PackedBackend, default_backend
    from speechtune.tuning.study import DEFAULT_HEARTBEAT_S

    heartbeat_s = int(args.heartbeat_s) if args.heartbeat_s is not None else DEFAULT_HEARTBEAT_S
    if args.backend == "ray":
        from speechtune.tuning.backends.ray import RayBackend
        from speechtune.tuning.spec import valid_address

        if args.address is not None and not valid_address(args.address):
            raise ValueError(
                f"--address: expected auto, ray://host:port or host:port, got {args.address!r}"
            )
        return RayBackend(address=args.address)
    if args.workers is not None and args.workers > 1:
        # Workers neither track nor report: N processes on one MLflow store would make N parent
        # runs (and contend for its SQLite file); this driver logs the finished study once instead.
        extra = ["--cache-dir", args.cache_dir, "--no-report", "--quiet", "--no-tracking"]
        if args.threads is not None:
            extra += ["--threads", str(int(args.threads))]
        if args.heartbeat_s is not None:
            extra += ["--heartbeat-s", str(int(args.heartbeat_s))]
        gpu_slots = (
            args.gpu_slots
            if args.gpu_slots is not None
            else (args.workers if args.device != "cpu" else None)
        )
        print(
            f"running {args.workers} worker processes (logs in {run_dir / 'workers'})",
            file=sys.stderr,
        )
        return PackedBackend(
            int(args.workers),
            storage=args.storage,
            device=args.device,
            gpu_slots=gpu_slots,
            gpu_mem_per_trial_mb=args.gpu_mem_per_trial,
            extra_argv=extra,
        )
    # GPU utilisation over the study (a no-op without an NVIDIA driver): how much of the GPU
    # one-at-a-time trials leave idle is what --workers N would recover.
    return default_backend(spec, n_jobs=args.n_jobs, heartbeat_s=heartbeat_s, monitor_gpus=True)


def run(args: argparse.Namespace) -> int:
    """Run ``speechtune tune``; return the process exit code.

    The tuning YAML is validated first (every problem listed at once, as ``speechtune validate``
    does); a :class:`~speechtune.config.ConfigError` propagates to the CLI's error handler.

    Returns:
        0 when the study has a best trial, 1 when no trial completed, 2 when the study exists
        and ``--resume`` was not given or another ``speechtune tune`` holds the run directory's
        lock, 130 when interrupted (outputs of the trials so far are written first).
    """
    import optuna

    from speechtune.reports import write_study_outputs
    from speechtune.tuning.backends import run_study
    from speechtune.tuning.objectives import build_objective, scale_default_ladder
    from speechtune.tuning.spec import load_tuning
    from speechtune.tuning.study import (
        EPOCH_LOGGER,
        RunDirBusyError,
        RunDirLock,
        StudyExistsError,
    )

    _storage_arg(args)
    spec = load_tuning(args.config, tuple(args.set or ())).with_storage(args.storage)
    _check(args)
    packed = args.workers is not None and args.workers > 1 and args.backend != "ray"
    # Packed workers build their own objective from the spec stored with the study.
    objective = (
        None if packed else build_objective(spec, device=args.device, cache_dir=args.cache_dir)
    )
    if args.threads is not None and not packed:
        apply_threads(objective, int(args.threads))
    spec = scale_default_ladder(spec, args.cache_dir)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / spec.study.name
    # Our progress view reports every trial; Optuna's own INFO lines would repeat it.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.verbose:
        logging.getLogger(EPOCH_LOGGER).setLevel(logging.DEBUG)
    try:
        # One driver per run dir: two would each run the trials they count as missing.
        lock = RunDirLock(run_dir).acquire()
    except RunDirBusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with lock:
        backend = _backend(spec, run_dir, args)
        try:
            study = run_study(
                spec,
                objective,
                run_dir,
                backend=backend,
                n_trials=args.n_trials,
                resume=args.resume,
                tracker=make_tracker(spec, run_dir, args),
                outputs=write_study_outputs,
                progress=not args.quiet,
            )
        except StudyExistsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            _report_interrupted(spec, run_dir, backend)
            return 130
        return _print_summary(study, run_dir)


def _report_interrupted(spec: TuningSpec, run_dir: Path, backend: Backend) -> None:
    """After Ctrl-C: what happened to the running trials, and the summary of the finished ones."""
    from speechtune.tuning.study import INTERRUPTED_REASON, pending_interrupted

    print(
        f"interrupted: running trials are recorded as FAIL ({INTERRUPTED_REASON!r}); "
        f"outputs of the finished trials were written; `--resume` re-runs the interrupted ones",
        file=sys.stderr,
    )
    try:
        study = _load_interrupted(spec, run_dir, backend)
    except KeyError:  # interrupted before the study was created
        return
    interrupted = [t.number for t in pending_interrupted(study)]
    if interrupted:
        print(f"interrupted trials: {', '.join(map(str, interrupted))}", file=sys.stderr)
    _print_summary(study, run_dir)


def _load_interrupted(spec: TuningSpec, run_dir: Path, backend: Backend) -> optuna.Study:
    import optuna

    from speechtune.tuning.study import make_storage

    storage = backend.open_options(spec, run_dir.resolve()).storage or spec.study.storage
    return optuna.load_study(study_name=spec.study.name, storage=make_storage(storage, run_dir))


def _print_summary(study: optuna.Study, run_dir: Path) -> int:
    """Print the best config, its WER and where the outputs are; 0 when there is a best trial."""
    import optuna
    import yaml

    from speechtune.cli.confirm import print_confirmation
    from speechtune.metrics import format_cost, summarize_costs
    from speechtune.tuning.study import (
        TrialRecord,
        confirmation_rows,
        is_baseline,
        objective_names,
        pareto_front,
        pareto_knee,
        select_best,
        study_ranking_warnings,
    )

    states = [t.state for t in study.get_trials(deepcopy=False)]
    counts = {s.name.lower(): states.count(s) for s in optuna.trial.TrialState if states.count(s)}
    print(f"study {study.study_name!r}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    # Before the best trial: what was spent matters even when nothing completed.
    cost = study.user_attrs.get("cost_total") or summarize_costs(study.get_trials(deepcopy=False))
    if cost.get("trials"):
        print("compute: " + format_cost(cost["total"]))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
        last = TrialRecord.from_trial(failed[-1]).reason if failed else ""
        why = f"; the last failure: {last}" if last else ""
        print(
            f"error: no trial completed{why} (every reason is in {run_dir / 'trials.csv'})",
            file=sys.stderr,
        )
        return 1
    choice = select_best(study)
    if choice is None:
        print("no trial completed at the top fidelity rung: see", run_dir / "trials.csv")
        return 1
    best = choice.trial
    if len(study.directions) > 1:
        front = pareto_front(study)
        print(f"Pareto front: {len(front)} trials ({', '.join(str(t.number) for t in front)})")
        knee = pareto_knee(study)
        if knee is not None:
            values = ", ".join(f"{n} {v:.4g}" for n, v in zip(objective_names(study), knee.values))
            print(f"knee of the front: trial {knee.number} ({values})")
    if "fidelity" in study.user_attrs:
        used = study.user_attrs.get("budget_used")
        if used is not None:
            print(f"compute spent: {used:.2f} full-training equivalents")
    gpu = study.user_attrs.get("gpu_utilization") or {}
    if gpu.get("available") and gpu.get("gpu_busy_fraction") is not None:
        peak = gpu.get("gpu_mem_peak_mb") or 0
        print(
            f"GPU busy {gpu['gpu_busy_fraction']:.0%} of the study's time (peak memory {peak:.0f} MiB)"
        )
    record = TrialRecord.from_trial(best)
    print(f"best trial {best.number}: {_shown_metrics(record)}")
    # The defaults' own figure (study.baseline, fidelity.baseline): what the search improved on.
    baseline = next((t for t in complete if is_baseline(t)), None)
    if baseline is not None and len(study.directions) == 1:
        shown = _shown_metrics(TrialRecord.from_trial(baseline))
        print(f"baseline (the recipe's defaults) trial {baseline.number}: {shown}")
    rows = confirmation_rows(study)
    if rows:
        print_confirmation(rows, objective_names(study)[0])
        print(f"best trial chosen as: {choice.note}")
    print("best config:")
    print(yaml.safe_dump(record.config, sort_keys=True).rstrip())
    for name in ("best.yaml", "report.html", "trials.csv"):
        if (run_dir / name).exists():
            print(f"{name}: {run_dir / name}")
    # Last, where it is read: a best config that was picked close to at random is no winner.
    sys.stdout.flush()  # piped stdout is block-buffered: keep the warning after the summary
    for warning in study_ranking_warnings(study):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _shown_metrics(record: TrialRecord) -> str:
    """The WER-like final metrics of a trial's record, for the summary."""
    return ", ".join(
        f"{k} {v:.4f}"
        for k, v in record.metrics.items()
        if k in ("wer", "cer", "worst_group_wer") and v is not None
    )
