"""``speechtune tune``: run a study from a tuning YAML.

The lead wires :func:`add_tune_arguments` and :func:`tune_command` into ``speechtune/cli.py``::

    speechtune tune --config conf/tuning.yaml --n-trials 100 --backend optuna \\
        [--run-dir runs/NAME] [--resume] [--storage URL] [--n-jobs N] [--device cuda] \\
        [--tracking-uri URI] [--set study.x=y ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml

from ._objectives import Objective
from ._study import StudyExistsError, log_finished_trials, run_study

log = logging.getLogger("speechtune.tuning")

BACKENDS = ("optuna", "ray")


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``speechtune tune`` options to ``parser``."""
    parser.add_argument("--config", required=True, help="tuning YAML (see conf/tuning.yaml)")
    parser.add_argument("--n-trials", type=int, default=None, help="complete + pruned trials to reach (default: study.n_trials)")
    parser.add_argument("--backend", default="optuna", choices=BACKENDS, help="default: %(default)s")
    parser.add_argument("--run-dir", default=None, help="study outputs (default: runs/<study.name>)")
    parser.add_argument("--resume", action="store_true", help="continue the study; re-runs trials a killed run left")
    parser.add_argument("--storage", default=None, help="Optuna storage URL, or 'journal' (default: study.storage)")
    parser.add_argument("--n-jobs", type=int, default=None, help="parallel trials in this process (default: study.n_jobs)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (recipe objective; default: %(default)s)")
    parser.add_argument("--cache-dir", default=".cache/speechtune", help="corpus and feature cache (default: %(default)s)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: a local store in the run dir)")
    parser.add_argument("--no-tracking", action="store_true", help="do not log trials to MLflow")
    parser.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the tuning YAML, e.g. study.sampler=gp")
    parser.add_argument("--quiet", action="store_true", help="no live progress display")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="run N worker processes on this machine (GPU packing); storage becomes a journal file unless given",
    )
    parser.add_argument("--gpu-slots", type=int, default=None, help="--workers: concurrent trials per GPU (default: --workers)")
    parser.add_argument("--gpu-mem-per-trial", type=float, default=None, metavar="MB", help="--workers: GPU memory one trial needs")
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
        help="--backend ray: the Ray cluster (auto, ray://host:port, host:port; default: ray.address, else a local Ray)",
    )


# ---------------------------------------------------------------------------------------------
# objectives by kind
# ---------------------------------------------------------------------------------------------
def _recipe_objective(spec: Any, args: argparse.Namespace) -> Objective:
    from ._objectives import RecipeObjective

    return RecipeObjective(spec.base_recipe, device=args.device, cache_dir=args.cache_dir)


def _command_objective(spec: Any, args: argparse.Namespace) -> Objective:
    from ._command import CommandObjective

    cwd = spec.path.parent if getattr(spec, "path", None) is not None else None
    return CommandObjective(spec.command, spec.base_recipe or {}, cwd=getattr(spec.command, "cwd", None) or cwd)


def _python_objective(spec: Any, args: argparse.Namespace) -> Objective:
    from ._objectives import FunctionObjective
    from ._workers import import_function

    function = getattr(spec.objective, "function", None)
    if not function:
        raise ValueError(
            "objective.kind: python needs objective.function: MODULE:ATTR to run from the command line "
            "(or call speechtune.tune() from Python)"
        )
    here = spec.path.parent if getattr(spec, "path", None) is not None else Path.cwd()
    return FunctionObjective(import_function(function, search_paths=(here, Path.cwd())))


OBJECTIVES: dict[str, Callable[[Any, argparse.Namespace], Objective]] = {
    "recipe": _recipe_objective,
    "command": _command_objective,
    "python": _python_objective,
}


def build_objective(spec: Any, args: argparse.Namespace) -> Objective:
    """The objective of ``spec.objective.kind``.

    Raises:
        ValueError: kind python (not runnable from the CLI) or an unknown kind.
    """
    builder = OBJECTIVES.get(spec.objective.kind)
    if builder is None:
        raise ValueError(f"objective.kind: unknown kind {spec.objective.kind!r}; expected one of: {', '.join(OBJECTIVES)}")
    return builder(spec, args)


