"""Parameter importance with a fallback, shared by the HTML and PNG reports.

Importance is only computed when the study holds enough evidence for it (see
:data:`MIN_IMPORTANCE_TRIALS` and :data:`MIN_DISTINCT_VALUES`); otherwise the report shows
:attr:`Importance.note`, a sentence saying why, in its place.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import optuna
from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

from speechtune.tuning.study import (
    comparable_study,
    comparable_trials,
    is_multi_fidelity,
    objective_names,
)

# Why 10: PED-ANOVA (tried first) scores a parameter by how differently it is distributed in the
# best 10% of trials than in all of them, with at least 2 trials in that top set. Below 10 trials
# the top set is always those 2 floor trials, so the bars would explain the difference between two
# points and the rest; Optuna's own docs advise 5 top trials (~50 in all) for a stable result.
# fANOVA (the fallback) fits a random forest, whose splits on fewer than ~10 points are close to
# arbitrary. 10 is the least that is not pure noise, not a guarantee of a stable ranking.
MIN_IMPORTANCE_TRIALS = 10
# Why 5: tied values carry no ranking. Four trials that all scored WER 1.0 (diverged models, a
# stuck metric) still produce "normalised" bars that sum to 1 and look confident; with few
# distinct values the top set is decided by which tied trial happened to sort first. At least
# half of MIN_IMPORTANCE_TRIALS must differ so the best trials differ from the rest by measurement.
MIN_DISTINCT_VALUES = 5
# Values equal to this many significant digits count as tied: the report prints 6 digits, and
# a WER averaged over seeds may differ from another only by float rounding.
_TIE_DIGITS = 6


@dataclass(frozen=True)
class Importance:
    """Importances (normalised, largest first) and how they were computed, or why not."""

    values: dict[str, float]
    method: str
    note: str


def distinct_values(values: list[float]) -> int:
    """How many of ``values`` differ, counting values equal to 6 significant digits as tied."""
    return len({f"{v:.{_TIE_DIGITS}g}" for v in values})


def _not_enough(study: optuna.Study) -> str | None:
    """The sentence explaining why importance is not shown, or None when there is enough data."""
    primary = objective_names(study)[0]
    values = [
        float(t.values[0])
        for t in comparable_trials(study)
        if t.values and math.isfinite(t.values[0])
    ]
    distinct = distinct_values(values)
    if len(values) >= MIN_IMPORTANCE_TRIALS and distinct >= MIN_DISTINCT_VALUES:
        return None
    finished = "finished top-rung trial" if is_multi_fidelity(study) else "finished trial"
    return (
        f"Parameter importance needs at least {MIN_IMPORTANCE_TRIALS} {finished}s with at least "
        f"{MIN_DISTINCT_VALUES} different values of {primary}; this study has "
        f"{_count(len(values), finished)} with {_count(distinct, 'different value')}. With "
        "fewer, the ranking would reflect noise between a handful of trials, not the parameters."
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def param_importances(study: optuna.Study) -> Importance:
    """PED-ANOVA importances of the primary objective; fANOVA when PED-ANOVA fails.

    Never raises: when the study has too few complete trials or too few distinct objective
    values (:data:`MIN_IMPORTANCE_TRIALS`, :data:`MIN_DISTINCT_VALUES`), no tunable parameters,
    or both evaluators fail, the result is empty and ``note`` is a sentence saying why.
    """
    why_not = _not_enough(study)
    if why_not is not None:
        return Importance({}, "", why_not)
    # Multi-fidelity: only top-rung trials (values at cheaper rungs are not comparable).
    study = comparable_study(study)
    if not any(t.distributions for t in comparable_trials(study)):
        return Importance(
            {}, "", "Parameter importance needs tunable parameters; these trials have none."
        )
    errors: list[str] = []
    for method, evaluator in (
        ("PED-ANOVA", PedAnovaImportanceEvaluator),
        ("fANOVA", FanovaImportanceEvaluator),
    ):
        try:
            with warnings.catch_warnings():
                # Both evaluators are flagged experimental; that warning is noise in a report.
                warnings.simplefilter("ignore")
                values = optuna.importance.get_param_importances(
                    study, evaluator=evaluator(), target=lambda t: t.values[0]
                )
        except Exception as exc:
            errors.append(f"{method}: {type(exc).__name__}: {exc}")
            continue
        if values:
            return Importance(dict(values), method, "")
        errors.append(f"{method}: no parameter shared by all complete trials")
    return Importance({}, "", "Parameter importance could not be computed: " + "; ".join(errors))
