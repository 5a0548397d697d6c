"""Parameter importance with a fallback, shared by the HTML and PNG reports."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import optuna
from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

from speechtune.tuning.study import comparable_study, comparable_trials


@dataclass(frozen=True)
class Importance:
    """Importances (normalised, largest first) and how they were computed, or why not."""

    values: dict[str, float]
    method: str
    note: str


def param_importances(study: optuna.Study) -> Importance:
    """PED-ANOVA importances of the primary objective; fANOVA when PED-ANOVA fails.

    Never raises: with fewer than two complete trials, or when both evaluators fail, the
    result is empty and ``note`` says why.
    """
    # Multi-fidelity: only top-rung trials (values at cheaper rungs are not comparable).
    study = comparable_study(study)
    trials = comparable_trials(study)
    if len(trials) < 2:
        return Importance(
            {},
            "",
            f"skipped: {len(trials)} comparable complete trial(s), importance needs at least 2",
        )
    if not any(t.distributions for t in trials):
        return Importance({}, "", "skipped: the trials have no tunable parameters")
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
    return Importance({}, "", "skipped: " + "; ".join(errors))
