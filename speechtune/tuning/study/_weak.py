"""Warnings for a study whose values cannot rank configs (shared by ``tune`` and the workflow).

A search whose trials all score near chance, or all the same, has picked its "best" config
close to at random; saying so at the end keeps a user from trusting (and paying to retrain) it.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna

from speechtune.tuning.study._records import minimises, objective_names, ranked_trials

#: A best error rate at least this high cannot tell configs apart (CTC models that have not
#: yet left the all-blank phase all score ~1.0).
WEAK_RATE = 0.9

#: Values closer than this count as a tie.
TIE_TOLERANCE = 1e-3

#: What the weak-proxy warning of ``speechtune tune`` suggests.
TUNE_HINT = (
    "Train longer (train.epochs) or on more data (data.proxy_fraction), or check how well "
    "early epochs rank configs with `speechtune correlate`."
)


def weak_ranking_warnings(
    values: Sequence[float], metric: str = "wer", *, hint: str = TUNE_HINT
) -> list[str]:
    """Warnings when ``values`` (one per comparable trial) cannot rank configs.

    Two cases: every value is an error rate (a metric named ``...wer`` or ``...cer``) of at least
    :data:`WEAK_RATE`; or at least 3 trials all lie within :data:`TIE_TOLERANCE` of each other.

    Args:
        values: the primary objective of each comparable trial.
        metric: its name (the near-chance test applies to error rates only).
        hint: what to do about a weak proxy, appended to that warning.
    """
    if not values:
        return []
    best, worst = min(values), max(values)
    if metric.endswith(("wer", "cer")) and best >= WEAK_RATE:
        return [
            f"every trial scored {best:.3f} or worse: the proxy (data share x epochs) is too weak "
            f"to rank configs, so the search is close to a random pick. {hint}"
        ]
    if len(values) >= 3 and worst - best < TIE_TOLERANCE:
        return [
            f"all {len(values)} trials scored within {TIE_TOLERANCE:g} of each other ({best:.4f}): "
            "the search space or proxy does not separate configs."
        ]
    return []


def study_ranking_warnings(study: optuna.Study, *, hint: str = TUNE_HINT) -> list[str]:
    """:func:`weak_ranking_warnings` of a single-objective, minimised study's comparable trials."""
    if len(study.directions) != 1 or not minimises(study):
        return []
    values = [float(t.values[0]) for t in ranked_trials(study)]
    return weak_ranking_warnings(values, objective_names(study)[0], hint=hint)
