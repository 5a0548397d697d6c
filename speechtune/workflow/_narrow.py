"""Narrowing a search space around the best configs of a coarse search (the fine-search stage).

The production workflow first runs a coarse random search over the whole space, then a Bayesian
(TPE) search in a region around its top-k configs. :func:`narrow_space` builds that region;
:func:`in_space`, :func:`encode_params` and :func:`distributions_for` let the workflow add the
coarse trials that fall inside it to the fine study as prior evidence::

    narrowed, changes = narrow_space(space, [t["params"] for t in top])
    for t in coarse_trials:
        if in_space(narrowed, t.params):
            study.add_trial(optuna.trial.create_trial(
                params=encode_params(narrowed, t.params),
                distributions=distributions_for(narrowed, t.params), value=t.value))

Rules for numeric params (float and int), all in the param's own scale (log space when
``log=True``, so a log param stays log-scaled):

* the top values span ``[vmin, vmax]``; each side is widened by
  ``expand x max(vmax - vmin, FLOOR_SHARE x (high - low))``. The floor (a fifth of the original
  range) is what leaves room when the top values are all equal or nearly so; applying it to every
  spread, not only to a zero one, keeps the rule continuous (two top values 1e-9 apart do not
  get a far smaller region than two identical ones);
* a region narrower than ``min_width x (high - low)`` is grown around its centre to that width,
  shifted rather than cut where it meets an original bound;
* the result is clipped to the original ``[low, high]``, rounded outward onto the param's step
  grid (``low + k x step``; ints are always on their grid), and always contains every top value.
  It may collapse to a single value (``low == high``), which Optuna accepts.
"""

from __future__ import annotations

import dataclasses
import decimal
import math
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.distributions import BaseDistribution

from speechtune.tuning.space import (
    CategoricalParam,
    DerivedParam,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    SearchSpace,
    optuna_choice,
    prior_problems,
    same_value,
)

__all__ = [
    "FLOOR_SHARE",
    "describe_param",
    "distributions_for",
    "encode_params",
    "in_space",
    "narrow_space",
]

FLOOR_SHARE = 0.2  # share of the original range that `expand` applies to when top values coincide

# Optuna's own tolerance for "on the step grid" of a float distribution (FloatDistribution._contains).
_GRID_TOL = 1.0e-8


def narrow_space(
    space: SearchSpace,
    top: Sequence[Mapping[str, Any]],
    *,
    expand: float = 0.25,
    min_width: float = 0.0,
) -> tuple[SearchSpace, dict[str, dict[str, str]]]:
    """A search space narrowed around the best configs of a coarse search.

    Args:
        space: the space the coarse search sampled from.
        top: flat configs (dotted key -> value) of the best coarse trials, best first. A
            conditional param may be absent from some of them; keys that are not tunable params
            of ``space`` (fixed, derived, base overrides) are ignored. Categorical values may be
            the choices themselves or as Optuna stores them (list choices as YAML text).
        expand: how far each numeric range is widened on each side, as a fraction of the top
            values' spread (see the module docstring for the floor that applies when they coincide).
        min_width: the narrowed numeric range spans at least this fraction of the original range
            (in log space for log params), where the original range allows; in ``[0, 1]``.

    Returns:
        The narrowed space (same ``when`` conditions, constraints and ``base``) and, for every
        param whose range or choices changed, ``{"before": ..., "after": ...}`` as written by
        :func:`describe_param`, e.g. ``{"before": "[0.0001, 0.01] log", "after": "[0.0008, 0.004] log"}``
        or ``{"before": "{adam, sgd}", "after": "{adam}"}``.

        Float and int params get the bounds described in the module docstring. A categorical
        keeps the choices that appear in ``top``, in their original order; with one choice left
        it stays a one-choice categorical (``when`` conditions elsewhere read its value). A param
        absent from every config in ``top`` (e.g. an inactive conditional), and every fixed or
        derived param, is kept as it is. A :class:`~speechtune.tuning.Prior` whose default no
        longer lies in the narrowed range (or among the remaining choices) is DROPPED, not
        clipped: clipping would invent a belief at the region's edge; a prior that still fits is
        kept unchanged (its width stays relative to the param's, now narrower, range).

    Raises:
        ValueError: ``expand`` or ``min_width`` out of range, or a top value the original space
            could not have produced (not a number, outside ``[low, high]``, not among the choices).
    """
    if not (isinstance(expand, (int, float)) and math.isfinite(expand) and expand >= 0):
        raise ValueError(f"expand must be a finite number >= 0, got {expand!r}")
    if not (isinstance(min_width, (int, float)) and 0 <= min_width <= 1):
        raise ValueError(f"min_width must be a number in [0, 1], got {min_width!r}")
    params: dict[str, Param] = {}
    changes: dict[str, dict[str, str]] = {}
    for name, param in space.params.items():
        values = [config[name] for config in top if name in config]
        new: Param = param
        if values and isinstance(param, (FloatParam, IntParam)):
            new = _narrow_range(param, values, float(expand), float(min_width))
        elif values and isinstance(param, CategoricalParam):
            new = _narrow_choices(param, values)
        params[name] = new
        if _bounds(new) != _bounds(param):
            changes[name] = {"before": describe_param(param), "after": describe_param(new)}
    return SearchSpace(params, space.constraints, space.base), changes


