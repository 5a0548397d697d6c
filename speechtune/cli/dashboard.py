"""``speechtune dashboard``: a live view of a study (optuna-dashboard), bound to 127.0.0.1 by default."""

from __future__ import annotations

import argparse

HELP = "live view of a study (optuna-dashboard)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``speechtune dashboard``."""
    p.add_argument("run_dir", help="a run directory or a storage URL")
    p.add_argument(
        "--host", default="127.0.0.1", help="bind address (default: %(default)s, local only)"
    )
    p.add_argument("--port", type=int, default=8080)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; 0."""
    from speechtune.reports import dashboard_command

    dashboard_command(args.run_dir, host=args.host, port=args.port)
    return 0
