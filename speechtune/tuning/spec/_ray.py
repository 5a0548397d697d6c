"""The optional ``ray:`` section of a tuning YAML (the Ray Tune backend); no Ray import here.

Every problem is collected as a :class:`~speechtune.config.ConfigProblem` with its dotted key
(``ray.pbt.perturbation_interval``...), the rule it breaks and the value received, like the rest
of the tuning YAML (see :mod:`speechtune.tuning._spec`).

Example::

    ray:
      scheduler: asha            # fifo | asha | hyperband | pbt | pb2
      grace_period: 1            # epochs before ASHA/HyperBand may stop a trial
      reduction_factor: 3
      max_t: 9                   # default: the recipe's train.epochs
      pbt: {perturbation_interval: 2, hyperparam_mutations: [optim.lr, model.dropout], synch: false}
      resources_per_trial: {cpu: 1, gpu: 0.25}
      max_concurrent_trials: 4
      max_failures: 2            # a trial whose worker/node died resumes from its checkpoint
      checkpoint_every: 1        # epochs
      stop: {plateau: {metric: wer, patience: 3, min_delta: 0.001}, time_budget_s: 3600}
      address: auto              # or ray://host:10001, or host:6379; default: a local Ray
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from speechtune.config import ConfigProblem
from speechtune.tuning.spec._checks import (
    checked_entries,
)
from speechtune.tuning.spec._checks import (
    close_matches as _close,
)
from speechtune.tuning.spec._checks import (
    is_int as _is_int,
)
from speechtune.tuning.spec._checks import (
    is_num as _is_num,
)

RAY_SCHEDULERS = ("fifo", "asha", "hyperband", "pbt", "pb2")


#: Keys PBT perturbs by default (those of them that the space searches).
DEFAULT_MUTATIONS = ("optim.lr", "model.dropout")


_ADDRESS = re.compile(r"^(auto|ray://[A-Za-z0-9_.\-\[\]:]+:\d+|[A-Za-z0-9_.\-\[\]:]+:\d+)$")


@dataclass(frozen=True)
class PbtSpec:
    """``ray.pbt``: Population Based Training (and PB2).

    ``hyperparam_mutations`` maps a searched key to ``"space"`` (resample/perturb within its
    range in ``space``) or to a list of values; None: :data:`DEFAULT_MUTATIONS` found in the space.
    """

    perturbation_interval: int = 1
    hyperparam_mutations: dict[str, Any] | None = None
    quantile_fraction: float = 0.25
    resample_probability: float = 0.25
    # True: every trial waits at each perturbation point for the others (deterministic exploits).
    synch: bool = False


@dataclass(frozen=True)
class ResourcesSpec:
    """``ray.resources_per_trial``: CPUs and (possibly fractional) GPUs per trial."""

    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class PlateauSpec:
    """``ray.stop.plateau``: stop a trial whose ``metric`` improved by <= ``min_delta`` for ``patience`` epochs."""

    metric: str | None = None  # None: the study's primary metric
    patience: int = 3
    min_delta: float = 0.0


@dataclass(frozen=True)
class StopSpec:
    """``ray.stop``: per-trial plateau stopping and a global budget for the whole experiment."""

    plateau: PlateauSpec | None = None
    time_budget_s: float | None = None
    compute_budget_epochs: int | None = None


@dataclass(frozen=True)
class RaySpec:
    """The ``ray:`` section of a tuning YAML; every field has a default (see the module docstring)."""

    scheduler: str = "fifo"
    grace_period: int = 1
    reduction_factor: float = 3.0
    max_t: int | None = None  # None: the recipe's train.epochs (100 when unknown)
    pbt: PbtSpec = field(default_factory=PbtSpec)
    resources_per_trial: ResourcesSpec = field(default_factory=ResourcesSpec)
    max_concurrent_trials: int | None = None
    max_failures: int = 2
    checkpoint_every: int = 1
    stop: StopSpec = field(default_factory=StopSpec)
    address: str | None = None

    def mutation_keys(self, searched: Collection[str]) -> list[str]:
        """The keys PBT/PB2 perturb: the configured ones, else the defaults that ``searched`` holds."""
        if self.pbt.hyperparam_mutations is not None:
            return list(self.pbt.hyperparam_mutations)
        return [k for k in DEFAULT_MUTATIONS if k in searched]


def valid_address(value: Any) -> bool:
    """``auto``, ``ray://host:port`` or ``host:port``."""
    return isinstance(value, str) and bool(_ADDRESS.match(value.strip()))


