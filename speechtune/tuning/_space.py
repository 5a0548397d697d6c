"""The search-space model: parameters, conditions, derived values and constraints.

One model serves every backend: :meth:`SearchSpace.sample` suggests values define-by-run on any
Optuna trial (a real one, or :class:`optuna.trial.FixedTrial` in tests), and
:meth:`SearchSpace.distributions` gives the Optuna distributions that Ray Tune's OptunaSearch or
a report needs. A sampled config is a FLAT dict of dotted keys.

YAML forms understood by :func:`parse_param` (see ``conf/tuning.yaml``)::

    model.num_layers: [2, 3, 4]                                  # list => categorical
    optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    model.conv_kernel: {type: int, low: 7, high: 31, step: 2, when: {model.encoder: conformer}}
    schedule.warmup_steps: {derive: "4 * model.d_model"}        # safe expression (see _expr)
    model.dropout: 0.1                                           # scalar => fixed
    data.synthetic.accents: {value: [en-us, en]}                 # a fixed list
    model.conv_kernel: {type: int, low: 7, high: 31, step: 2, prior: {default: 31, width: 0.1}}
    optim.name: {choices: [adam, adamw, sgd], prior: adamw}       # shorthand: width 0.15

A ``prior`` (see :class:`Prior`) says where well-tuned recipes put a param; the sampler of the
multi-fidelity search (:mod:`._priors`) draws from it. Optuna's own samplers ignore it, so it
never changes what ``sample`` does on an Optuna trial.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from collections import ChainMap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from speechtune.config import ConfigError, ConfigProblem

from . import _expr

__all__ = [
    "DEFAULT_PRIOR_WIDTH",
    "MAX_PRIOR_WIDTH",
    "CategoricalParam",
    "ConstraintViolation",
    "DerivedParam",
    "FixedParam",
    "FloatParam",
    "IntParam",
    "Param",
    "Prior",
    "SearchSpace",
    "dependency_cycle",
    "parse_param",
    "parse_space",
    "prior_problems",
]

When = dict[str, list[Any]]


class ConstraintViolation(ValueError):
    """A sampled config breaks a constraint that cannot be repaired."""

    def __init__(self, message: str, constraint: str | None = None) -> None:
        super().__init__(message)
        self.constraint = constraint


def _norm_when(when: Mapping[str, Any] | None) -> When | None:
    """``{key: value}`` or ``{key: [values]}`` -> ``{key: [values]}``."""
    if when is None:
        return None
    return {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in when.items()}


def _optuna_choice(value: Any) -> Any:
    """Optuna stores only None/bool/int/float/str choices: other values travel as YAML text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip()


DEFAULT_PRIOR_WIDTH = 0.15  # the width of the shorthand ``prior: <value>``
MAX_PRIOR_WIDTH = 10.0  # a wider prior is flat over the range: say nothing rather than that


@dataclass(frozen=True)
class Prior:
    """Belief about where good values of a param lie (a recipe default and how sure we are).

    Numeric params: a normal around ``default`` with std ``width x (high - low)`` (in log space
    when the param is log-scaled), truncated to ``[low, high]`` and snapped to the param's grid.
    Categorical params: ``default`` gets probability ``max(1/k, 1 - width)`` of ``k`` choices,
    the others share the rest evenly.

    Args:
        default: a value the param can take (a choice, as written in the YAML, for categoricals).
        width: in ``(0, 10]``; small = confident.
    """

    default: Any
    width: float = DEFAULT_PRIOR_WIDTH


