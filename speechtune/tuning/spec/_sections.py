"""The ``study:``, ``objective:``, ``command:`` and ``cost:`` sections: their records and value checks.

Each section is a frozen dataclass built from the YAML mapping after every key has been checked
(:func:`~speechtune.tuning.spec._checks.checked_entries`): an unknown key gets a did-you-mean
suggestion, a bad value its rule and the value received.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from speechtune.config import (
    ConfigProblem,
)
from speechtune.tuning.space import ExprError, parse_expression
from speechtune.tuning.spec._checks import (
    checked_entries,
)
from speechtune.tuning.spec._checks import (
    is_int as _is_int,
)
from speechtune.tuning.spec._checks import (
    is_num as _is_num,
)

SAMPLERS = ("tpe", "gp", "random", "cmaes", "qmc", "nsga2")


PRUNERS = ("median", "percentile", "sha", "hyperband", "wilcoxon", "none")


OBJECTIVE_KINDS = ("recipe", "command", "python")


GROUPS = ("mean", "worst_group")
#: Which way the primary objective is optimised.
DIRECTIONS = ("minimize", "maximize")


# Samplers that refuse a multi-objective study (Optuna raises at the first trial).
_SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)


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
    #: Re-runs of a config whose trial was killed (its process died) or interrupted (Ctrl-C).
    max_retries: int = 2
    #: A new single-objective recipe study trains the base recipe's own config (the defaults)
    #: as its first trial: a sampler would try it only by chance, and a search that never
    #: measured its starting point cannot show it improved on it.
    baseline: bool = True
    #: After the search, train this many of its best configs (and the baseline) again on
    #: ``confirm_seeds`` and pick by their mean there (0: off). A single-seed pick near
    #: sensible defaults is partly the luckiest seed; see :mod:`speechtune.tuning.study._confirm`.
    confirm_top: int = 0
    #: The confirmation's seeds, none of ``objective.seeds``; empty: the two after them.
    confirm_seeds: list[int] = field(default_factory=list)


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
    #: ``minimize`` (WER, loss) or ``maximize`` (BLEU, accuracy) the primary metric. Extra
    #: objectives are always minimised.
    direction: str = "minimize"

    @property
    def is_multi_objective(self) -> bool:
        """True when ``extra_objectives`` is set and not folded into one value by ``scalarize``."""
        return bool(self.extra_objectives) and not self.scalarize

    @property
    def primary_metric(self) -> str:
        """The metric optimised first: ``metric``, or ``worst_group_wer`` for group worst_group."""
        return "worst_group_wer" if self.group == "worst_group" else str(self.metric)

    @property
    def names(self) -> list[str]:
        """The names of the study's objectives, primary first."""
        primary = self.primary_metric
        if self.scalarize:
            terms = " + ".join(f"{w:g}*{m}" for m, w in self.scalarize.items())
            return [f"{primary} + {terms}"]
        if self.is_multi_objective:
            return [primary, *self.extra_objectives]
        return [primary]

    def values(self, metrics: Mapping[str, float]) -> list[float]:
        """The objective value(s) of one run from its final metrics.

        Raises:
            KeyError: when a needed metric is missing (the message lists the metrics reported).
        """

        def get(name: str) -> float:
            if name not in metrics:
                reported = ", ".join(sorted(metrics)) or "none"
                raise KeyError(
                    f"the objective did not report metric {name!r} (reported: {reported})"
                )
            return float(metrics[name])

        primary = get(self.primary_metric)
        if self.scalarize:
            return [primary + sum(float(w) * get(m) for m, w in self.scalarize.items())]
        if self.is_multi_objective:
            return [primary, *(get(m) for m in self.extra_objectives)]
        return [primary]


@dataclass(frozen=True)
class CommandSpec:
    """The ``command:`` section (``objective.kind: command``)."""

    argv: list[str] = field(default_factory=list)
    overrides: str | None = None
    metric_regex: str | None = None
    timeout_s: float | None = None
    #: The script's own config (YAML or JSON), relative to the tuning YAML: the top-level
    #: ``overrides:`` and the sampled values are merged into it to make each trial's ``{config}``.
    config_file: str | None = None
    #: Seconds a pruned command gets to stop by itself (it sees ``$SPEECHTUNE_STOP_FILE``)
    #: before its process group is terminated.
    stop_grace_s: float = 10.0


_Check = tuple[Any, str]  # (predicate, rule)


