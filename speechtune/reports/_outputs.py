"""All of a study's outputs at once: the hook a study session calls when it ends."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from speechtune.reports._best import write_best_yaml
from speechtune.reports._csv import write_trials_csv

log = logging.getLogger(__name__)


def write_study_outputs(study: optuna.Study, run_dir: Path) -> dict[str, Path]:
    """Write trials.csv, best.yaml and report.html of a study (what exists of them so far).

    A report that cannot be written (no complete trial yet, plotting failure) is logged, never
    raised: the study's records in storage are what matters. Pass this function as the
    ``outputs`` of :func:`speechtune.tuning.run_study`.

    Returns:
        The paths written, by name (``trials_csv``, ``best_yaml``, ``report_html``).
    """
    run_dir = Path(run_dir)
    jobs: list[tuple[str, Callable[[], Any]]] = [
        ("trials_csv", lambda: write_trials_csv(study, run_dir / "trials.csv"))
    ]
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        jobs.append(("best_yaml", lambda: write_best_yaml(study, run_dir / "best.yaml")))
    try:
        from speechtune.reports._html import build_report
    except ImportError as exc:  # plotly and matplotlib are the `report` extra
        log.warning("no report.html: %s (pip install 'speechtune[report]')", exc)
    else:
        jobs.append(("report_html", lambda: build_report(study, run_dir)))
    written: dict[str, Path] = {}
    for name, job in jobs:
        try:
            result = job()
        except Exception as exc:  # a broken report must not hide the study's results
            log.warning("could not write %s: %s: %s", name, type(exc).__name__, exc)
            continue
        written[name] = Path(result) if isinstance(result, (str, Path)) else run_dir
    return written
