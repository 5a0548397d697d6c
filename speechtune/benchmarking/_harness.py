"""Runs search strategies side by side on a benchmark problem and scores their anytime regret.

Cost is counted in full-fidelity evaluations: training one config for ``max_budget`` epochs costs
1.0, one epoch costs ``1 / max_budget``. A run stops at the first evaluation boundary at or past
the total budget; evaluations past the budget are recorded but never scored.

Only full-budget evaluations define the incumbent (a value after 3 epochs is not a final score),
also for TPE with a pruner: a trial counts when it ran all epochs. Normalised regret is
``(incumbent - optimum) / (reference - optimum)``: 0 at the optimum, 1 for the mean of random
configs, and 1.0 before the first full-budget evaluation.

Strategies:

* ``random`` / ``tpe``: Optuna's RandomSampler / TPESampler(seed), every config at full budget.
* ``tpe_median`` / ``tpe_hyperband``: TPE with MedianPruner / HyperbandPruner(min_resource=1,
  max_resource=max_budget, reduction_factor=3); the objective reports every epoch 1..max_budget
  and stops when pruned.
* ``hyperband``, ``bohb``, ``asha``, ``speechtune``: speechtune's ask/tell engine
  (:class:`speechtune.tuning._multifidelity.MultiFidelitySearch`) on
  ``Fidelity.geometric("epochs", max_budget, eta=3)``; ``speechtune`` with the problem's good
  prior on the space, ``speechtune_noprior`` without one, ``speechtune_badprior`` with the
  misleading one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from speechtune.benchmarking._peers import PEER_STRATEGIES, run_peer
from speechtune.benchmarking._problems import Problem
from speechtune.benchmarking._trace import (
    Trace,
    load_trace,
    normalised_regret,
    save_trace,
    trace_file,
)
from speechtune.tuning.search import Fidelity
from speechtune.tuning.space import SearchSpace

__all__ = [
    "BASELINE_STRATEGIES",
    "ENGINE_STRATEGIES",
    "STRATEGIES",
    "BenchmarkResult",
    "ProblemResult",
    "Trace",
    "beats_everywhere",
    "fraction_to_reach",
    "normalised_regret",
    "run_benchmark",
    "run_strategy",
    "summarise",
]

BASELINE_STRATEGIES = ("random", "tpe", "tpe_median", "tpe_hyperband")
# Strategy name -> (engine strategy, which prior the space carries: "good", "bad" or None).
ENGINE_STRATEGIES: dict[str, tuple[str, str | None]] = {
    "hyperband": ("hyperband", None),
    "bohb": ("bohb", None),
    "asha": ("asha", None),
    "speechtune": ("speechtune", "good"),
    "speechtune_noprior": ("speechtune", None),
    "speechtune_badprior": ("speechtune", "bad"),
}
#: Every strategy the harness knows; the peers' need the ``bench`` extra (:func:`available_peers`).
STRATEGIES = BASELINE_STRATEGIES + tuple(ENGINE_STRATEGIES) + tuple(PEER_STRATEGIES)
# The two target checks of issue 4 compare against these.
TPE_REFERENCE = "tpe"
PRUNER_REFERENCE = "tpe_hyperband"
CHECK_AFTER = 0.1  # check (b) looks at budgets past this fraction of the total
ETA = 3


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Mute Optuna's per-trial INFO lines and experimental warnings for the benchmark's studies."""
    logger = logging.getLogger("optuna")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------------------------------------
# Optuna baselines


def _study_name(trace: Trace) -> str:
    # A fixed name, not Optuna's random default: HyperbandPruner assigns trials to brackets by a
    # hash of the study name, so a random name would make runs irreproducible.
    return f"{trace.problem}-{trace.strategy}-seed{trace.seed}"


