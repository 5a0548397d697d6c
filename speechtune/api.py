"""``speechtune.tune``: tune a Python function (or any objective) from Python, no YAML needed."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from speechtune.metrics import CostModel
from speechtune.reports import write_study_outputs
from speechtune.tuning.backends import Backend, run_study
from speechtune.tuning.backends.ray import RayBackend
from speechtune.tuning.objectives import FunctionObjective, Objective
from speechtune.tuning.search import Fidelity
from speechtune.tuning.space import SearchSpace
from speechtune.tuning.spec import RaySpec, TuningSpec, build_spec, fidelity_spec


def _as_objective(objective: Callable[..., Any] | Objective) -> Objective:
    """Plain functions (and lambdas, methods, partials) are wrapped; objective objects are used as is."""
    if isinstance(objective, FunctionObjective) or not callable(objective):
        return objective
    if (
        inspect.isfunction(objective)
        or inspect.ismethod(objective)
        or isinstance(objective, functools.partial)
    ):
        return FunctionObjective(objective)
    # A callable object: an Objective (RecipeObjective, CommandObjective, a user's class).
    return objective


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
    fidelity: Fidelity | Mapping[str, Sequence[float]] | None = None,
    strategy: str = "speechtune",
    budget: float | None = None,
    eta: int | None = None,
    priors: bool = True,
    warm_start: str | Path | None = None,
    rank_metric: str | None = None,
    backend: str = "optuna",
    ray: RaySpec | None = None,
    cost: CostModel | None = None,
    confirm_top: int = 0,
    confirm_seeds: Sequence[int] = (),
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
        direction: ``minimize`` (WER, loss) or ``maximize`` (BLEU, accuracy) the primary metric
            (not with ``backend="ray"``).
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
            that ``ray.address`` names; see :class:`speechtune.tuning.backends.ray.RayBackend`).
        ray: a :class:`~speechtune.tuning._ray_spec.RaySpec` (scheduler, resources, stoppers)
            for ``backend="ray"``; None: its defaults.
        cost: a :class:`speechtune.metrics.CostModel` pricing each trial's compute (its ``cost``
            user attr) and the study's total (``cost_total``); None: the defaults.
        confirm_top: after the search, train this many of the best configs (and no baseline:
            a function has no defaults) again on ``confirm_seeds`` and pick the best mean there
            (``study.user_attrs["confirmation"]``; :func:`speechtune.tuning.study.select_best`
            follows it). 0: off.
        confirm_seeds: the confirmation's seeds, none of ``seeds``; empty: the two after them.

    Returns:
        The Optuna study; trial records are in each trial's ``user_attrs``.

    Raises:
        ValueError: an unknown sampler/pruner or direction.
        ConfigError: a bad ``space`` dict.
    """
    if backend not in ("optuna", "ray"):
        raise ValueError(f"backend: expected 'optuna' or 'ray', got {backend!r}")
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction: expected 'minimize' or 'maximize', got {direction!r}")
    obj = _as_objective(objective)
    fspec = None
    if fidelity is not None:
        fspec = fidelity_spec(
            fidelity,
            strategy=strategy,
            eta=eta,
            budget=budget,
            priors=priors,
            warm_start=warm_start,
            rank_metric=rank_metric,
        )
    elif budget is not None or warm_start is not None:
        raise ValueError(
            "budget and warm_start need a fidelity (e.g. fidelity={'epochs': [1, 3, 9]})"
        )
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
        direction=direction,
        confirm_top=confirm_top,
        confirm_seeds=confirm_seeds,
    )
    runner: Backend | None = None
    if backend == "ray":
        spec = dataclasses.replace(spec, ray=ray)
        runner = RayBackend()
    if run_dir is None:
        # Trial dirs still need a home while the study runs; reports are skipped.
        with tempfile.TemporaryDirectory(prefix="speechtune-tune-") as tmp:
            if runner is None:
                return run_study(spec, obj, tmp, resume=resume, progress=progress)
            # Ray needs a storage path for checkpoints: the study goes to SQLite in the temp dir.
            spec = _default_storage(spec)
            return _in_memory_copy(
                run_study(spec, obj, tmp, backend=runner, resume=resume, progress=progress)
            )
    return run_study(
        spec,
        obj,
        run_dir,
        backend=runner,
        resume=resume,
        progress=progress,
        outputs=write_study_outputs,
    )


def _default_storage(spec: TuningSpec) -> TuningSpec:
    """``spec`` with no storage URL: the default SQLite file in the run directory."""
    return dataclasses.replace(spec, study=dataclasses.replace(spec.study, storage=None))


def _in_memory_copy(study: optuna.Study) -> optuna.Study:
    """A copy of ``study`` in memory (its SQLite file is about to be deleted with its temp dir)."""
    copy = optuna.create_study(study_name=study.study_name, directions=study.directions)
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    copy.add_trials(study.get_trials(deepcopy=False))
    return copy
