"""A study's outputs: trials.csv, best.yaml, a self-contained report.html with PNG plots, and the
proxy check (``speechtune correlate``).

``report.html``, the PNG plots and ``correlation.png`` need the ``report`` extra (plotly,
matplotlib): :func:`build_report` is imported on first use, and :func:`write_study_outputs`
writes the rest without it.
"""

from speechtune._lazy import lazy_exports
from speechtune.reports._best import write_best_yaml
from speechtune.reports._commands import dashboard_command, report_command
from speechtune.reports._correlate import (
    CorrelationReport,
    correlate_command,
    correlate_study,
    format_correlation_table,
)
from speechtune.reports._csv import write_trials_csv
from speechtune.reports._outputs import write_study_outputs
from speechtune.reports._rank import RankCorrelation, rank_correlation

__all__ = [
    "CorrelationReport",
    "RankCorrelation",
    "build_report",
    "correlate_command",
    "correlate_study",
    "dashboard_command",
    "format_correlation_table",
    "rank_correlation",
    "report_command",
    "write_best_yaml",
    "write_study_outputs",
    "write_trials_csv",
]

__getattr__, __dir__ = lazy_exports(__name__, {"build_report": "._html"})