def _run_optuna_full(
    problem: Problem, sampler: optuna.samplers.BaseSampler, trace: Trace, budget: float
) -> None:
    """One trial = one full-budget evaluation, cost 1 each."""
    study = optuna.create_study(sampler=sampler, study_name=_study_name(trace))
    n = 0
    while n < budget - 1e-9:
        trial = study.ask()
        config = problem.space.sample(trial)
        value = problem.evaluate(config, problem.max_budget)
        study.tell(trial, value)
        n += 1
        trace.record(n, value, full=True)


def _run_optuna_pruned(
    problem: Problem, pruner: optuna.pruners.BasePruner, seed: int, trace: Trace, budget: float
) -> None:
    """TPE + a pruner: report every epoch, stop when pruned; cost = epochs run / max_budget.

    A problem whose budgets do not continue each other (a share of the data) reports at the
    budgets of Hyperband's ladder only, each a training of its own, paid in full.
    """
    if not problem.continues:
        _run_optuna_pruned_restarts(problem, pruner, seed, trace, budget)
        return
    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner, study_name=_study_name(trace)
    )
    top = problem.max_budget
    epochs = 0  # counted in whole epochs so that the cumulative cost does not drift
    pruned = 0
    while epochs < budget * top - 1e-9:
        trial = study.ask()
        config = problem.space.sample(trial)
        value = None
        for b in range(1, top + 1):
            value = problem.evaluate(config, b)
            epochs += 1
            trial.report(value, b)
            if b < top and trial.should_prune():
                break
        if b == top:
            study.tell(trial, value)
            trace.record(epochs / top, value, full=True)
        else:
            study.tell(trial, state=TrialState.PRUNED)
            pruned += 1
            trace.record(epochs / top, value, full=False, counts=problem.incumbent_any_fidelity)
    trace.info["trials"] = len(study.trials)
    trace.info["pruned"] = pruned


def _run_optuna_pruned_restarts(
    problem: Problem, pruner: optuna.pruners.BasePruner, seed: int, trace: Trace, budget: float
) -> None:
    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner, study_name=_study_name(trace)
    )
    top = problem.max_budget
    ladder = [int(r.overrides["epochs"]) for r in Fidelity.geometric("epochs", top, eta=ETA).rungs]
    spent = 0.0
    pruned = 0
    while spent < budget - 1e-9:
        trial = study.ask()
        config = problem.space.sample(trial)
        value = None
        for b in ladder:
            value = problem.evaluate(config, b)
            spent += b / top
            full = b == top
            trial.report(value, b)
            trace.record(spent, value, full=full, counts=full or problem.incumbent_any_fidelity)
            if not full and trial.should_prune():
                break
        if b == top:
            study.tell(trial, value)
        else:
            study.tell(trial, state=TrialState.PRUNED)
            pruned += 1
    trace.info["trials"] = len(study.trials)
    trace.info["pruned"] = pruned


# ---------------------------------------------------------------------------------------------
# speechtune's engine


def space_with_prior(space: SearchSpace, prior: Mapping[str, tuple[Any, float]]) -> SearchSpace:
    """``space`` with a prior ``{param: (default, width)}`` attached (speechtune.tuning._priors)."""
    from speechtune.tuning.space import Prior, with_priors

    return with_priors(
        space,
        {name: Prior(default=default, width=width) for name, (default, width) in prior.items()},
    )


def _run_engine(problem: Problem, strategy: str, seed: int, trace: Trace, budget: float) -> None:
    from speechtune.tuning.search import MultiFidelitySearch

    engine_strategy, which = ENGINE_STRATEGIES[strategy]
    space = problem.space
    if which is not None:
        space = space_with_prior(
            space, problem.prior_good if which == "good" else problem.prior_bad
        )
    trace.info["prior"] = which
    fidelity = Fidelity.geometric("epochs", problem.max_budget, eta=ETA, resume=problem.continues)
    key = fidelity.resume_key or "epochs"
    search = MultiFidelitySearch(
        space, fidelity, strategy=engine_strategy, seed=seed, use_priors=which is not None
    )
    _engine_loop(problem, search, fidelity, key, strategy, trace, budget)


