"""Checks of a search space against its context: recipe keys, overrides, conditions, constraints.

:func:`_corner_problems` builds the recipe at each choice and bound of every param, so a value
the recipe would reject (an even conformer kernel, a head count that does not divide d_model)
is reported before a study starts, not as a failed trial hours into it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from speechtune.config import (
    BLOCK_KEY_PREFIX,
    ConfigError,
    ConfigProblem,
    block_key_problems,
    config_from_dict,
    is_block_key,
)
from speechtune.tuning.space import (
    CategoricalParam,
    DerivedParam,
    ExprError,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    SearchSpace,
    dependency_cycle,
    expression_names,
)
from speechtune.tuning.spec._checks import (
    close_matches as _close,
)
from speechtune.tuning.spec._compose import _unflatten


def _corners(param: Param) -> list[Any]:
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    if isinstance(param, (FloatParam, IntParam)):
        return [param.low, param.high]
    if isinstance(param, FixedParam):
        return [param.value]
    return []


def _recipe_rules(flat: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(key, rule)`` of every recipe rule that the flat config ``flat`` breaks."""
    try:
        config_from_dict(_unflatten(flat))
    except ConfigError as exc:
        return [(p.key, p.rule) for p in exc.problems]
    return []


def _recipe_rejects(flat: Mapping[str, Any], key: str) -> list[str]:
    """The recipe's own rules that ``flat`` breaks at ``key``."""
    return [rule for k, rule in _recipe_rules(flat) if k == key]


def _corner_problems(
    params: Mapping[str, Param],
    base: Mapping[str, Any],
    constraints: Sequence[str],
    derived: bool = True,
    recipe: bool = True,
) -> list[ConfigProblem]:
    """Build the recipe at each choice and bound of each param; report the recipe's objections.

    A divisibility rule is not reported for a key that a constraint names: the sampler repairs
    ``a % b == 0`` constraints, so such a corner never reaches the recipe. Without ``recipe``
    (command and Python objectives) only the derived values are computed, at the reference
    point, so that a derive that fails everywhere (``x / 0``) is refused before any trial.
    """
    constrained = (
        set().union(*(expression_names(c) for c in constraints)) if constraints else set()
    )
    problems: list[ConfigProblem] = []
    for name, param in params.items() if recipe else ():
        # Put the param's condition in place: rules such as "conv_kernel must be odd" only
        # apply when the condition (encoder == conformer) holds.
        cond = {k: v[0] for k, v in (param.when or {}).items() if k in base and v}
        for value in _corners(param):
            for rule in dict.fromkeys(_recipe_rejects({**base, **cond, name: value}, name)):
                if name in constrained and "divisible" in rule:
                    continue
                problems.append(
                    ConfigProblem(
                        f"space.{name}",
                        f"value {value!r} is rejected by the recipe: {rule}",
                        value,
                    )
                )
    if not derived:
        return problems
    # Derived values at a reference point (first choice / low bound of every param).
    point = dict(base)
    for name, param in params.items():
        if isinstance(param, DerivedParam):
            continue
        corners = _corners(param)
        if corners:
            point[name] = corners[0]
    space = SearchSpace(dict(params), [], point)
    for name in space.order:
        param = params[name]
        if not isinstance(param, DerivedParam):
            continue
        try:
            point[name] = param.suggest(None, point)  # type: ignore[arg-type]
        except ExprError as exc:
            problems.append(ConfigProblem(f"space.{name}.derive", str(exc), param.expr))
            continue
        for rule in _recipe_rejects(point, name) if recipe else ():
            problems.append(
                ConfigProblem(
                    f"space.{name}",
                    f"derived value {point[name]!r} is rejected by the recipe: {rule}",
                    param.expr,
                )
            )
    return problems


def _varies(param: Param) -> bool:
    """True when a sampler has more than one value of ``param`` to choose from."""
    if isinstance(param, (FloatParam, IntParam)):
        return bool(param.low < param.high)
    if isinstance(param, CategoricalParam):
        return len({repr(c) for c in param.choices}) > 1
    return False


