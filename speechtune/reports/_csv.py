"""One row per trial, ready for a spreadsheet or pandas."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import optuna

from speechtune.tuning.study import TrialRecord, objective_names

CONFIG_PREFIX = "config."
METRIC_PREFIX = "metrics."
# Multi-fidelity trial records (see the issue-4 contract); a column appears when any trial has it.
# ``source`` also marks a plain recipe study's baseline trial (study.baseline).
FIDELITY_COLUMNS = (
    "rung",
    "rung_name",
    "config_id",
    "bracket",
    "parent_trial",
    "source",
    "job_cost",
    "rank_value",
)
COST_PREFIX = "cost."
# The trial's measured compute (its ``cost`` user attr, see speechtune.metrics.EnergyMeter).
COST_COLUMNS = (
    "wall_s",
    "cpu_core_hours",
    "gpu_hours",
    "energy_kwh",
    "energy_source",
    "co2e_g",
    "money",
    "currency",
)


def _cell(value: Any) -> Any:
    # Lists and dicts become their text form so that a row stays one CSV line.
    if isinstance(value, (list, tuple, dict)):
        return str(value)
    return "" if value is None else value


def trial_rows(study: optuna.Study) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of :func:`write_trials_csv` (useful for tables in the report).

    Columns: ``number, state, status, reason, <objective names>, duration_s, objective_std``,
    then the multi-fidelity records that any trial has (``rung, rung_name, config_id, bracket,
    parent_trial, source, job_cost, rank_value``), then the trial's measured cost when any trial has one
    (``cost.wall_s, cost.cpu_core_hours, cost.gpu_hours, cost.energy_kwh, cost.energy_source,
    cost.co2e_g, cost.money, cost.currency``), then ``config.<key>`` for every config key and
    ``metrics.<name>`` for every final metric.
    """
    names = objective_names(study)
    rows: list[dict[str, Any]] = []
    config_keys: dict[str, None] = {}
    metric_keys: dict[str, None] = {}
    fidelity_keys: set[str] = set()
    has_cost = False
    for trial in study.get_trials(deepcopy=False):
        rec = TrialRecord.from_trial(trial)
        row: dict[str, Any] = {
            "number": rec.number,
            "state": rec.state.name,
            "status": rec.status,
            "reason": rec.reason,
        }
        for i, name in enumerate(names):
            row[name] = rec.values[i] if rec.values else None
        row["duration_s"] = rec.duration_s
        row["objective_std"] = trial.user_attrs.get(
            "objective_std"
        )  # as stored (a list when multi-objective)
        for key in FIDELITY_COLUMNS:
            if key in trial.user_attrs:
                fidelity_keys.add(key)
                row[key] = trial.user_attrs[key]
        if rec.cost is not None:
            has_cost = True
            for key in COST_COLUMNS:
                row[COST_PREFIX + key] = rec.cost.get(key)
        for key, value in rec.config.items():
            config_keys.setdefault(key)
            row[CONFIG_PREFIX + key] = value
        for key, value in rec.metrics.items():
            metric_keys.setdefault(key)
            row[METRIC_PREFIX + key] = value
        rows.append(row)
    columns = ["number", "state", "status", "reason", *names, "duration_s", "objective_std"]
    columns += [k for k in FIDELITY_COLUMNS if k in fidelity_keys]
    columns += [COST_PREFIX + k for k in COST_COLUMNS] if has_cost else []
    columns += [CONFIG_PREFIX + k for k in sorted(config_keys)]
    columns += [METRIC_PREFIX + k for k in sorted(metric_keys)]
    return columns, rows


def write_trials_csv(study: optuna.Study, path: str | Path) -> Path:
    """Write every trial of ``study`` as one CSV row.

    Args:
        study: A loaded Optuna study following the tuning contract's trial records.
        path: Output CSV path (parent directories are created).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns, rows = trial_rows(study)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _cell(row.get(c)) for c in columns})
    return path
