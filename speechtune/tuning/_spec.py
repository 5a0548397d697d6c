"""Load and validate a tuning YAML (``conf/tuning.yaml``) into a :class:`TuningSpec`.

Every problem in the file (and in the presets and base recipe it names) is collected before
anything is raised, each as a :class:`~speechtune.config.ConfigProblem` with its key, the rule
it breaks and the value received, so a user fixes the file in one pass.

The ``fidelity:`` section (multi-fidelity search: strategy, budget, rungs) is checked by
:mod:`speechtune.tuning._ladder`, with the same problem collection.

Severity: everything reported is an error (there are no warnings). In particular a ``step``
that does not divide ``high - low`` is an error, because Optuna would silently lower ``high``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from speechtune.config import (
    ConfigError,
    ConfigProblem,
    RecipeConfig,
    config_from_dict,
    config_to_dict,
    flatten,
    parse_overrides,
)
from speechtune.config._load import merge
from speechtune.metrics._cost import CostModel

from . import _expr
from ._checks import checked_entries, close_matches as _close, is_int as _is_int, is_num as _is_num
from ._ladder import FidelitySpec, parse_fidelity
from ._ray_spec import RaySpec, parse_ray
from ._space import (
    CategoricalParam,
    DerivedParam,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    SearchSpace,
    dependency_cycle,
    is_param_spec,
    parse_param,
)

__all__ = [
    "CommandSpec",
    "CostModel",
    "FidelitySpec",
    "GROUPS",
    "OBJECTIVE_KINDS",
    "ObjectiveSpec",
    "PRESET_DIR",
    "PRUNERS",
    "RaySpec",
    "SAMPLERS",
    "StudySpec",
    "TuningSpec",
    "available_presets",
    "load_tuning",
    "validate_tuning",
]

SAMPLERS = ("tpe", "gp", "random", "cmaes", "qmc", "nsga2")
PRUNERS = ("median", "percentile", "sha", "hyperband", "wilcoxon", "none")
OBJECTIVE_KINDS = ("recipe", "command", "python")
GROUPS = ("mean", "worst_group")
TOP_LEVEL = ("recipe", "overrides", "presets", "space", "constraints", "study", "objective", "command", "fidelity", "ray", "cost")
# Samplers that refuse a multi-objective study (Optuna raises at the first trial).
_SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)
PRESET_DIR = Path(__file__).resolve().parents[2] / "conf" / "presets"


@dataclass(frozen=True)
class StudySpec:
    """The ``study:`` section."""

    name: str = "study"
    sampler: str = "tpe"
    pruner: str = "median"
    n_trials: int = 20
    timeout_s: float | None = None
    seed: int | None = 0
    storage: str | None = None
    n_jobs: int = 1
    oom_retry: bool = False


@dataclass(frozen=True)
class ObjectiveSpec:
    """The ``objective:`` section."""

    kind: str = "recipe"
    metric: str = "wer"
    group: str = "mean"
    seeds: list[int] = field(default_factory=lambda: [42])
    extra_objectives: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    scalarize: dict[str, float] = field(default_factory=dict)
    #: ``MODULE:ATTR`` of the function a ``kind: python`` objective calls (so that the CLI,
    #: ``speechtune worker`` and Ray can run it, not only :func:`speechtune.tune`).
    function: str | None = None

    @property
    def is_multi_objective(self) -> bool:
        """True when ``extra_objectives`` is set and not folded into one value by ``scalarize``."""
        return bool(self.extra_objectives) and not self.scalarize


@dataclass(frozen=True)
class CommandSpec:
    """The ``command:`` section (``objective.kind: command``)."""

    argv: list[str] = field(default_factory=list)
    overrides: str | None = None
    metric_regex: str | None = None
    timeout_s: float | None = None


@dataclass(frozen=True)
class TuningSpec:
    """A validated tuning YAML with its presets composed and its base recipe loaded."""

    path: Path | None
    base_recipe: dict[str, Any]
    overrides: dict[str, Any]
    space: SearchSpace
    study: StudySpec
    objective: ObjectiveSpec
    command: CommandSpec | None
    raw: dict[str, Any]
    # The ``fidelity:`` section (multi-fidelity search); None: one trial per config at full fidelity.
    fidelity: FidelitySpec | None = None
    # The ``ray:`` section (Ray Tune backend: scheduler, resources, stoppers); None: Ray defaults.
    ray: RaySpec | None = None
    # The ``cost:`` section: grid intensity, prices and TDPs for each trial's cost and CO2e.
    cost: CostModel = field(default_factory=CostModel)


# ---------------------------------------------------------------------------------------------
# small helpers


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = node[part] = {}
            node = nxt
        node[parts[-1]] = value
    return nested


def _flatten_space(space: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nesting levels of ``space`` down to param specs (which stay mappings)."""
    out: dict[str, Any] = {}
    for key, value in space.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and not is_param_spec(value):
            out.update(_flatten_space(value, f"{name}."))
        else:
            out[name] = value
    return out


