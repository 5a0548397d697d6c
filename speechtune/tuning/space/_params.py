"""Search-space parameters: float, int, categorical, fixed and derived, with conditions and priors.

A param is a frozen dataclass that suggests its value define-by-run on any Optuna trial. A
``prior`` (:class:`Prior`) says where well-tuned recipes put a param; the multi-fidelity
search's own sampler (:mod:`speechtune.tuning.space._sampling`) draws from it, Optuna's
samplers ignore it. ``when`` makes a param conditional on other keys of the config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from speechtune.config import ConfigError, ConfigProblem
from speechtune.tuning.space._expr import (
    ExprError,
    evaluate_expression,
    expression_names,
)

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


def optuna_choice(value: Any) -> Any:
    """Optuna stores only None/bool/int/float/str choices: other values travel as YAML text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip()


DEFAULT_PRIOR_WIDTH = 0.15  # the width of the shorthand ``prior: <value>``


MAX_PRIOR_WIDTH = 10.0  # a wider prior is flat over the range: say nothing rather than that


def check_width(label: str, value: Any) -> None:
    """Raise ``ValueError("<label> must be a number in (0, 10] (got ...)")`` unless ``value`` is a
    prior width or move scale: a number (not a bool) in ``(0, MAX_PRIOR_WIDTH]``."""
    if not (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 < value <= MAX_PRIOR_WIDTH
    ):
        raise ValueError(f"{label} must be a number in (0, {MAX_PRIOR_WIDTH:g}] (got {value!r})")


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


def same_value(a: Any, b: Any) -> bool:
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
        return [
            ConfigProblem(
                key,
                f"a prior applies only to float, int and categorical params; this one is {kind}",
                prior.default,
            )
        ]
    problems: list[ConfigProblem] = []
    width = prior.width
    if not (_is_number(width) and math.isfinite(width) and 0 < width <= MAX_PRIOR_WIDTH):
        problems.append(
            ConfigProblem(f"{key}.width", f"must be a number in (0, {MAX_PRIOR_WIDTH:g}]", width)
        )
    default = prior.default
    if isinstance(param, CategoricalParam):
        if not any(same_value(c, default) for c in param.choices + param.encoded()):
            problems.append(
                ConfigProblem(
                    f"{key}.default", f"must be one of the choices {list(param.choices)}", default
                )
            )
        return problems
    integer = isinstance(param, IntParam)
    if not (_is_number(default) and math.isfinite(default)) or (
        integer and not float(default).is_integer()
    ):
        problems.append(
            ConfigProblem(
                f"{key}.default", f"must be {'an int' if integer else 'a number'}", default
            )
        )
    elif not param.low <= default <= param.high:
        problems.append(
            ConfigProblem(
                f"{key}.default",
                f"must lie in [low, high] = [{param.low:g}, {param.high:g}]",
                default,
            )
        )
    elif not _on_grid(default, param.low, param.step):
        problems.append(
            ConfigProblem(
                f"{key}.default",
                f"must lie on the grid low + k * step (low={param.low:g}, step={param.step:g})",
                default,
            )
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
        matches = [raw for raw, _ in pairs if same_value(raw, default)]
        matches += [raw for raw, enc in pairs if same_value(enc, default)]
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
        value = trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        # A grid value is low + k * step in floats (0.6000000000000001 for 0.0 + 6 * 0.1): the
        # config a trial trains and best.yaml show the value the user wrote the grid for.
        return value if self.step is None else round(value, 12)


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
        return tuple(optuna_choice(c) for c in self.choices)

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
            return evaluate_expression(self.expr, values)
        except ExprError as exc:
            raise ExprError(f"derived value {self.name}: {exc}") from exc


Param = FloatParam | IntParam | CategoricalParam | FixedParam | DerivedParam


_TUNABLE = (FloatParam, IntParam, CategoricalParam)


def param_dependencies(param: Param) -> set[str]:
    """Keys a param reads: its ``when`` keys and, for derived ones, the expression's names."""
    deps = set(param.when or {})
    if isinstance(param, DerivedParam):
        deps |= expression_names(param.expr)
    return deps


def dependency_cycle(params: Mapping[str, Param]) -> list[str] | None:
    """A cycle among ``when``/``derive`` references (as a closed path), or None."""
    graph = {}
    for name, p in params.items():
        try:
            graph[name] = [d for d in sorted(param_dependencies(p)) if d in params]
        except ExprError:
            graph[name] = []  # a bad expression is reported on its own
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in graph[node]:
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
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
    deps = {
        n: {d for d in param_dependencies(p) if d in params and d != n} for n, p in params.items()
    }
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(params):
        for name in params:  # first ready param in declaration order keeps the order readable
            if name not in done and deps[name] <= done:
                order.append(name)
                done.add(name)
                break
    return order


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def param_with_prior(param: Param, prior: Prior | None) -> Param:
    """``param`` with ``prior`` (None removes it); only float, int and categorical params take one.

    Raises:
        TypeError: ``param`` is fixed or derived (it has no prior to set).
    """
    if not isinstance(param, (FloatParam, IntParam, CategoricalParam)):
        raise TypeError(f"{param.name}: a {type(param).__name__} has no prior")
    return dataclasses.replace(param, prior=prior)
