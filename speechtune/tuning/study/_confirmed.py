"""Reading a study's confirmation (see :mod:`._confirm`): its rows and the trial it picks.

Kept apart from the runs so that :func:`~speechtune.tuning.study.select_best` can follow a
confirmed pick without importing the objectives.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial

from speechtune.tuning.study._baseline import is_baseline

#: The study user attr holding a confirmation: seeds, candidates and every run's outcome.
CONFIRMATION_ATTR = "confirmation"


@dataclass(frozen=True)
class ConfirmRow:
    """One candidate of a confirmation: its study value and its values on the new seeds.

    Attributes:
        trial: the study's trial number of the config.
        baseline: whether the config is the recipe's defaults.
        study_value: the primary objective the study measured (selected on; biased low).
        values: seed -> value of each finished confirmation run.
        failed: seed -> reason of each failed run.
    """

    trial: int
    baseline: bool
    study_value: float
    values: dict[int, float]
    failed: dict[int, str]

    def mean(self) -> float | None:
        """The mean over the confirmation seeds; None until every one has a value."""
        return statistics.fmean(self.values.values()) if self.values else None

    def stderr(self) -> float | None:
        """The standard error of :meth:`mean` (None with fewer than two values)."""
        if len(self.values) < 2:
            return None
        return statistics.stdev(self.values.values()) / math.sqrt(len(self.values))


def confirmation_rows(study: optuna.Study) -> list[ConfirmRow]:
    """The recorded confirmation, one row per candidate (empty when none was run)."""
    record = study.user_attrs.get(CONFIRMATION_ATTR)
    if not isinstance(record, Mapping):
        return []
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    rows = []
    for number in record.get("candidates") or []:
        trial = by_number.get(int(number))
        if trial is None or not trial.values:
            continue
        runs = (record.get("runs") or {}).get(str(number)) or {}
        values = {int(s): float(r["value"]) for s, r in runs.items() if r.get("value") is not None}
        failed = {
            int(s): str(r.get("reason") or r.get("status"))
            for s, r in runs.items()
            if r.get("value") is None
        }
        rows.append(ConfirmRow(int(number), is_baseline(trial), trial.values[0], values, failed))
    return rows


def confirmed_choice(study: optuna.Study) -> tuple[FrozenTrial, str] | None:
    """The trial a finished confirmation picks and a note saying how; None without one.

    The pick is the candidate with the best mean over the confirmation seeds among those with a
    value on every seed (a config with a failed run is out). None when no confirmation was
    recorded, it is not finished (a run of some candidate is missing: interrupted), or no
    candidate has a value on every seed.
    """
    record = study.user_attrs.get(CONFIRMATION_ATTR)
    if not isinstance(record, Mapping):
        return None
    seeds = [int(s) for s in record.get("seeds") or []]
    all_rows = confirmation_rows(study)
    if not seeds or any(set(r.values) | set(r.failed) != set(seeds) for r in all_rows):
        return None  # not finished: a pick among the configs done so far would be premature
    rows = [r for r in all_rows if sorted(r.values) == sorted(seeds)]
    if not rows:
        return None
    sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1.0
    best = min(rows, key=lambda r: (sign * (r.mean() or 0.0), r.trial))
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == best.trial)
    seeds_text = ", ".join(map(str, seeds))
    note = (
        f"the best mean {record.get('metric', 'value')} ({best.mean():.4g}) over new seeds "
        f"{seeds_text} among the study's {len(rows)} confirmed configs"
        f" (its study value {best.study_value:.4g} is left out: the search selected on it)"
    )
    return trial, note
