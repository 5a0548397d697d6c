"""Command functions behind ``speechtune report`` and ``speechtune dashboard``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from speechtune.reports._best import write_best_yaml
from speechtune.reports._csv import write_trials_csv
from speechtune.tuning.study import load_study, resolve_storage, select_best

logger = logging.getLogger(__name__)


def report_command(run_dir: Path) -> Path:
    """Rebuild ``report.html``, ``plots/*.png``, ``trials.csv`` and ``best.yaml`` of a run.

    Args:
        run_dir: The study's run directory (``runs/<study name>/``).

    Returns:
        The path of ``report.html``.
    """
    from speechtune.reports._html import build_report  # plotly: the `report` extra

    run_dir = Path(run_dir)
    study = load_study(run_dir)
    write_trials_csv(study, run_dir / "trials.csv")
    report = build_report(study, run_dir)
    # best.yaml last: a config that no longer validates should not cost the user the report.
    if select_best(study) is None:
        logger.warning("study %r has no complete trial: best.yaml not written", study.study_name)
    else:
        write_best_yaml(study, run_dir / "best.yaml")
    return report


def dashboard_command(run_dir_or_storage: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve optuna-dashboard for a run directory or storage until interrupted.

    Args:
        run_dir_or_storage: A run directory, a ``.db``/``.log`` study file or a storage URL.
        host: Interface to bind; loopback by default so a study is not exposed on the network.
        port: TCP port.
    """
    import optuna_dashboard  # imported here: only this command needs the web server

    storage = resolve_storage(run_dir_or_storage)
    print(
        f"optuna-dashboard on http://{host}:{port}/ (Ctrl-C to stop)", file=sys.stderr, flush=True
    )
    optuna_dashboard.run_server(storage, host=host, port=port)