def _recipe_keys() -> list[str]:
    return sorted(flatten(config_to_dict(RecipeConfig())))


def available_presets() -> list[str]:
    """Names of the presets shipped in ``conf/presets``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path, key: str, problems: list[ConfigProblem]) -> dict[str, Any] | None:
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        problems.append(ConfigProblem(key, "cannot read file", f"{path}: {exc.strerror or exc}"))
        return None
    except yaml.YAMLError as exc:
        problems.append(ConfigProblem(key, "is not valid YAML", f"{path}: {exc}"))
        return None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        problems.append(ConfigProblem(key, "top level must be a mapping", f"{path}: {type(loaded).__name__}"))
        return None
    return loaded


# ---------------------------------------------------------------------------------------------
# sections


_Check = tuple[Any, str]  # (predicate, rule)
_STUDY_CHECKS: dict[str, _Check] = {
    "name": (lambda v: isinstance(v, str) and bool(v.strip()), "must be a non-empty string"),
    "sampler": (lambda v: v in SAMPLERS, f"unknown sampler; valid samplers: {', '.join(SAMPLERS)}"),
    "pruner": (lambda v: v in PRUNERS, f"unknown pruner; valid pruners: {', '.join(PRUNERS)}"),
    "n_trials": (lambda v: _is_int(v) and v >= 1, "must be an int >= 1"),
    "timeout_s": (lambda v: v is None or (_is_num(v) and v > 0), "must be a number > 0 or null"),
    "seed": (lambda v: v is None or _is_int(v), "must be an int or null"),
    "storage": (lambda v: v is None or (isinstance(v, str) and bool(v)), "must be null, 'journal' or a storage URL"),
    "n_jobs": (lambda v: _is_int(v) and (v >= 1 or v == -1), "must be an int >= 1 (or -1: one per CPU)"),
    "oom_retry": (lambda v: isinstance(v, bool), "must be true or false"),
}


def _valid_expr(v: Any) -> bool:
    try:
        _expr.parse(v)
    except _expr.ExprError:
        return False
    return True


_OBJECTIVE_CHECKS: dict[str, _Check] = {
    "kind": (lambda v: v in OBJECTIVE_KINDS, f"unknown kind; valid kinds: {', '.join(OBJECTIVE_KINDS)}"),
    "metric": (lambda v: isinstance(v, str) and bool(v.strip()), "must be a non-empty metric name"),
    "group": (lambda v: v in GROUPS, f"must be one of: {', '.join(GROUPS)}"),
    "seeds": (lambda v: isinstance(v, list) and bool(v) and all(map(_is_int, v)), "must be a non-empty list of ints"),
    "extra_objectives": (
        lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v),
        "must be a list of metric names",
    ),
    "constraints": (
        lambda v: isinstance(v, list) and all(isinstance(x, str) and _valid_expr(x) for x in v),
        "must be a list of expressions such as 'latency_ms_per_audio_s <= 50'",
    ),
    "scalarize": (
        lambda v: isinstance(v, Mapping) and all(isinstance(k, str) and _is_num(w) for k, w in v.items()),
        "must map metric names to numeric weights",
    ),
    "function": (
        lambda v: v is None or (isinstance(v, str) and re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", v) is not None),
        "must look like MODULE:ATTR, e.g. mypkg.train:objective",
    ),
}


def _valid_regex(v: Any) -> bool:
    if v is None:
        return True
    try:
        re.compile(v)
    except (re.error, TypeError):
        return False
    return True


_COMMAND_CHECKS: dict[str, _Check] = {
    "argv": (
        lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v),
        "must be a non-empty list of strings (an argv, never a shell line)",
    ),
    "overrides": (lambda v: v is None or isinstance(v, str), "must be null or a template such as '--{key}={value}'"),
    "metric_regex": (_valid_regex, "must be null or a valid regular expression"),
    "timeout_s": (lambda v: v is None or (_is_num(v) and v > 0), "must be a number > 0 or null"),
}


def _finite(v: Any) -> bool:
    # .inf / .nan parse as YAML floats; a cost model with them would poison every sum.
    return _is_num(v) and v == v and abs(v) != float("inf")


_COST_CHECKS: dict[str, _Check] = {
    "grid_g_per_kwh": (lambda v: _finite(v) and v >= 0, "must be a number >= 0 (g CO2e per kWh)"),
    "gpu_price_per_hour": (lambda v: _finite(v) and v >= 0, "must be a number >= 0 (price of one GPU-hour)"),
    "cpu_price_per_hour": (lambda v: _finite(v) and v >= 0, "must be a number >= 0 (price of one CPU core-hour)"),
    "gpu_tdp_w": (lambda v: _finite(v) and v > 0, "must be a number > 0 (watts per GPU)"),
    "cpu_tdp_w_per_core": (lambda v: _finite(v) and v > 0, "must be a number > 0 (watts per CPU core)"),
    "currency": (lambda v: isinstance(v, str) and bool(v.strip()), "must be a non-empty string such as USD"),
}


def _section(
    raw: Mapping[str, Any],
    name: str,
    cls: type,
    checks: Mapping[str, _Check],
    problems: list[ConfigProblem],
    defaults: Mapping[str, Any] | None = None,
) -> Any:
    """Check one section against ``checks`` and build ``cls`` from its valid values."""
    data = raw.get(name) or {}
    if not isinstance(data, Mapping):
        problems.append(ConfigProblem(name, "must be a mapping", data))
        data = {}
    kwargs: dict[str, Any] = dict(defaults or {})
    for key, value in checked_entries(data, name, checks, problems).items():
        kwargs[key] = dict(value) if isinstance(value, Mapping) else value
    if name == "study" and kwargs.get("timeout_s") is not None and _is_int(kwargs["timeout_s"]):
        kwargs["timeout_s"] = float(kwargs["timeout_s"])
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# composition: presets, CLI overrides


def _preset_path(entry: str, here: Path) -> Path | None:
    looks_like_path = "/" in entry or entry.endswith((".yaml", ".yml"))
    candidates = [here / entry] if looks_like_path else [here / "presets" / f"{entry}.yaml", PRESET_DIR / f"{entry}.yaml"]
    return next((p for p in candidates if p.is_file()), None)


def _compose(
    raw: Mapping[str, Any], here: Path, cli_space: Mapping[str, Any] | None, problems: list[ConfigProblem]
) -> tuple[dict[str, Any], list[Any]]:
    """Presets in order (later wins), then the file's space, then ``space.*`` CLI overrides.

    Returns:
        The flat space and the constraints.
    """
    space: dict[str, Any] = {}
    constraints: list[Any] = []
    presets = raw.get("presets") or []
    if not isinstance(presets, list) or not all(isinstance(p, str) for p in presets):
        problems.append(ConfigProblem("presets", "must be a list of preset names or paths", presets))
        presets = []
    for i, entry in enumerate(presets):
        path = _preset_path(entry, here)
        if path is None:
            valid = ", ".join(available_presets())
            problems.append(ConfigProblem(f"presets[{i}]", f"no such preset; shipped presets: {valid}", entry))
            continue
        data = _read_yaml(path, f"presets[{i}]", problems)
        if data is None:
            continue
        unknown = sorted(set(data) - {"space", "constraints"})
        if unknown:
            problems.append(ConfigProblem(f"presets[{i}]", "a preset holds only 'space' and 'constraints'", unknown))
        part = data.get("space") or {}
        if not isinstance(part, Mapping):
            problems.append(ConfigProblem(f"presets[{i}].space", "must be a mapping", part))
            part = {}
        for key, spec in _flatten_space(part).items():
            space[key] = spec
        constraints.extend(data.get("constraints") or [])
    own = raw.get("space") or {}
    if not isinstance(own, Mapping):
        problems.append(ConfigProblem("space", "must be a mapping of dotted key -> param spec", own))
        own = {}
    for key, spec in _flatten_space(own).items():
        space[key] = spec
    if cli_space:
        # Deep-merge so that `space.optim.lr.high=0.1` edits one field of a spec.
        space = _flatten_space(merge(_unflatten(space), cli_space))
    own_constraints = raw.get("constraints") or []
    if not isinstance(own_constraints, list):
        problems.append(ConfigProblem("constraints", "must be a list of expressions", own_constraints))
        own_constraints = []
    constraints.extend(own_constraints)
    deduped = list(dict.fromkeys(c if isinstance(c, str) else repr(c) for c in constraints))
    return space, deduped


def _flat_overrides(value: Any, problems: list[ConfigProblem]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(ConfigProblem("overrides", "must be a mapping of dotted key -> value", value))
        return {}
    return flatten(value)


# ---------------------------------------------------------------------------------------------
# recipe checks


def _load_base(
    raw: Mapping[str, Any], here: Path, overrides: Mapping[str, Any], keys: Sequence[str], problems: list[ConfigProblem]
) -> dict[str, Any]:
    """The base recipe (nested, complete) merged with ``overrides``; defaults if it is broken."""
    recipe: dict[str, Any] = {}
    entry = raw.get("recipe")
    if entry is not None:
        if not isinstance(entry, str):
            problems.append(ConfigProblem("recipe", "must be a path to a recipe YAML", entry))
        else:
            loaded = _read_yaml(here / entry, "recipe", problems)
            recipe = loaded if loaded is not None else {}
    known = {}
    for key, value in overrides.items():
        if key in keys:
            known[key] = value
        else:
            problems.append(ConfigProblem(f"overrides.{key}", f"unknown recipe key{_close(key, keys)}", value))
    try:
        cfg = config_from_dict(merge(recipe, _unflatten(known)))
    except ConfigError as exc:
        for p in exc.problems:
            if p.key in known:
                problems.append(ConfigProblem(f"overrides.{p.key}", p.rule, p.value))
            else:
                problems.append(ConfigProblem(f"recipe.{p.key}", f"{p.rule} (in {entry or 'the recipe defaults'})", p.value))
        return config_to_dict(RecipeConfig())
    return config_to_dict(cfg)


def _corners(param: Param) -> list[Any]:
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    if isinstance(param, (FloatParam, IntParam)):
        return [param.low, param.high]
    if isinstance(param, FixedParam):
        return [param.value]
    return []


def _recipe_rejects(flat: Mapping[str, Any], key: str) -> list[str]:
    """The recipe's own rules that ``flat`` breaks at ``key``."""
    try:
        config_from_dict(_unflatten(flat))
    except ConfigError as exc:
        return [p.rule for p in exc.problems if p.key == key]
    return []


