"""Load and validate a tuning YAML (``conf/tuning.yaml``) into a :class:`TuningSpec`.

Every problem in the file (and in the presets and base recipe it names) is collected before
anything is raised, each as a :class:`~speechtune.config.ConfigProblem` with its key, the rule
it breaks and the value received, so a user fixes the file in one pass.

Severity: everything reported is an error (there are no warnings). In particular a ``step``
that does not divide ``high - low`` is an error, because Optuna would silently lower ``high``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from speechtune._urls import mask_url
from speechtune.config import (
    ConfigError,
    ConfigProblem,
    YamlFileError,
    decode_utf8,
    flatten,
    merge,
    parse_overrides,
)
from speechtune.metrics import CostModel
from speechtune.tuning.space import (
    CategoricalParam,
    FloatParam,
    IntParam,
    Param,
    SearchSpace,
    parse_param,
)
from speechtune.tuning.spec._checks import (
    close_matches as _close,
)
from speechtune.tuning.spec._compose import (
    _compose,
    _flat_overrides,
    _load_base,
    _read_yaml,
    _recipe_keys,
)
from speechtune.tuning.spec._fidelity import FidelitySpec, parse_fidelity
from speechtune.tuning.spec._ray import RaySpec, parse_ray
from speechtune.tuning.spec._recipe_checks import (
    _block_problems,
    _corner_problems,
    _nothing_to_search,
    _space_problems,
)
from speechtune.tuning.spec._sections import (
    _COMMAND_CHECKS,
    _COST_CHECKS,
    _OBJECTIVE_CHECKS,
    _SINGLE_OBJECTIVE_SAMPLERS,
    _STUDY_CHECKS,
    CommandSpec,
    ObjectiveSpec,
    StudySpec,
    _section,
    _valid_expr,
)

TOP_LEVEL = (
    "recipe",
    "overrides",
    "presets",
    "space",
    "constraints",
    "study",
    "objective",
    "command",
    "fidelity",
    "ray",
    "cost",
)


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

    @property
    def base_flat(self) -> dict[str, Any]:
        """The base recipe as a flat dict of dotted keys (empty for function and command objectives)."""
        return flatten(self.base_recipe) if self.base_recipe else {}

    @property
    def max_epochs(self) -> int | None:
        """The base recipe's ``train.epochs`` (the resource a pruner counts up to), None without one."""
        epochs = self.base_recipe.get("train", {}).get("epochs") if self.base_recipe else None
        return int(epochs) if isinstance(epochs, int) and not isinstance(epochs, bool) else None

    def with_storage(self, url: str | None) -> TuningSpec:
        """This spec with ``study.storage`` set to ``url``; itself for None.

        The recorded YAML (``raw``: ``spec.yaml``, the study's ``spec`` attribute, MLflow params)
        gets the URL with its password masked: secrets are never written to files.
        """
        if url is None:
            return self
        raw = dict(self.raw)
        if raw:
            raw["study"] = {**dict(raw.get("study") or {}), "storage": mask_url(url)}
        return dataclasses.replace(
            self, study=dataclasses.replace(self.study, storage=url), raw=raw
        )