def _engine_loop(
    problem: Problem,
    search: Any,
    fidelity: Fidelity,
    key: str,
    strategy: str,
    trace: Trace,
    budget: float,
) -> None:
    top = fidelity.top
    sources: dict[str, int] = {}
    while search.budget_used < budget - 1e-9:
        job = search.ask()
        if job is None:
            # Sequential use tells every job before the next ask, so a bracket never waits.
            raise RuntimeError(f"{strategy}: the engine returned no job although none is running")
        value = problem.evaluate(job.config, job.config[key])
        # A run from scratch passes through the cheaper epoch rungs: like the study runner, hand
        # their values over (free evidence of how faithfully cheap rungs rank configs).
        intermediate = {}
        if job.parent is None:
            for rung in range(job.rung):
                if fidelity.continues(rung, job.rung):
                    intermediate[rung] = problem.evaluate(
                        job.config, fidelity.rungs[rung].overrides[key]
                    )
        search.tell(job, value, intermediate=intermediate)
        full = job.rung == top
        trace.record(
            search.budget_used, value, full=full, counts=full or problem.incumbent_any_fidelity
        )
        sources[job.source] = sources.get(job.source, 0) + 1
    trace.info["jobs"] = sum(sources.values())
    trace.info["sources"] = sources


def run_strategy(problem: Problem, strategy: str, seed: int, budget: float) -> Trace:
    """Run one strategy on one problem until ``budget`` full-evaluation units are spent.

    Args:
        problem: a benchmark problem (see :class:`~speechtune.benchmarking._problems.Problem`).
        strategy: one of :data:`STRATEGIES`.
        seed: seeds the sampler / engine; same (problem, strategy, seed, budget) => same trace.
        budget: total cost in full-fidelity evaluations (e.g. 40).

    Raises:
        ValueError: unknown strategy or non-positive budget.
    """
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}"
        )
    if not budget > 0:
        raise ValueError(f"budget must be > 0 full evaluations (got {budget!r})")
    trace = Trace(problem.name, strategy, int(seed), float(budget))
    top = problem.max_budget
    start = time.perf_counter()
    with _quiet():
        if strategy == "random":
            _run_optuna_full(problem, optuna.samplers.RandomSampler(seed=seed), trace, budget)
        elif strategy == "tpe":
            _run_optuna_full(problem, optuna.samplers.TPESampler(seed=seed), trace, budget)
        elif strategy == "tpe_median":
            _run_optuna_pruned(problem, optuna.pruners.MedianPruner(), seed, trace, budget)
        elif strategy == "tpe_hyperband":
            pruner = optuna.pruners.HyperbandPruner(
                min_resource=1, max_resource=top, reduction_factor=ETA
            )
            _run_optuna_pruned(problem, pruner, seed, trace, budget)
        elif strategy in PEER_STRATEGIES:
            run_peer(problem, strategy, seed, trace, budget)
        else:
            _run_engine(problem, strategy, seed, trace, budget)
    # The optimiser's own time plus the problem's (surrogates and tables answer in microseconds,
    # so on them this is the optimiser's overhead).
    trace.info["wall_s"] = time.perf_counter() - start
    return trace


# ---------------------------------------------------------------------------------------------
# Scoring


def fraction_to_reach(
    fractions: Sequence[float] | np.ndarray,
    mean_regret: Sequence[float] | np.ndarray,
    target: float,
) -> float | None:
    """The first budget fraction at which ``mean_regret`` is at or below ``target`` (None: never)."""
    for f, r in zip(fractions, mean_regret):
        if r <= target + 1e-12:
            return float(f)
    return None