def make_tracker(spec: Any, run_dir: Path, args: argparse.Namespace) -> Any:
    """The MLflow tracker of ``--tracking-uri``/``--no-tracking`` (None when tracking is off or unavailable)."""
    if args.no_tracking:
        return None
    try:
        from ..track import StudyTracker
    except ImportError:
        log.info("speechtune.track is not available: trials are not logged to MLflow")
        return None
    # None => the tracker's own default store inside the run directory.
    return StudyTracker(tracking_uri=args.tracking_uri, experiment=spec.study.name, run_dir=run_dir)


def _with_storage(spec: Any, storage: str | None) -> Any:
    if storage is None:
        return spec
    return dataclasses.replace(spec, study=dataclasses.replace(spec.study, storage=storage))


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
def tune_command(args: argparse.Namespace) -> int:
    """Run ``speechtune tune``; return the process exit code.

    The tuning YAML is validated first (every problem listed at once, as ``speechtune validate``
    does); a :class:`~speechtune.config.ConfigError` propagates to the CLI's error handler.

    Returns:
        0 when the study has a best trial, 1 when no trial completed, 2 when the study exists
        and ``--resume`` was not given, 130 when interrupted (outputs of the trials so far are
        written first).
    """
    from ._spec import load_tuning

    spec = _with_storage(load_tuning(args.config, tuple(args.set or ())), args.storage)
    if args.n_trials is not None and args.n_trials < 1:
        raise ValueError(f"--n-trials must be >= 1, got {args.n_trials}")
    if args.n_jobs is not None and args.n_jobs < 1:
        raise ValueError(f"--n-jobs must be >= 1, got {args.n_jobs}")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.workers is not None and args.workers > 1 and args.backend == "ray":
        raise ValueError("--workers is for the optuna backend; with --backend ray set ray.resources_per_trial (e.g. gpu: 0.25)")
    objective = build_objective(spec, args)
    spec = _scale_default_ladder(spec, args)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / spec.study.name
    # Our progress view reports every trial; Optuna's own INFO lines would repeat it.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if getattr(args, "backend", "optuna") == "ray":
            study = _run_ray(spec, objective, run_dir, args)
        elif args.workers is not None and args.workers > 1:
            study = _run_packed(spec, run_dir, args)
        else:
            from ._gpu import GpuMonitor

            # GPU utilisation over the study (a no-op without an NVIDIA driver): how much of the
            # GPU one-at-a-time trials leave idle is what --workers N would recover.
            with GpuMonitor() as monitor:
                study = run_study(
                    spec,
                    objective,
                    run_dir,
                    n_trials=args.n_trials,
                    resume=args.resume,
                    n_jobs=args.n_jobs,
                    tracker=make_tracker(spec, run_dir, args),
                    progress=not args.quiet,
                    **_heartbeat(args),
                )
            if monitor.available:
                study.set_user_attr("gpu_utilization", monitor.summary())
    except StudyExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: outputs of the finished trials were written", file=sys.stderr)
        try:
            _print_summary(optuna.load_study(study_name=spec.study.name, storage=_storage_of(spec, run_dir, args)), run_dir)
        except KeyError:  # interrupted before the study was created
            pass
        return 130
    return _print_summary(study, run_dir)


def _heartbeat(args: argparse.Namespace) -> dict[str, int]:
    return {} if args.heartbeat_s is None else {"heartbeat_s": int(args.heartbeat_s)}


def _run_packed(spec: Any, run_dir: Path, args: argparse.Namespace) -> optuna.Study:
    """``--workers N``: N ``speechtune worker`` processes on this machine, packed onto its GPUs."""
    from ._local_workers import run_packed_study

    # Workers neither track nor report: N processes on one MLflow store would make N parent
    # runs (and contend for its SQLite file); this driver logs the finished study once instead.
    extra = ["--cache-dir", args.cache_dir, "--no-report", "--quiet", "--no-tracking"]
    if args.heartbeat_s is not None:
        extra += ["--heartbeat-s", str(int(args.heartbeat_s))]
    gpu_slots = args.gpu_slots if args.gpu_slots is not None else (args.workers if args.device != "cpu" else None)
    print(f"running {args.workers} worker processes (logs in {run_dir / 'workers'})", file=sys.stderr)
    study = run_packed_study(
        spec,
        run_dir,
        int(args.workers),
        storage=args.storage,
        device=args.device,
        gpu_slots=gpu_slots,
        gpu_mem_per_trial_mb=args.gpu_mem_per_trial,
        n_trials=args.n_trials,
        config_path=None,
        resume=args.resume,
        extra_argv=extra,
    )
    tracker = make_tracker(spec, run_dir, args)
    if tracker is not None:
        log_finished_trials(study, spec, tracker)
    return study


