"""Whole-number axis ticks for counts such as trial numbers and epochs.

Plotly picks "nice" tick steps for any axis, so an axis spanning 4 trials gets ticks at 0, 0.5,
1, ... and a reader sees "trial 2.5". These helpers give a whole-number step instead.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import plotly.graph_objects as go

# About as many ticks as plotly's automatic axes show on the report's 1100 px column.
MAX_TICKS = 10


def integer_step(span: float, max_ticks: int = MAX_TICKS, unit: int = 1) -> int:
    """The smallest of ``unit`` x 1, 2, 5, 10, 20, 50, ... giving at most ``max_ticks`` steps over ``span``."""
    span = max(float(span), 0.0)
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            step = unit * mantissa * 10**exponent
            if span / step <= max_ticks:
                return step
        exponent += 1


def integer_axis(values: Iterable[float], max_ticks: int = MAX_TICKS) -> dict[str, Any]:
    """Plotly axis settings putting ticks on whole numbers only, over the span of ``values``."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    span = max(finite) - min(finite) if finite else 0.0
    return {
        "tickmode": "linear",
        "tick0": 0,
        "dtick": integer_step(span, max_ticks),
        "tickformat": "d",
    }


def integer_xaxis(fig: go.Figure) -> go.Figure:
    """Give ``fig``'s x axis whole-number ticks spanning the numeric x values of its traces."""
    xs: list[float] = []
    for trace in fig.data:
        x = getattr(trace, "x", None)
        if x is None:  # e.g. a parallel-coordinates trace
            continue
        # numbers.Real also takes numpy scalars, which some optuna plots hold.
        xs += [
            float(v) for v in list(x) if isinstance(v, numbers.Real) and not isinstance(v, bool)
        ]
    fig.update_xaxes(**integer_axis(xs))
    return fig
