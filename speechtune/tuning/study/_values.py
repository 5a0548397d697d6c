"""Final metrics completed for the objective, and metric constraints (``latency_ms_per_audio_s <= 50``)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial


@dataclass(frozen=True)
class MetricConstraint:
    """``lhs <= rhs`` (or ``>=``) over final metrics; ``g = lhs - rhs`` is feasible iff ``<= 0``."""

    lhs: str
    op: str
    rhs: str
    text: str

    def value(self, metrics: Mapping[str, float]) -> float:
        """The Optuna constraint value of a trial's metrics (``<= 0`` means feasible)."""
        lhs, rhs = _operand(self.lhs, metrics, self.text), _operand(self.rhs, metrics, self.text)
        return lhs - rhs if self.op == "<=" else rhs - lhs


_CONSTRAINT_RE = re.compile(r"^\s*(?P<lhs>[^<>=]+?)\s*(?P<op><=|>=)\s*(?P<rhs>[^<>=]+?)\s*$")


def parse_metric_constraint(text: str) -> MetricConstraint:
    """Parse ``"latency_ms_per_audio_s <= 50"``.

    Raises:
        ValueError: when the text is not ``<metric or number> <=|>= <metric or number>``.
    """
    match = _CONSTRAINT_RE.match(str(text))
    if match is None:
        raise ValueError(
            f"objective.constraints: {text!r} must look like 'metric <= number' (or '>=')"
        )
    return MetricConstraint(match["lhs"], match["op"], match["rhs"], str(text))


def _operand(token: str, metrics: Mapping[str, float], text: str) -> float:
    try:
        return float(token)
    except ValueError:
        pass
    if token not in metrics:
        raise KeyError(
            f"constraint {text!r} needs metric {token!r}, which the trial did not report"
        )
    return float(metrics[token])


def complete_metrics(metrics: Mapping[str, float], extra: Mapping[str, Any]) -> dict[str, float]:
    """Final metrics with ``worst_group_wer`` filled in from ``group_wer`` when the objective left it out."""
    out = dict(metrics)
    group_wer = extra.get("group_wer")
    if "worst_group_wer" not in out and isinstance(group_wer, Mapping) and group_wer:
        out["worst_group_wer"] = max(float(v) for v in group_wer.values())
    if "worst_group_wer" not in out and "wer" in out and not group_wer:
        # A single-group corpus: the worst group is the whole set.
        out["worst_group_wer"] = out["wer"]
    return out


def constraints_from_attrs(n_constraints: int) -> Callable[[FrozenTrial], Sequence[float]]:
    """Optuna ``constraints_func`` reading the trial's ``constraints`` user attribute.

    A trial that ended without metrics has no such attribute: it counts as infeasible.
    """

    def constraints_func(trial: FrozenTrial) -> Sequence[float]:
        values = trial.user_attrs.get("constraints")
        if not isinstance(values, list) or len(values) != n_constraints:
            return [math.inf] * n_constraints
        return [float(v) for v in values]

    return constraints_func
