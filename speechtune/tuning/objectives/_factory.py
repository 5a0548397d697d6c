"""The objective a tuning spec names (``objective.kind``): recipe, command or Python function."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import yaml

from speechtune.tuning.objectives._base import Objective
from speechtune.tuning.objectives._command import CommandObjective, missing_program
from speechtune.tuning.objectives._function import FunctionObjective, import_function
from speechtune.tuning.objectives._recipe import RecipeObjective
from speechtune.tuning.spec import TuningSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Where:
    """Runtime options of an objective (never in the tuning YAML)."""

    device: str
    cache_dir: str | Path
    function: str | None
    cwd: Path


def _recipe(spec: TuningSpec, where: _Where) -> Objective:
    return RecipeObjective(spec.base_recipe, device=where.device, cache_dir=where.cache_dir)


def _command(spec: TuningSpec, where: _Where) -> Objective:
    if spec.command is None:
        raise ValueError("objective.kind: command needs a command section with argv")
    problem = missing_program(spec.command.argv[0], where.cwd) if spec.command.argv else None
    if problem:
        raise ValueError(problem)
    base: dict = {}
    fmt = "yaml"
    if spec.command.config_file:
        # Checked when the spec was loaded: it exists and holds a mapping.
        path = Path(spec.command.config_file)
        text = path.read_text(encoding="utf-8")
        fmt = "json" if path.suffix == ".json" else "yaml"
        base = json.loads(text) if fmt == "json" else (yaml.safe_load(text) or {})
    return CommandObjective(
        spec.command, base, overrides=spec.overrides, config_format=fmt, cwd=where.cwd
    )


def _python(spec: TuningSpec, where: _Where) -> Objective:
    function = where.function or spec.objective.function
    if not function:
        raise ValueError(
            "objective.kind: python needs objective.function: MODULE:ATTR to run from the command line "
            "(a worker takes --function MODULE:ATTR; or call speechtune.tune() from Python)"
        )
    return FunctionObjective(import_function(function, search_paths=(where.cwd, Path.cwd())))


#: ``objective.kind`` -> its builder (one explicit table: an unknown kind lists the valid ones).
OBJECTIVES: dict[str, Callable[[TuningSpec, _Where], Objective]] = {
    "recipe": _recipe,
    "command": _command,
    "python": _python,
}


def build_objective(
    spec: TuningSpec,
    *,
    device: str = "auto",
    cache_dir: str | Path = ".cache/speechtune",
    function: str | None = None,
    cwd: str | Path | None = None,
) -> Objective:
    """The objective of ``spec.objective.kind``.

    Args:
        spec: the tuning spec.
        device: the recipe's device (``auto``, ``cpu``, ``cuda:1``...).
        cache_dir: the recipe's corpus and feature cache.
        function: ``MODULE:ATTR`` of a kind python objective; default ``objective.function``.
        cwd: where a command runs and a function's module is looked for first; default the
            tuning YAML's directory (the working directory for a spec without a file).

    Raises:
        ValueError: kind python without a function, a function that does not import, or an
            unknown kind.
    """
    if function and spec.objective.kind != "python":
        raise ValueError(
            f"--function is for objective.kind: python, but the study has kind {spec.objective.kind!r}"
        )
    builder = OBJECTIVES.get(spec.objective.kind)
    if builder is None:
        raise ValueError(
            f"objective.kind: unknown kind {spec.objective.kind!r}; expected one of: {', '.join(OBJECTIVES)}"
        )
    here = (
        Path(cwd)
        if cwd is not None
        else (spec.path.parent if spec.path is not None else Path.cwd())
    )
    return builder(spec, _Where(device=device, cache_dir=cache_dir, function=function, cwd=here))


def scale_default_ladder(spec: TuningSpec, cache_dir: str | Path) -> TuningSpec:
    """Scale the default fidelity ladder to the corpus, once its size is known (recipe objectives).

    The corpus is prepared (cached) to count its training utterances and hours; a spec without
    the default ladder, or whose corpus size is known already, is returned as it is.
    """
    fspec = spec.fidelity
    if (
        fspec is None
        or not fspec.default_rungs
        or fspec.n_train is not None
        or spec.objective.kind != "recipe"
    ):
        return spec
    from speechtune.config import config_from_dict
    from speechtune.data import prepare_data

    cfg = config_from_dict(spec.base_recipe, "base recipe")
    data = prepare_data(cfg.data, cfg.features.sample_rate, str(cache_dir), False)
    n_train = len(data.train)
    hours = sum(u.duration for u in data.train) / 3600.0
    scaled = fspec.with_corpus_size(
        spec.base_flat, n_train, set(spec.space.params), corpus_hours=hours
    )
    log.info(
        "default fidelity ladder scaled to %d training utterances: %s",
        n_train,
        [r.as_dict() for r in scaled.fidelity.rungs],
    )
    return dataclasses.replace(spec, fidelity=scaled)
