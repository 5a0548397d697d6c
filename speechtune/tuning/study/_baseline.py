"""The baseline trial: a new recipe study trains the base recipe's own config (the defaults) first.

A sampler tries the defaults only by chance, so without it a study can end worse than its own
starting point and never show it (a TPE study of fine-tuning on 5 minutes of FSDD reached dev
WER 0.672; the base recipe it never tried reached 0.239). ``study.baseline: true`` (the default)
enqueues the defaults as the study's first trial, marked with the user attr
``source: baseline``, the same mark the multi-fidelity backend gives its own baseline trial
(``fidelity.baseline``), so that ``trials.csv`` and the reports tell it apart alike in both kinds
of study.

Only a new study gets it (see ``on_new`` of :func:`~speechtune.tuning.study.open_study`): a
resumed one, also one begun before this existed, is left as it is.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna

from speechtune.tuning.space import fit_params
from speechtune.tuning.spec import TuningSpec

log = logging.getLogger(__name__)

#: The ``source`` user attr of the trial that trains the defaults.
BASELINE_SOURCE = "baseline"


def baseline_params(spec: TuningSpec) -> dict[str, Any] | None:
    """The params of the space that give the base recipe's own values, or None for no baseline.

    None unless ``study.baseline`` is on, the objective is a single-objective recipe with a base
    recipe (a command or Python objective has no defaults to compare with; on a Pareto front
    of several objectives the defaults are one point among many), and there is no
    ``fidelity:`` section (the multi-fidelity search runs its own baseline). A base value the
    space cannot represent is clipped into its range or dropped (logged); a param the base
    recipe lacks is left to the sampler.

    Args:
        spec: the tuning spec.

    Returns:
        Optuna params (names and values as the space suggests them), or None.
    """
    if (
        not spec.study.baseline
        or spec.fidelity is not None
        or spec.objective.kind != "recipe"
        or spec.objective.is_multi_objective
        or not spec.base_flat
    ):
        return None

    def warn(key: str, message: str) -> None:
        log.info("baseline: the base recipe's %s %s", key, message)

    return fit_params(spec.space, spec.base_flat, warn) or None


def enqueue_baseline(study: optuna.Study, params: dict[str, Any]) -> None:
    """Enqueue ``params`` as the next trial of ``study``, marked as the baseline.

    ``skip_if_exists``: two processes that both begin one study (neither resuming) enqueue it
    once between them, barring a near tie.
    """
    study.enqueue_trial(params, user_attrs={"source": BASELINE_SOURCE}, skip_if_exists=True)
    log.info("the study's first trial trains the base recipe's defaults: %s", params)


def is_baseline(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` trains the base recipe's defaults (of a plain or multi-fidelity study)."""
    return trial.user_attrs.get("source") == BASELINE_SOURCE