def _corner_problems(
    params: Mapping[str, Param], base: Mapping[str, Any], constraints: Sequence[str], derived: bool = True
) -> list[ConfigProblem]:
    """Build the recipe at each choice and bound of each param; report the recipe's objections.

    A divisibility rule is not reported for a key that a constraint names: the sampler repairs
    ``a % b == 0`` constraints, so such a corner never reaches the recipe.
    """
    constrained = set().union(*(_expr.names(c) for c in constraints)) if constraints else set()
    problems: list[ConfigProblem] = []
    for name, param in params.items():
        # Put the param's condition in place: rules such as "conv_kernel must be odd" only
        # apply when the condition (encoder == conformer) holds.
        cond = {k: v[0] for k, v in (param.when or {}).items() if k in base and v}
        for value in _corners(param):
            for rule in dict.fromkeys(_recipe_rejects({**base, **cond, name: value}, name)):
                if name in constrained and "divisible" in rule:
                    continue
                problems.append(ConfigProblem(f"space.{name}", f"value {value!r} is rejected by the recipe: {rule}", value))
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
    space = SearchSpace({n: p for n, p in params.items()}, [], point)
    for name in space.order:
        param = params[name]
        if not isinstance(param, DerivedParam):
            continue
        try:
            point[name] = param.suggest(None, point)  # type: ignore[arg-type]
        except _expr.ExprError as exc:
            problems.append(ConfigProblem(f"space.{name}.derive", str(exc), param.expr))
            continue
        for rule in _recipe_rejects(point, name):
            problems.append(
                ConfigProblem(f"space.{name}", f"derived value {point[name]!r} is rejected by the recipe: {rule}", param.expr)
            )
    return problems


