"""``speechtune.tune``: tune a Python function (or any objective) from Python, no YAML needed."""

from __future__ import annotations

import functools
import inspect
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from ._objectives import FunctionObjective, Objective
from ._space import SearchSpace, parse_space
from ._study import run_study


def _as_objective(objective: Callable[..., Any] | Objective) -> Objective:
    """Plain functions (and lambdas, methods, partials) are wrapped; objective objects are used as is."""
    if isinstance(objective, FunctionObjective) or not callable(objective):
        return objective  # type: ignore[return-value]
    if inspect.isfunction(objective) or inspect.ismethod(objective) or isinstance(objective, functools.partial):
        return FunctionObjective(objective)
    # A callable object: an Objective (RecipeObjective, CommandObjective, a user's class).
    return objective  # type: ignore[return-value]


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
    fidelity: Any = None,
    cost: Any = None,
) -> Any:
    """A :class:`~speechtune.tuning.TuningSpec` for a Python objective (``objective.kind: python``).

    Args:
        space: a :class:`SearchSpace`, or a dict in the YAML ``space:`` syntax.
        space_constraints: constraints over the config (``"a % b == 0"``), for a dict ``space``.
        fidelity: a :class:`~speechtune.tuning.FidelitySpec` for a multi-fidelity study, or None.
        cost: a :class:`speechtune.metrics.CostModel` (grid intensity, prices, TDPs); None: defaults.
        Other arguments: the ``study:`` and ``objective:`` sections of a tuning YAML.

    Returns:
        The spec, with a ``raw`` dict describing it for the record.

    Raises:
        ConfigError: a bad ``space`` dict (every problem listed).
    """
    import dataclasses

    from ._spec import CostModel, ObjectiveSpec, StudySpec, TuningSpec

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
    )
    objective = ObjectiveSpec(
        kind="python",
        metric=metric,
        group=group,
        seeds=list(seeds),
        extra_objectives=list(extra_objectives),
        constraints=list(constraints),
        scalarize=dict(scalarize or {}),
    )
    raw = {
        "space": space_record,
        "constraints": list(space.constraints),
        "study": {k: getattr(study, k) for k in ("name", "sampler", "pruner", "n_trials", "seed", "storage", "n_jobs")},
        "objective": {
            "kind": "python",
            "metric": metric,
            "group": group,
            "seeds": list(seeds),
            "extra_objectives": list(extra_objectives),
            "constraints": list(constraints),
            "scalarize": dict(scalarize or {}),
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
    fidelity: Any,
    *,
    strategy: str = "speechtune",
    eta: int | None = None,
    budget: float | None = None,
    priors: bool = True,
    warm_start: str | Path | None = None,
    warm_start_top_k: int = 3,
    rank_metric: str | None = None,
) -> Any:
    """A :class:`~speechtune.tuning.FidelitySpec` from :func:`tune`'s arguments.

    Args:
        fidelity: a :class:`~speechtune.tuning.Fidelity`; or ``{key: [budgets]}`` with one key,
            e.g. ``{"epochs": [1, 3, 9, 27]}`` (the objective reads ``config["epochs"]``; a
            promoted config continues, see :meth:`Fidelity.from_budgets`).
        Other arguments: the ``fidelity:`` section of a tuning YAML.

    Raises:
        ValueError: a fidelity of another shape, or a warm start path that does not exist.
    """
    from ._fidelity import Fidelity
    from ._ladder import FidelitySpec
    from ._multifidelity import STRATEGIES

    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    if isinstance(fidelity, Mapping):
        if len(fidelity) != 1:
            raise ValueError(f"fidelity: give one budget key with its budgets, e.g. {{'epochs': [1, 3, 9]}} (got {dict(fidelity)!r})")
        (key, budgets), = fidelity.items()
        fidelity = Fidelity.from_budgets(str(key), list(budgets), eta=eta or 3)
    if not isinstance(fidelity, Fidelity):
        raise ValueError(f"fidelity: expected a Fidelity or {{key: [budgets]}}, got {type(fidelity).__name__}")
    if eta is not None and eta != fidelity.eta:
        fidelity = Fidelity(fidelity.rungs, eta=eta, resume_key=fidelity.resume_key)
    if budget is not None and not budget > 0:
        raise ValueError(f"budget must be > 0 full-training units (got {budget!r})")
    warm = Path(warm_start) if warm_start else None
    if warm is not None and not warm.exists():
        raise ValueError(f"warm_start: {warm} does not exist (expected a previous run directory or a best.yaml)")
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


def tune(
    objective: Callable[..., Mapping[str, float]] | Objective,
    space: SearchSpace | Mapping[str, Any],
    *,
    n_trials: int = 20,
    sampler: str = "tpe",
    pruner: str = "median",
    seed: int = 0,
    run_dir: str | Path | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    metric: str = "wer",
    seeds: Sequence[int] = (0,),
    direction: str = "minimize",
    n_jobs: int = 1,
    progress: bool = False,
    resume: bool = False,
    group: str = "mean",
    extra_objectives: Sequence[str] = (),
    constraints: Sequence[str] = (),
    scalarize: Mapping[str, float] | None = None,
    oom_retry: bool = False,
    timeout_s: float | None = None,
    fidelity: Any = None,
    strategy: str = "speechtune",
    budget: float | None = None,
    eta: int | None = None,
    priors: bool = True,
    warm_start: str | Path | None = None,
    rank_metric: str | None = None,
    backend: str = "optuna",
    ray: Any = None,
    cost: Any = None,
) -> optuna.Study:
    """Tune a Python function (or any :class:`~speechtune.tuning.Objective`) with Optuna.

    Example::

        def fn(config, reporter):
            for epoch in range(5):
                wer = ...train one epoch with config["optim.lr"]...
                if reporter.report(epoch, wer=wer):
                    return None  # pruned
            return {"wer": wer}

        study = speechtune.tune(fn, {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
        print(study.best_trial.user_attrs["config"])

    Multi-fidelity: with ``fidelity={"epochs": [1, 3, 9, 27]}`` each trial is one config at one
    budget (``config["epochs"]``); cheap budgets screen many configs, the best ``1/eta`` go up
    (see ``strategy``), and the study stops when ``budget`` full-budget trainings are spent.
    The best config is the best measured at the top budget. For callers who run trials
    themselves, :class:`~speechtune.tuning.MultiFidelitySearch` is the same engine as ask/tell.

    Args:
        objective: ``fn(config, reporter) -> dict[str, float]`` (``config``: flat dict of dotted
            keys; it may also take ``trial_dir`` and ``seed``), or an Objective.
        space: a :class:`SearchSpace`, or a dict in the YAML ``space:`` syntax.
        n_trials: complete + pruned trials to reach (failed trials are replaced).
        sampler: tpe, gp, random, cmaes, qmc or nsga2.
        pruner: median, percentile, sha, hyperband, wilcoxon or none.
        seed: sampler seed (same seed, same sequence of configs).
        run_dir: where the study database, trial dirs and reports go; None keeps the study in
            memory and trial dirs in a temporary directory deleted afterwards (no reports).
        storage: an Optuna storage URL (or "journal"); default SQLite in ``run_dir``.
        study_name: the study's name (default ``speechtune``).
        metric: the metric minimised (a key of the dict ``fn`` returns).
        seeds: >1 seed => the mean over seeds is optimised, the std recorded.
        direction: only ``minimize`` (a metric to maximise can be returned negated).
        n_jobs: parallel trials (threads).
        progress: show a live progress display.
        resume: continue an existing study of this name in ``run_dir``/``storage``.
        group: ``mean`` or ``worst_group`` (optimise ``worst_group_wer``).
        extra_objectives: more metrics to minimise => a multi-objective (Pareto) study.
        constraints: metric constraints such as ``"latency_ms <= 50"``.
        scalarize: ``{metric: weight}`` => minimise ``metric + sum(weight * m)`` instead.
        oom_retry: re-run an ``oom`` trial once with half the batch and twice the accumulation.
        timeout_s: stop starting trials after this many seconds.
        fidelity: None (every trial at full fidelity), ``{key: [budgets]}`` or a
            :class:`~speechtune.tuning.Fidelity` ladder (rungs of config overrides).
        strategy: multi-fidelity strategy: speechtune, bohb, hyperband, asha or random.
        budget: stop after this much compute, in full-fidelity trainings (multi-fidelity).
        eta: promotion ratio (default: the ladder's, 3).
        priors: let the space's priors guide the search (strategy speechtune).
        warm_start: a previous run dir or best.yaml whose best configs are tried first and
            whose region becomes the prior.
        rank_metric: a metric the objective returns that ranks configs at the cheaper budgets
            (e.g. ``dev_loss``, when early WERs all sit at 1.0); default: ``metric``.
        backend: ``optuna`` (this process) or ``ray`` (Ray Tune: a local Ray, or the cluster
            that ``ray.address`` names; see :func:`speechtune.tuning._ray.run_ray_study`).
        ray: a :class:`~speechtune.tuning._ray_spec.RaySpec` (scheduler, resources, stoppers)
            for ``backend="ray"``; None: its defaults.
        cost: a :class:`speechtune.metrics.CostModel` pricing each trial's compute (its ``cost``
            user attr) and the study's total (``cost_total``); None: the defaults.

    Returns:
        The Optuna study; trial records are in each trial's ``user_attrs``.

    Raises:
        ValueError: an unknown sampler/pruner or a direction other than ``minimize``.
        ConfigError: a bad ``space`` dict.
    """
    if backend not in ("optuna", "ray"):
        raise ValueError(f"backend: expected 'optuna' or 'ray', got {backend!r}")
    if direction != "minimize":
        raise ValueError(f"direction: only 'minimize' is supported (got {direction!r}); return the negated metric instead")
    obj = _as_objective(objective)
    fspec = None
    if fidelity is not None:
        fspec = fidelity_spec(
            fidelity, strategy=strategy, eta=eta, budget=budget, priors=priors, warm_start=warm_start, rank_metric=rank_metric
        )
    elif budget is not None or warm_start is not None:
        raise ValueError("budget and warm_start need a fidelity (e.g. fidelity={'epochs': [1, 3, 9]})")
    in_memory = run_dir is None and storage is None
    spec = build_spec(
        space,
        study_name=study_name or "speechtune",
        n_trials=n_trials,
        sampler=sampler,
        pruner=pruner,
        seed=seed,
        storage="memory" if in_memory else storage,
        n_jobs=n_jobs,
        timeout_s=timeout_s,
        oom_retry=oom_retry,
        metric=metric,
        group=group,
        seeds=seeds,
        extra_objectives=extra_objectives,
        constraints=constraints,
        scalarize=scalarize,
        fidelity=fspec,
        cost=cost,
    )
    if backend == "ray":
        import dataclasses

        from ._ray import run_ray_study

        spec = dataclasses.replace(spec, ray=ray)
        if run_dir is None:
            with tempfile.TemporaryDirectory(prefix="speechtune-tune-") as tmp:
                # Ray needs a storage path for checkpoints: the study goes to SQLite in the temp dir.
                spec = dataclasses.replace(spec, study=dataclasses.replace(spec.study, storage=None))
                study = run_ray_study(spec, obj, Path(tmp), resume=resume, progress=progress, write_outputs=False)
                return _in_memory_copy(study)
        return run_ray_study(spec, obj, Path(run_dir), resume=resume, progress=progress)
    if run_dir is None:
        # Trial dirs still need a home while the study runs; reports are skipped.
        with tempfile.TemporaryDirectory(prefix="speechtune-tune-") as tmp:
            return run_study(spec, obj, Path(tmp), resume=resume, progress=progress, write_outputs=False)
    return run_study(spec, obj, Path(run_dir), resume=resume, progress=progress)


def _in_memory_copy(study: optuna.Study) -> optuna.Study:
    """A copy of ``study`` in memory (its SQLite file is about to be deleted with its temp dir)."""
    copy = optuna.create_study(study_name=study.study_name, directions=study.directions)
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    copy.add_trials(study.get_trials(deepcopy=False))
    return copy
