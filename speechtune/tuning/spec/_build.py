"""A :class:`TuningSpec` from Python arguments (``speechtune.tune``), without a YAML file."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from speechtune._urls import mask_url
from speechtune.metrics import CostModel
from speechtune.tuning.search import STRATEGIES, Fidelity
from speechtune.tuning.space import SearchSpace, parse_space
from speechtune.tuning.spec._fidelity import FidelitySpec
from speechtune.tuning.spec._load import TuningSpec
from speechtune.tuning.spec._sections import ObjectiveSpec, StudySpec


def build_spec(
    space: SearchSpace | Mapping[str, Any],
    *,
    study_name: str = "speechtune",
    n_trials: int = 20,
    sampler: str = "tpe",
    pruner: str = "median",
    seed: int = 0,
    storage: str | None = None,
    n_jobs: int = 1,
    timeout_s: float | None = None,
    oom_retry: bool = False,
    metric: str = "wer",
    group: str = "mean",
    seeds: Sequence[int] = (0,),
    extra_objectives: Sequence[str] = (),
    constraints: Sequence[str] = (),
    scalarize: Mapping[str, float] | None = None,
    space_constraints: Sequence[str] = (),
    fidelity: FidelitySpec | None = None,
    cost: CostModel | None = None,
    direction: str = "minimize",
    confirm_top: int = 0,
    confirm_seeds: Sequence[int] = (),
) -> TuningSpec:
    """A :class:`~speechtune.tuning.TuningSpec` for a Python objective (``objective.kind: python``).

    Args:
        space: a :class:`SearchSpace`, or a dict in the YAML ``space:`` syntax.
        space_constraints: constraints over the config (``"a % b == 0"``), for a dict ``space``.
        confirm_top, confirm_seeds: ``study.confirm_top`` / ``study.confirm_seeds``.
        fidelity: a :class:`~speechtune.tuning.FidelitySpec` for a multi-fidelity study, or None.
        cost: a :class:`speechtune.metrics.CostModel` (grid intensity, prices, TDPs); None: defaults.
        Other arguments: the ``study:`` and ``objective:`` sections of a tuning YAML.

    Returns:
        The spec, with a ``raw`` dict describing it for the record.

    Raises:
        ConfigError: a bad ``space`` dict (every problem listed).
        ValueError: ``confirm_top`` < 0, or a confirmation seed among ``seeds``.
    """
    if confirm_top < 0:
        raise ValueError(f"confirm_top must be >= 0 (got {confirm_top})")
    reused = sorted(set(confirm_seeds) & set(seeds))
    if reused:
        raise ValueError(
            f"confirm_seeds {reused} are among seeds: a confirmation needs seeds the search did "
            "not select on"
        )

    space_record: dict[str, Any]
    if isinstance(space, SearchSpace):
        space_record = {name: repr(param) for name, param in space.params.items()}
    else:
        space_record = dict(space)
        space = parse_space(dict(space), list(space_constraints))
    study = StudySpec(
        name=study_name,
        sampler=sampler,
        pruner=pruner,
        n_trials=n_trials,
        timeout_s=timeout_s,
        seed=seed,
        storage=storage,
        n_jobs=n_jobs,
        oom_retry=oom_retry,
        confirm_top=confirm_top,
        confirm_seeds=[int(x) for x in confirm_seeds],
    )
    objective = ObjectiveSpec(
        kind="python",
        metric=metric,
        group=group,
        seeds=list(seeds),
        extra_objectives=list(extra_objectives),
        constraints=list(constraints),
        scalarize=dict(scalarize or {}),
        direction=direction,
    )
    study_record = {
        k: getattr(study, k)
        for k in (
            "name",
            "sampler",
            "pruner",
            "n_trials",
            "seed",
            "storage",
            "n_jobs",
            "confirm_top",
            "confirm_seeds",
        )
    }
    if study.storage:
        study_record["storage"] = mask_url(study.storage)  # the record never holds a password
    raw: dict[str, Any] = {
        "space": space_record,
        "constraints": list(space.constraints),
        "study": study_record,
        "objective": {
            "kind": "python",
            "metric": metric,
            "group": group,
            "seeds": list(seeds),
            "extra_objectives": list(extra_objectives),
            "constraints": list(constraints),
            "scalarize": dict(scalarize or {}),
            "direction": direction,
        },
    }
    if fidelity is not None:
        raw["fidelity"] = {
            "strategy": fidelity.strategy,
            "eta": fidelity.eta,
            "budget": fidelity.budget,
            "priors": fidelity.priors,
            "warm_start": str(fidelity.warm_start) if fidelity.warm_start else None,
            "rank_metric": fidelity.rank_metric,
            "rungs": [r.as_dict() for r in fidelity.fidelity.rungs],
        }
    cost = cost if cost is not None else CostModel()
    raw["cost"] = dataclasses.asdict(cost)
    return TuningSpec(
        path=None,
        base_recipe={},
        overrides={},
        space=space,
        study=study,
        objective=objective,
        command=None,
        raw=raw,
        fidelity=fidelity,
        cost=cost,
    )


def fidelity_spec(
    fidelity: Fidelity | Mapping[str, Sequence[float]],
    *,
    strategy: str = "speechtune",
    eta: int | None = None,
    budget: float | None = None,
    priors: bool = True,
    warm_start: str | Path | None = None,
    warm_start_top_k: int = 3,
    rank_metric: str | None = None,
) -> FidelitySpec:
    """A :class:`~speechtune.tuning.FidelitySpec` from :func:`tune`'s arguments.

    Args:
        fidelity: a :class:`~speechtune.tuning.Fidelity`; or ``{key: [budgets]}`` with one key,
            e.g. ``{"epochs": [1, 3, 9, 27]}`` (the objective reads ``config["epochs"]``; a
            promoted config continues, see :meth:`Fidelity.from_budgets`).
        Other arguments: the ``fidelity:`` section of a tuning YAML.

    Raises:
        ValueError: a fidelity of another shape, or a warm start path that does not exist.
    """

    if strategy not in STRATEGIES:
        raise ValueError(
            f"strategy: unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}"
        )
    if isinstance(fidelity, Mapping):
        if len(fidelity) != 1:
            raise ValueError(
                f"fidelity: give one budget key with its budgets, e.g. {{'epochs': [1, 3, 9]}} (got {dict(fidelity)!r})"
            )
        ((key, budgets),) = fidelity.items()
        fidelity = Fidelity.from_budgets(str(key), list(budgets), eta=eta or 3)
    if not isinstance(fidelity, Fidelity):
        raise ValueError(
            f"fidelity: expected a Fidelity or {{key: [budgets]}}, got {type(fidelity).__name__}"
        )
    if eta is not None and eta != fidelity.eta:
        fidelity = Fidelity(fidelity.rungs, eta=eta, resume_key=fidelity.resume_key)
    if budget is not None and not budget > 0:
        raise ValueError(f"budget must be > 0 full-training units (got {budget!r})")
    warm = Path(warm_start) if warm_start else None
    if warm is not None and not warm.exists():
        raise ValueError(
            f"warm_start: {warm} does not exist (expected a previous run directory or a best.yaml)"
        )
    return FidelitySpec(
        strategy=strategy,
        eta=fidelity.eta,
        budget=budget,
        priors=priors,
        warm_start=warm,
        warm_start_top_k=warm_start_top_k,
        rank_metric=rank_metric,
        fidelity=fidelity,
    )
