"""``speechtune report``: rebuild a study's report.html, PNG plots, trials.csv and best.yaml."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "rebuild report.html, PNG plots, trials.csv and best.yaml of a study"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``speechtune report``."""
    p.add_argument("run_dir")


def run(args: argparse.Namespace) -> int:
    """Rebuild the outputs; 0."""
    from speechtune.reports import report_command

    path = report_command(Path(args.run_dir))
    print(f"report: {path}")
    return 0
