"""The anytime record of one benchmark run, and its file form (so a benchmark can resume)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Trace", "load_trace", "normalised_regret", "save_trace", "trace_file"]


@dataclass
class Trace:
    """The anytime record of one run: after every evaluation, its cumulative cost and incumbent.

    Attributes:
        costs: cumulative cost (full-evaluation units) after each evaluation, non-decreasing.
        incumbents: best FULL-budget value so far after each evaluation (inf before the first).
        n_full: number of full-budget evaluations.
        info: strategy-specific notes (e.g. whether the prior was applied).
    """

    problem: str
    strategy: str
    seed: int
    budget: float
    costs: list[float] = field(default_factory=list)
    incumbents: list[float] = field(default_factory=list)
    n_full: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def record(
        self, cost: float, value: float | None, full: bool, counts: bool | None = None
    ) -> None:
        """Add one evaluation ending at cumulative ``cost``.

        ``value`` updates the incumbent when ``counts`` (default: when ``full``, the evaluation ran
        at the full budget; a problem following YAHPO's protocol counts every evaluation).
        """
        best = self.incumbents[-1] if self.incumbents else math.inf
        if full:
            self.n_full += 1
        if (full if counts is None else counts) and value is not None and math.isfinite(value):
            best = min(best, float(value))
        self.costs.append(float(cost))
        self.incumbents.append(best)

    def incumbent_at(self, budgets: Sequence[float] | np.ndarray) -> np.ndarray:
        """Incumbent (inf when none) after the last evaluation whose cost is within each budget."""
        costs = np.asarray(self.costs, dtype=float)
        inc = np.asarray(self.incumbents, dtype=float)
        # A little slack: 0.1 * 40 is 4.000000000000001 in floating point.
        idx = np.searchsorted(costs, np.asarray(budgets, dtype=float) + 1e-9, side="right") - 1
        return np.where(idx >= 0, inc[np.clip(idx, 0, None)] if len(inc) else math.inf, math.inf)

    def regret_at(
        self, budgets: Sequence[float] | np.ndarray, optimum: float, reference: float
    ) -> np.ndarray:
        """Normalised regret at each budget (1.0 before any full-budget evaluation)."""
        return np.array(
            [normalised_regret(v, optimum, reference) for v in self.incumbent_at(budgets)]
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-able record."""
        return {
            "problem": self.problem,
            "strategy": self.strategy,
            "seed": self.seed,
            "budget": self.budget,
            "costs": self.costs,
            "incumbents": [v if math.isfinite(v) else None for v in self.incumbents],
            "n_full": self.n_full,
            "info": self.info,
        }


def normalised_regret(incumbent: float, optimum: float, reference: float) -> float:
    """``(incumbent - optimum) / (reference - optimum)``, 1.0 when there is no incumbent (inf/NaN)."""
    if incumbent is None or not math.isfinite(incumbent):
        return 1.0
    span = reference - optimum
    if not span > 0:
        raise ValueError(
            f"regret: reference ({reference}) must be worse than the optimum ({optimum})"
        )
    return (float(incumbent) - optimum) / span


def trace_file(folder: Path, problem: str, strategy: str, seed: int, budget: float) -> Path:
    """Where the trace of one (problem, strategy, seed, budget) run is kept in ``folder``."""
    name = f"{problem}__{strategy}__{seed}__{budget:g}"
    return folder / (re.sub(r"[^A-Za-z0-9_.=-]", "_", name) + ".json")


def load_trace(path: Path) -> Trace | None:
    """The trace saved at ``path``; None when it is absent or unreadable (run it again)."""
    try:
        data = json.loads(path.read_text())
        data["incumbents"] = [math.inf if v is None else float(v) for v in data["incumbents"]]
        return Trace(**data)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def save_trace(path: Path, trace: Trace) -> None:
    """Write ``trace`` to ``path`` atomically; skipped when its info cannot be stored as JSON."""
    try:
        text = json.dumps(trace.as_dict())
    except (TypeError, ValueError):
        return  # not cached: the next call runs it again
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # a killed benchmark never leaves half a file
