"""The recipe's default fidelity ladder, rung cost estimates and the LR-schedule horizon.

Common practice tunes speech models on a ladder of cheap approximations: a few epochs of a
shallow model on a sliver of the data first, the full recipe last. :func:`default_ladder`
writes that ladder for a given base recipe and corpus size:

=========  ============  ================  =================
rung       data          model             epochs
=========  ============  ================  =================
low        ~1 %          3 layers          1
medium     ~10 %         6 layers          5
high       100 %         the recipe's      the recipe's
=========  ============  ================  =================

A small corpus (fewer than :data:`SMALL_CORPUS_UTTERANCES` training utterances, e.g. AN4's
858) gets a ladder that cuts epochs only: low = 30 % and medium = 60 % of the recipe's epochs,
on all of the data, with the recipe's model. Measured on AN4 (docs/benchmarks.md), at the same
30 % of the cost, 3 of 10 epochs on all the data ranked 116 configs like full training with
Spearman 0.82 (dev WER) / 0.88 (dev loss), and 10 epochs on 30 % of the data 0.71 / 0.77 (39
configs): there every config needs its updates on all the data to leave CTC's all-blank stage.

A rung's cost relative to the top rung is estimated by :func:`estimate_cost` from the share of
data, the model size and the epochs; a promoted config continues its checkpoint when two rungs
differ only in ``train.epochs`` (:data:`RESUME_KEY`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from speechtune.tuning.search._fidelity import Fidelity, Rung

#: The key whose growth lets a promoted config continue its checkpoint.
RESUME_KEY = "train.epochs"


#: A rung trains on at least this many utterances (or on all of them when the corpus is smaller).
MIN_RUNG_UTTERANCES = 100


#: Keys that choose the training subset.
DATA_KEYS = ("data.proxy_fraction", "data.proxy_hours")


#: Below this many training utterances the default ladder cuts epochs only (module docstring).
SMALL_CORPUS_UTTERANCES = 5000

#: (name, share of the recipe's epochs) of a small corpus' cheap rungs, cheapest first.
_SMALL_CORPUS: tuple[tuple[str, float], ...] = (("low", 0.3), ("medium", 0.6))

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


def estimate_cost(
    base_flat: Mapping[str, Any],
    overrides: Mapping[str, Any],
    *,
    corpus_hours: float | None = None,
) -> float:
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
    (kind_b, share_b), (kind_m, share_m) = (
        _data_share(base_flat, corpus_hours),
        _data_share(merged, corpus_hours),
    )
    # Hours against a fraction with the corpus size unknown cannot be compared: count it as 1.
    data = share_m / share_b if kind_b == kind_m and share_b > 0 else 1.0
    epochs = _num(merged, "train.epochs", 1.0) / max(_num(base_flat, "train.epochs", 1.0), 1e-12)
    layers = _size(merged, "num_layers", "depth_mult") / _size(
        base_flat, "num_layers", "depth_mult"
    )
    width = _size(merged, "d_model", "width_mult") / _size(base_flat, "d_model", "width_mult")
    return max(data * epochs * layers * width**2, 1e-12)


def _size(flat: Mapping[str, Any], key: str, mult: str) -> float:
    """``model.<key>`` times its multiplier ``model.<mult>`` (each 1.0 when not a number)."""
    return max(_num(flat, f"model.{key}", 1.0) * _num(flat, f"model.{mult}", 1.0), 1e-12)


def ladder_costs(
    base_flat: Mapping[str, Any],
    rung_overrides: Sequence[Mapping[str, Any]],
    *,
    corpus_hours: float | None = None,
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
        fidelity.rungs[j].overrides[key]
        for j in range(rung + 1, len(fidelity.rungs))
        if fidelity.continues(rung, j)
    ]
    return int(max(targets)) if targets else None


def estimate_train_utterances(base_flat: Mapping[str, Any]) -> int | None:
    """Training utterances of the base recipe when they are known before the corpus is prepared.

    Only the synthetic corpus announces its size (``data.synthetic.num_utterances``); the dev
    split (``data.dev_fraction``) and a proxy fraction come off it. ``None`` for other corpora,
    and for a base recipe that selects its training data by hours.
    """
    if (
        base_flat.get("data.corpus", "synthetic") != "synthetic"
        or base_flat.get("data.proxy_hours") is not None
    ):
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


def _small_corpus_rungs(base_epochs: int, tuned: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """A small corpus' ladder: fewer epochs of the same recipe on all of the data, then all of them.

    The top rung names the recipe's epochs too, so that every promotion, the last one
    included, continues its checkpoint and pays only the epochs it adds.
    """
    if RESUME_KEY in tuned:
        return [("high", {})]  # the search owns the epochs: nothing left to cut
    cheap = sorted({max(1, round(share * base_epochs)) for _, share in _SMALL_CORPUS})
    cheap = [e for e in cheap if e < base_epochs]
    names = [name for name, _ in _SMALL_CORPUS]  # zip keeps as many as there are cheap rungs
    return [(n, {RESUME_KEY: e}) for n, e in zip(names, cheap)] + [
        ("high", {RESUME_KEY: base_epochs} if cheap else {})
    ]


def _practice_rungs(
    base_flat: Mapping[str, Any],
    n_train: int | None,
    tuned: set[str],
    base_epochs: int,
    base_layers: Any,
) -> list[tuple[str, dict[str, Any]]]:
    """The cheap rungs of common practice: a share of the data, fewer layers, fewer epochs."""
    rungs: list[tuple[str, dict[str, Any]]] = []
    for name, nominal, layers, epochs in _PRACTICE:
        overrides = _data_overrides(base_flat, _rung_share(nominal, n_train))
        if (
            isinstance(base_layers, int)
            and not isinstance(base_layers, bool)
            and layers < base_layers
        ):
            overrides["model.num_layers"] = layers
        if epochs < base_epochs:
            overrides["train.epochs"] = max(1, epochs)
        overrides = {k: v for k, v in overrides.items() if k not in tuned}
        if "data.proxy_fraction" in tuned or "data.proxy_hours" in tuned:
            # Either key decides the subset (hours win): never fix one while the search sets the other.
            overrides = {k: v for k, v in overrides.items() if k not in DATA_KEYS}
        rungs.append((name, overrides))
    return rungs


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
    5 epochs; high = the base recipe. A corpus of fewer than :data:`SMALL_CORPUS_UTTERANCES`
    utterances instead gets low = 30 % and medium = 60 % of the recipe's epochs on all of the
    data (see the module docstring for the measurement). Scaled: a rung's data share is raised to hold at least
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
    if n_train is not None and n_train < SMALL_CORPUS_UTTERANCES:
        ladder = _small_corpus_rungs(base_epochs, tuned)
    else:
        ladder = _practice_rungs(base_flat, n_train, tuned, base_epochs, base_layers)
        ladder.append(("high", {}))
    kept: list[tuple[str, dict[str, Any]]] = []
    for i, (name, overrides) in enumerate(ladder):
        if i + 1 < len(ladder) and overrides == ladder[i + 1][1]:
            continue  # the same rung as the next one up: keep the higher one
        kept.append((name, overrides))
    costs = ladder_costs(base_flat, [o for _, o in kept], corpus_hours=corpus_hours)
    rungs = tuple(Rung(name, overrides, cost) for (name, overrides), cost in zip(kept, costs))
    return Fidelity(rungs, eta=eta, resume_key=RESUME_KEY)
