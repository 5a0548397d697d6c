"""Composing a tuning YAML: presets (later wins), the file's own space, CLI overrides, the base recipe."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from speechtune.config import (
    ConfigError,
    ConfigProblem,
    RecipeConfig,
    YamlFileError,
    config_from_dict,
    config_to_dict,
    flatten,
    is_block_key,
    merge,
    read_yaml,
)
from speechtune.tuning.space import is_param_spec
from speechtune.tuning.spec._checks import (
    close_matches as _close,
)

PRESET_DIR = Path(__file__).resolve().parent / "presets"

log = logging.getLogger("speechtune.tuning")


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
    """Names of the presets shipped with speechtune (``speechtune/tuning/spec/presets``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path, key: str, problems: list[ConfigProblem]) -> dict[str, Any] | None:
    try:
        loaded = read_yaml(path)
    except OSError as exc:
        problems.append(ConfigProblem(key, "cannot read file", f"{path}: {exc.strerror or exc}"))
        return None
    except YamlFileError as exc:
        # The tuning file itself is its own key; a preset or recipe names its file in the rule.
        rule = exc.reason if key == str(path) else f"{path} {exc.reason}"
        problems.append(ConfigProblem(key, rule, exc.snippet))
        return None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        problems.append(
            ConfigProblem(key, "top level must be a mapping", f"{path}: {type(loaded).__name__}")
        )
        return None
    return loaded


def _preset_path(entry: str, here: Path) -> Path | None:
    looks_like_path = "/" in entry or entry.endswith((".yaml", ".yml"))
    candidates = (
        [here / entry]
        if looks_like_path
        else [here / "presets" / f"{entry}.yaml", PRESET_DIR / f"{entry}.yaml"]
    )
    return next((p for p in candidates if p.is_file()), None)


def _compose(
    raw: Mapping[str, Any],
    here: Path,
    cli_space: Mapping[str, Any] | None,
    problems: list[ConfigProblem],
) -> tuple[dict[str, Any], list[Any]]:
    """Presets in order (later wins), then the file's space, then ``space.*`` CLI overrides.

    Returns:
        The flat space and the constraints.
    """
    space: dict[str, Any] = {}
    constraints: list[Any] = []
    presets = raw.get("presets") or []
    if not isinstance(presets, list) or not all(isinstance(p, str) for p in presets):
        problems.append(
            ConfigProblem("presets", "must be a list of preset names or paths", presets)
        )
        presets = []
    for i, entry in enumerate(presets):
        path = _preset_path(entry, here)
        if path is None:
            valid = ", ".join(available_presets())
            problems.append(
                ConfigProblem(f"presets[{i}]", f"no such preset; shipped presets: {valid}", entry)
            )
            continue
        data = _read_yaml(path, f"presets[{i}]", problems)
        if data is None:
            continue
        unknown = sorted(set(data) - {"space", "constraints"})
        if unknown:
            problems.append(
                ConfigProblem(
                    f"presets[{i}]", "a preset holds only 'space' and 'constraints'", unknown
                )
            )
        part = data.get("space") or {}
        if not isinstance(part, Mapping):
            problems.append(ConfigProblem(f"presets[{i}].space", "must be a mapping", part))
            part = {}
        for key, spec in _flatten_space(part).items():
            space[key] = spec
        constraints.extend(data.get("constraints") or [])
    own = raw.get("space") or {}
    if not isinstance(own, Mapping):
        problems.append(
            ConfigProblem("space", "must be a mapping of dotted key -> param spec", own)
        )
        own = {}
    for key, spec in _flatten_space(own).items():
        space[key] = spec
    if cli_space:
        # Deep-merge so that `space.optim.lr.high=0.1` edits one field of a spec.
        space = _flatten_space(merge(_unflatten(space), cli_space))
    own_constraints = raw.get("constraints") or []
    if not isinstance(own_constraints, list):
        problems.append(
            ConfigProblem("constraints", "must be a list of expressions", own_constraints)
        )
        own_constraints = []
    constraints.extend(own_constraints)
    deduped = list(dict.fromkeys(c if isinstance(c, str) else repr(c) for c in constraints))
    return space, deduped


def _flat_overrides(value: Any, problems: list[ConfigProblem]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(
            ConfigProblem("overrides", "must be a mapping of dotted key -> value", value)
        )
        return {}
    return flatten(value)


def _load_base(
    raw: Mapping[str, Any],
    here: Path,
    overrides: Mapping[str, Any],
    keys: Sequence[str],
    problems: list[ConfigProblem],
) -> dict[str, Any]:
    """The base recipe (nested, complete) merged with ``overrides``; defaults if it is broken."""
    recipe: dict[str, Any] = {}
    entry = raw.get("recipe")
    if entry is None:
        # Silent, this once tuned the synthetic corpus in place of AN4 (a lost `recipe:` line).
        log.warning(
            "the tuning YAML has no recipe: key: its trials train the built-in default recipe "
            "(the synthetic corpus) plus overrides"
        )
    else:
        if not isinstance(entry, str):
            problems.append(ConfigProblem("recipe", "must be a path to a recipe YAML", entry))
        else:
            loaded = _read_yaml(here / entry, "recipe", problems)
            recipe = loaded if loaded is not None else {}
    known = {}
    for key, value in overrides.items():
        if key in keys or is_block_key(key):  # per-block ops: joined by config_from_dict
            known[key] = value
        else:
            problems.append(
                ConfigProblem(f"overrides.{key}", f"unknown recipe key{_close(key, keys)}", value)
            )
    try:
        cfg = config_from_dict(merge(recipe, _unflatten(known)))
    except ConfigError as exc:
        for p in exc.problems:
            if p.key in known:
                problems.append(ConfigProblem(f"overrides.{p.key}", p.rule, p.value))
            else:
                problems.append(
                    ConfigProblem(
                        f"recipe.{p.key}",
                        f"{p.rule} (in {entry or 'the recipe defaults'})",
                        p.value,
                    )
                )
        return config_to_dict(RecipeConfig())
    return config_to_dict(cfg)
