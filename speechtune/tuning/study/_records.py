"""The trial records a study leaves in Optuna storage, read back as typed :class:`TrialRecord` s.

Every backend writes the same record into each trial's user attributes (the tuning contract):
the config, per-epoch history, final metrics, per-seed values, status and reason, cost, and for
multi-fidelity studies the job (rung, config id, bracket, parent, job cost). Reports, trackers
and the command line read it through this module and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from speechtune.tuning.study._confirmed import confirmed_choice

_FALLBACK_STATUS = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "stopped",
    TrialState.FAIL: "error",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


#: The reason of a FAIL trial that recorded none: Optuna failed it itself, after its process
#: died and its heartbeat went silent (or it ran before speechtune recorded every failure).
UNRECORDED_FAIL_REASON = "killed while running (its process died before it recorded a reason)"


def _unrecorded_fail(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and not trial.user_attrs.get("reason")


def _status(trial: FrozenTrial) -> str:
    if _unrecorded_fail(trial) and "status" not in trial.user_attrs:
        return "killed"
    return str(trial.user_attrs.get("status", _FALLBACK_STATUS[trial.state]))


def _reason(trial: FrozenTrial) -> str:
    if _unrecorded_fail(trial):
        return UNRECORDED_FAIL_REASON
    return str(trial.user_attrs.get("reason", ""))


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float_or_none(value: Any) -> float | None:
    return (
        float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    )


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the study engine recorded it (read with :meth:`from_trial`).

    Attributes:
        number: the trial's number in its study.
        state: Optuna's state (COMPLETE, PRUNED, FAIL, RUNNING, WAITING).
        status: ``complete``, ``stopped``, ``diverged``, ``flatline``, ``oom``, ``error``,
            ``interrupted`` (Ctrl-C), ``killed`` (its process died) (or the state's name for
            trials without a record).
        reason: why it ended, in a sentence; never empty for a FAIL trial.
        values: the objective value(s); empty when it has none.
        config: the flat trial config (fixed and derived keys included).
        metrics: the final metrics (mean over seeds).
        history: per-epoch rows of the first seed (``epoch`` plus metrics).
        seed_values: the primary objective per seed.
        objective_std: the primary objective's standard deviation over seeds.
        cost: the measured compute (:class:`speechtune.metrics.CostRecord` as a dict).
        trial_dir: where the trial's files are.
        duration_s: wall time from start to end.
        rung, rung_name, config_id, bracket, parent_trial, job_cost, source: the job of a
            multi-fidelity study (None for other studies, but for ``source``: ``baseline`` on
            the trial of a plain recipe study that trains the base recipe's defaults).
    """

    number: int
    state: TrialState
    status: str
    reason: str
    values: tuple[float, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    history: tuple[dict[str, Any], ...] = ()
    seed_values: tuple[float, ...] = ()
    objective_std: float | None = None
    cost: dict[str, Any] | None = None
    trial_dir: str | None = None
    duration_s: float | None = None
    rung: int | None = None
    rung_name: str | None = None
    config_id: int | None = None
    bracket: int | None = None
    parent_trial: int | None = None
    job_cost: float | None = None
    source: str | None = None

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> TrialRecord:
        """The record of ``trial`` (what a trial without one has: its state, params, values)."""
        attrs = trial.user_attrs
        seeds, std = primary_seed_stats(trial)
        cost = attrs.get("cost")
        rung_name = attrs.get("rung_name")
        source = attrs.get("source")
        return cls(
            number=trial.number,
            state=trial.state,
            status=_status(trial),
            reason=_reason(trial),
            values=tuple(float(v) for v in trial.values or ()),
            config=trial_config(trial),
            metrics=_mapping(attrs.get("metrics")),
            history=tuple(dict(r) for r in attrs.get("history") or () if isinstance(r, Mapping)),
            seed_values=tuple(seeds),
            objective_std=std,
            cost=dict(cost) if isinstance(cost, Mapping) else None,
            trial_dir=str(attrs["trial_dir"]) if attrs.get("trial_dir") else None,
            duration_s=duration_s(trial),
            rung=trial_rung(trial),
            rung_name=str(rung_name) if rung_name is not None else None,
            config_id=_int_or_none(attrs.get("config_id")),
            bracket=_int_or_none(attrs.get("bracket")),
            parent_trial=_int_or_none(attrs.get("parent_trial")),
            job_cost=_float_or_none(attrs.get("job_cost")),
            source=str(source) if source is not None else None,
        )

    @property
    def value(self) -> float | None:
        """The primary objective, or None when the trial has no value."""
        return self.values[0] if self.values else None


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
    return _status(trial), _reason(trial)


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


def fidelity_record(study: optuna.Study) -> dict[str, Any] | None:
    """The ``fidelity`` study attr of a multi-fidelity study, or None for an ordinary study.

    Raises:
        ValueError: When the attr is present but is not ``{"rungs": [{"name", "cost", ...}, ...]}``.
    """
    record = study.user_attrs.get("fidelity")
    if record is None:
        return None
    rungs = record.get("rungs") if isinstance(record, dict) else None
    if (
        not isinstance(rungs, list)
        or not rungs
        or not all(isinstance(r, dict) and "name" in r for r in rungs)
    ):
        raise ValueError(
            f"study {study.study_name!r}: user attr 'fidelity' must be a dict whose 'rungs' is a non-empty "
            f"list of {{'name', 'overrides', 'cost'}} dicts (got {record!r:.200})"
        )
    return record


def is_multi_fidelity(study: optuna.Study) -> bool:
    """True when the study was run by the multi-fidelity engine (it has a ``fidelity`` attr)."""
    return fidelity_record(study) is not None


def rung_names(study: optuna.Study) -> list[str]:
    """Names of the rungs of a multi-fidelity study, cheapest first ([] for other studies)."""
    record = fidelity_record(study)
    return [str(r["name"]) for r in record["rungs"]] if record else []


def top_rung(study: optuna.Study) -> int | None:
    """Index of the full-fidelity rung of a multi-fidelity study; None for other studies."""
    record = fidelity_record(study)
    return len(record["rungs"]) - 1 if record else None


def trial_rung(trial: FrozenTrial) -> int | None:
    """The rung index a multi-fidelity trial ran at (``rung`` user attr), None when absent."""
    rung = trial.user_attrs.get("rung")
    return rung if isinstance(rung, int) and not isinstance(rung, bool) else None


def comparable_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials whose values may be compared with each other.

    Every complete trial of an ordinary study; only the TOP-rung trials of a multi-fidelity
    study, because a WER measured after a short, cheap run is not a WER of the final model.
    """
    top = top_rung(study)
    trials = complete_trials(study)
    if top is None:
        return trials
    return [t for t in trials if trial_rung(t) == top]


def comparable_study(study: optuna.Study) -> optuna.Study:
    """``study`` itself, or for a multi-fidelity study an in-memory copy holding its top-rung trials.

    Optuna's plots and importance evaluators take a study; mixing rungs would plot a one-epoch
    WER beside a full-training one and call the difference "importance".
    """
    if top_rung(study) is None:
        return study
    copy = optuna.create_study(directions=study.directions, study_name=study.study_name)
    copy.add_trials(comparable_trials(study))
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    return copy


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Comparable trials (see :func:`comparable_trials`), best primary objective first.

    Feasible trials come before infeasible ones.
    """
    sign = 1.0 if minimises(study) else -1.0
    trials = [t for t in comparable_trials(study) if primary_value(t) is not None]
    return sorted(trials, key=lambda t: (not _feasible(t), sign * primary_value(t), t.number))  # type: ignore[operator]


@dataclass(frozen=True)
class BestChoice:
    """The trial a report or ``best.yaml`` calls best, and how it was chosen."""

    trial: FrozenTrial
    note: str


def _dominates(a: FrozenTrial, b: FrozenTrial, signs: list[float]) -> bool:
    pairs = [(s * x, s * y) for s, x, y in zip(signs, a.values, b.values)]
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def _pareto_front(trials: list[FrozenTrial], study: optuna.Study) -> list[FrozenTrial]:
    # Optuna's study.best_trials spans every rung; a multi-fidelity front is over the top rung.
    signs = [1.0 if minimises(study, i) else -1.0 for i in range(len(study.directions))]
    feasible = [t for t in trials if t.values and _feasible(t)]
    return [
        t for t in feasible if not any(_dominates(o, t, signs) for o in feasible if o is not t)
    ]


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto-optimal feasible trials of a multi-objective study (of its top rung when it
    is a multi-fidelity study), by trial number; empty for a single-objective study."""
    if not is_multi_objective(study):
        return []
    return sorted(_pareto_front(comparable_trials(study), study), key=lambda t: t.number)


def pareto_knee(study: optuna.Study) -> FrozenTrial | None:
    """The knee of the Pareto front: the trial closest to the ideal point once every objective
    is scaled to ``[0, 1]`` over the front (0: the front's best value of it).

    The trade-off a deployment usually wants when nothing says how much WER a millisecond or a
    megabyte is worth: the best primary objective (:func:`select_best`) is one end of the front,
    the smallest or fastest model the other, and the knee the point that gives up least of every
    objective at once. Ties go to the lower trial number. None without a front.
    """
    front = pareto_front(study)
    if not front:
        return None
    signs = [1.0 if minimises(study, i) else -1.0 for i in range(len(study.directions))]
    values = [[s * v for s, v in zip(signs, t.values)] for t in front]
    lows = [min(col) for col in zip(*values)]
    spans = [max(col) - lo for col, lo in zip(zip(*values), lows)]

    def distance(row: list[float]) -> float:
        return math.sqrt(
            sum(((v - lo) / span) ** 2 for v, lo, span in zip(row, lows, spans) if span > 0)
        )

    best = min(range(len(front)), key=lambda i: (distance(values[i]), front[i].number))
    return front[best]


def select_best(study: optuna.Study) -> BestChoice | None:
    """Best trial: lowest primary objective among complete (feasible) trials.

    For a multi-objective study, the Pareto-optimal trial with the best primary objective.
    For a multi-fidelity study (``fidelity`` study attr), only trials at the top rung count.
    After a confirmation on new seeds (:func:`run_confirmation`), the config it picked.
    Returns None when no (top-rung) trial completed.
    """
    names = objective_names(study)
    top = top_rung(study)
    mf_note = ""
    if top is not None:
        mf_note = (
            f" at the top rung {rung_names(study)[top]!r}; "
            "lower-rung values of a multi-fidelity study are not comparable"
        )
    if is_multi_objective(study):
        front = (
            study.best_trials if top is None else _pareto_front(comparable_trials(study), study)
        )
        if not front:
            return None
        sign = 1.0 if minimises(study) else -1.0
        best = min(front, key=lambda t: (sign * t.values[0], t.number))
        note = (
            f"multi-objective study ({', '.join(names)}): of the {len(front)} Pareto-optimal trials, "
            f"the one with the best {names[0]}{mf_note}"
        )
        return BestChoice(best, note)
    confirmed = confirmed_choice(study)
    if confirmed is not None:
        return BestChoice(*confirmed)
    ranked = [t for t in ranked_trials(study) if _feasible(t)]
    if not ranked:
        return None
    return BestChoice(ranked[0], f"complete trial with the best {names[0]}{mf_note}")
