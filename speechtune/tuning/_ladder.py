"""The ``fidelity:`` section of a tuning YAML, the recipe's default ladder and rung cost estimates.

The section (parsed by :func:`parse_fidelity` into a :class:`FidelitySpec`)::

    fidelity:
      strategy: speechtune        # random | hyperband | asha | bohb | speechtune
      eta: 3                      # int >= 2
      budget: 12                  # total compute in full-training units; null = study.n_trials jobs
      priors: true                # sample from the space's priors
      warm_start: null            # a previous run dir or best.yaml (relative to the tuning YAML)
      warm_start_top_k: 3
      rank_metric: null           # e.g. dev_loss: ranks configs at the cheaper rungs (WER ties at ~1.0 early on)
      rungs:                      # optional for the recipe (default: default_ladder), cheapest first
        - {name: low, overrides: {data.proxy_fraction: 0.05, train.epochs: 2}}
        - {name: medium, overrides: {data.proxy_fraction: 0.3, train.epochs: 4}, cost: 0.4}
        - {name: high, overrides: {}}

A rung's ``cost`` (relative to the top rung) defaults to :func:`estimate_cost`'s estimate for
the recipe; other objective kinds must give it for every rung but the top. A promoted config
continues its checkpoint when two rungs differ only in ``train.epochs`` (``resume_key``).

Common practice tunes speech models on a ladder of cheap approximations: a few epochs of a
shallow model on a sliver of the data first, the full recipe last. :func:`default_ladder`
writes that ladder for a given base recipe and corpus size:

=========  ============  ================  =================
rung       data          model             epochs
=========  ============  ================  =================
low        ~1 %          3 layers          1
medium     ~10 %         6 layers          5
high       all           the base model    the base epochs
=========  ============  ================  =================

scaled so that it makes sense for the corpus and the recipe at hand: a rung never trains on
fewer than ~100 utterances (or all of them, on a smaller corpus), never has more layers or
epochs than the base recipe, never fixes a key the search space varies, and two rungs that come
out the same collapse into one.

:func:`estimate_cost` is a *planning* figure (data share x epochs x model size, relative to the
base recipe) used to order rungs and to spend a budget; the wall time each trial really took is
measured and reported separately.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechtune.config import ConfigError, ConfigProblem, config_from_dict, flatten, unflatten

from ._checks import checked_entries, close_matches as _did_you_mean, is_int as _is_int, is_num as _is_num
from ._fidelity import Fidelity, Rung
from ._multifidelity import STRATEGIES  # the engine's names are the ones the YAML accepts

__all__ = [
    "DATA_KEYS",
    "FidelitySpec",
    "MIN_RUNG_UTTERANCES",
    "RESUME_KEY",
    "default_ladder",
    "estimate_cost",
    "estimate_train_utterances",
    "ladder_costs",
    "parse_fidelity",
    "schedule_horizon",
    "STRATEGIES",
]

#: The key whose growth lets a promoted config continue its checkpoint.
RESUME_KEY = "train.epochs"
#: A rung trains on at least this many utterances (or on all of them when the corpus is smaller).
MIN_RUNG_UTTERANCES = 100
#: Keys that choose the training subset.
DATA_KEYS = ("data.proxy_fraction", "data.proxy_hours")

# (name, share of the training data, encoder layers, epochs) of the cheap rungs, cheapest first.
_PRACTICE: tuple[tuple[str, float, int, int], ...] = (
    ("low", 0.01, 3, 1),
    ("medium", 0.10, 6, 5),
)


def _num(flat: Mapping[str, Any], key: str, default: float) -> float:
    value = flat.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return default


def _data_share(flat: Mapping[str, Any], corpus_hours: float | None) -> tuple[str, float]:
    """("fraction", f) or ("hours", h): what selects the training subset (hours win, as in prepare_data)."""
    hours = flat.get("data.proxy_hours")
    if isinstance(hours, (int, float)) and not isinstance(hours, bool):
        if corpus_hours:
            return "fraction", min(1.0, float(hours) / corpus_hours)
        return "hours", float(hours)
    return "fraction", min(1.0, _num(flat, "data.proxy_fraction", 1.0))


def estimate_cost(base_flat: Mapping[str, Any], overrides: Mapping[str, Any], *, corpus_hours: float | None = None) -> float:
    """Estimated cost of training ``base_flat`` with ``overrides`` applied, relative to ``base_flat``.

    ``cost = data ratio x epochs ratio x model-size ratio``, where the data ratio compares
    ``data.proxy_fraction`` (or ``data.proxy_hours``, as a share of ``corpus_hours`` when that is
    known; two hour figures are compared directly), the epochs ratio compares ``train.epochs``,
    and the model-size ratio is ``(num_layers ratio) x (d_model ratio)^2`` (the encoder's
    compute grows about linearly with depth and quadratically with width). Everything else
    (batch size, features, per-epoch dev decoding) is taken as unchanged. This is an estimate
    for planning a budget; a rung's ``cost:`` in the YAML replaces it.

    Args:
        base_flat: the base recipe, flat (dotted keys); the reference of cost 1.
        overrides: flat keys applied over it.
        corpus_hours: hours of the full training split, when known.

    Returns:
        The relative cost (> 0); 1.0 when ``overrides`` change nothing it models.
    """
    merged = {**base_flat, **overrides}
    (kind_b, share_b), (kind_m, share_m) = _data_share(base_flat, corpus_hours), _data_share(merged, corpus_hours)
    # Hours against a fraction with the corpus size unknown cannot be compared: count it as 1.
    data = share_m / share_b if kind_b == kind_m and share_b > 0 else 1.0
    epochs = _num(merged, "train.epochs", 1.0) / max(_num(base_flat, "train.epochs", 1.0), 1e-12)
    layers = _num(merged, "model.num_layers", 1.0) / max(_num(base_flat, "model.num_layers", 1.0), 1e-12)
    width = _num(merged, "model.d_model", 1.0) / max(_num(base_flat, "model.d_model", 1.0), 1e-12)
    return max(data * epochs * layers * width**2, 1e-12)


def ladder_costs(
    base_flat: Mapping[str, Any], rung_overrides: list[Mapping[str, Any]], *, corpus_hours: float | None = None
) -> list[float]:
    """:func:`estimate_cost` of each rung relative to the last (top) rung, which costs 1.0."""
    raw = [estimate_cost(base_flat, o, corpus_hours=corpus_hours) for o in rung_overrides]
    return [c / raw[-1] for c in raw]


def schedule_horizon(fidelity: Fidelity, rung: int) -> int | None:
    """``train.schedule_epochs`` for a run at ``rung``: the epochs of the highest rung it can continue to.

    A run that may later be continued to a rung of E epochs must follow an E-epoch lr schedule
    from its first step, or the continued run is not the run it stands for. ``None`` when no
    higher rung continues this one (the run's own ``train.epochs`` is then its horizon), or when
    the ladder does not continue on ``train.epochs``.
    """
    key = fidelity.resume_key
    if key != RESUME_KEY:
        return None
    targets = [
        fidelity.rungs[j].overrides[key] for j in range(rung + 1, len(fidelity.rungs)) if fidelity.continues(rung, j)
    ]
    return int(max(targets)) if targets else None


def estimate_train_utterances(base_flat: Mapping[str, Any]) -> int | None:
    """Training utterances of the base recipe when they are known before the corpus is prepared.

    Only the synthetic corpus announces its size (``data.synthetic.num_utterances``); the dev
    split (``data.dev_fraction``) and a proxy fraction come off it. ``None`` for other corpora,
    and for a base recipe that selects its training data by hours.
    """
    if base_flat.get("data.corpus", "synthetic") != "synthetic" or base_flat.get("data.proxy_hours") is not None:
        return None
    n = _num(base_flat, "data.synthetic.num_utterances", 0.0)
    if n <= 0:
        return None
    n *= 1.0 - _num(base_flat, "data.dev_fraction", 0.0)
    n *= min(1.0, _num(base_flat, "data.proxy_fraction", 1.0))
    return max(1, round(n))


def _rung_share(nominal: float, n_train: int | None) -> float:
    """The share of the training data a rung uses: at least ~MIN_RUNG_UTTERANCES utterances."""
    if n_train is None:
        return nominal  # unknown corpus size: the nominal share, resolved once the data exists
    if n_train <= MIN_RUNG_UTTERANCES:
        return 1.0
    floor = MIN_RUNG_UTTERANCES / n_train
    # Round up (3 decimals) so that rounding never takes a rung below the floor.
    return min(1.0, math.ceil(max(nominal, floor) * 1000) / 1000)


def _data_overrides(base_flat: Mapping[str, Any], share: float) -> dict[str, Any]:
    """Overrides that train on ``share`` of the base recipe's training data."""
    if share >= 1.0:
        return {}
    hours = base_flat.get("data.proxy_hours")
    if isinstance(hours, (int, float)) and not isinstance(hours, bool):
        # prepare_data lets proxy_hours win over proxy_fraction: scale the hours.
        return {"data.proxy_hours": max(round(float(hours) * share, 6), 1e-6)}
    base = min(1.0, _num(base_flat, "data.proxy_fraction", 1.0))
    return {"data.proxy_fraction": max(round(base * share, 6), 1e-6)}


def default_ladder(
    base_flat: Mapping[str, Any],
    n_train: int | None,
    tuned_keys: Collection[str],
    eta: int = 3,
    *,
    corpus_hours: float | None = None,
) -> Fidelity:
    """The default low / medium / high ladder for ``base_flat``, scaled to a corpus of ``n_train`` utterances.

    Nominally low = 1 % of the data, 3 encoder layers, 1 epoch; medium = 10 %, 6 layers,
    5 epochs; high = the base recipe. Scaled: a rung's data share is raised to hold at least
    ~:data:`MIN_RUNG_UTTERANCES` utterances (all of them on a corpus that small), layers and
    epochs never exceed the base recipe's (epochs at least 1), an override of a key in
    ``tuned_keys`` is dropped (the search owns that key), an override equal to the base value
    is left out, and a rung equal to the rung above it is dropped (the higher name stays).

    With ``n_train=None`` (the corpus is not prepared yet and does not announce its size, see
    :func:`estimate_train_utterances`) the nominal shares are used as they are; call this
    again with the measured size once the training split exists to apply the floor.

    The data share is relative to the base recipe's own training set: a base that already
    trains on a proxy (``data.proxy_fraction`` < 1, or ``data.proxy_hours``) gets that proxy
    scaled down.

    Args:
        base_flat: the base recipe, flat (dotted keys), including the tuning file's overrides.
        n_train: training utterances of the base recipe (after the dev split and its proxy).
        tuned_keys: keys the search space sets (none of them is overridden by a rung).
        eta: the promotion ratio stored on the ladder.
        corpus_hours: hours of the training split, for cost estimates with ``data.proxy_hours``.

    Returns:
        A :class:`Fidelity` with ``resume_key="train.epochs"`` and estimated costs (top = 1.0).
    """
    tuned = set(tuned_keys)
    base_epochs = max(1, int(_num(base_flat, "train.epochs", 1)))
    base_layers = base_flat.get("model.num_layers")
    ladder: list[tuple[str, dict[str, Any]]] = []
    for name, nominal, layers, epochs in _PRACTICE:
        overrides = _data_overrides(base_flat, _rung_share(nominal, n_train))
        if isinstance(base_layers, int) and not isinstance(base_layers, bool) and layers < base_layers:
            overrides["model.num_layers"] = layers
        if epochs < base_epochs:
            overrides["train.epochs"] = max(1, epochs)
        overrides = {k: v for k, v in overrides.items() if k not in tuned}
        if "data.proxy_fraction" in tuned or "data.proxy_hours" in tuned:
            # Either key decides the subset (hours win): never fix one while the search sets the other.
            overrides = {k: v for k, v in overrides.items() if k not in DATA_KEYS}
        ladder.append((name, overrides))
    ladder.append(("high", {}))
    kept: list[tuple[str, dict[str, Any]]] = []
    for i, (name, overrides) in enumerate(ladder):
        if i + 1 < len(ladder) and overrides == ladder[i + 1][1]:
            continue  # the same rung as the next one up: keep the higher one
        kept.append((name, overrides))
    costs = ladder_costs(base_flat, [o for _, o in kept], corpus_hours=corpus_hours)
    rungs = tuple(Rung(name, overrides, cost) for (name, overrides), cost in zip(kept, costs))
    return Fidelity(rungs, eta=eta, resume_key=RESUME_KEY)


# ---------------------------------------------------------------------------------------------
# the `fidelity:` section of a tuning YAML

_SECTION_KEYS = ("strategy", "eta", "budget", "priors", "warm_start", "warm_start_top_k", "rank_metric", "rungs")
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
    fidelity: Fidelity = field(default_factory=_single_rung)
    default_rungs: bool = False
    n_train: int | None = None

    def with_corpus_size(
        self, base_flat: Mapping[str, Any], n_train: int, tuned_keys: Collection[str], *, corpus_hours: float | None = None
    ) -> FidelitySpec:
        """The default ladder rescaled to a measured training set; ``self`` when the YAML gave rungs.

        Call it once the corpus is prepared when ``default_rungs`` is set and ``n_train`` was
        unknown at load time (corpora other than the synthetic one).
        """
        if not self.default_rungs:
            return self
        ladder = default_ladder(base_flat, n_train, tuned_keys, self.eta, corpus_hours=corpus_hours)
        return dataclasses.replace(self, fidelity=ladder, n_train=n_train)


_SECTION_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "strategy": (lambda v: v in STRATEGIES, f"unknown strategy; valid strategies: {', '.join(STRATEGIES)}"),
    "eta": (lambda v: _is_int(v) and v >= 2, "must be an int >= 2"),
    "budget": (lambda v: v is None or (_is_num(v) and v > 0), "must be a number > 0 (full-training units) or null"),
    "priors": (lambda v: isinstance(v, bool), "must be true or false"),
    "warm_start": (lambda v: v is None or (isinstance(v, str) and bool(v)), "must be null or a path"),
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
    kwargs: dict[str, Any] = checked_entries(others, "fidelity", _SECTION_CHECKS, found, valid=list(_SECTION_KEYS))
    if kwargs.get("budget") is not None:
        kwargs["budget"] = float(kwargs["budget"])
    if kwargs.get("warm_start") is not None:
        path = (here / kwargs["warm_start"]).resolve()
        if not path.exists():
            found.append(ConfigProblem("fidelity.warm_start", f"no such run dir or file ({path})", kwargs["warm_start"]))
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
        ladder = _parse_rungs(rungs_raw, kind, base_flat, recipe_keys, tuned, eta, resume_key, found)
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
            found.append(ConfigProblem(where, "must be a mapping with name, overrides and optionally cost", entry))
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
        overrides.append(_rung_overrides(entry.get("overrides"), where, kind, base_flat, recipe_keys, tuned, found))
        cost = entry.get("cost")
        if cost is not None and not (_is_num(cost) and cost > 0):
            found.append(ConfigProblem(f"{where}.cost", "must be a number > 0 (relative to the top rung) or omitted", cost))
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
            rule = f"is required for objective.kind: {kind} (costs are only estimated for the recipe)"
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
        return Fidelity(tuple(Rung(n, o, c) for n, o, c in zip(names, overrides, costs)), eta=eta, resume_key=resume_key)
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
        found.append(ConfigProblem(f"{where}.overrides", "must be a mapping of dotted key -> value", value))
        return {}
    flat = flatten(value)
    for key, v in flat.items():
        if recipe_keys is not None and key not in recipe_keys:
            found.append(ConfigProblem(f"{where}.overrides.{key}", f"unknown recipe key{_did_you_mean(key, recipe_keys)}", v))
        elif key in tuned:
            found.append(
                ConfigProblem(
                    f"{where}.overrides.{key}",
                    "conflicts with the search space, which tunes this key: a rung may not fix it (remove it from one of them)",
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
