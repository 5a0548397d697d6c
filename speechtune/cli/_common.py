"""Options and helpers shared by the subcommands (nothing heavy is imported at module level)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from speechtune.config import RunOptions
    from speechtune.tuning.spec import TuningSpec
    from speechtune.tuning.study import Tracker

log = logging.getLogger(__name__)

#: The corpus and feature cache every subcommand defaults to.
DEFAULT_CACHE_DIR = ".cache/speechtune"


class DeprecatedAlias(argparse.Action):
    """A former name of a flag: still accepted (hidden from ``--help``), with a one-line notice.

    One name per concept across the subcommands (``--run-dir``, ``--study-name``); scripts that
    use the old names keep working.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kw: Any) -> None:
        kw.setdefault("help", argparse.SUPPRESS)
        # SUPPRESS: the new flag's default stands when the old name is not given.
        kw.setdefault("default", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kw)
        self.new = new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"note: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_alias(p: argparse.ArgumentParser, old: str, new: str, dest: str) -> None:
    """Accept ``old`` as a hidden, deprecated spelling of ``new`` (same ``dest``)."""
    p.add_argument(old, dest=dest, action=DeprecatedAlias, new=new)


def add_study_name_argument(p: argparse.ArgumentParser, help: str) -> None:
    """``--study-name NAME`` (into ``args.study``), with the old ``--study`` as a hidden alias."""
    p.add_argument("--study-name", dest="study", default=None, metavar="NAME", help=help)
    add_alias(p, "--study", "--study-name", "study")


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    """``--threads N``: torch intra-op CPU threads (the same flag on every training command)."""
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's own)"
    )


def check_threads(args: argparse.Namespace) -> None:
    """``--threads`` must be >= 1 when given."""
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")


def apply_threads(objective: object, threads: int) -> None:
    """``--threads`` of ``tune``/``worker``: torch intra-op threads of the study's trials.

    A recipe objective sets them in each trial (parallel trials then no longer split the cores
    among themselves); a Python function runs under this process's setting; a command's script
    (and a packed worker) is told through ``OMP_NUM_THREADS``, which torch reads when it starts.
    """
    import os

    from speechtune.tuning.objectives import FunctionObjective

    if hasattr(objective, "num_threads"):
        objective.num_threads = threads
    elif isinstance(objective, FunctionObjective):
        import torch

        torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def add_run_arguments(p: argparse.ArgumentParser, out_default: str) -> None:
    """``--run-dir``, ``--device``, ``--cache-dir``, ``--threads``, ``--quiet`` of a training command."""
    p.add_argument(
        "--run-dir", default=out_default, help="output directory (default: %(default)s)"
    )
    add_alias(p, "--out", "--run-dir", "run_dir")
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: %(default)s)"
    )
    p.add_argument(
        "--cache-dir",
        default=DEFAULT_CACHE_DIR,
        help="corpus and feature cache (default: %(default)s)",
    )
    add_threads_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")


def run_options(args: argparse.Namespace) -> RunOptions:
    """The :class:`~speechtune.config.RunOptions` of :func:`add_run_arguments`' flags."""
    from speechtune.config import RunOptions

    check_threads(args)
    return RunOptions(
        output_dir=args.run_dir,
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


def load_run_spec(run_dir: Path, command: str) -> TuningSpec:
    """The tuning spec a study recorded in ``run_dir/spec.yaml``, for ``rerun``/``confirm``.

    Raises:
        FileNotFoundError: no ``spec.yaml`` (not a ``speechtune tune`` run directory).
        ValueError: a ``kind: python`` study (its function cannot be called from here).
    """
    from speechtune.tuning.spec import load_tuning

    spec_path = run_dir / "spec.yaml"
    if not spec_path.is_file():
        raise FileNotFoundError(
            f"{spec_path} not found: expected the run directory of a `speechtune tune` study"
        )
    spec = load_tuning(spec_path)
    if spec.objective.kind == "python":
        raise ValueError(
            f"a kind: python study cannot be {command} from the command line; call your "
            "function with the config in best.yaml"
        )
    return spec
