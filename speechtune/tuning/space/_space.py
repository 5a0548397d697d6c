"""The search space: params in dependency order, sampled define-by-run, constraints repaired.

One model serves every backend: :meth:`SearchSpace.sample` suggests values on any Optuna trial
(a real one, or :class:`optuna.trial.FixedTrial` in tests), and :meth:`SearchSpace.distributions`
gives the Optuna distributions that Ray Tune's OptunaSearch or a report needs. A sampled config
is a FLAT dict of dotted keys.
"""

from __future__ import annotations

import ast
from collections import ChainMap
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import optuna
from optuna.distributions import (
    BaseDistribution,
)

from speechtune.tuning.space._expr import (
    ExprError,
    _dotted,
    evaluate_expression,
    expression_names,
    parse_expression,
)
from speechtune.tuning.space._params import (
    _TUNABLE,
    CategoricalParam,
    ConstraintViolation,
    DerivedParam,
    IntParam,
    Param,
    _dependency_order,
    _is_number,
)


@dataclass(frozen=True)
class _Divisibility:
    """A constraint of the form ``a % b == 0``."""

    target: str
    divisor: str | None  # a dotted key, or None when the divisor is a constant
    divisor_value: Any


def _divisibility(constraint: str) -> _Divisibility | None:
    body = parse_expression(constraint).body
    if not (
        isinstance(body, ast.Compare) and len(body.ops) == 1 and isinstance(body.ops[0], ast.Eq)
    ):
        return None
    left, right = body.left, body.comparators[0]
    if isinstance(left, ast.Constant):
        left, right = right, left
    if not (isinstance(right, ast.Constant) and right.value == 0 and isinstance(left, ast.BinOp)):
        return None
    if not isinstance(left.op, ast.Mod):
        return None
    target = _dotted(left.left)
    if target is None:
        return None
    if isinstance(left.right, ast.Constant):
        return _Divisibility(target, None, left.right.value)
    divisor = _dotted(left.right)
    return _Divisibility(target, divisor, None) if divisor else None


def _nearest(value: Any, candidates: Sequence[Any]) -> Any:
    """Nearest candidate to ``value``; ties go to the smaller one."""
    return min(candidates, key=lambda c: (abs(c - value), c)) if candidates else None