def _same_value(a: Any, b: Any) -> bool:
    """Equality that keeps ``True`` apart from ``1`` (YAML choices mix bools and numbers)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    try:
        return bool(a == b)
    except Exception:  # e.g. numpy arrays compare elementwise; such values are simply not equal
        return False


def _on_grid(value: float, low: float, step: float | None) -> bool:
    if step is None:
        return True
    k = (value - low) / step
    return abs(k - round(k)) <= 1e-9 * max(1.0, abs(k))


def prior_problems(param: Any, prior: Any, key: str | None = None) -> list[ConfigProblem]:
    """Why ``prior`` cannot sit on ``param`` (empty when it can).

    Args:
        param: any param of a search space.
        prior: a :class:`Prior` (anything else is a problem).
        key: the problem key; default ``space.<name>.prior``.

    Returns:
        Problems keyed ``space.<name>.prior``: a width outside (0, 10], a default outside
        ``[low, high]``, off the step grid or not among the choices, a prior on a fixed or
        derived param.
    """
    key = key or f"space.{param.name}.prior"
    if not isinstance(prior, Prior):
        return [ConfigProblem(key, "must be a Prior(default, width)", prior)]
    if not isinstance(param, _TUNABLE):
        kind = "fixed" if isinstance(param, FixedParam) else "derived"
        return [ConfigProblem(key, f"a prior applies only to float, int and categorical params; this one is {kind}", prior.default)]
    problems: list[ConfigProblem] = []
    width = prior.width
    if not (_is_number(width) and math.isfinite(width) and 0 < width <= MAX_PRIOR_WIDTH):
        problems.append(ConfigProblem(f"{key}.width", f"must be a number in (0, {MAX_PRIOR_WIDTH:g}]", width))
    default = prior.default
    if isinstance(param, CategoricalParam):
        if not any(_same_value(c, default) for c in param.choices + param.encoded()):
            problems.append(ConfigProblem(f"{key}.default", f"must be one of the choices {list(param.choices)}", default))
        return problems
    integer = isinstance(param, IntParam)
    if not (_is_number(default) and math.isfinite(default)) or (integer and not float(default).is_integer()):
        problems.append(ConfigProblem(f"{key}.default", f"must be {'an int' if integer else 'a number'}", default))
    elif not param.low <= default <= param.high:
        problems.append(ConfigProblem(f"{key}.default", f"must lie in [low, high] = [{param.low:g}, {param.high:g}]", default))
    elif not _on_grid(default, param.low, param.step):
        problems.append(
            ConfigProblem(f"{key}.default", f"must lie on the grid low + k * step (low={param.low:g}, step={param.step:g})", default)
        )
    return problems


def _normalise_prior(param: Any) -> None:
    """Check a param's prior at construction, and store its default in canonical form.

    Ints are stored as ``int``; a categorical default as the choice itself (so an encoded list
    choice or ``16.0`` for the choice ``16`` both become the choice).
    """
    prior = param.prior
    if prior is None:
        return
    problems = prior_problems(param, prior)
    if problems:
        raise ConfigError(problems, f"the prior of {param.name}")
    default = prior.default
    if isinstance(param, CategoricalParam):
        pairs = list(zip(param.choices, param.encoded()))
        matches = [raw for raw, _ in pairs if _same_value(raw, default)]
        matches += [raw for raw, enc in pairs if _same_value(enc, default)]
        default = matches[0]  # prior_problems made sure there is one
    elif isinstance(param, IntParam):
        default = int(default)
    else:
        default = float(default)
    object.__setattr__(param, "prior", Prior(default, float(prior.width)))


@dataclass(frozen=True)
class FloatParam:
    """A float in ``[low, high]``, optionally log-scaled or on a ``step`` grid."""

    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None
    when: When | None = None
    prior: Prior | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "when", _norm_when(self.when))
        _normalise_prior(self)

    def distribution(self) -> BaseDistribution:
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: optuna.trial.BaseTrial, values: Mapping[str, Any]) -> Any:
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)


@dataclass(frozen=True)
class IntParam:
    """An int in ``[low, high]`` on a ``step`` grid, optionally log-scaled."""

    name: str
    low: int
    high: int
    step: int = 1
    log: bool = False
    when: When | None = None
    prior: Prior | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "when", _norm_when(self.when))
        _normalise_prior(self)

    def distribution(self) -> BaseDistribution:
        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: optuna.trial.BaseTrial, values: Mapping[str, Any]) -> Any:
        return trial.suggest_int(self.name, self.low, self.high, step=self.step, log=self.log)

    def grid_ok(self, value: int) -> bool:
        return self.low <= value <= self.high and (value - self.low) % self.step == 0


@dataclass(frozen=True)
class CategoricalParam:
    """One of ``choices``; choices may be of mixed types, lists included."""

    name: str
    choices: tuple[Any, ...]
    when: When | None = None
    prior: Prior | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))
        object.__setattr__(self, "when", _norm_when(self.when))
        _normalise_prior(self)

    def encoded(self) -> tuple[Any, ...]:
        return tuple(_optuna_choice(c) for c in self.choices)

    def decode(self, value: Any) -> Any:
        """The original choice for a value Optuna returned (lists come back as YAML text)."""
        for raw, enc in zip(self.choices, self.encoded()):
            if enc == value and type(enc) is type(value):
                return raw
        return value

    def distribution(self) -> BaseDistribution:
        return CategoricalDistribution(self.encoded())

    def suggest(self, trial: optuna.trial.BaseTrial, values: Mapping[str, Any]) -> Any:
        return self.decode(trial.suggest_categorical(self.name, self.encoded()))


@dataclass(frozen=True)
class FixedParam:
    """A value set for every trial (while ``when`` holds)."""

    name: str
    value: Any
    when: When | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "when", _norm_when(self.when))

    def distribution(self) -> None:
        return None

    def suggest(self, trial: optuna.trial.BaseTrial, values: Mapping[str, Any]) -> Any:
        return self.value


@dataclass(frozen=True)
class DerivedParam:
    """A value computed from other keys with a safe expression (see :mod:`._expr`)."""

    name: str
    expr: str
    when: When | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "when", _norm_when(self.when))

    def distribution(self) -> None:
        return None

    def suggest(self, trial: optuna.trial.BaseTrial, values: Mapping[str, Any]) -> Any:
        try:
            return _expr.evaluate(self.expr, values)
        except _expr.ExprError as exc:
            raise _expr.ExprError(f"derived value {self.name}: {exc}") from exc


Param = Union[FloatParam, IntParam, CategoricalParam, FixedParam, DerivedParam]
_TUNABLE = (FloatParam, IntParam, CategoricalParam)


def param_dependencies(param: Param) -> set[str]:
    """Keys a param reads: its ``when`` keys and, for derived ones, the expression's names."""
    deps = set(param.when or {})
    if isinstance(param, DerivedParam):
        deps |= _expr.names(param.expr)
    return deps


