"""``speechtune correlate``: do cheap rungs (or early epochs) rank configs like full training?"""

from __future__ import annotations

import argparse
from pathlib import Path

from speechtune.cli._common import add_study_name_argument

HELP = "check whether cheap rungs (or early epochs) rank configs like full training"
DESCRIPTION = (
    "Spearman/Kendall rank correlation, with bootstrap 95% CIs, of each lower rung of a multi-fidelity study "
    "with its top rung (of each epoch with the final value, for other studies); writes RUN_DIR/correlation.json "
    "and correlation.png and recommends the cheapest faithful rung."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``speechtune correlate``."""
    p.add_argument("run_dir")
    add_study_name_argument(p, "the study, when the storage holds several")
    p.add_argument(
        "--metric", default=None, help="value to compare (default: the study's primary objective)"
    )
    p.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.7,
        help="recommend the cheapest rung whose Spearman 95%% CI lower bound reaches this (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """Write correlation.json/.png and print the table; 0."""
    from speechtune.reports import correlate_command, format_correlation_table

    report, written = correlate_command(
        Path(args.run_dir),
        study_name=args.study,
        metric=args.metric,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        threshold=args.threshold,
    )
    print(format_correlation_table(report))
    for path in written.values():
        print(f"wrote {path}")
    return 0
