"""The YAML forms of a search space, parsed into params (and written back, for stored studies).

Forms understood by :func:`parse_param` (see ``conf/tuning.yaml``)::

    model.num_layers: [2, 3, 4]                                  # list => categorical
    optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    model.conv_kernel: {type: int, low: 7, high: 31, step: 2, when: {model.encoder: conformer}}
    schedule.warmup_steps: {derive: "4 * model.d_model"}        # safe expression (see _expr)
    model.dropout: 0.1                                           # scalar => fixed
    data.synthetic.accents: {value: [en-us, en]}                 # a fixed list
    model.conv_kernel: {type: int, low: 7, high: 31, step: 2, prior: {default: 31, width: 0.1}}
    optim.name: {choices: [adam, adamw, sgd], prior: adamw}       # shorthand: width 0.15

:func:`param_spec` and :func:`space_spec` write a space back in that syntax, so that a worker
rebuilds exactly the space a study searched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from speechtune.config import ConfigError, ConfigProblem
from speechtune.tuning.space._expr import ExprError, parse_expression
from speechtune.tuning.space._params import (
    DEFAULT_PRIOR_WIDTH,
    CategoricalParam,
    DerivedParam,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    Prior,
    When,
    _is_number,
    dependency_cycle,
    param_with_prior,
    prior_problems,
)
from speechtune.tuning.space._space import SearchSpace

PARAM_TYPES = ("float", "int", "categorical", "fixed")


SPEC_KEYS = frozenset(
    {"type", "low", "high", "log", "step", "choices", "value", "derive", "when", "prior"}
)


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
        problems.append(
            ConfigProblem(f"space.{name}.when", "must be a mapping {key: value or [values]}", when)
        )
        return None
    return {
        str(k): [coerce_number(x) for x in (v if isinstance(v, list) else [v])]
        for k, v in when.items()
    }


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
            ConfigProblem(
                key,
                f"{rule}a prior is {{default: <value>, width: <number in (0, 10]>}} or just <value>",
                dict(raw),
            )
        )
        return None
    return Prior(
        coerce_number(raw["default"]), coerce_number(raw.get("width", DEFAULT_PRIOR_WIDTH))
    )


def _with_prior(
    param: Param | None, spec: Mapping[str, Any], problems: list[ConfigProblem]
) -> Param | None:
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
    return param_with_prior(param, prior)


def _number(
    name: str, field: str, value: Any, problems: list[ConfigProblem], integer: bool
) -> Any:
    value = coerce_number(value)
    if integer and isinstance(value, float) and value.is_integer():
        value = int(value)
    good = _is_number(value) and (not integer or isinstance(value, int)) and math.isfinite(value)
    if not good:
        problems.append(
            ConfigProblem(
                f"space.{name}.{field}", f"must be {'an int' if integer else 'a number'}", value
            )
        )
        return None
    return value


def _parse_range(
    name: str, spec: Mapping[str, Any], kind: str, problems: list[ConfigProblem]
) -> Param | None:
    integer = kind == "int"
    n = len(problems)
    for field in ("low", "high"):
        if field not in spec:
            problems.append(
                ConfigProblem(f"space.{name}", f"a {kind} param needs '{field}'", dict(spec))
            )
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
        problems.append(
            ConfigProblem(
                f"space.{name}", f"low must be <= high (low={low}, high={high})", dict(spec)
            )
        )
    if log and low <= 0:
        problems.append(
            ConfigProblem(f"space.{name}", f"log scale needs low > 0 (low={low})", dict(spec))
        )
    if log and "step" in spec and not (integer and step == 1):
        problems.append(
            ConfigProblem(
                f"space.{name}", "log scale cannot have a step (Optuna refuses it)", dict(spec)
            )
        )
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
    return FloatParam(
        name,
        float(low),
        float(high),
        log=log,
        step=None if step is None else float(step),
        when=when,
    )


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
            problems.append(
                ConfigProblem(f"space.{name}", "categorical choices must not be empty", spec)
            )
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
            problems.append(
                ConfigProblem(
                    f"space.{name}.type", f"unknown type; valid types: {valid} (or derive:)", kind
                )
            )
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
        spec = {
            k: v for k, v in spec.items() if k != "prior"
        }  # reported above; report any other problem too
    unknown = sorted(set(spec) - _ALLOWED[kind])
    if unknown:
        valid = ", ".join(sorted(_ALLOWED[kind]))
        problems.append(
            ConfigProblem(
                f"space.{name}",
                f"unknown key(s) {unknown} for a {kind} param; valid keys: {valid}",
                dict(spec),
            )
        )
        return None, problems
    if kind in ("float", "int"):
        return _with_prior(_parse_range(name, spec, kind, problems), spec, problems), problems
    when = _parse_when(name, spec.get("when"), problems)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            problems.append(
                ConfigProblem(f"space.{name}.choices", "must be a non-empty list", choices)
            )
            return None, problems
        categorical = CategoricalParam(name, tuple(coerce_number(c) for c in choices), when=when)
        return _with_prior(categorical, spec, problems), problems
    if kind == "fixed":
        return FixedParam(name, coerce_number(spec["value"]), when=when), problems
    expr = spec["derive"]
    try:
        parse_expression(expr)
    except ExprError as exc:
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
        out = {
            "type": "float",
            "low": float(param.low),
            "high": float(param.high),
            "log": param.log,
        }
        if param.step is not None:
            out["step"] = param.step
    elif isinstance(param, IntParam):
        out = {
            "type": "int",
            "low": int(param.low),
            "high": int(param.high),
            "step": int(param.step),
            "log": param.log,
        }
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
            parse_expression(c)
        except ExprError as exc:
            problems.append(ConfigProblem(f"constraints[{i}]", str(exc), c))
    cycle = dependency_cycle(params)
    if cycle:
        problems.append(
            ConfigProblem(
                f"space.{cycle[0]}",
                f"dependency cycle among when/derive: {' -> '.join(cycle)}",
                cycle,
            )
        )
    if problems:
        raise ConfigError(problems, "search space")
    return SearchSpace(params, constraints, base)