def _run_ray(spec: Any, objective: Objective, run_dir: Path, args: argparse.Namespace) -> optuna.Study:
    """``--backend ray``: the same study on Ray Tune; ``--resume`` restores the interrupted Ray experiment."""
    from ._ray import run_ray_study
    from ._ray_spec import valid_address

    address = getattr(args, "address", None)
    if address is not None and not valid_address(address):
        raise ValueError(f"--address: expected auto, ray://host:port or host:port, got {address!r}")
    return run_ray_study(
        spec,
        objective,
        run_dir,
        n_trials=args.n_trials,
        resume=args.resume,
        address=address,
        tracker=make_tracker(spec, run_dir, args),
        progress=not args.quiet,
    )


def _scale_default_ladder(spec: Any, args: argparse.Namespace) -> Any:
    """Scale the default fidelity ladder to the corpus, once its size is known (recipe objectives)."""
    fspec = getattr(spec, "fidelity", None)
    if fspec is None or not fspec.default_rungs or fspec.n_train is not None or spec.objective.kind != "recipe":
        return spec
    from ..config import config_from_dict, flatten
    from ..data import prepare_data

    cfg = config_from_dict(spec.base_recipe, "base recipe")
    data = prepare_data(cfg.data, cfg.features.sample_rate, args.cache_dir, False)
    n_train = len(data.train)
    hours = sum(u.duration for u in data.train) / 3600.0
    scaled = fspec.with_corpus_size(flatten(spec.base_recipe), n_train, set(spec.space.params), corpus_hours=hours)
    log.info("default fidelity ladder scaled to %d training utterances: %s", n_train, [r.as_dict() for r in scaled.fidelity.rungs])
    return dataclasses.replace(spec, fidelity=scaled)


def _storage_of(spec: Any, run_dir: Path, args: argparse.Namespace) -> Any:
    from ._optuna import make_storage

    if args.workers is not None and args.workers > 1:
        from ._local_workers import packed_storage_url

        return make_storage(packed_storage_url(spec.study.storage, run_dir.resolve()), run_dir)
    return make_storage(spec.study.storage, run_dir)


def _print_summary(study: optuna.Study, run_dir: Path) -> int:
    """Print the best config, its WER and where the outputs are; 0 when there is a best trial."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    counts = {s.name.lower(): states.count(s) for s in optuna.trial.TrialState if states.count(s)}
    print(f"study {study.study_name!r}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    from ..metrics._cost import format_cost, summarize_costs

    # Before the best trial: what was spent matters even when nothing completed.
    cost = study.user_attrs.get("cost_total") or summarize_costs(study.get_trials(deepcopy=False))
    if cost.get("trials"):
        print("compute: " + format_cost(cost["total"]))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        print("no trial completed: see the reasons in", run_dir / "trials.csv")
        return 1
    from ..reports._records import select_best

    choice = select_best(study)
    if choice is None:
        print("no trial completed at the top fidelity rung: see", run_dir / "trials.csv")
        return 1
    best = choice.trial
    if len(study.directions) > 1:
        front = study.best_trials
        print(f"Pareto front: {len(front)} trials ({', '.join(str(t.number) for t in front)})")
    if "fidelity" in study.user_attrs:
        used = study.user_attrs.get("budget_used")
        if used is not None:
            print(f"compute spent: {used:.2f} full-training equivalents")
    gpu = study.user_attrs.get("gpu_utilization") or {}
    if gpu.get("available") and gpu.get("gpu_busy_fraction") is not None:
        print(f"GPU busy {gpu['gpu_busy_fraction']:.0%} of the study's time (peak memory {gpu.get('gpu_mem_peak_mb') or 0:.0f} MiB)")
    metrics = best.user_attrs.get("metrics") or {}
    print(f"best trial {best.number}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in ("wer", "cer", "worst_group_wer") and v is not None))
    print("best config:")
    print(yaml.safe_dump(best.user_attrs.get("config") or best.params, sort_keys=True).rstrip())
    for name in ("best.yaml", "report.html", "trials.csv"):
        if (run_dir / name).exists():
            print(f"{name}: {run_dir / name}")
    return 0