_Check = tuple[Any, str]


_pos_int: _Check = (lambda v: _is_int(v) and v >= 1, "must be an int >= 1")


_TOP: dict[str, _Check] = {
    "scheduler": (
        lambda v: v in RAY_SCHEDULERS,
        f"unknown scheduler; valid schedulers: {', '.join(RAY_SCHEDULERS)}",
    ),
    "grace_period": _pos_int,
    "reduction_factor": (lambda v: _is_num(v) and v > 1, "must be a number > 1"),
    "max_t": (
        lambda v: v is None or (_is_int(v) and v >= 1),
        "must be an int >= 1 (epochs) or null",
    ),
    "max_concurrent_trials": (
        lambda v: v is None or (_is_int(v) and v >= 1),
        "must be an int >= 1 or null",
    ),
    "max_failures": (
        lambda v: _is_int(v) and v >= -1,
        "must be an int >= 0 (or -1: retry forever)",
    ),
    "checkpoint_every": _pos_int,
    "address": (
        lambda v: v is None or valid_address(v),
        "must be 'auto', 'ray://host:port', 'host:port' or null",
    ),
}


_PBT: dict[str, _Check] = {
    "perturbation_interval": _pos_int,
    "hyperparam_mutations": (
        lambda v: v is None or isinstance(v, (list, Mapping)),
        "must be a list of searched keys, or a mapping key -> 'space' | list of values",
    ),
    "quantile_fraction": (lambda v: _is_num(v) and 0 < v <= 0.5, "must be a number in (0, 0.5]"),
    "resample_probability": (lambda v: _is_num(v) and 0 <= v <= 1, "must be a number in [0, 1]"),
    "synch": (lambda v: isinstance(v, bool), "must be true or false"),
}


_RESOURCES: dict[str, _Check] = {
    "cpu": (lambda v: _is_num(v) and v >= 0, "must be a number >= 0"),
    "gpu": (
        lambda v: _is_num(v) and v >= 0 and (v <= 1 or float(v).is_integer()),
        "must be a number >= 0: a fraction <= 1 (e.g. 0.25: four trials share one GPU) or a whole number",
    ),
}


_PLATEAU: dict[str, _Check] = {
    "metric": (
        lambda v: v is None or (isinstance(v, str) and bool(v.strip())),
        "must be a metric name or null",
    ),
    "patience": _pos_int,
    "min_delta": (lambda v: _is_num(v) and v >= 0, "must be a number >= 0"),
}


_STOP: dict[str, _Check] = {
    "plateau": (
        lambda v: v is None or isinstance(v, Mapping),
        "must be a mapping (metric, patience, min_delta) or null",
    ),
    "time_budget_s": (
        lambda v: v is None or (_is_num(v) and v > 0),
        "must be a number > 0 (seconds) or null",
    ),
    "compute_budget_epochs": (
        lambda v: v is None or (_is_int(v) and v >= 1),
        "must be an int >= 1 (epochs, all trials) or null",
    ),
}


_FLOATS = {
    "reduction_factor",
    "cpu",
    "gpu",
    "min_delta",
    "time_budget_s",
    "quantile_fraction",
    "resample_probability",
}