def _nothing_to_search(params: Mapping[str, Param]) -> list[ConfigProblem]:
    """A problem when no param of the space varies: every trial would run the same config."""
    if any(_varies(p) for p in params.values()):
        return []
    what = "every key is fixed or derived" if params else "the space is empty"
    return [
        ConfigProblem(
            "space",
            f"nothing to search: {what}, so every trial would run the same config; give at "
            "least one key a range or a list of choices, e.g. optim.lr: {low: 1.0e-4, high: "
            "1.0e-2, log: true}",
            list(params),
        )
    ]


def _space_problems(
    params: Mapping[str, Param],
    constraints: Sequence[str],
    overrides: Mapping[str, Any],
    recipe_keys: Sequence[str] | None,
) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    readable = set(params) | set(overrides) | set(recipe_keys or ())
    if recipe_keys is not None:
        for name in params:
            if name not in recipe_keys and not is_block_key(name):
                problems.append(
                    ConfigProblem(
                        f"space.{name}", f"unknown recipe key{_close(name, recipe_keys)}", name
                    )
                )
    for name, param in params.items():
        # An override of a searched key is the base recipe's value (the defaults a study's
        # baseline trains), e.g. a mask width rescaled for fewer mel bins; it is unambiguous
        # only when the prior agrees, otherwise it reads like a pin the search ignores.
        if name in overrides and not _is_prior_default(param, overrides[name]):
            problems.append(
                ConfigProblem(
                    f"space.{name}",
                    "is both fixed in overrides and searched in space; remove one, pin a "
                    "preset key with a scalar in space, or give it a prior equal to the override",
                    overrides[name],
                )
            )
    for name, param in params.items():
        for key in param.when or {}:
            if key not in params and key not in overrides:
                problems.append(
                    ConfigProblem(
                        f"space.{name}.when",
                        f"refers to {key!r}, which is in neither space nor overrides",
                        key,
                    )
                )
        if isinstance(param, DerivedParam):
            unknown = sorted(expression_names(param.expr) - readable)
            if unknown:
                problems.append(
                    ConfigProblem(f"space.{name}.derive", f"unknown name(s) {unknown}", param.expr)
                )
    for i, c in enumerate(constraints):
        if not isinstance(c, str):
            problems.append(ConfigProblem(f"constraints[{i}]", "must be an expression string", c))
            continue
        try:
            unknown = sorted(expression_names(c) - readable)
        except ExprError as exc:
            problems.append(ConfigProblem(f"constraints[{i}]", str(exc), c))
            continue
        if unknown:
            problems.append(ConfigProblem(f"constraints[{i}]", f"unknown name(s) {unknown}", c))
    cycle = dependency_cycle(params)
    if cycle:
        problems.append(
            ConfigProblem(
                f"space.{cycle[0]}",
                f"dependency cycle among when/derive: {' -> '.join(cycle)}",
                cycle,
            )
        )
    return problems


def _is_prior_default(param: Param, value: Any) -> bool:
    """Whether ``value`` is ``param``'s prior default (numbers compared as numbers)."""
    prior = getattr(param, "prior", None)
    if prior is None:
        return False
    default = prior.default
    if isinstance(value, bool) or isinstance(default, bool):
        return bool(value is default)
    if isinstance(value, int | float) and isinstance(default, int | float):
        return float(value) == float(default)
    return bool(value == default)