def beats_everywhere(
    fractions: Sequence[float] | np.ndarray,
    mean_a: Sequence[float] | np.ndarray,
    mean_b: Sequence[float] | np.ndarray,
    after: float = CHECK_AFTER,
) -> bool:
    """Whether ``mean_a`` is below ``mean_b`` at every grid budget past ``after`` (a fraction).

    Both at (numerically) zero regret counts as not worse: two strategies that found the optimum.
    """
    checked = False
    for f, a, b in zip(fractions, mean_a, mean_b):
        if f <= after + 1e-12:
            continue
        checked = True
        if not (a < b or (abs(a) <= 1e-12 and abs(b) <= 1e-12)):
            return False
    return checked


@dataclass
class ProblemResult:
    """All runs on one problem and their regret statistics on the budget grid."""

    name: str
    optimum: float
    reference: float
    max_budget: int
    budget: float = 40.0  # full-fidelity evaluations per run on this problem
    suite: str = ""  # the family it belongs to ("yahpo", "synthetic", "tabular")
    traces: dict[str, list[Trace]] = field(default_factory=dict)
    mean: dict[str, np.ndarray] = field(default_factory=dict)
    se: dict[str, np.ndarray] = field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class BenchmarkResult:
    """Results of :func:`run_benchmark`: per problem, per strategy mean regret and target checks."""

    budget: float | None  # one budget for every problem; None: each problem's default_budget()
    seeds: list[int]
    fractions: np.ndarray
    problems: dict[str, ProblemResult] = field(default_factory=dict)

    def budgets(self, problem: str) -> np.ndarray:
        """A problem's budget grid in full-evaluation units."""
        return self.fractions * self.problems[problem].budget

    def as_dict(self) -> dict[str, Any]:
        """JSON-able record (results.json)."""
        return {
            "budget": self.budget,
            "seeds": self.seeds,
            "fractions": self.fractions.tolist(),
            "problems": {
                name: {
                    "optimum": p.optimum,
                    "reference": p.reference,
                    "max_budget": p.max_budget,
                    "budget": p.budget,
                    "suite": p.suite,
                    "mean_regret": {s: v.tolist() for s, v in p.mean.items()},
                    "se_regret": {s: v.tolist() for s, v in p.se.items()},
                    "checks": p.checks,
                    "traces": {s: [t.as_dict() for t in ts] for s, ts in p.traces.items()},
                }
                for name, p in self.problems.items()
            },
        }


def summarise(result: ProblemResult, fractions: np.ndarray, budget: float) -> None:
    """Fill ``result.mean``/``se`` from its traces and run the two target checks.

    Check (a) ``fraction_to_tpe_final``: the budget fraction at which a strategy's mean regret
    first reaches full-fidelity TPE's final mean regret (issue 4 target for speechtune: <= 1/3).
    Check (b) ``beats_tpe_hyperband``: mean regret below TPE + Hyperband pruning at every grid
    budget past 10% of the total.
    """
    budgets = fractions * budget
    for strategy, traces in result.traces.items():
        regrets = np.array(
            [t.regret_at(budgets, result.optimum, result.reference) for t in traces]
        )
        result.mean[strategy] = regrets.mean(axis=0)
        n = len(traces)
        result.se[strategy] = (
            regrets.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.zeros(len(budgets))
        )
    target = result.mean[TPE_REFERENCE][-1] if TPE_REFERENCE in result.mean else None
    for strategy, mean in result.mean.items():
        checks: dict[str, Any] = {"final_regret": float(mean[-1])}
        checks["fraction_to_tpe_final"] = (
            None if target is None else fraction_to_reach(fractions, mean, float(target))
        )
        if PRUNER_REFERENCE in result.mean and strategy != PRUNER_REFERENCE:
            checks["beats_tpe_hyperband"] = beats_everywhere(
                fractions, mean, result.mean[PRUNER_REFERENCE]
            )
        else:
            checks["beats_tpe_hyperband"] = None
        result.checks[strategy] = checks