def _fields(
    data: Any, key: str, checks: Mapping[str, _Check], problems: list[ConfigProblem]
) -> dict[str, Any]:
    """The valid entries of mapping ``data`` (at dotted ``key``); every bad one becomes a problem."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        problems.append(ConfigProblem(key, "must be a mapping", data))
        return {}
    entries = checked_entries(data, key, checks, problems)
    return {
        name: float(value) if name in _FLOATS and value is not None else value
        for name, value in entries.items()
    }


def _mutations(
    value: Any, searched: Mapping[str, str] | None, problems: list[ConfigProblem]
) -> dict[str, Any] | None:
    """Normalise ``hyperparam_mutations`` to ``{key: 'space' | [values]}``; check the keys are searched."""
    if value is None:
        return None
    key = "ray.pbt.hyperparam_mutations"
    items = dict.fromkeys(value, "space") if isinstance(value, list) else dict(value)
    out: dict[str, Any] = {}
    for name, how in items.items():
        if not isinstance(name, str):
            problems.append(ConfigProblem(key, "keys must be dotted config keys", name))
            continue
        if how == "space":
            if searched is not None and name not in searched:
                hint = _close(name, list(searched))
                problems.append(
                    ConfigProblem(
                        f"{key}.{name}",
                        f"is not a float, int or categorical param of space{hint}",
                        name,
                    )
                )
                continue
        elif not (isinstance(how, list) and how):
            problems.append(
                ConfigProblem(
                    f"{key}.{name}", "must be 'space' or a non-empty list of values", how
                )
            )
            continue
        out[name] = how
    if not out and not problems:
        problems.append(ConfigProblem(key, "must name at least one key to perturb", value))
    return out


def parse_ray(
    raw: Any,
    problems: list[ConfigProblem],
    *,
    searched: Mapping[str, str] | None = None,
    multi_objective: bool = False,
) -> RaySpec | None:
    """Check the ``ray:`` section and build a :class:`RaySpec` (None when the section is absent).

    Args:
        raw: the section as read from YAML (None when absent).
        problems: where every problem found is appended.
        searched: the space's tunable params, name -> kind (``float``, ``int``, ``categorical``);
            used to check PBT's mutation keys. None skips that check.
        multi_objective: the study has several objectives (Ray schedulers rank by one value).

    Returns:
        The spec built from the valid values (defaults elsewhere), or None for an absent section.
    """
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        problems.append(ConfigProblem("ray", "must be a mapping", raw))
        return None
    nested = {"pbt", "resources_per_trial", "stop"}
    # The nested sections are valid keys here too (so a typo among them is suggested), parsed below.
    checks = {**_TOP, **{k: (lambda v: True, "") for k in sorted(nested)}}
    top = {k: v for k, v in _fields(raw, "ray", checks, problems).items() if k not in nested}
    pbt = _fields(raw.get("pbt"), "ray.pbt", _PBT, problems)
    resources = _fields(
        raw.get("resources_per_trial"), "ray.resources_per_trial", _RESOURCES, problems
    )
    stop = _fields(raw.get("stop"), "ray.stop", _STOP, problems)
    plateau = None
    if stop.get("plateau") is not None:
        plateau = PlateauSpec(**_fields(stop["plateau"], "ray.stop.plateau", _PLATEAU, problems))
    stop["plateau"] = plateau
    if "hyperparam_mutations" in pbt:
        pbt["hyperparam_mutations"] = _mutations(pbt["hyperparam_mutations"], searched, problems)
    spec = RaySpec(
        **top,
        pbt=PbtSpec(**pbt),
        resources_per_trial=ResourcesSpec(**resources),
        stop=StopSpec(**stop),
    )
    if (
        spec.scheduler in ("pbt", "pb2")
        and searched is not None
        and not spec.mutation_keys(searched)
    ):
        problems.append(
            ConfigProblem(
                "ray.pbt.hyperparam_mutations",
                f"none of the default keys ({', '.join(DEFAULT_MUTATIONS)}) is searched in space; "
                "list the keys PBT should perturb",
                None,
            )
        )
    if spec.scheduler == "pb2" and searched is not None:
        # PB2 models continuous bounds: every perturbed key must be a float or int range of space.
        for name in spec.mutation_keys(searched):
            how = (spec.pbt.hyperparam_mutations or {}).get(name, "space")
            if how != "space" or searched.get(name) not in ("float", "int"):
                problems.append(
                    ConfigProblem(
                        f"ray.pbt.hyperparam_mutations.{name}",
                        "PB2 perturbs only float/int ranges of space",
                        how,
                    )
                )
    if (
        spec.scheduler in ("asha", "hyperband")
        and spec.max_t is not None
        and spec.grace_period > spec.max_t
    ):
        problems.append(
            ConfigProblem(
                "ray.grace_period", f"must be <= ray.max_t ({spec.max_t})", spec.grace_period
            )
        )
    if multi_objective:
        problems.append(
            ConfigProblem(
                "ray",
                "the Ray backend ranks trials by one value: drop objective.extra_objectives or fold them in with "
                "objective.scalarize (or use the optuna backend)",
                None,
            )
        )
    return spec
