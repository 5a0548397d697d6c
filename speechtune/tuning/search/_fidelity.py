"""Fidelity rungs: cheap approximations of a full training run, cheapest first.

A :class:`Rung` is a set of config overrides (less data, a smaller model, fewer epochs) with a
relative cost; a :class:`Fidelity` is the ladder of rungs a multi-fidelity search climbs. The
last rung is full fidelity: only values measured there are compared with each other to pick the
best config, because a WER after one epoch on 1% of the data is not a WER of the final model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rung:
    """One fidelity level.

    Args:
        name: shown in reports ("low", "medium", "high", "epochs=3").
        overrides: flat dotted keys merged over a trial's config at this rung.
        cost: relative cost of training one config at this rung from scratch (top rung = 1.0).
    """

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    cost: float = 1.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("fidelity rung: name must be a non-empty string")
        if not (self.cost > 0):
            raise ValueError(f"fidelity rung {self.name!r}: cost must be > 0 (got {self.cost!r})")
        object.__setattr__(self, "overrides", dict(self.overrides))

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able record (stored in the study's ``fidelity`` attribute)."""
        return {"name": self.name, "overrides": dict(self.overrides), "cost": float(self.cost)}


@dataclass(frozen=True)
class Fidelity:
    """The ladder of rungs a multi-fidelity search climbs (cheapest first, full fidelity last).

    Args:
        rungs: at least one rung; costs must not decrease along the ladder.
        eta: promotion ratio: the best ``1/eta`` of the configs at a rung go up one rung.
        resume_key: a key (e.g. ``train.epochs``) such that rung k+1 continues rung k's
            checkpoint, rather than training anew, when the two rungs' overrides differ only in
            this key and its value grows.
    """

    rungs: tuple[Rung, ...]
    eta: int = 3
    resume_key: str | None = None

    def __post_init__(self) -> None:
        rungs = tuple(self.rungs)
        object.__setattr__(self, "rungs", rungs)
        if not rungs:
            raise ValueError("fidelity: at least one rung is needed")
        if not isinstance(self.eta, int) or isinstance(self.eta, bool) or self.eta < 2:
            raise ValueError(f"fidelity.eta must be an int >= 2 (got {self.eta!r})")
        names = [r.name for r in rungs]
        if len(set(names)) != len(names):
            raise ValueError(f"fidelity: rung names must be unique (got {names})")
        for lower, upper in zip(rungs, rungs[1:]):
            if upper.cost < lower.cost:
                raise ValueError(
                    f"fidelity: rungs must be ordered cheapest first, but {upper.name!r} (cost {upper.cost:g}) "
                    f"comes after {lower.name!r} (cost {lower.cost:g})"
                )

    @property
    def top(self) -> int:
        """Index of the full-fidelity rung."""
        return len(self.rungs) - 1

    def continues(self, lower: int, upper: int) -> bool:
        """True when a config promoted from ``lower`` to ``upper`` continues training instead of restarting."""
        key = self.resume_key
        if key is None or not (0 <= lower < upper < len(self.rungs)):
            return False
        a, b = self.rungs[lower].overrides, self.rungs[upper].overrides
        if set(a) - {key} != set(b) - {key} or any(a[k] != b[k] for k in a if k != key):
            return False
        try:
            return key in a and key in b and float(b[key]) > float(a[key])
        except (TypeError, ValueError):
            return False

    def job_cost(self, rung: int, parent_rung: int | None) -> float:
        """Cost of running a config at ``rung``, continuing from ``parent_rung`` when it can."""
        cost = self.rungs[rung].cost
        if parent_rung is not None and self.continues(parent_rung, rung):
            cost -= self.rungs[parent_rung].cost
        return max(cost, 0.0)

    def as_dict(self) -> dict[str, Any]:
        """The JSON-able record stored in a study's ``fidelity`` attribute."""
        return {
            "eta": self.eta,
            "resume_key": self.resume_key,
            "rungs": [r.as_dict() for r in self.rungs],
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Fidelity:
        """Inverse of :meth:`as_dict`."""
        rungs = tuple(
            Rung(r["name"], dict(r.get("overrides") or {}), float(r.get("cost", 1.0)))
            for r in record["rungs"]
        )
        return cls(rungs, eta=int(record.get("eta", 3)), resume_key=record.get("resume_key"))

    @classmethod
    def from_budgets(
        cls, key: str, budgets: Sequence[float], *, eta: int = 3, resume: bool = True
    ) -> Fidelity:
        """A ladder over one budget key for generic objectives, e.g. ``("epochs", [1, 3, 9, 27])``.

        Rung i overrides ``{key: budgets[i]}`` and costs ``budgets[i] / max(budgets)``; with
        ``resume`` a promoted config continues from its previous budget (cost: the difference).
        """
        values = list(budgets)
        if not values or any(
            not isinstance(b, (int, float)) or isinstance(b, bool) or b <= 0 for b in values
        ):
            raise ValueError(
                f"fidelity budgets for {key!r} must be positive numbers (got {values!r})"
            )
        if sorted(values) != values or len(set(values)) != len(values):
            raise ValueError(
                f"fidelity budgets for {key!r} must increase strictly (got {values!r})"
            )
        top = float(values[-1])
        rungs = tuple(Rung(f"{key}={b:g}", {key: b}, float(b) / top) for b in values)
        return cls(rungs, eta=eta, resume_key=key if resume else None)

    @classmethod
    def geometric(
        cls,
        key: str,
        max_budget: float,
        *,
        eta: int = 3,
        min_budget: float = 1.0,
        integer: bool = True,
        resume: bool = True,
    ) -> Fidelity:
        """Hyperband's ladder: budgets ``max_budget * eta**-k`` down to ``min_budget``."""
        if max_budget < min_budget or min_budget <= 0:
            raise ValueError(
                f"fidelity: need 0 < min_budget <= max_budget (got {min_budget!r}, {max_budget!r})"
            )
        budgets: list[float] = []
        b = float(max_budget)
        while b >= min_budget * (1 - 1e-9):
            budgets.append(round(b) if integer else b)
            b /= eta
        values = sorted(set(budgets))
        return cls.from_budgets(
            key, [int(v) if integer else v for v in values], eta=eta, resume=resume
        )