def _run_task(task: tuple[Problem, str, int, float]) -> Trace:
    problem, strategy, seed, budget = task
    return run_strategy(problem, strategy, seed, budget)


# Peers whose runs take minutes start first within a problem, so that the pool does not end on
# one long run.
_SLOW_FIRST = ("smac_mf", "smac_hpo")


def _task_key(task: tuple[Problem, str, int, float]) -> tuple[str, str, int, float]:
    problem, strategy, seed, budget = task
    return problem.name, strategy, seed, budget


def run_benchmark(
    problems: Sequence[Problem],
    strategies: Sequence[str] = STRATEGIES,
    seeds: Sequence[int] = tuple(range(10)),
    budget: float | None = 40.0,
    *,
    grid_points: int = 100,
    workers: int = 1,
    cache_dir: str | Path | None = None,
) -> BenchmarkResult:
    """Run every (problem, strategy, seed) and summarise.

    Args:
        problems: benchmark problems (picklable when ``workers > 1``).
        strategies: names from :data:`STRATEGIES`.
        seeds: one run per seed; runs are deterministic (except SMAC3's and Syne Tune's, which
            are not bit-reproducible), so the result does not depend on ``workers``.
        budget: total cost per run in full-fidelity evaluations; None: each problem's
            :meth:`~speechtune.benchmarking.Problem.default_budget` (YAHPO's ``20 + 40 sqrt(d)``).
        grid_points: the regret grid is ``budget * k / grid_points`` for k = 1..grid_points.
        workers: processes (``ProcessPoolExecutor``); 1 runs in this process.
        cache_dir: each finished run's trace is saved here and reused by the next call with the
            same (problem, strategy, seed, budget), so an interrupted benchmark resumes where it
            stopped. None: nothing is saved.
    """
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(
            f"unknown strategies {unknown}; valid strategies: {', '.join(STRATEGIES)}"
        )
    names = [p.name for p in problems]
    if len(set(names)) != len(names):
        raise ValueError(f"problem names must be unique (got {names})")
    fractions = np.arange(1, grid_points + 1) / grid_points
    budgets = {
        p.name: float(budget if budget is not None else p.default_budget()) for p in problems
    }
    tasks = [
        (p, s, int(seed), budgets[p.name]) for p in problems for s in strategies for seed in seeds
    ]
    cache = None if cache_dir is None else Path(cache_dir)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    outcomes: list[Trace | None] = [None] * len(tasks)
    todo: list[int] = []
    for i, task in enumerate(tasks):
        outcomes[i] = None if cache is None else load_trace(trace_file(cache, *_task_key(task)))
        if outcomes[i] is None:
            todo.append(i)
    # Problem by problem (so an interrupted benchmark has whole problems), slow peers first.
    order = {p.name: k for k, p in enumerate(problems)}
    todo.sort(key=lambda i: (order[tasks[i][0].name], tasks[i][1] not in _SLOW_FIRST))

    def finish(i: int, trace: Trace) -> None:
        outcomes[i] = trace
        if cache is not None:
            save_trace(trace_file(cache, *_task_key(tasks[i])), trace)

    if workers > 1 and todo:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_run_task, tasks[i]): i for i in todo}
            for future in as_completed(futures):
                finish(futures[future], future.result())
    else:
        for i in todo:
            finish(i, _run_task(tasks[i]))
    result = BenchmarkResult(
        None if budget is None else float(budget), [int(s) for s in seeds], fractions
    )
    for p in problems:
        result.problems[p.name] = ProblemResult(
            p.name,
            float(p.optimum),
            float(p.reference),
            int(p.max_budget),
            budgets[p.name],
            p.suite,
        )
    for (p, s, _, _), out in zip(tasks, outcomes):
        assert out is not None  # every task ran or came from the cache
        result.problems[p.name].traces.setdefault(s, []).append(out)
    for pr in result.problems.values():
        summarise(pr, fractions, pr.budget)
    return result
