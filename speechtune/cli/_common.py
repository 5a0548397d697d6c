"""Options and helpers shared by the subcommands (nothing heavy is imported at module level)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from speechtune.config import RunOptions
    from speechtune.tuning.spec import TuningSpec
    from speechtune.tuning.study import Tracker

log = logging.getLogger(__name__)

#: The corpus and feature cache every subcommand defaults to.
DEFAULT_CACHE_DIR = ".cache/speechtune"


def add_run_arguments(p: argparse.ArgumentParser, out_default: str) -> None:
    """``--out``, ``--device``, ``--cache-dir``, ``--threads``, ``--quiet`` of a training command."""
    p.add_argument("--out", default=out_default, help="output directory (default: %(default)s)")
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: %(default)s)"
    )
    p.add_argument(
        "--cache-dir",
        default=DEFAULT_CACHE_DIR,
        help="corpus and feature cache (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def run_options(args: argparse.Namespace) -> RunOptions:
    """The :class:`~speechtune.config.RunOptions` of :func:`add_run_arguments`' flags."""
    from speechtune.config import RunOptions

    return RunOptions(
        output_dir=args.out,
        device=args.device,
        cache_dir=args.cache_dir,
        num_threads=args.threads,
        progress=not args.quiet,
        resume=getattr(args, "resume", False),
    )


def add_tracking_arguments(p: argparse.ArgumentParser) -> None:
    """``--tracking-uri`` and ``--no-tracking``."""
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: a local store in the run dir)",
    )
    p.add_argument("--no-tracking", action="store_true", help="do not log trials to MLflow")


def make_tracker(spec: TuningSpec, run_dir: Path, args: argparse.Namespace) -> Tracker | None:
    """The MLflow tracker of ``--tracking-uri``/``--no-tracking`` (None when tracking is off or unavailable)."""
    if args.no_tracking:
        return None
    try:
        from speechtune.track import StudyTracker
    except ImportError:
        log.info("speechtune.track is not available: trials are not logged to MLflow")
        return None
    # None => the tracker's own default store inside the run directory.
    return StudyTracker(
        tracking_uri=args.tracking_uri, experiment=spec.study.name, run_dir=run_dir
    )