def describe_param(param: Param) -> str:
    """A short text of a param's range: ``[0.0001, 0.01] log``, ``[7, 31] step 2``, ``{adam, sgd}``."""
    if isinstance(param, (FloatParam, IntParam)):
        text = f"[{_fmt(param.low)}, {_fmt(param.high)}]"
        if param.step is not None and not (isinstance(param, IntParam) and param.step == 1):
            text += f" step {_fmt(param.step)}"
        return text + (" log" if param.log else "")
    if isinstance(param, CategoricalParam):
        return "{" + ", ".join(_choice_text(c) for c in param.choices) + "}"
    if isinstance(param, FixedParam):
        return f"= {_choice_text(param.value)}"
    if isinstance(param, DerivedParam):
        return f"= {param.expr}"
    raise TypeError(f"not a search-space param: {param!r}")


def in_space(space: SearchSpace, params: Mapping[str, Any]) -> bool:
    """Whether a config lies inside ``space``, so it can join a study over ``space`` as evidence.

    Every tunable param of ``space`` that ``params`` holds must be a valid value: within
    ``[low, high]`` and on the step grid (with Optuna's own tolerance, so that whatever passes
    here also passes :func:`optuna.trial.create_trial`), an integer for int params, one of the
    choices (raw or encoded) for categoricals. Params missing from ``params`` (inactive
    conditionals) and keys that are not tunable params are not checked; neither are constraints.
    """
    for name in space.tunable_names():
        if name in params and not _contains(space.params[name], params[name]):  # type: ignore[arg-type]
            return False
    return True


def distributions_for(
    space: SearchSpace, params: Mapping[str, Any]
) -> dict[str, BaseDistribution]:
    """The Optuna distributions of exactly the tunable params of ``space`` present in ``params``.

    Pairs with :func:`encode_params` (same keys, same order) for :func:`optuna.trial.create_trial`.
    """
    return {n: space.params[n].distribution() for n in space.tunable_names() if n in params}  # type: ignore[misc]


def encode_params(space: SearchSpace, params: Mapping[str, Any]) -> dict[str, Any]:
    """The tunable params of ``space`` present in ``params``, valued as Optuna stores them.

    Categorical values become their encoded choice (a list choice is stored as YAML text, see
    :meth:`~speechtune.tuning.CategoricalParam.encoded`); ints become ``int``, floats ``float``.
    Fixed, derived and unknown keys are left out, as Optuna never sees them.

    Raises:
        ValueError: a categorical value that is not one of the choices, or a non-numeric value
            for a numeric param.
    """
    encoded: dict[str, Any] = {}
    for name in space.tunable_names():
        if name not in params:
            continue
        param, value = space.params[name], params[name]
        if isinstance(param, CategoricalParam):
            index = _choice_index(param, value)
            if index is None:
                raise ValueError(
                    f"{name}: {value!r} is not one of the choices {list(param.choices)}"
                )
            encoded[name] = param.encoded()[index]
        elif isinstance(param, IntParam):
            encoded[name] = int(_checked_number(name, value, integer=True))
        else:
            encoded[name] = float(_checked_number(name, value, integer=False))
    return encoded


# ---------------------------------------------------------------------------------------------
# numeric params


def _narrow_range(
    param: FloatParam | IntParam, values: Sequence[Any], expand: float, min_width: float
) -> Param:
    integer = isinstance(param, IntParam)
    nums = [_checked_number(param.name, v, integer=integer) for v in values]
    for v in nums:
        # A small relative tolerance: a value read back from a store may have lost its last bit.
        tol = 1e-9 * max(1.0, abs(param.low), abs(param.high))
        if not param.low - tol <= v <= param.high + tol:
            raise ValueError(
                f"{param.name}: top value {v!r} lies outside the original range {describe_param(param)}"
            )
    vmin, vmax = max(min(nums), param.low), min(max(nums), param.high)
    fwd, back = (math.log, math.exp) if param.log else (float, float)
    lo0, hi0 = fwd(param.low), fwd(param.high)
    width0 = hi0 - lo0
    a, b = fwd(vmin), fwd(vmax)
    pad = expand * max(b - a, FLOOR_SHARE * width0)
    a, b = a - pad, b + pad
    need = min_width * width0
    if b - a < need:
        centre = (a + b) / 2
        a, b = centre - need / 2, centre + need / 2
        if a < lo0:  # shift rather than cut, so the region keeps the width asked for
            a, b = lo0, b + (lo0 - a)
        if b > hi0:
            a, b = a - (b - hi0), hi0
    # exp(log(x)) may come back a hair off: never let that cut off a top value or leave the range.
    low = min(max(back(max(a, lo0)), param.low), vmin)
    high = max(min(back(min(b, hi0)), param.high), vmax)
    low, high = _snap_outward(param, low, high, vmin, vmax)
    new = dataclasses.replace(param, low=low, high=high, prior=None)
    return _with_prior_if_valid(new, param.prior)