def _block_problems(
    params: Mapping[str, Param],
    overrides: Mapping[str, Any],
    base_flat: Mapping[str, Any],
) -> list[ConfigProblem]:
    """Checks of the per-block op keys (``model.block_ops.<i>``) of a recipe study's space.

    The blocks are numbered 1, 2, ... with no gap, all of them live in ``space`` (a fixed block
    is a scalar there), neither ``model.block_ops`` nor a different ``model.num_layers`` is
    given beside them (trials join the blocks into both), and the encoder of every trial that
    holds them is ``searched``. Then every op of every block is built into the recipe (the
    other blocks and keys at their first value) and the recipe's objections are reported, so
    that ``mhsa`` with a head count that does not divide ``d_model`` is refused before a trial.

    Args:
        params: The parsed space.
        overrides: The study's flat overrides.
        base_flat: The flat base recipe (overrides applied).

    Returns:
        The problems, keyed ``space.<key>`` or ``overrides.<key>``.
    """
    blocks = [name for name in params if is_block_key(name)]
    if not blocks:
        return []  # blocks in overrides alone: the base recipe joins and checks them
    problems = [ConfigProblem(f"space.{k}", r, v) for k, r, v in block_key_problems(blocks)]
    count = len(blocks)
    for key in overrides:
        if is_block_key(key) or key == "model.block_ops":
            rule = (
                "the per-block keys of space give every block; fix a block in space with a "
                f"scalar instead ({BLOCK_KEY_PREFIX}1: conv15)"
            )
            problems.append(ConfigProblem(f"overrides.{key}", rule, overrides[key]))
    if "model.block_ops" in params:
        rule = f"is built from the per-block keys {BLOCK_KEY_PREFIX}1..{count}; drop it"
        problems.append(ConfigProblem("space.model.block_ops", rule, "model.block_ops"))
    layers = params.get("model.num_layers")
    joined_rule = (
        f"conflicts with the {count} per-block keys {BLOCK_KEY_PREFIX}1..{count}, which set "
        f"model.num_layers to {count}; drop it"
    )
    if layers is not None and not (isinstance(layers, FixedParam) and layers.value == count):
        value = layers.value if isinstance(layers, FixedParam) else _corners(layers)
        problems.append(ConfigProblem("space.model.num_layers", joined_rule, value))
    if "model.num_layers" in overrides and overrides["model.num_layers"] != count:
        problems.append(
            ConfigProblem("overrides.model.num_layers", joined_rule, overrides["model.num_layers"])
        )
    encoder = params.get("model.encoder")
    if isinstance(encoder, FixedParam):
        encoders = [encoder.value]
    elif isinstance(encoder, CategoricalParam):
        encoders = list(encoder.choices)
    elif encoder is None:
        encoders = [base_flat.get("model.encoder")]
    else:
        encoders = []  # derived: known only per trial, where the recipe checks it
    for name in blocks:
        when = (params[name].when or {}).get("model.encoder")
        wrong = [e for e in encoders if e != "searched" and (when is None or e in when)]
        if wrong:
            rule = (
                f"per-block ops build the searched encoder, but model.encoder can be "
                f"{', '.join(map(repr, wrong))}; set model.encoder: searched in space (or give "
                "the block when: {model.encoder: searched})"
            )
            problems.append(ConfigProblem(f"space.{name}", rule, wrong))
            break
    if problems:
        return problems
    return _block_corner_problems(params, blocks, base_flat, "searched" in encoders)


def _block_corner_problems(
    params: Mapping[str, Param],
    blocks: Sequence[str],
    base_flat: Mapping[str, Any],
    searched: bool,
) -> list[ConfigProblem]:
    """The recipe's objections to each op of each block, against a block of ``skip`` there."""
    point = {k: v for k, v in base_flat.items() if k != "model.block_ops"}
    for name, param in params.items():
        corners = [] if isinstance(param, DerivedParam) else _corners(param)
        if corners:
            point[name] = corners[0]
    if searched:
        point["model.encoder"] = "searched"
    problems: list[ConfigProblem] = []
    for name in blocks:
        # skip has no weights and no rules: what a choice adds to its objections is its own.
        allowed = set(_recipe_rules({**point, name: "skip"}))
        for value in _corners(params[name]):
            for key, rule in dict.fromkeys(_recipe_rules({**point, name: value})):
                if (key, rule) in allowed:
                    continue
                where = "" if key == name else f"{key}: "
                problems.append(
                    ConfigProblem(
                        f"space.{name}",
                        f"value {value!r} is rejected by the recipe: {where}{rule}",
                        value,
                    )
                )
    return problems