def dependency_cycle(params: Mapping[str, Param]) -> list[str] | None:
    """A cycle among ``when``/``derive`` references (as a closed path), or None."""
    graph = {}
    for name, p in params.items():
        try:
            graph[name] = [d for d in sorted(param_dependencies(p)) if d in params]
        except _expr.ExprError:
            graph[name] = []  # a bad expression is reported on its own
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in graph[node]:
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for name in graph:
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def _dependency_order(params: Mapping[str, Param]) -> list[str]:
    """Topological order over when/derive references, stable in declaration order."""
    cycle = dependency_cycle(params)
    if cycle:
        raise ValueError(f"search space has a dependency cycle: {' -> '.join(cycle)}")
    deps = {n: {d for d in param_dependencies(p) if d in params and d != n} for n, p in params.items()}
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(params):
        for name in params:  # first ready param in declaration order keeps the order readable
            if name not in done and deps[name] <= done:
                order.append(name)
                done.add(name)
                break
    return order


@dataclass(frozen=True)
class _Divisibility:
    """A constraint of the form ``a % b == 0``."""

    target: str
    divisor: str | None  # a dotted key, or None when the divisor is a constant
    divisor_value: Any


def _divisibility(constraint: str) -> _Divisibility | None:
    body = _expr.parse(constraint).body
    if not (isinstance(body, ast.Compare) and len(body.ops) == 1 and isinstance(body.ops[0], ast.Eq)):
        return None
    left, right = body.left, body.comparators[0]
    if isinstance(left, ast.Constant):
        left, right = right, left
    if not (isinstance(right, ast.Constant) and right.value == 0 and isinstance(left, ast.BinOp)):
        return None
    if not isinstance(left.op, ast.Mod):
        return None
    target = _expr._dotted(left.left)
    if target is None:
        return None
    if isinstance(left.right, ast.Constant):
        return _Divisibility(target, None, left.right.value)
    divisor = _expr._dotted(left.right)
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
                return False  # an inactive (absent) key makes everything that depends on it inactive
        return True

    def sample(self, trial: optuna.trial.BaseTrial, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
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
                values[name] = param.suggest(trial, ChainMap(values, base))
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

    def _holds(self, constraint: str, values: Mapping[str, Any], base: Mapping[str, Any]) -> bool | None:
        """True/False, or None when the constraint reads a key that is absent (inactive)."""
        lookup = ChainMap(dict(values), base)
        if not _expr.names(constraint) <= set(lookup):
            return None
        try:
            return bool(_expr.evaluate(constraint, lookup))
        except _expr.ExprError as exc:
            raise ConstraintViolation(f"constraint {constraint!r} cannot be evaluated: {exc}", constraint) from exc

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
        lookup = ChainMap(values, base)
        divisor = div.divisor_value if div.divisor is None else lookup.get(div.divisor)
        target = lookup.get(div.target)
        fixed = None
        if div.target in values and _is_number(divisor) and divisor > 0:
            fixed = self._repair_value(div.target, target, lambda c: _is_number(c) and c % divisor == 0, divisor)
        if fixed is None and div.divisor in values and _is_number(target):
            # The target cannot move (fixed, from the base, or no multiple in range): move the divisor.
            fixed = self._repair_value(div.divisor, divisor, lambda c: _is_number(c) and c > 0 and target % c == 0, None)
            if fixed is not None:
                self._record(div.divisor, divisor, fixed, values, repairs)  # type: ignore[arg-type]
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
    def _record(name: str, old: Any, new: Any, values: dict[str, Any], repairs: dict[str, dict[str, Any]]) -> None:
        repairs.setdefault(name, {"suggested": old})["repaired"] = new
        values[name] = new

    def _rederive(self, values: dict[str, Any], base: Mapping[str, Any]) -> None:
        """Recompute derived values after a repair changed what they read."""
        for name in self.order:
            param = self.params[name]
            if isinstance(param, DerivedParam):
                values.pop(name, None)
                if self._active(param, values, base):
                    values[name] = param.suggest(None, ChainMap(values, base))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Parsing the YAML forms

PARAM_TYPES = ("float", "int", "categorical", "fixed")
SPEC_KEYS = frozenset({"type", "low", "high", "log", "step", "choices", "value", "derive", "when", "prior"})
# A mapping with one of these keys is a param spec; any other mapping is a level of nesting.
_PRIMARY_KEYS = frozenset({"type", "low", "high", "choices", "value", "derive"})
_ALLOWED = {
    "float": {"type", "low", "high", "log", "step", "when", "prior"},
    "int": {"type", "low", "high", "log", "step", "when", "prior"},
    "categorical": {"type", "choices", "when", "prior"},
    "fixed": {"type", "value", "when"},
    "derived": {"derive", "when"},
}
# PyYAML reads 1e-4 (no dot) as a string; users write it that way all the time.
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


def is_param_spec(value: Any) -> bool:
    """Whether a mapping in ``space`` is a param spec (rather than a level of nesting)."""
    return isinstance(value, Mapping) and bool(_PRIMARY_KEYS & set(value))


def coerce_number(value: Any) -> Any:
    """``"1e-4"`` -> ``1e-4``; anything else unchanged."""
    if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [coerce_number(v) for v in value]
    return value


def _parse_when(name: str, when: Any, problems: list[ConfigProblem]) -> When | None:
    if when is None:
        return None
    if not isinstance(when, Mapping) or not when:
        problems.append(ConfigProblem(f"space.{name}.when", "must be a mapping {key: value or [values]}", when))
        return None
    return {str(k): [coerce_number(x) for x in (v if isinstance(v, list) else [v])] for k, v in when.items()}


_PRIOR_KEYS = ("default", "width")


def _parse_prior(name: str, raw: Any, problems: list[ConfigProblem]) -> Prior | None:
    """``prior: {default: v, width: w}`` or the shorthand ``prior: v`` (width 0.15); null = none.

    Only the form is checked here; whether the default fits the param is checked by
    :func:`prior_problems` once the param is built.
    """
    key = f"space.{name}.prior"
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        return Prior(coerce_number(raw), DEFAULT_PRIOR_WIDTH)
    unknown = sorted(str(k) for k in set(raw) - set(_PRIOR_KEYS))
    if unknown or "default" not in raw:
        rule = f"unknown key(s) {unknown}; " if unknown else ""
        problems.append(
            ConfigProblem(key, f"{rule}a prior is {{default: <value>, width: <number in (0, 10]>}} or just <value>", dict(raw))
        )
        return None
    return Prior(coerce_number(raw["default"]), coerce_number(raw.get("width", DEFAULT_PRIOR_WIDTH)))


def _with_prior(param: Param | None, spec: Mapping[str, Any], problems: list[ConfigProblem]) -> Param | None:
    """``param`` carrying the ``prior`` of its spec when both are valid.

    A bad prior is reported and the param kept without it, so that keys which depend on the
    param (``when``, ``derive``) do not draw misleading follow-up problems.
    """
    if param is None or spec.get("prior") is None:
        return param
    prior = _parse_prior(param.name, spec["prior"], problems)
    if prior is None:
        return param
    found = prior_problems(param, prior)
    if found:
        problems.extend(found)
        return param
    return dataclasses.replace(param, prior=prior)  # type: ignore[type-var]


def _number(name: str, field: str, value: Any, problems: list[ConfigProblem], integer: bool) -> Any:
    value = coerce_number(value)
    if integer and isinstance(value, float) and value.is_integer():
        value = int(value)
    good = _is_number(value) and (not integer or isinstance(value, int)) and math.isfinite(value)
    if not good:
        problems.append(ConfigProblem(f"space.{name}.{field}", f"must be {'an int' if integer else 'a number'}", value))
        return None
    return value


def _parse_range(name: str, spec: Mapping[str, Any], kind: str, problems: list[ConfigProblem]) -> Param | None:
    integer = kind == "int"
    n = len(problems)
    for field in ("low", "high"):
        if field not in spec:
            problems.append(ConfigProblem(f"space.{name}", f"a {kind} param needs '{field}'", dict(spec)))
    if len(problems) > n:
        return None
    low = _number(name, "low", spec["low"], problems, integer)
    high = _number(name, "high", spec["high"], problems, integer)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        problems.append(ConfigProblem(f"space.{name}.log", "must be true or false", log))
        log = False
    step = spec.get("step", 1 if integer else None)
    if step is not None:
        step = _number(name, "step", step, problems, integer)
        if step is not None and step <= 0:
            problems.append(ConfigProblem(f"space.{name}.step", "must be > 0", step))
            step = None
    if len(problems) > n or low is None or high is None:
        return None
    if low > high:
        problems.append(ConfigProblem(f"space.{name}", f"low must be <= high (low={low}, high={high})", dict(spec)))
    if log and low <= 0:
        problems.append(ConfigProblem(f"space.{name}", f"log scale needs low > 0 (low={low})", dict(spec)))
    if log and "step" in spec and not (integer and step == 1):
        problems.append(ConfigProblem(f"space.{name}", "log scale cannot have a step (Optuna refuses it)", dict(spec)))
    if step is not None and low <= high and not log:
        # An error, not a warning: Optuna would silently move `high` and the study would never
        # try the value written in the YAML.
        span = (high - low) / step
        if abs(span - round(span)) > 1e-9 * max(1.0, abs(span)):
            fixed_high = low + math.floor(span) * step
            problems.append(
                ConfigProblem(
                    f"space.{name}",
                    f"step {step} does not divide high - low = {high - low}; use e.g. high: {fixed_high:g}",
                    dict(spec),
                )
            )
    if len(problems) > n:
        return None
    when = _parse_when(name, spec.get("when"), problems)
    if integer:
        return IntParam(name, int(low), int(high), step=int(step or 1), log=log, when=when)
    return FloatParam(name, float(low), float(high), log=log, step=None if step is None else float(step), when=when)


def parse_param(name: str, spec: Any) -> tuple[Param | None, list[ConfigProblem]]:
    """Parse one ``space`` entry (shorthand or typed) into a param.

    Args:
        name: the dotted key.
        spec: a list (categorical), a scalar (fixed) or a mapping (typed, derived or fixed).

    Returns:
        The param (None when it is invalid) and the problems found, keyed ``space.<name>``.
    """
    problems: list[ConfigProblem] = []
    if isinstance(spec, list):
        if not spec:
            problems.append(ConfigProblem(f"space.{name}", "categorical choices must not be empty", spec))
            return None, problems
        return CategoricalParam(name, tuple(coerce_number(c) for c in spec)), problems
    if not isinstance(spec, Mapping):
        return FixedParam(name, coerce_number(spec)), problems
    if "derive" in spec:
        kind = "derived"
    elif "type" in spec:
        kind = spec["type"]
        if kind not in PARAM_TYPES:
            valid = ", ".join(PARAM_TYPES)
            problems.append(ConfigProblem(f"space.{name}.type", f"unknown type; valid types: {valid} (or derive:)", kind))
            return None, problems
    elif "choices" in spec:
        kind = "categorical"
    elif "value" in spec:
        kind = "fixed"
    else:
        low, high = coerce_number(spec.get("low")), coerce_number(spec.get("high"))
        kind = "float" if isinstance(low, float) or isinstance(high, float) else "int"
    if kind in ("fixed", "derived") and spec.get("prior") is not None:
        problems.append(
            ConfigProblem(
                f"space.{name}.prior",
                f"a prior applies only to float, int and categorical params; this one is {kind}",
                spec["prior"],
            )
        )
    if kind in ("fixed", "derived"):
        spec = {k: v for k, v in spec.items() if k != "prior"}  # reported above; report any other problem too
    unknown = sorted(set(spec) - _ALLOWED[kind])
    if unknown:
        valid = ", ".join(sorted(_ALLOWED[kind]))
        problems.append(ConfigProblem(f"space.{name}", f"unknown key(s) {unknown} for a {kind} param; valid keys: {valid}", dict(spec)))
        return None, problems
    if kind in ("float", "int"):
        return _with_prior(_parse_range(name, spec, kind, problems), spec, problems), problems
    when = _parse_when(name, spec.get("when"), problems)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            problems.append(ConfigProblem(f"space.{name}.choices", "must be a non-empty list", choices))
            return None, problems
        categorical = CategoricalParam(name, tuple(coerce_number(c) for c in choices), when=when)
        return _with_prior(categorical, spec, problems), problems
    if kind == "fixed":
        return FixedParam(name, coerce_number(spec["value"]), when=when), problems
    expr = spec["derive"]
    try:
        _expr.parse(expr)
    except _expr.ExprError as exc:
        problems.append(ConfigProblem(f"space.{name}.derive", str(exc), expr))
        return None, problems
    return DerivedParam(name, expr, when=when), problems


def param_spec(param: Param) -> Any:
    """The YAML form of a param, as :func:`parse_param` reads it back (``parse_param(n, param_spec(p)) == p``).

    Used to store a space built in code (e.g. the workflow's narrowed fine-search region) with
    its study, so that a ``speechtune worker`` rebuilding the spec searches the same space.
    """
    out: dict[str, Any] = {}
    if isinstance(param, FloatParam):
        out = {"type": "float", "low": float(param.low), "high": float(param.high), "log": param.log}
        if param.step is not None:
            out["step"] = param.step
    elif isinstance(param, IntParam):
        out = {"type": "int", "low": int(param.low), "high": int(param.high), "step": int(param.step), "log": param.log}
    elif isinstance(param, CategoricalParam):
        out = {"type": "categorical", "choices": list(param.choices)}
    elif isinstance(param, FixedParam):
        out = {"value": param.value}
    else:
        out = {"derive": param.expr}
    if param.when is not None:
        out["when"] = {k: list(v) for k, v in param.when.items()}
    prior = getattr(param, "prior", None)
    if prior is not None:
        out["prior"] = {"default": prior.default, "width": prior.width}
    return out


def space_spec(space: SearchSpace) -> dict[str, Any]:
    """The ``space:`` section (dotted key -> :func:`param_spec`) of a search space."""
    return {name: param_spec(param) for name, param in space.params.items()}


def parse_space(
    space: Mapping[str, Any],
    constraints: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> SearchSpace:
    """Build a :class:`SearchSpace` from a flat ``space`` mapping (the YAML forms above).

    Raises:
        ConfigError: listing every bad param spec, constraint and dependency cycle.
    """
    problems: list[ConfigProblem] = []
    params: dict[str, Param] = {}
    for name, spec in space.items():
        param, found = parse_param(name, spec)
        problems.extend(found)
        if param is not None:
            params[name] = param
    for i, c in enumerate(constraints):
        try:
            _expr.parse(c)
        except _expr.ExprError as exc:
            problems.append(ConfigProblem(f"constraints[{i}]", str(exc), c))
    cycle = dependency_cycle(params)
    if cycle:
        problems.append(ConfigProblem(f"space.{cycle[0]}", f"dependency cycle among when/derive: {' -> '.join(cycle)}", cycle))
    if problems:
        raise ConfigError(problems, "search space")
    return SearchSpace(params, constraints, base)