def _load(
    path: str | Path, overrides: Sequence[str]
) -> tuple[TuningSpec | None, list[ConfigProblem]]:
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
                ConfigProblem(
                    str(key),
                    f"unknown section{_close(str(key), TOP_LEVEL)}; valid sections: {', '.join(TOP_LEVEL)}",
                    raw[key],
                )
            )
    study = _section(
        raw, "study", StudySpec, _STUDY_CHECKS, problems, {"name": path.stem or "study"}
    )
    objective = _section(raw, "objective", ObjectiveSpec, _OBJECTIVE_CHECKS, problems)
    command = None
    if raw.get("command") is not None:
        command = _section(raw, "command", CommandSpec, _COMMAND_CHECKS, problems)
        if objective.kind != "command":
            problems.append(
                ConfigProblem(
                    "command", "is only used with objective.kind: command", objective.kind
                )
            )
        elif "argv" not in (raw.get("command") or {}):
            problems.append(
                ConfigProblem("command.argv", "is required for objective.kind: command", None)
            )
        if command.config_file is not None:
            command = dataclasses.replace(
                command, config_file=_command_config(command.config_file, here, problems)
            )
    elif objective.kind == "command":
        problems.append(
            ConfigProblem(
                "command", "objective.kind: command needs a command section with argv", None
            )
        )
    if objective.direction == "maximize" and objective.scalarize:
        problems.append(
            ConfigProblem(
                "objective.direction",
                "maximize cannot be combined with objective.scalarize (its terms are added to "
                "the value as penalties, which only works when minimising)",
                objective.direction,
            )
        )
    if objective.function is not None and objective.kind != "python":
        problems.append(
            ConfigProblem(
                "objective.function",
                "is only used with objective.kind: python",
                objective.function,
            )
        )
    if objective.is_multi_objective and study.pruner != "none":
        problems.append(
            ConfigProblem(
                "study.pruner",
                "Optuna does not prune multi-objective studies (objective.extra_objectives is set); use pruner: none",
                study.pruner,
            )
        )
    if study.confirm_top and objective.is_multi_objective:
        problems.append(
            ConfigProblem(
                "study.confirm_top",
                "a confirmation picks by one value; a multi-objective study has a Pareto front "
                "(drop objective.extra_objectives or fold them in with objective.scalarize)",
                study.confirm_top,
            )
        )
    reused = sorted(set(study.confirm_seeds) & set(objective.seeds))
    if reused:
        problems.append(
            ConfigProblem(
                "study.confirm_seeds",
                f"seeds {reused} are among objective.seeds: a confirmation needs seeds the "
                "search did not select on",
                study.confirm_seeds,
            )
        )
    if objective.is_multi_objective and study.sampler in _SINGLE_OBJECTIVE_SAMPLERS:
        problems.append(
            ConfigProblem(
                "study.sampler",
                "does not support multi-objective studies; use tpe, nsga2, gp or random",
                study.sampler,
            )
        )

    flat_overrides = _flat_overrides(raw.get("overrides"), problems)
    if cli_overrides is not None:
        flat_overrides.update(flatten(cli_overrides))
    space_raw, constraints = _compose(raw, here, cli_space, problems)

    recipe_kind = objective.kind == "recipe"
    recipe_keys = _recipe_keys() if recipe_kind else None
    if not recipe_kind and raw.get("recipe") is not None:
        problems.append(
            ConfigProblem("recipe", "is only used with objective.kind: recipe", raw["recipe"])
        )
    base_recipe = (
        _load_base(raw, here, flat_overrides, recipe_keys, problems)
        if recipe_keys is not None
        else {}
    )

    params: dict[str, Param] = {}
    for name, spec in space_raw.items():
        param, found = parse_param(name, spec)
        problems.extend(found)
        if param is not None:
            params[name] = param
    if len(params) == len(space_raw):  # a param that failed to parse is reported on its own
        problems.extend(_nothing_to_search(params))
    context = _space_problems(params, constraints, flat_overrides, recipe_keys)
    problems.extend(context)
    # Derived values are only worth computing once their names and order are sound.
    good = [c for c in constraints if isinstance(c, str) and _valid_expr(c)]
    if recipe_keys is not None:
        recipe_params = {n: p for n, p in params.items() if n in recipe_keys}
        problems.extend(
            _corner_problems(recipe_params, flatten(base_recipe), good, derived=not context)
        )
        problems.extend(_block_problems(params, flat_overrides, flatten(base_recipe)))
    elif not context:
        problems.extend(_corner_problems(params, dict(flat_overrides), good, recipe=False))

    fidelity = parse_fidelity(
        raw.get("fidelity"),
        here=here,
        kind=objective.kind,
        base_flat=flatten(base_recipe) if recipe_kind else dict(flat_overrides),
        recipe_keys=recipe_keys,
        tuned_keys=set(space_raw),
        problems=problems,
        metric=objective.primary_metric,
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
        searched={n: kind for n, p in params.items() if (kind := _kind(p)) is not None},
        multi_objective=objective.is_multi_objective,
    )

    if problems:
        return None, problems
    composed = dict(raw)
    composed.update(
        overrides=flat_overrides,
        space=space_raw,
        constraints=constraints,
        # The record (spec.yaml, the study's attribute, MLflow params) never holds a password.
        study={**dataclasses.asdict(study), "storage": study.storage and mask_url(study.storage)},
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


def _command_config(name: str, here: Path, problems: list[ConfigProblem]) -> str | None:
    """``command.config_file`` made absolute, after checking that it reads as a mapping."""
    path = (here / name).resolve()
    try:
        text = decode_utf8(path.read_bytes(), path)
    except OSError as exc:
        problems.append(
            ConfigProblem("command.config_file", f"cannot be read ({exc.strerror})", str(path))
        )
        return None
    except YamlFileError as exc:
        problems.append(ConfigProblem("command.config_file", f"{path} {exc.reason}", exc.snippet))
        return None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        problems.append(
            ConfigProblem(
                "command.config_file", f"is not valid {path.suffix[1:]}: {first}", str(path)
            )
        )
        return None
    if not isinstance(data, dict):
        problems.append(
            ConfigProblem(
                "command.config_file",
                f"must hold a mapping of config keys, got {type(data).__name__}",
                str(path),
            )
        )
        return None
    return str(path)


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
