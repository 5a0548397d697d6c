"""``speechtune workflow``: the production path from the recipe's defaults to a gated, registered model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speechtune.cli._common import DEFAULT_CACHE_DIR

HELP = (
    "the production path: proxy data, baseline, coarse + fine search, multi-seed validation, full training, "
    "gating on a golden set against the registry's champion, export"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``speechtune workflow``."""
    p.add_argument("--config", required=True, help="workflow YAML (see conf/workflow.yaml)")
    p.add_argument(
        "--run-dir", default=None, help="state, stage outputs and reports (default: runs/<name>)"
    )
    p.add_argument(
        "--from-stage",
        default=None,
        help="redo this stage and all later ones: its name or number (1 proxy ... 8 export)",
    )
    p.add_argument("--to-stage", default=None, help="stop after this stage (default: the last)")
    p.add_argument(
        "--set",
        nargs="*",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="dotted overrides of the workflow YAML, e.g. coarse.n_trials=5",
    )
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:1 (default: %(default)s)"
    )
    p.add_argument(
        "--cache-dir",
        default=DEFAULT_CACHE_DIR,
        help="corpus and feature cache (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking/registry URI (default: gating.tracking_uri, else a local SQLite store)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes for the coarse and fine studies (GPU packing; default: 1, in this process)",
    )
    p.add_argument(
        "--gpu-slots",
        type=int,
        default=None,
        help="concurrent trials per GPU with --workers (default: --workers)",
    )
    p.add_argument(
        "--no-tracking",
        action="store_true",
        help="do not log the coarse and fine studies to MLflow (the registry is still used)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress displays")


def run(args: argparse.Namespace) -> int:
    """Run ``speechtune workflow``; return the exit code (0 done, 1 a stage failed, 130 interrupted)."""
    import optuna

    from speechtune.workflow import (
        WorkflowConfigChanged,
        WorkflowError,
        load_workflow,
        run_workflow,
        summary,
    )

    spec = load_workflow(args.config, tuple(args.set or ()))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / spec.name
    try:
        state = run_workflow(
            spec,
            run_dir,
            from_stage=args.from_stage,
            to_stage=args.to_stage,
            device=args.device,
            cache_dir=args.cache_dir,
            num_threads=args.threads,
            tracking_uri=args.tracking_uri,
            track_studies=not args.no_tracking,
            workers=args.workers,
            gpu_slots=args.gpu_slots,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        print(
            f"interrupted: rerun the same command to continue ({run_dir / 'state.json'})",
            file=sys.stderr,
        )
        return 130
    except (WorkflowError, WorkflowConfigChanged) as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"report so far: {run_dir / 'report.html'}", file=sys.stderr)
        return 1
    print(summary(state))
    return 0
