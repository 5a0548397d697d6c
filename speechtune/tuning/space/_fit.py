"""Fitting a config from another search space (an earlier study's best) into this one."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from speechtune.tuning.space._expr import ExprError
from speechtune.tuning.space._params import CategoricalParam, ConstraintViolation, Param
from speechtune.tuning.space._sampling import Params, _Axis, _DrawTrial, _encode
from speechtune.tuning.space._space import SearchSpace

#: ``warn(key, message)``: told about every value that had to change to fit.
Warn = Callable[[str, str], None]


def _fit_value(param: Param, value: Any, warn: Warn) -> tuple[bool, Any]:
    """``(keep, raw)``: ``value`` as a raw value of ``param``, clipped into the range if needed."""
    if isinstance(param, CategoricalParam):
        found, enc = _encode(param, value)
        if not found:
            warn(param.name, f"skipped: {value!r} is not one of the choices {list(param.choices)}")
        return found, enc
    axis = _Axis(param)  # type: ignore[arg-type]
    if not (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ):
        warn(param.name, f"skipped: {value!r} is not a number")
        return False, None
    snapped = axis.snap(value)
    if not axis.contains(value):
        low, high = param.low, param.high  # type: ignore[union-attr]
        how = (
            f"clipped to {snapped!r}"
            if not low <= value <= high
            else f"moved to the grid value {snapped!r}"
        )
        warn(
            param.name,
            f"{value!r} is outside the new space's range [{low:g}, {high:g}] / grid: {how}",
        )
    return True, snapped


def fit_params(space: SearchSpace, values: Mapping[str, Any], warn: Warn) -> Params:
    """The active tunable params of ``space`` that ``values`` (a flat config, perhaps from another space) gives.

    A number outside a param's range is clipped into it (or moved to its grid), a choice that
    is not offered is dropped; each such change is passed to ``warn(key, message)``. Params
    whose conditions the config switches off are dropped.
    """
    fitted: Params = {}
    for name in space.tunable_names():
        if name in values:
            keep, raw = _fit_value(space.params[name], values[name], warn)
            if keep:
                fitted[name] = raw

    # Walk the space with these values to drop params their conditions switch off (a recipe's
    # optim.momentum when optim.name is adam). A param the config lacks is walked at its prior
    # default or first value, only to decide what depends on it; it is not returned.
    def draw(param: Param) -> Any:
        if param.name in fitted:
            return fitted[param.name]
        if isinstance(param, CategoricalParam):
            return _encode(param, param.prior.default)[1] if param.prior else param.encoded()[0]
        return param.prior.default if param.prior else param.low  # type: ignore[union-attr]

    trial = _DrawTrial(space, draw)
    try:
        space.sample(trial)  # type: ignore[arg-type]
    except (ConstraintViolation, ExprError):
        pass  # the suggestions made before the failure are what is needed
    return {name: fitted[name] for name in trial.params if name in fitted}
