"""The ``fidelity:`` section of a tuning YAML, parsed into a :class:`FidelitySpec`::

    fidelity:
      strategy: speechtune        # random | hyperband | asha | bohb | speechtune
      eta: 3                      # int >= 2
      budget: 12                  # total compute in full-training units; null = study.n_trials jobs
      priors: true                # sample from the space's priors
      warm_start: null            # a previous run dir or best.yaml (relative to the tuning YAML)
      warm_start_top_k: 3
      rank_metric: dev_loss       # ranks configs at the cheaper rungs (WER ties at ~1.0 early on);
                                  # the default for a recipe objective on wer/cer; null: the objective
      baseline: true              # recipe: train the base recipe's config first, at the top rung
      rungs:                      # optional for the recipe (default: default_ladder), cheapest first
        - {name: low, overrides: {data.proxy_fraction: 0.05, train.epochs: 2}}
        - {name: medium, overrides: {data.proxy_fraction: 0.3, train.epochs: 4}, cost: 0.4}
        - {name: high, overrides: {}}

A rung's ``cost`` (relative to the top rung) defaults to the recipe's estimate
(:func:`speechtune.tuning.search.estimate_cost`); other objective kinds must give it for every
rung but the top. Every problem is collected with its dotted key, like the rest of the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechtune.config import (
    ConfigError,
    ConfigProblem,
    config_from_dict,
    flatten,
    unflatten,
)
from speechtune.tuning.search import (
    RESUME_KEY,
    STRATEGIES,
    Fidelity,
    Rung,
    default_ladder,
    estimate_train_utterances,
    ladder_costs,
)
from speechtune.tuning.spec._checks import (
    checked_entries,
)
from speechtune.tuning.spec._checks import (
    close_matches as _did_you_mean,
)
from speechtune.tuning.spec._checks import (
    is_int as _is_int,
)
from speechtune.tuning.spec._checks import (
    is_num as _is_num,
)

_SECTION_KEYS = (
    "strategy",
    "eta",
    "budget",
    "priors",
    "warm_start",
    "warm_start_top_k",
    "rank_metric",
    "baseline",
    "rungs",
)


_RUNG_KEYS = ("name", "overrides", "cost")


def _single_rung() -> Fidelity:
    return Fidelity((Rung("high"),), resume_key=RESUME_KEY)


@dataclass(frozen=True)
class FidelitySpec:
    """The ``fidelity:`` section of a tuning YAML: how a multi-fidelity search spends its budget.

    Attributes:
        strategy: one of :data:`STRATEGIES`.
        eta: promotion ratio (int >= 2): the best ``1/eta`` of a rung go up.
        budget: total compute in full-training units (the study stops when spent); ``None``
            means ``study.n_trials`` jobs.
        priors: sample from the space's priors.
        warm_start: an existing previous run dir or ``best.yaml`` (absolute), or ``None``.
        warm_start_top_k: how many of the previous run's best configs seed the search.
        rank_metric: the metric that ranks configs at the rungs below the top (None: the
            objective). Early in CTC training the WER of every config is ~1.0 (all-blank
            output), so a cheap rung's WER ties; its dev loss or CER still separates configs.
        baseline: a recipe study first trains the base recipe's own config (the defaults) at
            the top rung, so that it competes for the best config however the cheap rungs rank
            it (one full training of the budget); with priors, the priors' own config is then
            the first new one (without a recipe baseline it is the baseline). False: neither.
        fidelity: the ladder (cheapest first; costs relative to the top rung).
        default_rungs: True when the YAML gave no ``rungs`` and ``fidelity`` is
            :func:`default_ladder`'s.
        n_train: the training-set size the default ladder was scaled to (``None``: unknown when
            the file was loaded; see :meth:`with_corpus_size`).
    """

    strategy: str = "speechtune"
    eta: int = 3
    budget: float | None = None
    priors: bool = True
    warm_start: Path | None = None
    warm_start_top_k: int = 3
    rank_metric: str | None = None
    baseline: bool = True
    fidelity: Fidelity = field(default_factory=_single_rung)
    default_rungs: bool = False
    n_train: int | None = None

    def with_corpus_size(
        self,
        base_flat: Mapping[str, Any],
        n_train: int,
        tuned_keys: Collection[str],
        *,
        corpus_hours: float | None = None,
    ) -> FidelitySpec:
        """The default ladder rescaled to a measured training set; ``self`` when the YAML gave rungs.

        Call it once the corpus is prepared when ``default_rungs`` is set and ``n_train`` was
        unknown at load time (corpora other than the synthetic one).
        """
        if not self.default_rungs:
            return self
        ladder = default_ladder(
            base_flat, n_train, tuned_keys, self.eta, corpus_hours=corpus_hours
        )
        return dataclasses.replace(self, fidelity=ladder, n_train=n_train)


#: What ranks a recipe study's cheap rungs when the YAML does not say. On AN4 (116 configs,
#: docs/benchmarks.md) the dev loss after epoch k of 10 ranked configs like the final WER better
#: than the WER after epoch k at every k from 1 to 4 (Spearman 0.35/0.73/0.88/0.93 against
#: 0.06/0.65/0.82/0.90): early in CTC training every WER sits near 1.0 and ties.
DEFAULT_RANK_METRIC = "dev_loss"

#: Objectives whose cheap rungs a dev loss ranks by default (error rates that tie at ~1.0 early),
#: and which loss: a worst-group objective's is the worst group's dev loss. Ranked by the mean
#: dev loss, a worst-group study on AN4 tried exactly the configs of the mean-WER study (the same
#: 26 trials; docs/benchmarks.md): the groups counted only at the top rung.
LOSS_RANKED_METRICS = {
    "wer": DEFAULT_RANK_METRIC,
    "cer": DEFAULT_RANK_METRIC,
    "worst_group_wer": "worst_group_dev_loss",
}

#: Recipe keys that reweight the training loss, so that the dev loss (the training objective)
#: of two configs that differ in them is not one quantity: with ``model.ctc_weight`` 0.8 the
#: dev loss is mostly CTC loss, with 0.2 mostly attention loss, which sits on another scale.
#: The AN4 equal-time study tuned ``ctc_weight`` (0.2-0.8) and ``interctc_weight`` and ranked its
#: cheap rung by that mixture. A space that tunes any of them ranks by the last layer's CTC loss
#: alone (:data:`CTC_RANKED_METRICS`), which is what greedy CTC decoding reads.
LOSS_WEIGHT_KEYS = frozenset(
    {"model.ctc_weight", "model.interctc_weight", "model.interctc_layer", "model.head"}
)

#: The rank metrics of :data:`LOSS_RANKED_METRICS` for a space that tunes a loss weight.
CTC_RANKED_METRICS = {
    "wer": "dev_ctc_loss",
    "cer": "dev_ctc_loss",
    "worst_group_wer": "worst_group_dev_ctc_loss",
}


def default_rank_metric(metric: str | None, tuned_keys: Collection[str]) -> str | None:
    """The rank metric of a recipe study's cheap rungs when ``fidelity.rank_metric`` is not set.

    An error-rate objective ranks by the dev loss (or the worst group's), or, when the space
    tunes a key of :data:`LOSS_WEIGHT_KEYS`, by the CTC part of it that those keys leave
    comparable; another objective (None) keeps the objective itself.
    """
    if metric not in LOSS_RANKED_METRICS:
        return None
    if LOSS_WEIGHT_KEYS.intersection(tuned_keys):
        return CTC_RANKED_METRICS[metric]
    return LOSS_RANKED_METRICS[metric]


_SECTION_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "strategy": (
        lambda v: v in STRATEGIES,
        f"unknown strategy; valid strategies: {', '.join(STRATEGIES)}",
    ),
    "eta": (lambda v: _is_int(v) and v >= 2, "must be an int >= 2"),
    "budget": (
        lambda v: v is None or (_is_num(v) and v > 0),
        "must be a number > 0 (full-training units) or null",
    ),
    "priors": (lambda v: isinstance(v, bool), "must be true or false"),
    "baseline": (lambda v: isinstance(v, bool), "must be true or false"),
    "warm_start": (
        lambda v: v is None or (isinstance(v, str) and bool(v)),
        "must be null or a path",
    ),
    "warm_start_top_k": (lambda v: _is_int(v) and v >= 1, "must be an int >= 1"),
    "rank_metric": (
        lambda v: v is None or (isinstance(v, str) and bool(v.strip())),
        "must be null or a metric name (e.g. dev_loss or cer) that ranks configs at the cheaper rungs",
    ),
}


def parse_fidelity(
    section: Any,
    *,
    here: Path,
    kind: str,
    base_flat: Mapping[str, Any],
    recipe_keys: Sequence[str] | None,
    tuned_keys: Collection[str],
    problems: list[ConfigProblem],
    metric: str | None = None,
) -> FidelitySpec | None:
    """Check a tuning YAML's ``fidelity:`` section and build its :class:`FidelitySpec`.

    Every problem is appended to ``problems`` (keys such as ``fidelity.rungs[1].overrides.train.epoch``).

    Args:
        section: the raw ``fidelity:`` value (``None``: no multi-fidelity search).
        here: directory of the tuning YAML (``warm_start`` is relative to it).
        kind: ``objective.kind``; rungs of a ``recipe`` objective must use recipe keys, and
            only the recipe has a default ladder and estimated costs.
        base_flat: the flat base recipe (base recipe + overrides) the rungs apply over.
        recipe_keys: every recipe key (``None`` for other objective kinds).
        tuned_keys: the keys the search space sets (a rung may not fix them).
        problems: where problems go.
        metric: the objective's primary metric. A recipe objective that minimises an error
            rate (:data:`LOSS_RANKED_METRICS`) and sets no ``rank_metric`` key ranks the cheap
            rungs by ``dev_loss`` (see :data:`DEFAULT_RANK_METRIC`), or ``worst_group_dev_loss``
            for ``worst_group_wer``; by ``dev_ctc_loss`` / ``worst_group_dev_ctc_loss`` when
            the space tunes a loss weight (:func:`default_rank_metric`); ``rank_metric: null``
            keeps the objective.

    Returns:
        The spec, or ``None`` when there is no section or it has problems.
    """
    if section is None:
        return None
    if not isinstance(section, Mapping):
        problems.append(ConfigProblem("fidelity", "must be a mapping", section))
        return None
    found: list[ConfigProblem] = []
    # `rungs` is checked rung by rung below.
    others = {k: v for k, v in section.items() if k != "rungs"}
    kwargs: dict[str, Any] = checked_entries(
        others, "fidelity", _SECTION_CHECKS, found, valid=list(_SECTION_KEYS)
    )
    if kwargs.get("budget") is not None:
        kwargs["budget"] = float(kwargs["budget"])
    if kind == "recipe" and "rank_metric" not in section:
        kwargs["rank_metric"] = default_rank_metric(metric, tuned_keys)
    if kwargs.get("warm_start") is not None:
        path = (here / kwargs["warm_start"]).resolve()
        if not path.exists():
            found.append(
                ConfigProblem(
                    "fidelity.warm_start",
                    f"no such run dir or file ({path})",
                    kwargs["warm_start"],
                )
            )
        kwargs["warm_start"] = path
    eta = kwargs.get("eta", 3)
    tuned = set(tuned_keys)
    resume_key = RESUME_KEY if kind == "recipe" else None
    n_train = estimate_train_utterances(base_flat) if kind == "recipe" else None
    rungs_raw = section.get("rungs")
    ladder: Fidelity | None = None
    if rungs_raw is None:
        if kind != "recipe":
            rule = f"is required for objective.kind: {kind} (only the recipe has a default ladder)"
            found.append(ConfigProblem("fidelity.rungs", rule, None))
        else:
            ladder = default_ladder(base_flat, n_train, tuned, eta)
    else:
        ladder = _parse_rungs(
            rungs_raw, kind, base_flat, recipe_keys, tuned, eta, resume_key, found
        )
    problems.extend(found)
    if found or ladder is None:
        return None
    return FidelitySpec(
        fidelity=ladder,
        default_rungs=rungs_raw is None,
        n_train=n_train if rungs_raw is None else None,
        **kwargs,
    )


def _parse_rungs(
    rungs_raw: Any,
    kind: str,
    base_flat: Mapping[str, Any],
    recipe_keys: Sequence[str] | None,
    tuned: set[str],
    eta: int,
    resume_key: str | None,
    found: list[ConfigProblem],
) -> Fidelity | None:
    """Rungs written in the YAML: names, overrides (checked against the recipe and the space), costs."""
    if not isinstance(rungs_raw, list) or not rungs_raw:
        rule = "must be a non-empty list of {name, overrides, cost} (cheapest first)"
        found.append(ConfigProblem("fidelity.rungs", rule, rungs_raw))
        return None
    start = len(found)
    names: list[str] = []
    overrides: list[dict[str, Any]] = []
    explicit: list[float | None] = []
    for i, entry in enumerate(rungs_raw):
        where = f"fidelity.rungs[{i}]"
        if not isinstance(entry, Mapping):
            found.append(
                ConfigProblem(
                    where, "must be a mapping with name, overrides and optionally cost", entry
                )
            )
            names.append(f"#{i}")
            overrides.append({"#": i})  # a placeholder that equals no other rung's overrides
            explicit.append(None)
            continue
        for key in entry:
            if key not in _RUNG_KEYS:
                rule = f"unknown key{_did_you_mean(str(key), _RUNG_KEYS)}; valid keys: {', '.join(_RUNG_KEYS)}"
                found.append(ConfigProblem(f"{where}.{key}", rule, entry[key]))
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            found.append(ConfigProblem(f"{where}.name", "is required: a non-empty string", name))
            name = f"#{i}"
        elif name in names:
            rule = f"duplicate rung name (also fidelity.rungs[{names.index(name)}])"
            found.append(ConfigProblem(f"{where}.name", rule, name))
        names.append(name)
        overrides.append(
            _rung_overrides(
                entry.get("overrides"), where, kind, base_flat, recipe_keys, tuned, found
            )
        )
        cost = entry.get("cost")
        if cost is not None and not (_is_num(cost) and cost > 0):
            found.append(
                ConfigProblem(
                    f"{where}.cost",
                    "must be a number > 0 (relative to the top rung) or omitted",
                    cost,
                )
            )
            cost = None
        explicit.append(float(cost) if cost is not None else None)
    for i, o in enumerate(overrides):
        same = [j for j in range(i) if o == overrides[j]]
        if same:
            rule = f"the same as fidelity.rungs[{same[0]}]'s; rungs must differ"
            found.append(ConfigProblem(f"fidelity.rungs[{i}].overrides", rule, o))
    top = len(rungs_raw) - 1
    if explicit[top] is not None and explicit[top] != 1.0:
        rule = "the top (last) rung is the unit of cost: omit it or use 1"
        found.append(ConfigProblem(f"fidelity.rungs[{top}].cost", rule, explicit[top]))
    missing = [i for i in range(top) if explicit[i] is None]
    if kind != "recipe":
        for i in missing:
            rule = (
                f"is required for objective.kind: {kind} (costs are only estimated for the recipe)"
            )
            found.append(ConfigProblem(f"fidelity.rungs[{i}].cost", rule, None))
    # The order is checked even when other rung problems were found (every problem at once):
    # the estimate reads only the numeric values it knows and ignores the rest.
    estimated = ladder_costs(base_flat, overrides) if kind == "recipe" else [1.0] * len(overrides)
    costs = [e if e is not None else c for e, c in zip(explicit, estimated)]
    costs[top] = 1.0
    for i in range(1, len(costs)):
        if kind != "recipe" and missing:
            break
        if costs[i] < costs[i - 1]:
            found.append(
                ConfigProblem(
                    f"fidelity.rungs[{i}]",
                    f"costs {costs[i]:.4g}, less than fidelity.rungs[{i - 1}] ({names[i - 1]!r}, {costs[i - 1]:.4g}): "
                    "list rungs cheapest first, full fidelity last",
                    names[i],
                )
            )
    if len(found) > start:
        return None
    try:
        return Fidelity(
            tuple(Rung(n, o, c) for n, o, c in zip(names, overrides, costs)),
            eta=eta,
            resume_key=resume_key,
        )
    except ValueError as exc:  # every rule is checked above; this is a safety net with the message
        found.append(ConfigProblem("fidelity.rungs", str(exc), rungs_raw))
        return None


def _rung_overrides(
    value: Any,
    where: str,
    kind: str,
    base_flat: Mapping[str, Any],
    recipe_keys: Sequence[str] | None,
    tuned: set[str],
    found: list[ConfigProblem],
) -> dict[str, Any]:
    """One rung's overrides, flat; recipe keys and values checked, keys the space tunes refused."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        found.append(
            ConfigProblem(f"{where}.overrides", "must be a mapping of dotted key -> value", value)
        )
        return {}
    flat = flatten(value)
    for key, v in flat.items():
        if recipe_keys is not None and key not in recipe_keys:
            found.append(
                ConfigProblem(
                    f"{where}.overrides.{key}",
                    f"unknown recipe key{_did_you_mean(key, recipe_keys)}",
                    v,
                )
            )
        elif key in tuned:
            found.append(
                ConfigProblem(
                    f"{where}.overrides.{key}",
                    "conflicts with the search space, which tunes this key: a rung may not fix it "
                    "(remove it from one of them)",
                    v,
                )
            )
    if kind == "recipe" and recipe_keys is not None:
        known = {k: v for k, v in flat.items() if k in recipe_keys}
        try:
            config_from_dict(unflatten({**base_flat, **known}))
        except ConfigError as exc:
            for p in exc.problems:
                if p.key in known:
                    found.append(ConfigProblem(f"{where}.overrides.{p.key}", p.rule, p.value))
    return flat
