"""Parallel coordinates of a study: a few readable axes, with inactive parameters labelled.

Optuna's own plot draws one axis per parameter (17 crowded axes for a 16-parameter space) and
ticks a conditional parameter's missing value as "None", which reads like a choice that was
tried. This figure draws the objective and at most :data:`MAX_PARAMS` parameters, and puts
trials in which a parameter was inactive (a conditional key whose condition did not hold) on a
separate tick labelled :data:`INACTIVE` below that axis's range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial

from speechtune.reports._importance import Importance
from speechtune.reports._ticks import integer_step
from speechtune.tuning.study import minimises, objective_names, primary_value, ranked_trials

# Eight axes in all (the objective and 7 parameters): on the report's 1100 px column that leaves
# ~140 px between axes, room for a label such as "0.00316" and a parameter name; with 17 axes
# the labels overlap and lines cross too often to follow one trial.
MAX_AXES = 8
MAX_PARAMS = MAX_AXES - 1
#: Tick label of the slot holding trials in which a conditional parameter was not active.
INACTIVE = "not used"
# Ticks on a continuous parameter axis: enough to read a value off, few enough not to overlap.
_NUMERIC_TICKS = 5
# Where the INACTIVE slot sits below an axis's range, as a fraction of that range.
_INACTIVE_GAP = 0.15


class _Missing:
    """The value of a parameter in a trial where it was inactive (distinct from a None choice)."""


_MISSING = _Missing()


def _values(trials: Sequence[FrozenTrial], name: str) -> list[Any]:
    return [t.params[name] if name in t.params else _MISSING for t in trials]


def _spread(values: list[Any]) -> int:
    """How many different values a parameter took; "inactive" counts as one value."""
    # (type name, value) keeps True apart from 1 and a None choice apart from inactive.
    return len({("inactive",) if v is _MISSING else (type(v).__name__, v) for v in values})


def parallel_params(
    trials: Sequence[FrozenTrial], importance: Importance, limit: int = MAX_PARAMS
) -> tuple[list[str], str]:
    """The parameters to draw as axes (at most ``limit``) and a phrase saying how they were chosen.

    A parameter that took one value in every trial is left out: a flat axis says nothing.
    When importance was computed, the most important parameters come first; the remaining
    slots (all of them when it was not) go to the parameters that took the most different
    values, in the order they were first sampled among equals.
    """
    order: list[str] = []
    for trial in trials:
        order += [name for name in trial.params if name not in order]
    spread = {name: _spread(_values(trials, name)) for name in order}
    varying = [name for name in order if spread[name] > 1]
    by_spread = sorted(varying, key=lambda name: -spread[name])  # stable: first sampled first
    ranked = sorted(importance.values, key=lambda name: -importance.values[name])
    important = [name for name in ranked if name in spread and spread[name] > 1]
    chosen = (important + [name for name in by_spread if name not in important])[:limit]
    how = "most important first" if important else "those that varied most"
    return chosen, how


def _distribution(trials: Sequence[FrozenTrial], name: str) -> BaseDistribution | None:
    for trial in trials:
        if name in trial.distributions:
            return trial.distributions[name]
    return None


def _choice_label(value: Any) -> str:
    # YAML spellings: a `null` choice must not read like Python's None, the old missing label.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _choice_index(choices: Sequence[Any], value: Any) -> int:
    for i, choice in enumerate(choices):
        if type(choice) is type(value) and choice == value:
            return i
    raise ValueError(f"{value!r} is not one of the choices {list(choices)!r}")


def _categorical_axis(name: str, values: list[Any], choices: Sequence[Any]) -> dict[str, Any]:
    # Every choice gets a tick, tried or not: an untried choice is worth seeing.
    missing = any(v is _MISSING for v in values)
    offset = 1 if missing else 0
    ticktext = ([INACTIVE] if missing else []) + [_choice_label(c) for c in choices]
    return {
        "label": name,
        "values": [0 if v is _MISSING else _choice_index(choices, v) + offset for v in values],
        "tickvals": list(range(len(ticktext))),
        "ticktext": ticktext,
        "range": [0, max(len(ticktext) - 1, 1)],
    }


def _labels(ticks: list[float], log: bool) -> list[str]:
    """Tick labels with as few digits as keep neighbouring labels apart (3 to 8)."""
    shown = [10**t for t in ticks] if log else ticks
    for digits in range(3, 9):
        labels = [_number(v, digits) for v in shown]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def _number(value: float, digits: int) -> str:
    # Whole numbers in full: "1000" warmup steps, not "1e+03".
    if math.isclose(value, round(value), rel_tol=0, abs_tol=1e-9) and abs(value) < 1e6:
        return str(round(value))
    return f"{value:.{digits}g}"


def _numeric_ticks(low: float, high: float, log: bool, step: int | None) -> list[float]:
    """Tick positions on an axis spanning ``low`` to ``high`` (log10 units when ``log``)."""
    if log:
        # Whole decades, plus the ends when they fall between decades.
        decades = [float(d) for d in range(math.ceil(low), math.floor(high) + 1)]
        ends = [e for e in (low, high) if not any(math.isclose(e, d) for d in decades)]
        return sorted(decades + ends)
    if step is not None:
        # Whole numbers, on the parameter's own grid (7, 9, 11, ... for step 2).
        every = integer_step(high - low, _NUMERIC_TICKS, unit=step)
        ticks = [float(v) for v in range(int(low), int(high) + 1, every)]
        return ticks if math.isclose(ticks[-1], high) else [*ticks, high]
    return [low + (high - low) * i / (_NUMERIC_TICKS - 1) for i in range(_NUMERIC_TICKS)]


def _numeric_axis(name: str, values: list[Any], dist: BaseDistribution | None) -> dict[str, Any]:
    present = [float(v) for v in values if v is not _MISSING]
    bounds = present
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        # The searched range, not just the sampled one: shows where in it the trials landed.
        bounds = [*present, float(dist.low), float(dist.high)]
    low, high = min(bounds), max(bounds)
    log = bool(getattr(dist, "log", False)) and low > 0
    if log:
        low, high = math.log10(low), math.log10(high)
    integer = isinstance(dist, IntDistribution) and not log
    step = max(int(dist.step), 1) if isinstance(dist, IntDistribution) else None
    if high <= low:  # one possible value: give the axis some height
        high = low + 1.0
    tickvals = _numeric_ticks(low, high, log, step if integer else None)
    ticktext = _labels(tickvals, log)
    positions = [
        v if v is _MISSING else (math.log10(float(v)) if log else float(v)) for v in values
    ]
    axis_low = low
    if any(v is _MISSING for v in values):
        axis_low = low - _INACTIVE_GAP * (high - low)
        tickvals, ticktext = [axis_low, *tickvals], [INACTIVE, *ticktext]
    return {
        "label": name,
        "values": [axis_low if v is _MISSING else v for v in positions],
        "tickvals": tickvals,
        "ticktext": ticktext,
        "range": [axis_low, high],
    }


def parameter_axis(trials: Sequence[FrozenTrial], name: str) -> dict[str, Any]:
    """The plotly ``Parcoords`` dimension of parameter ``name`` over ``trials`` (in their order)."""
    values = _values(trials, name)
    dist = _distribution(trials, name)
    if isinstance(dist, CategoricalDistribution):
        return _categorical_axis(name, values, dist.choices)
    return _numeric_axis(name, values, dist)


def parallel_figure(study: optuna.Study, importance: Importance) -> go.Figure | None:
    """Parallel coordinates: the primary objective, then at most :data:`MAX_PARAMS` parameters.

    Uses the comparable complete trials (top rung only in a multi-fidelity study). None when
    fewer than two such trials have a finite value or no parameter differs between them.
    """
    trials = [t for t in ranked_trials(study) if math.isfinite(primary_value(t) or math.nan)]
    if len(trials) < 2:
        return None
    names, how = parallel_params(trials, importance)
    if not names:
        return None
    # Plotly draws lines in order; the best trials go last so that they are drawn on top.
    trials = trials[::-1]
    metric = objective_names(study)[0]
    objective = [float(t.values[0]) for t in trials]
    total = len({name for t in trials for name in t.params})
    dimensions = [{"label": metric, "values": objective}]
    dimensions += [parameter_axis(trials, name) for name in names]
    fig = go.Figure(
        go.Parcoords(
            dimensions=dimensions,
            line={
                "color": objective,
                "colorscale": "Viridis",
                # The best trials are always dark: low values when minimising, high otherwise.
                "reversescale": not minimises(study),
                "showscale": True,
                "colorbar": {"title": {"text": metric}},
            },
        )
    )
    shown = "" if len(names) == total else f": {len(names)} of {total} parameters ({how})"
    fig.update_layout(title=f"Parallel coordinates ({metric}){shown}")
    return fig