def _nearest_multiple(param: IntParam, value: int, divisor: int) -> int | None:
    """Nearest multiple of ``divisor`` on ``param``'s grid, searching outward from ``value``."""
    below = (value // divisor) * divisor
    above = below if below == value else below + divisor
    k = 0
    while below - k * divisor >= param.low or above + k * divisor <= param.high:
        found = [c for c in (below - k * divisor, above + k * divisor) if param.grid_ok(c)]
        if found:
            return _nearest(value, found)
        k += 1
    return None


class SearchSpace:
    """Parameters keyed by dotted name, plus constraints over the sampled config.

    Args:
        params: dotted key -> param (each param's ``name`` must equal its key).
        constraints: expressions that must hold for a sampled config, e.g.
            ``"model.d_model % model.num_heads == 0"`` (a violated ``a % b == 0`` is repaired).
        base: flat values used for names not in the space (the base recipe, the fixed
            overrides): ``when`` conditions, derived expressions and constraints read them.
    """

    def __init__(
        self,
        params: Mapping[str, Param],
        constraints: Sequence[str] = (),
        base: Mapping[str, Any] | None = None,
    ) -> None:
        for key, p in params.items():
            if p.name != key:
                raise ValueError(f"search space key {key!r} holds a param named {p.name!r}")
        self.params: dict[str, Param] = dict(params)
        self.constraints: list[str] = list(constraints)
        self.base: dict[str, Any] = dict(base or {})
        self.order: list[str] = _dependency_order(self.params)

    def __repr__(self) -> str:
        return f"SearchSpace(params={list(self.params)}, constraints={self.constraints})"

    def tunable_names(self) -> list[str]:
        """Names of the params a sampler chooses (float, int, categorical), in dependency order."""
        return [n for n in self.order if isinstance(self.params[n], _TUNABLE)]

    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna distributions of the tunable params (conditional ones included)."""
        return {n: self.params[n].distribution() for n in self.tunable_names()}  # type: ignore[misc]

    def _active(self, param: Param, values: Mapping[str, Any], base: Mapping[str, Any]) -> bool:
        for key, allowed in (param.when or {}).items():
            source = values if key in self.params else base
            if key not in source or source[key] not in allowed:
                return (
                    False  # an inactive (absent) key makes everything that depends on it inactive
                )
        return True

    def sample(
        self, trial: optuna.trial.BaseTrial, base: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Suggest a config define-by-run.

        Args:
            trial: any Optuna trial (``FixedTrial`` included).
            base: flat values for names not in the space; defaults to the space's own ``base``.

        Returns:
            Flat dict of dotted keys: suggested, fixed and derived values of the active params.

        Raises:
            ConstraintViolation: a constraint fails and is not a repairable ``a % b == 0``.
        """
        base = self.base if base is None else base
        values: dict[str, Any] = {}
        for name in self.order:
            param = self.params[name]
            if self._active(param, values, base):
                values[name] = param.suggest(trial, ChainMap(values, _writable(base)))
        repairs: dict[str, dict[str, Any]] = {}
        for constraint in self.constraints:
            if self._holds(constraint, values, base) is False:
                self._repair(constraint, values, base, repairs)
        for constraint in self.constraints:  # a repair must not break another constraint
            if self._holds(constraint, values, base) is False:
                raise ConstraintViolation(f"constraint {constraint!r} does not hold", constraint)
        if repairs:
            trial.set_user_attr("repaired", repairs)
        return values

    def _holds(
        self, constraint: str, values: Mapping[str, Any], base: Mapping[str, Any]
    ) -> bool | None:
        """True/False, or None when the constraint reads a key that is absent (inactive)."""
        lookup = ChainMap(dict(values), _writable(base))
        if not expression_names(constraint) <= set(lookup):
            return None
        try:
            return bool(evaluate_expression(constraint, lookup))
        except ExprError as exc:
            raise ConstraintViolation(
                f"constraint {constraint!r} cannot be evaluated: {exc}", constraint
            ) from exc

    def _repair(
        self,
        constraint: str,
        values: dict[str, Any],
        base: Mapping[str, Any],
        repairs: dict[str, dict[str, Any]],
    ) -> None:
        div = _divisibility(constraint)
        if div is None:
            raise ConstraintViolation(f"constraint {constraint!r} does not hold", constraint)
        lookup = ChainMap(values, _writable(base))
        divisor = div.divisor_value if div.divisor is None else lookup.get(div.divisor)
        target = lookup.get(div.target)
        fixed = None
        if div.target in values and divisor is not None and _is_number(divisor) and divisor > 0:
            fixed = self._repair_value(
                div.target, target, lambda c: _is_number(c) and c % divisor == 0, divisor
            )
        if fixed is None and div.divisor in values and _is_number(target):
            # The target cannot move (fixed, from the base, or no multiple in range): move the divisor.
            fixed = self._repair_value(
                div.divisor, divisor, lambda c: _is_number(c) and c > 0 and target % c == 0, None
            )
            if fixed is not None:
                self._record(div.divisor, divisor, fixed, values, repairs)
                self._rederive(values, base)
                return
        if fixed is None:
            raise ConstraintViolation(
                f"constraint {constraint!r} does not hold ({div.target}={target!r}) and cannot be repaired",
                constraint,
            )
        self._record(div.target, target, fixed, values, repairs)
        self._rederive(values, base)

    def _repair_value(self, name: str, value: Any, ok: Any, divisor: Any) -> Any:
        """The allowed value of ``name`` nearest to ``value`` that satisfies ``ok``, or None."""
        param = self.params.get(name)
        if isinstance(param, CategoricalParam):
            return _nearest(value, [c for c in param.choices if ok(c)])
        if isinstance(param, IntParam) and _is_number(value):
            if divisor is not None and isinstance(divisor, int):
                return _nearest_multiple(param, int(value), divisor)
            span = range(param.low, param.high + 1, param.step)
            if len(span) <= 100_000:
                return _nearest(value, [c for c in span if ok(c)])
        return None

    @staticmethod
    def _record(
        name: str, old: Any, new: Any, values: dict[str, Any], repairs: dict[str, dict[str, Any]]
    ) -> None:
        repairs.setdefault(name, {"suggested": old})["repaired"] = new
        values[name] = new

    def _rederive(self, values: dict[str, Any], base: Mapping[str, Any]) -> None:
        """Recompute derived values after a repair changed what they read."""
        for name in self.order:
            param = self.params[name]
            if isinstance(param, DerivedParam):
                values.pop(name, None)
                if self._active(param, values, base):
                    values[name] = param.suggest(None, ChainMap(values, _writable(base)))  # type: ignore[arg-type]


def _writable(base: Mapping[str, Any]) -> MutableMapping[str, Any]:
    # ChainMap types its maps as mutable; lookups never write to the base, so no copy is made.
    return cast(MutableMapping[str, Any], base)
