"""``speechtune confirm``: train a finished study's best configs again on new seeds and pick by the mean.

What ``study.confirm_top`` does at the end of ``speechtune tune``, for a study that ran without
it (or to add seeds). The runs go to ``RUN_DIR/confirm/trial-NNNN/seedS/``; each is recorded in
the study as it ends, so an interrupted confirmation resumes with the same command. Afterwards
``best.yaml``, ``report.html`` and ``trials.csv`` are rewritten: ``best.yaml`` is the confirmed
pick, and ``speechtune rerun``/``export`` and the workflow follow it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from speechtune.cli._common import (
    add_threads_argument,
    apply_threads,
    check_threads,
    load_run_spec,
)

if TYPE_CHECKING:
    from speechtune.tuning.study import ConfirmRow

HELP = "train a study's best configs again on new seeds and pick the best mean"
DESCRIPTION = __doc__.split("\n\n", 1)[1] if __doc__ else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``speechtune confirm``."""
    p.add_argument("run_dir", help="the study's run directory (holds spec.yaml)")
    p.add_argument(
        "--top",
        type=int,
        default=None,
        help="how many of the best configs (the baseline is added); default study.confirm_top or 3",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="new seeds; default study.confirm_seeds or the two after objective.seeds",
    )
    p.add_argument(
        "--device", default="auto", help="device of a recipe study (auto, cpu, cuda:1...)"
    )
    p.add_argument("--jobs", type=int, default=1, help="runs at once (default: %(default)s)")
    p.add_argument(
        "--cache-dir", default=".cache/speechtune", help="corpus and feature cache of a recipe"
    )
    add_threads_argument(p)


def run(args: argparse.Namespace) -> int:
    """Run the confirmation; 0 when it picked a config, 1 otherwise."""
    from speechtune.reports import write_study_outputs
    from speechtune.tuning.objectives import build_objective
    from speechtune.tuning.study import (
        RunDirLock,
        confirm_seeds_for,
        confirmed_choice,
        load_study,
        run_confirmation,
    )

    check_threads(args)
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    run_dir = Path(args.run_dir)
    spec = load_run_spec(run_dir, "confirmed")
    top = args.top if args.top is not None else (spec.study.confirm_top or 3)
    seeds = list(args.seeds) if args.seeds else confirm_seeds_for(spec)
    objective = build_objective(spec, device=args.device, cache_dir=args.cache_dir)
    if args.threads is not None:
        apply_threads(objective, int(args.threads))
    # Never beside a `speechtune tune` of the same run dir: both would write the study's outputs.
    with RunDirLock(run_dir).acquire():
        study = load_study(run_dir)
        print(f"confirming the best {top} configs (and the baseline) on seeds {seeds}", flush=True)
        rows = run_confirmation(
            study,
            objective,
            spec.objective,
            run_dir.resolve(),
            top=top,
            seeds=seeds,
            n_jobs=args.jobs,
            echo=lambda line: print(line, flush=True),
        )
        write_study_outputs(study, run_dir.resolve())
    print_confirmation(rows, spec.objective.names[0])
    choice = confirmed_choice(study)
    if choice is None:
        print("error: no config has a value on every seed: nothing confirmed", file=sys.stderr)
        return 1
    print(f"confirmed: trial {choice[0].number}; best.yaml: {run_dir / 'best.yaml'}")
    return 0


def print_confirmation(rows: Sequence[ConfirmRow], metric: str) -> None:
    """A table of the confirmation: study value, each seed's value, mean +- s.e."""
    if not rows:
        return
    seeds = sorted({s for r in rows for s in (*r.values, *r.failed)})
    head = f"{'trial':>7} {'study':>8} " + " ".join(f"{'seed ' + str(s):>9}" for s in seeds)
    print(f"{metric} on the confirmation seeds:")
    print(head + f" {'mean +- s.e.':>17}")
    for r in sorted(rows, key=lambda r: (r.mean() is None, r.mean() or 0.0)):
        cells = [
            f"{r.values[s]:>9.4f}" if s in r.values else f"{'failed' if s in r.failed else '-':>9}"
            for s in seeds
        ]
        mean, se = r.mean(), r.stderr()
        shown = (
            "-" if mean is None else f"{mean:.4f}" + (f" +- {se:.4f}" if se is not None else "")
        )
        label = f"{r.trial}{'*' if r.baseline else ''}"
        print(f"{label:>7} {r.study_value:>8.4f} " + " ".join(cells) + f" {shown:>17}")
    if any(r.baseline for r in rows):
        print("(* the baseline: the recipe's defaults)")