# ---------------------------------------------------------------------------------------------
# the space against its context


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
            if name not in recipe_keys:
                problems.append(ConfigProblem(f"space.{name}", f"unknown recipe key{_close(name, recipe_keys)}", name))
    for name in params:
        if name in overrides:
            problems.append(
                ConfigProblem(
                    f"space.{name}",
                    "is both fixed in overrides and searched in space; remove one (pin a preset key with a scalar in space)",
                    overrides[name],
                )
            )
    for name, param in params.items():
        for key in param.when or {}:
            if key not in params and key not in overrides:
                problems.append(
                    ConfigProblem(f"space.{name}.when", f"refers to {key!r}, which is in neither space nor overrides", key)
                )
        if isinstance(param, DerivedParam):
            unknown = sorted(_expr.names(param.expr) - readable)
            if unknown:
                problems.append(ConfigProblem(f"space.{name}.derive", f"unknown name(s) {unknown}", param.expr))
    for i, c in enumerate(constraints):
        if not isinstance(c, str):
            problems.append(ConfigProblem(f"constraints[{i}]", "must be an expression string", c))
            continue
        try:
            unknown = sorted(_expr.names(c) - readable)
        except _expr.ExprError as exc:
            problems.append(ConfigProblem(f"constraints[{i}]", str(exc), c))
            continue
        if unknown:
            problems.append(ConfigProblem(f"constraints[{i}]", f"unknown name(s) {unknown}", c))
    cycle = dependency_cycle(params)
    if cycle:
        problems.append(
            ConfigProblem(f"space.{cycle[0]}", f"dependency cycle among when/derive: {' -> '.join(cycle)}", cycle)
        )
    return problems


