"""Ray Tune's search: OptunaSearch with a define-by-run function over the one search-space model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import optuna

from speechtune._jsonable import _jsonable
from speechtune.tuning.backends.ray._trainable import META_KEY
from speechtune.tuning.space import ConstraintViolation, SearchSpace
from speechtune.tuning.study import sample_space


# ---------------------------------------------------------------------------------------------
# search: the one search-space model, define-by-run
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Sampler:
    """OptunaSearch's define-by-run function (a picklable object: Ray saves the searcher).

    Attributes:
        space: the search space.
        base_flat: the base recipe's flat config (the values the space does not set).
        sources: how the first trials of the searcher's study were chosen, in order: the points
            enqueued before any draw (``("baseline",)`` for the base recipe's defaults). The
            searcher's own study numbers its trials from 0 in the order they are asked, so trial
            ``i < len(sources)`` is the ``i``-th point; the ``source`` goes with the trial's record.
    """

    space: SearchSpace
    base_flat: dict[str, Any]
    sources: tuple[str, ...] = ()

    def __call__(self, trial: Any) -> dict[str, Any]:

        meta: dict[str, Any] = {}
        if trial.number < len(self.sources):
            meta["source"] = self.sources[trial.number]
        try:
            config = dict(sample_space(self.space, trial, self.base_flat))
        except ConstraintViolation as exc:
            config, meta["invalid"] = {}, ("stopped", f"constraint: {exc}")
        except (
            ValueError,
            ArithmeticError,
            TypeError,
            KeyError,
        ) as exc:  # e.g. a derived value dividing by zero
            config, meta["invalid"] = (
                {},
                ("error", f"error: sampling the config: {type(exc).__name__}: {exc}"),
            )
        meta["params"] = _jsonable(dict(trial.params))
        meta["distributions"] = {
            n: optuna.distributions.distribution_to_json(d) for n, d in trial.distributions.items()
        }
        if trial.user_attrs.get("repaired"):
            meta["repaired"] = _jsonable(trial.user_attrs["repaired"])
        meta["keys"] = sorted(config)
        # A JSON string: Ray's variant generator walks nested dicts of a config as search paths.
        return {**config, META_KEY: json.dumps(meta)}
