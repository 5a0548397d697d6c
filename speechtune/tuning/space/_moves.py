"""Local moves around a config: the search's small steps away from the configs it has measured.

:func:`sample_near` moves every param a little at once (the incumbent's neighbourhood, the
forest's local candidates); :func:`sample_neighbour` moves exactly one (SMAC's one-exchange
neighbourhood, for a local search that walks along one axis at a time).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from speechtune.tuning.space._params import CategoricalParam, Param, check_width, same_value
from speechtune.tuning.space._sampling import (
    Config,
    Params,
    _around,
    _Axis,
    _encode,
    _prior_draw,
    _sample,
)
from speechtune.tuning.space._space import SearchSpace

__all__ = ["sample_near", "sample_neighbour"]


def _finite_number(value: Any) -> bool:
    """A centre's numeric value that a move can start from (not a bool, NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sample_near(
    space: SearchSpace,
    center: Mapping[str, Any],
    rng: np.random.Generator,
    scale: float = 0.1,
    base: Mapping[str, Any] | None = None,
) -> tuple[Params, Config]:
    """A local perturbation of a config, for a search around the incumbent.

    Numeric params: a normal around the centre's value with std ``scale x (high - low)`` (in log
    space for log params), truncated to the range and snapped to the grid; a centre outside the
    range is first clipped into it. Categorical params keep the centre's choice with probability
    ``max(1/k, 1 - scale)`` and otherwise move to one of the other ``k - 1`` choices at random
    (the same rule as a categorical prior of width ``scale``): with the default 0.1, nine draws in
    ten keep each choice, so a move usually changes a few params, not the architecture wholesale.
    Params the centre lacks (e.g. made active by a changed choice) come from their prior, or
    uniformly when they have none; so does a categorical whose centre value is not a choice.

    Args:
        space: the search space.
        center: raw params of the centre (as returned here or stored by Optuna); categorical
            values may also be given as the choice itself.
        rng: the source of randomness.
        scale: in ``(0, 10]``; the size of the move relative to each range.
        base: flat values for names outside the space; default ``space.base``.

    Returns:
        ``(params, config)`` as :func:`sample_uniform`.

    Raises:
        ValueError: ``scale`` outside ``(0, 10]``.
        ConstraintViolation: no draw in :data:`MAX_TRIES` satisfied the constraints.
    """
    check_width("sample_near: scale", scale)
    fallback = _prior_draw(rng)

    def draw(param: Param) -> Any:
        if param.name not in center:
            return fallback(param)
        value = center[param.name]
        if isinstance(param, CategoricalParam):
            found, _ = _encode(param, value)
            return _around(param, value, scale, rng) if found else fallback(param)
        if not _finite_number(value):
            return fallback(param)
        centre = min(max(value, param.low), param.high)  # type: ignore[union-attr]
        return _Axis(param).normal(centre, scale, rng)  # type: ignore[arg-type]

    return _sample(space, draw, base, "sampling near a config")


def sample_neighbour(
    space: SearchSpace,
    center: Mapping[str, Any],
    rng: np.random.Generator,
    scale: float = 0.2,
    base: Mapping[str, Any] | None = None,
) -> tuple[Params, Config]:
    """A one-exchange neighbour of a config: exactly one of its params moved, the rest kept.

    SMAC's local-search neighbourhood (Hutter et al., 2011): the moved param is one of the
    centre's tunable params, chosen uniformly; a numeric one takes a normal draw around its
    value (std ``scale x range``, truncated and snapped as in :func:`sample_near`), a
    categorical one another of its choices. Params the move makes active (a changed choice's
    children) come from their prior, or uniformly; params it makes inactive are dropped. Unlike
    :func:`sample_near`, which moves every numeric param at once, a chain of such moves can
    walk along one axis, e.g. into a narrow region of one branch of a conditional space.

    Args:
        space: the search space.
        center: raw params of the centre (as stored by Optuna); categorical values may also be
            given as the choice itself.
        rng: the source of randomness.
        scale: in ``(0, 10]``; the std of a numeric move relative to the param's range.
        base: flat values for names outside the space; default ``space.base``.

    Returns:
        ``(params, config)`` as :func:`sample_uniform`.

    Raises:
        ValueError: ``scale`` outside ``(0, 10]``.
        ConstraintViolation: no draw in :data:`MAX_TRIES` satisfied the constraints.
    """
    check_width("sample_neighbour: scale", scale)
    movable = [n for n in space.tunable_names() if n in center]
    moved = movable[int(rng.integers(len(movable)))] if movable else None
    fallback = _prior_draw(rng)

    def draw(param: Param) -> Any:
        if param.name not in center:
            return fallback(param)
        value = center[param.name]
        if isinstance(param, CategoricalParam):
            found, enc = _encode(param, value)
            if not found:
                return fallback(param)
            if param.name != moved:
                return enc
            others = [
                e for e in param.encoded() if not (same_value(e, enc) and type(e) is type(enc))
            ]
            return others[int(rng.integers(len(others)))] if others else enc
        if not _finite_number(value):
            return fallback(param)
        if param.name != moved:
            return value
        centre = min(max(value, param.low), param.high)  # type: ignore[union-attr]
        return _Axis(param).normal(centre, scale, rng)  # type: ignore[arg-type]

    return _sample(space, draw, base, "sampling a neighbour")
