"""Read the trial records the study engine leaves in Optuna storage (see the tuning contract)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


def objective_names(study: optuna.Study) -> list[str]:
    """Names of the objectives, primary first.

    Prefers the ``objective_names`` study attribute, then Optuna's metric names, then
    ``value`` / ``value_<i>``.
    """
    n = len(study.directions)
    names = study.user_attrs.get("objective_names")
    if isinstance(names, list) and len(names) == n:
        return [str(x) for x in names]
    if study.metric_names and len(study.metric_names) == n:
        return list(study.metric_names)
    return ["value"] if n == 1 else [f"value_{i}" for i in range(n)]


def is_multi_objective(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def minimises(study: optuna.Study, index: int = 0) -> bool:
    return study.directions[index] != StudyDirection.MAXIMIZE


def primary_value(trial: FrozenTrial) -> float | None:
    """The primary objective of a finished trial, or None when it has no value."""
    if trial.values:
        return float(trial.values[0])
    return None


def trial_status(trial: FrozenTrial) -> tuple[str, str]:
    """``(status, reason)`` from user attrs, falling back to the Optuna state."""
    fallback = {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "stopped",
        TrialState.FAIL: "error",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
    }[trial.state]
    status = str(trial.user_attrs.get("status", fallback))
    reason = str(trial.user_attrs.get("reason", ""))
    return status, reason


def trial_config(trial: FrozenTrial) -> dict[str, Any]:
    """The flat trial config (fixed and derived keys included); Optuna params when absent."""
    config = trial.user_attrs.get("config")
    if isinstance(config, dict):
        return dict(config)
    return dict(trial.params)


def learning_curve(trial: FrozenTrial, metric: str) -> tuple[list[int], list[float]]:
    """Per-epoch values of a trial: Optuna intermediate values, else ``metric`` in its history.

    Multi-objective studies cannot hold intermediate values, so their curves come from the
    ``history`` user attr (rows with ``epoch`` and metric columns).
    """
    if trial.intermediate_values:
        steps = sorted(trial.intermediate_values)
        return steps, [float(trial.intermediate_values[s]) for s in steps]
    steps, values = [], []
    for row in trial.user_attrs.get("history") or []:
        if isinstance(row, dict) and isinstance(row.get(metric), (int, float)) and "epoch" in row:
            steps.append(int(row["epoch"]))
            values.append(float(row[metric]))
    return steps, values


def duration_s(trial: FrozenTrial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def _feasible(trial: FrozenTrial) -> bool:
    # The study engine records constraint values as a user attr; Optuna's samplers keep their
    # constraints_func results as a system attr. Feasible iff every value <= 0.
    constraints = trial.user_attrs.get("constraints", trial.system_attrs.get("constraints"))
    if not isinstance(constraints, list):
        return True
    return all(isinstance(c, (int, float)) and c <= 0 for c in constraints)


def primary_seed_stats(trial: FrozenTrial) -> tuple[list[float], float | None]:
    """Primary objective per seed and its std over seeds (from ``seed_values``/``objective_std``).

    Multi-objective trials store a list of objective values per seed and a list of stds; the
    primary (first) entry is taken.
    """
    seeds = []
    for value in trial.user_attrs.get("seed_values") or []:
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seeds.append(float(value))
    std = trial.user_attrs.get("objective_std")
    if isinstance(std, list):
        std = std[0] if std else None
    return seeds, float(std) if isinstance(std, (int, float)) else None


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials, best primary objective first (feasible ones before infeasible)."""
    sign = 1.0 if minimises(study) else -1.0
    trials = [t for t in complete_trials(study) if primary_value(t) is not None]
    return sorted(trials, key=lambda t: (not _feasible(t), sign * primary_value(t), t.number))  # type: ignore[operator]


@dataclass(frozen=True)
class BestChoice:
    """The trial a report or ``best.yaml`` calls best, and how it was chosen."""

    trial: FrozenTrial
    note: str


def select_best(study: optuna.Study) -> BestChoice | None:
    """Best trial: lowest primary objective among complete (feasible) trials.

    For a multi-objective study, the Pareto-optimal trial with the best primary objective.
    Returns None when no trial completed.
    """
    names = objective_names(study)
    if is_multi_objective(study):
        front = study.best_trials
        if not front:
            return None
        sign = 1.0 if minimises(study) else -1.0
        best = min(front, key=lambda t: (sign * t.values[0], t.number))
        note = (
            f"multi-objective study ({', '.join(names)}): of the {len(front)} Pareto-optimal trials, "
            f"the one with the best {names[0]}"
        )
        return BestChoice(best, note)
    ranked = [t for t in ranked_trials(study) if _feasible(t)]
    if not ranked:
        return None
    return BestChoice(ranked[0], f"complete trial with the best {names[0]}")
