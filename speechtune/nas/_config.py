"""The NAS YAML: the base recipe, the method, the search space and each method's options.

Read with ``yaml.safe_load`` and validated as a whole: every problem (unknown key, wrong type,
out-of-range value, a base recipe the recipe schema rejects) is reported at once, each with its
dotted key, the rule and the value received, as :class:`speechtune.config.ConfigError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechtune.config import (
    ConfigError,
    ConfigProblem,
    RecipeConfig,
    config_from_dict,
    flatten,
    merge,
    parse_overrides,
    read_yaml,
    unflatten,
)
from speechtune.models import SEARCH_OPS

#: The search methods (``method:``).
METHODS = ("darts", "weight_sharing")
#: What ranks architectures in the weight-sharing search.
RANK_METRICS = ("dev_loss", "wer", "cer")


@dataclass
class SearchSection:
    """The discrete space and the supernet's training."""

    num_blocks: int = 4
    ops: list[str] = field(default_factory=lambda: list(SEARCH_OPS))
    epochs: int = 10
    seed: int = 0


@dataclass
class GuardSection:
    """Against DARTS' collapse onto parameter-free ops (DARTS+, Liang et al., 2019)."""

    # Stop the search once the argmax architecture has this many parameter-free blocks (skip or
    # zero); the architecture of the last epoch below it is derived. null: off.
    max_parameter_free: int | None = None
    # Stop once the argmax architecture has not changed for this many epochs. 0: off.
    stable_epochs: int = 0


@dataclass
class DartsSection:
    """First-order DARTS (Liu et al., 2019): alpha on dev batches, weights on train batches."""

    arch_lr: float = 3e-3
    # DARTS' Adam on alpha: betas (0.5, 0.999), weight decay 1e-3 (an L2 pull towards uniform).
    arch_weight_decay: float = 1e-3
    # Beta-Decay regularisation (Ye et al., 2022, "beta-DARTS"): lambda * mean_i logsumexp(alpha_i),
    # which keeps alpha small and its softmax from saturating on one (parameter-free) op early.
    beta_decay: float = 0.0
    # Epochs that train the weights only, before alpha moves (the ops first learn something).
    warmup_epochs: int = 1
    guard: GuardSection = field(default_factory=GuardSection)


@dataclass
class WeightSharingSection:
    """Single-path one-shot (Guo et al., 2020): uniform paths in training, then ranking."""

    num_samples: int = 20
    top_k: int = 1
    rank_metric: str = "dev_loss"
    # Random (not top) sampled architectures also trained stand-alone, so that the Spearman
    # between shared-weight and stand-alone scores is measured on a sample the ranking did not
    # select (the top ones alone narrow and bias it).
    correlation_samples: int = 0


@dataclass
class RetrainSection:
    """Training the derived architecture(s) from scratch with the ordinary trainer."""

    enabled: bool = False
    seeds: list[int] = field(default_factory=lambda: [42])
    # Epochs of each stand-alone run; null: the recipe's train.epochs.
    epochs: int | None = None


@dataclass
class NasConfig:
    """A whole NAS run (see ``docs/nas.md``)."""

    recipe: RecipeConfig
    method: str = "darts"
    search: SearchSection = field(default_factory=SearchSection)
    darts: DartsSection = field(default_factory=DartsSection)
    weight_sharing: WeightSharingSection = field(default_factory=WeightSharingSection)
    retrain: RetrainSection = field(default_factory=RetrainSection)
    source: str | None = None


_SECTIONS: dict[str, type] = {
    "search": SearchSection,
    "darts": DartsSection,
    "weight_sharing": WeightSharingSection,
    "retrain": RetrainSection,
}
_TOP_KEYS = ("recipe", "overrides", "method", *_SECTIONS)

# Lower bounds of numbers: key -> (bound, strict); null values are allowed where the type says so.
_MIN: dict[str, tuple[float, bool]] = {
    "search.num_blocks": (1, False),
    "search.epochs": (1, False),
    "darts.arch_lr": (0, True),
    "darts.arch_weight_decay": (0, False),
    "darts.beta_decay": (0, False),
    "darts.warmup_epochs": (0, False),
    "darts.guard.max_parameter_free": (1, False),
    "darts.guard.stable_epochs": (0, False),
    "weight_sharing.num_samples": (2, False),
    "weight_sharing.top_k": (1, False),
    "weight_sharing.correlation_samples": (0, False),
    "retrain.epochs": (1, False),
}