# ---------------------------------------------------------------------------------------------
# entry points


def _load(path: str | Path, overrides: Sequence[str]) -> tuple[TuningSpec | None, list[ConfigProblem]]:
    problems: list[ConfigProblem] = []
    path = Path(path)
    raw = _read_yaml(path, str(path), problems)
    if raw is None:
        return None, problems
    here = path.parent
    cli: dict[str, Any] = {}
    try:
        cli = parse_overrides(list(overrides))
    except ConfigError as exc:
        problems.extend(exc.problems)
    cli_space = cli.pop("space", None)
    cli_overrides = cli.pop("overrides", None)
    raw = merge(raw, cli)

    for key in raw:
        if key not in TOP_LEVEL:
            problems.append(
                ConfigProblem(str(key), f"unknown section{_close(str(key), TOP_LEVEL)}; valid sections: {', '.join(TOP_LEVEL)}", raw[key])
            )
    study = _section(raw, "study", StudySpec, _STUDY_CHECKS, problems, {"name": path.stem or "study"})
    objective = _section(raw, "objective", ObjectiveSpec, _OBJECTIVE_CHECKS, problems)
    command = None
    if raw.get("command") is not None:
        command = _section(raw, "command", CommandSpec, _COMMAND_CHECKS, problems)
        if objective.kind != "command":
            problems.append(ConfigProblem("command", "is only used with objective.kind: command", objective.kind))
        elif "argv" not in (raw.get("command") or {}):
            problems.append(ConfigProblem("command.argv", "is required for objective.kind: command", None))
    elif objective.kind == "command":
        problems.append(ConfigProblem("command", "objective.kind: command needs a command section with argv", None))
    if objective.function is not None and objective.kind != "python":
        problems.append(ConfigProblem("objective.function", "is only used with objective.kind: python", objective.function))
    if objective.is_multi_objective and study.pruner != "none":
        problems.append(
            ConfigProblem(
                "study.pruner",
                "Optuna does not prune multi-objective studies (objective.extra_objectives is set); use pruner: none",
                study.pruner,
            )
        )
    if objective.is_multi_objective and study.sampler in _SINGLE_OBJECTIVE_SAMPLERS:
        problems.append(
            ConfigProblem("study.sampler", "does not support multi-objective studies; use tpe, nsga2, gp or random", study.sampler)
        )

    flat_overrides = _flat_overrides(raw.get("overrides"), problems)
    if cli_overrides is not None:
        flat_overrides.update(flatten(cli_overrides))
    space_raw, constraints = _compose(raw, here, cli_space, problems)

    recipe_kind = objective.kind == "recipe"
    recipe_keys = _recipe_keys() if recipe_kind else None
    if not recipe_kind and raw.get("recipe") is not None:
        problems.append(ConfigProblem("recipe", "is only used with objective.kind: recipe", raw["recipe"]))
    base_recipe = _load_base(raw, here, flat_overrides, recipe_keys, problems) if recipe_keys is not None else {}

    params: dict[str, Param] = {}
    for name, spec in space_raw.items():
        param, found = parse_param(name, spec)
        problems.extend(found)
        if param is not None:
            params[name] = param
    context = _space_problems(params, constraints, flat_overrides, recipe_keys)
    problems.extend(context)
    if recipe_keys is not None:
        recipe_params = {n: p for n, p in params.items() if n in recipe_keys}
        # Derived values are only worth computing once their names and order are sound.
        good = [c for c in constraints if isinstance(c, str) and _valid_expr(c)]
        problems.extend(_corner_problems(recipe_params, flatten(base_recipe), good, derived=not context))

    fidelity = parse_fidelity(
        raw.get("fidelity"),
        here=here,
        kind=objective.kind,
        base_flat=flatten(base_recipe) if recipe_kind else dict(flat_overrides),
        recipe_keys=recipe_keys,
        tuned_keys=set(space_raw),
        problems=problems,
    )
    if raw.get("fidelity") is not None and objective.is_multi_objective:
        # Promotion ranks configs by one value; a Pareto front has no "best 1/eta".
        problems.append(
            ConfigProblem(
                "fidelity",
                "a multi-fidelity search ranks configs by one value: drop objective.extra_objectives or fold "
                "them in with objective.scalarize",
                objective.extra_objectives,
            )
        )

    cost = _section(raw, "cost", CostModel, _COST_CHECKS, problems)

    ray = parse_ray(
        raw.get("ray"),
        problems,
        searched={n: _kind(p) for n, p in params.items() if _kind(p)},
        multi_objective=objective.is_multi_objective,
    )

    if problems:
        return None, problems
    composed = dict(raw)
    composed.update(
        overrides=flat_overrides,
        space=space_raw,
        constraints=constraints,
        study=dataclasses.asdict(study),
        objective=dataclasses.asdict(objective),
    )
    if command is not None:
        composed["command"] = dataclasses.asdict(command)
    if fidelity is not None and fidelity.warm_start is not None:
        # Absolute, like the recipe, so that the record reloads from the run directory.
        composed["fidelity"] = {**raw["fidelity"], "warm_start": str(fidelity.warm_start)}
    if isinstance(raw.get("recipe"), str):
        # Absolute, so that the recorded spec reloads from the run directory.
        composed["recipe"] = str((here / raw["recipe"]).resolve())
    base = flatten(base_recipe) if recipe_kind else dict(flat_overrides)
    spec = TuningSpec(
        path=path,
        base_recipe=base_recipe,
        overrides=flat_overrides,
        space=SearchSpace(params, constraints, base),
        study=study,
        objective=objective,
        command=command,
        raw=composed,
        fidelity=fidelity,
        ray=ray,
        cost=cost,
    )
    return spec, []


