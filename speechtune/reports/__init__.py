"""Outputs of a study: trials.csv, best.yaml, a self-contained report.html with PNG plots."""

from ._best import write_best_yaml
from ._commands import dashboard_command, report_command
from ._correlate import CorrelationReport, correlate_command, correlate_study
from ._csv import write_trials_csv
from ._html import build_report
from ._storage import open_study, resolve_storage

__all__ = [
    "CorrelationReport",
    "build_report",
    "correlate_command",
    "correlate_study",
    "dashboard_command",
    "open_study",
    "report_command",
    "resolve_storage",
    "write_best_yaml",
    "write_trials_csv",
]