def _snap_outward(
    param: FloatParam | IntParam, low: float, high: float, vmin: float, vmax: float
) -> tuple[Any, Any]:
    """``[low, high]`` widened to grid points ``param.low + k * step`` inside the original range.

    Float grids are computed in decimal arithmetic, as Optuna checks them (``0.1 + 2 * 0.1`` must
    come out as ``0.3``, or Optuna would call the range indivisible by the step and move ``high``).
    """
    origin: float  # an int on an integer grid
    step: float
    if isinstance(param, IntParam):
        origin, step = param.low, param.step

        def point(k: int) -> Any:
            return origin + k * step

        kmax = (param.high - origin) // step
    elif param.step is None:
        return low, high
    else:
        d_origin, d_step = decimal.Decimal(str(param.low)), decimal.Decimal(str(param.step))

        def point(k: int) -> Any:
            return float(d_origin + k * d_step)

        kmax = int((decimal.Decimal(str(param.high)) - d_origin) // d_step)
        origin, step = param.low, param.step
    klo = min(max(math.floor((low - origin) / step + 1e-9), 0), kmax)
    khi = min(max(math.ceil((high - origin) / step - 1e-9), klo), kmax)
    # The tolerance above may round a bound inward past a top value that sits a hair off the grid.
    while klo > 0 and point(klo) > vmin:
        klo -= 1
    while khi < kmax and point(khi) < vmax:
        khi += 1
    return point(klo), point(khi)


def _checked_number(name: str, value: Any, *, integer: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # One error type for every bad value in a space (callers catch ValueError).
        raise ValueError(f"{name}: {value!r} is not a number")
    if not math.isfinite(value):
        raise ValueError(f"{name}: {value!r} is not a finite number")
    if integer and not float(value).is_integer():
        raise ValueError(f"{name}: {value!r} is not an integer")
    return int(value) if integer else value


def _contains(param: FloatParam | IntParam | CategoricalParam, value: Any) -> bool:
    if isinstance(param, CategoricalParam):
        return _choice_index(param, value) is not None
    try:
        v = _checked_number(param.name, value, integer=isinstance(param, IntParam))
    except ValueError:
        return False
    if not param.low <= v <= param.high:  # exact, as Optuna checks it
        return False
    if isinstance(param, IntParam):
        return (v - param.low) % param.step == 0
    if param.step is None:
        return True
    k = (v - param.low) / param.step
    return abs(k - round(k)) < _GRID_TOL


# ---------------------------------------------------------------------------------------------
# categorical params


def _narrow_choices(param: CategoricalParam, values: Sequence[Any]) -> Param:
    seen: set[int] = set()
    for value in values:
        index = _choice_index(param, value)
        if index is None:
            raise ValueError(
                f"{param.name}: top value {value!r} is not one of the choices {list(param.choices)}"
            )
        seen.add(index)
    choices = tuple(c for i, c in enumerate(param.choices) if i in seen)
    new = dataclasses.replace(param, choices=choices, prior=None)
    return _with_prior_if_valid(new, param.prior)


def _choice_index(param: CategoricalParam, value: Any) -> int | None:
    """Index of the choice ``value`` stands for: the choice itself first, then its encoded form."""
    for i, raw in enumerate(param.choices):
        if same_value(raw, value):
            return i
    for i, enc in enumerate(param.encoded()):
        if type(enc) is type(value) and enc == value:
            return i
    return None


# ---------------------------------------------------------------------------------------------
# shared


def _with_prior_if_valid(param: Any, prior: Any) -> Param:
    if prior is None or prior_problems(param, prior):
        return param
    return dataclasses.replace(param, prior=prior)


def _bounds(param: Param) -> Any:
    if isinstance(param, (FloatParam, IntParam)):
        return (param.low, param.high)
    if isinstance(param, CategoricalParam):
        return param.encoded()
    return None


def _fmt(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:.6g}"


def _choice_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float):
        return _fmt(value)
    if isinstance(value, int):
        return str(value)
    return str(optuna_choice(value))  # lists and mappings: their YAML text