def _kind(param: Param) -> str | None:
    """``float``/``int``/``categorical`` for a param a sampler chooses (what PBT may perturb), else None."""
    return {FloatParam: "float", IntParam: "int", CategoricalParam: "categorical"}.get(type(param))


def validate_tuning(path: str | Path, overrides: Sequence[str] = ()) -> list[ConfigProblem]:
    """Every problem in a tuning YAML (with its presets and base recipe); never raises for content.

    Args:
        path: the tuning YAML.
        overrides: dotted CLI overrides of the tuning file itself, e.g. ``"study.n_trials=5"``.

    Returns:
        The problems found (empty when the file is valid).
    """
    return _load(path, overrides)[1]


def load_tuning(path: str | Path, overrides: Sequence[str] = ()) -> TuningSpec:
    """Load, compose and validate a tuning YAML.

    Args:
        path: the tuning YAML (``recipe`` and preset paths are relative to it).
        overrides: dotted CLI overrides of the tuning file itself, e.g. ``"study.n_trials=5"``,
            ``"objective.seeds=[1,2]"``, ``"space.optim.lr.high=0.02"``, ``"overrides.train.epochs=3"``.

    Returns:
        The validated :class:`TuningSpec`.

    Raises:
        ConfigError: listing every problem found.
    """
    spec, problems = _load(path, overrides)
    if problems or spec is None:
        raise ConfigError(problems, str(path))
    return spec