def _typed(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check and gently coerce a YAML value against a field type of the sections."""
    if tp in ("int", int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return ok, value
    if tp in ("float", float):
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp in ("bool", bool):
        return isinstance(value, bool), value
    if tp in ("str", str):
        return isinstance(value, str), value
    if tp == "int | None":
        return (True, None) if value is None else _typed(value, int)
    if tp in ("list[str]", "list[int]"):
        item = str if tp == "list[str]" else int
        ok = isinstance(value, list) and all(_typed(v, item)[0] for v in value)
        return ok, value
    return True, value


def _section(cls: type, data: Any, prefix: str, problems: list[ConfigProblem]) -> Any:
    """Build one section dataclass from ``data``, collecting problems."""
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        problems.append(ConfigProblem(prefix.rstrip("."), "must be a mapping", data))
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            rule = f"unknown key; valid keys here: {', '.join(fields)}"
            problems.append(ConfigProblem(dotted, rule, value))
            continue
        tp = fields[key].type
        if tp == "GuardSection":
            kwargs[key] = _section(GuardSection, value, dotted + ".", problems)
            continue
        ok, value = _typed(value, tp)
        if not ok:
            problems.append(ConfigProblem(dotted, f"must be {tp}", value))
            continue
        bound = _MIN.get(dotted)
        if bound is not None and value is not None:
            low, strict = bound
            if value < low or (strict and value == low):
                problems.append(
                    ConfigProblem(dotted, f"must be {'>' if strict else '>='} {low:g}", value)
                )
                continue
        kwargs[key] = value
    return cls(**kwargs)


def _recipe(
    data: Mapping[str, Any], base_dir: Path, problems: list[ConfigProblem]
) -> RecipeConfig:
    """The base recipe (a path relative to the NAS file, or inline), with ``overrides``."""
    recipe = data.get("recipe")
    if isinstance(recipe, str):
        path = (base_dir / recipe).resolve()
        if not path.is_file():
            problems.append(ConfigProblem("recipe", "must name a recipe YAML file", recipe))
            return RecipeConfig()
        recipe = read_yaml(path) or {}
    elif recipe is None:
        recipe = {}
    if not isinstance(recipe, Mapping):
        problems.append(ConfigProblem("recipe", "must be a path or a mapping", recipe))
        return RecipeConfig()
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        problems.append(ConfigProblem("overrides", "must be a mapping of dotted keys", overrides))
        overrides = {}
    try:
        return config_from_dict(merge(recipe, unflatten(overrides)))
    except ConfigError as exc:
        problems.extend(dataclasses.replace(p, key=f"recipe: {p.key}") for p in exc.problems)
        return RecipeConfig()


def nas_config_from_dict(
    data: Any, base_dir: str | Path = ".", source: str | None = None
) -> NasConfig:
    """Validate a NAS config mapping; raise :class:`ConfigError` listing every problem.

    Args:
        data: The parsed YAML.
        base_dir: What a ``recipe:`` path is relative to.
        source: The file, named in errors.
    """
    problems: list[ConfigProblem] = []
    if not isinstance(data, Mapping):
        raise ConfigError([ConfigProblem("<root>", "must be a mapping", data)], source)
    for key in data:
        if key not in _TOP_KEYS:
            rule = f"unknown key; valid keys: {', '.join(_TOP_KEYS)}"
            problems.append(ConfigProblem(str(key), rule, data[key]))
    method = data.get("method", "darts")
    if method not in METHODS:
        problems.append(ConfigProblem("method", f"must be one of: {', '.join(METHODS)}", method))
    sections = {
        name: _section(cls, data.get(name), f"{name}.", problems)
        for name, cls in _SECTIONS.items()
    }
    search: SearchSection = sections["search"]
    bad_ops = [op for op in search.ops if op not in SEARCH_OPS]
    if bad_ops:
        rule = f"unknown op {bad_ops[0]!r}; allowed ops: {', '.join(SEARCH_OPS)}"
        problems.append(ConfigProblem("search.ops", rule, search.ops))
    elif len(set(search.ops)) < 2 or len(set(search.ops)) != len(search.ops):
        rule = "must list at least two distinct ops (nothing to search otherwise)"
        problems.append(ConfigProblem("search.ops", rule, search.ops))
    elif set(search.ops) <= {"skip", "zero"}:
        rule = "needs at least one op with weights (not only skip and zero)"
        problems.append(ConfigProblem("search.ops", rule, search.ops))
    ws: WeightSharingSection = sections["weight_sharing"]
    if ws.rank_metric not in RANK_METRICS:
        rule = f"must be one of: {', '.join(RANK_METRICS)}"
        problems.append(ConfigProblem("weight_sharing.rank_metric", rule, ws.rank_metric))
    if ws.top_k + ws.correlation_samples > ws.num_samples:
        rule = f"top_k + correlation_samples must be <= num_samples={ws.num_samples}"
        problems.append(ConfigProblem("weight_sharing.top_k", rule, ws.top_k))
    if not sections["retrain"].seeds:
        problems.append(ConfigProblem("retrain.seeds", "must list at least one seed", []))
    recipe = _recipe(data, Path(base_dir), problems)
    if "mhsa" in search.ops and recipe.model.d_model % recipe.model.num_heads:
        rule = f"must be divisible by model.num_heads={recipe.model.num_heads} (the mhsa op)"
        problems.append(ConfigProblem("recipe: model.d_model", rule, recipe.model.d_model))
    if problems:
        raise ConfigError(problems, source)
    return NasConfig(recipe=recipe, method=str(method), source=source, **sections)


def load_nas_config(path: str | Path, overrides: Sequence[str] = ()) -> NasConfig:
    """Read and validate a NAS YAML file (``speechtune nas --config``).

    Args:
        path: The YAML file.
        overrides: ``KEY=VALUE`` dotted keys of the NAS file itself (``search.epochs=2``,
            ``overrides.train.epochs=4``...) merged over it.

    Raises:
        OSError: the file cannot be read.
        ConfigError: every problem found, each with its key.
    """
    path = Path(path)
    data = read_yaml(path)
    if overrides and isinstance(data, Mapping):
        data = _merge_nas(data, parse_overrides(overrides))
    return nas_config_from_dict(data, path.parent, source=str(path))


def _merge_nas(data: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``merge`` for a NAS file, whose ``overrides`` section is flat (dotted keys)."""
    update = dict(update)
    flat = update.pop("overrides", None)
    out = merge(data, update)
    if isinstance(flat, Mapping):
        out["overrides"] = {**(data.get("overrides") or {}), **flatten(flat)}
    return out