_STUDY_CHECKS: dict[str, _Check] = {
    "name": (lambda v: isinstance(v, str) and bool(v.strip()), "must be a non-empty string"),
    "sampler": (
        lambda v: v in SAMPLERS,
        f"unknown sampler; valid samplers: {', '.join(SAMPLERS)}",
    ),
    "pruner": (lambda v: v in PRUNERS, f"unknown pruner; valid pruners: {', '.join(PRUNERS)}"),
    "n_trials": (lambda v: _is_int(v) and v >= 1, "must be an int >= 1"),
    "timeout_s": (lambda v: v is None or (_is_num(v) and v > 0), "must be a number > 0 or null"),
    "seed": (lambda v: v is None or _is_int(v), "must be an int or null"),
    "storage": (
        lambda v: v is None or (isinstance(v, str) and bool(v)),
        "must be null, 'journal' or a storage URL",
    ),
    "n_jobs": (
        lambda v: _is_int(v) and (v >= 1 or v == -1),
        "must be an int >= 1 (or -1: one per CPU)",
    ),
    "oom_retry": (lambda v: isinstance(v, bool), "must be true or false"),
    "max_retries": (
        lambda v: _is_int(v) and v >= 0,
        "must be an int >= 0 (re-runs of a killed or interrupted trial's config)",
    ),
    "baseline": (
        lambda v: isinstance(v, bool),
        "must be true or false (train the base recipe's defaults as the first trial)",
    ),
    "confirm_top": (
        lambda v: _is_int(v) and v >= 0,
        "must be an int >= 0 (the best configs trained again on new seeds; 0: none)",
    ),
    "confirm_seeds": (
        lambda v: isinstance(v, list) and all(map(_is_int, v)) and len(set(v)) == len(v),
        "must be a list of distinct ints (empty: the two seeds after objective.seeds)",
    ),
}


def _valid_expr(v: Any) -> bool:
    try:
        parse_expression(v)
    except ExprError:
        return False
    return True


_OBJECTIVE_CHECKS: dict[str, _Check] = {
    "kind": (
        lambda v: v in OBJECTIVE_KINDS,
        f"unknown kind; valid kinds: {', '.join(OBJECTIVE_KINDS)}",
    ),
    "metric": (
        lambda v: isinstance(v, str) and bool(v.strip()),
        "must be a non-empty metric name",
    ),
    "group": (lambda v: v in GROUPS, f"must be one of: {', '.join(GROUPS)}"),
    "seeds": (
        lambda v: isinstance(v, list) and bool(v) and all(map(_is_int, v)),
        "must be a non-empty list of ints",
    ),
    "extra_objectives": (
        lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v),
        "must be a list of metric names",
    ),
    "constraints": (
        lambda v: isinstance(v, list) and all(isinstance(x, str) and _valid_expr(x) for x in v),
        "must be a list of expressions such as 'latency_ms_per_audio_s <= 50'",
    ),
    "scalarize": (
        lambda v: (
            isinstance(v, Mapping) and all(isinstance(k, str) and _is_num(w) for k, w in v.items())
        ),
        "must map metric names to numeric weights",
    ),
    "function": (
        lambda v: (
            v is None
            or (
                isinstance(v, str)
                and re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", v) is not None
            )
        ),
        "must look like MODULE:ATTR, e.g. mypkg.train:objective",
    ),
    "direction": (lambda v: v in DIRECTIONS, "must be minimize or maximize"),
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
    "overrides": (
        lambda v: v is None or isinstance(v, str),
        "must be null or a template such as '--{key}={value}'",
    ),
    "metric_regex": (_valid_regex, "must be null or a valid regular expression"),
    "timeout_s": (lambda v: v is None or (_is_num(v) and v > 0), "must be a number > 0 or null"),
    "config_file": (
        lambda v: v is None or (isinstance(v, str) and v.endswith((".yaml", ".yml", ".json"))),
        "must be null or the path of a .yaml, .yml or .json file (relative to the tuning YAML)",
    ),
    "stop_grace_s": (lambda v: _is_num(v) and v >= 0, "must be a number of seconds >= 0"),
}


def _finite(v: Any) -> bool:
    # .inf / .nan parse as YAML floats; a cost model with them would poison every sum.
    return _is_num(v) and v == v and abs(v) != float("inf")


_COST_CHECKS: dict[str, _Check] = {
    "grid_g_per_kwh": (lambda v: _finite(v) and v >= 0, "must be a number >= 0 (g CO2e per kWh)"),
    "gpu_price_per_hour": (
        lambda v: _finite(v) and v >= 0,
        "must be a number >= 0 (price of one GPU-hour)",
    ),
    "cpu_price_per_hour": (
        lambda v: _finite(v) and v >= 0,
        "must be a number >= 0 (price of one CPU core-hour)",
    ),
    "gpu_tdp_w": (lambda v: _finite(v) and v > 0, "must be a number > 0 (watts per GPU)"),
    "cpu_tdp_w_per_core": (
        lambda v: _finite(v) and v > 0,
        "must be a number > 0 (watts per CPU core)",
    ),
    "currency": (
        lambda v: isinstance(v, str) and bool(v.strip()),
        "must be a non-empty string such as USD",
    ),
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
