"""Peer optimisers run side by side with speechtune's strategies: SMAC3, DEHB and Syne Tune.

Each adapter drives the peer's own ask/tell interface on a benchmark problem and records every
evaluation in a :class:`~speechtune.benchmarking._harness.Trace`, with the same cost accounting
as speechtune's strategies: an evaluation at budget ``b`` costs ``b / max_budget`` of a full one.
SMAC3 and DEHB restart a config at each budget, so they are charged from scratch; a Syne Tune
trial reports as it trains, so on problems whose budget continues (epochs) it pays only each
rung's increment. On data-share problems (YAHPO) nobody continues.

The peers are the ``bench`` extra, never runtime dependencies: each is imported only when its
strategy runs, and :func:`available_peers` says which are installed.

* ``smac_mf``: SMAC3's ``MultiFidelityFacade`` (random forest + Hyperband, budgets ``1..max`` with
  ``eta = 3``).
* ``smac_hpo``: SMAC3's ``HyperparameterOptimizationFacade`` at full fidelity only.
* ``dehb``: DEHB (differential evolution + Hyperband) with its ask/tell interface.
* ``syne_bohb``: Syne Tune's BOHB (KDE + synchronous Hyperband), driven as a simulated backend.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from speechtune.tuning.space import CategoricalParam, FixedParam, FloatParam, IntParam, SearchSpace

__all__ = ["PEER_STRATEGIES", "available_peers", "run_peer", "to_configspace"]

ETA = 3

#: Peer strategy -> the module it needs (the ``bench`` extra).
PEER_STRATEGIES: dict[str, str] = {
    "smac_mf": "smac",
    "smac_hpo": "smac",
    "dehb": "dehb",
    "syne_bohb": "syne_tune",
}


def available_peers() -> list[str]:
    """The peer strategies whose optimiser is installed."""
    import importlib.util

    return [
        s for s, module in PEER_STRATEGIES.items() if importlib.util.find_spec(module) is not None
    ]


def to_configspace(space: SearchSpace, seed: int) -> Any:
    """``space`` as a ConfigSpace ``ConfigurationSpace`` (floats, ints, log scales, choices, ``when``).

    Raises:
        ValueError: a param ConfigSpace cannot express here (a derived value, a step grid).
    """
    from ConfigSpace import (
        CategoricalHyperparameter,
        ConfigurationSpace,
        EqualsCondition,
        InCondition,
        UniformFloatHyperparameter,
        UniformIntegerHyperparameter,
    )

    cs = ConfigurationSpace(seed=seed)
    hps: dict[str, Any] = {}
    for name, param in space.params.items():
        if isinstance(param, (FloatParam, IntParam)) and param.step not in (None, 1):
            # ConfigSpace 1.x has no quantised ranges; rounding inside would change the peer.
            raise ValueError(f"{name}: a step grid has no ConfigSpace form")
        if isinstance(param, FloatParam):
            hps[name] = UniformFloatHyperparameter(name, param.low, param.high, log=param.log)
        elif isinstance(param, IntParam):
            hps[name] = UniformIntegerHyperparameter(name, param.low, param.high, log=param.log)
        elif isinstance(param, CategoricalParam):
            hps[name] = CategoricalHyperparameter(name, list(param.choices))
        elif isinstance(param, FixedParam):
            continue
        else:
            raise ValueError(f"{name}: a {type(param).__name__} has no ConfigSpace form")
    cs.add(list(hps.values()))
    conditions: list[Any] = []
    for name, param in space.params.items():
        for parent, values in (param.when or {}).items():
            if name not in hps or parent not in hps:
                continue
            values = list(values)
            if len(values) == 1:
                conditions.append(EqualsCondition(hps[name], hps[parent], values[0]))
            else:
                conditions.append(InCondition(hps[name], hps[parent], values))
    if conditions:
        cs.add(conditions)
    return cs


def _config(values: Mapping[str, Any], space: SearchSpace) -> dict[str, Any]:
    """A peer's configuration as the flat config a problem evaluates (fixed values added)."""
    out = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in dict(values).items()}
    for name, param in space.params.items():
        if isinstance(param, FixedParam):
            out[name] = param.value
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The peers log and warn generously; a benchmark of hundreds of runs wants none of it."""
    loggers = [logging.getLogger(n) for n in ("smac", "dehb", "syne_tune", "distributed")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _Spend:
    """Evaluates a problem, charges each evaluation, records the trace, says when the budget is spent."""

    def __init__(self, problem: Any, trace: Any, budget: float) -> None:
        self.problem = problem
        self.trace = trace
        self.budget = budget
        self.spent = 0.0

    @property
    def done(self) -> bool:
        return self.spent >= self.budget - 1e-9

    def __call__(self, config: Mapping[str, Any], fidelity: float, paid: float = 0.0) -> float:
        """The problem's value for ``config`` at ``fidelity``; ``paid`` budget was already spent
        on this config by a trial that continues (Syne Tune's), so only the rest is charged."""
        top = self.problem.max_budget
        b = min(float(top), max(1.0, float(fidelity)))
        value = self.problem.evaluate(config, b)
        self.spent += (b - paid) / top
        full = b >= top - 1e-9
        self.trace.record(
            self.spent, value, full=full, counts=full or self.problem.incumbent_any_fidelity
        )
        return value if math.isfinite(value) else 1e12


def _run_smac(problem: Any, seed: int, trace: Any, budget: float, multi_fidelity: bool) -> None:
    from smac import HyperparameterOptimizationFacade, MultiFidelityFacade, Scenario
    from smac.runhistory.dataclasses import TrialValue

    space = problem.space
    spend = _Spend(problem, trace, budget)
    with tempfile.TemporaryDirectory(prefix="speechtune-smac-") as tmp:
        common: dict[str, Any] = {
            "output_directory": tmp,
            "deterministic": True,
            "seed": seed,
            "n_trials": 100_000,
        }
        if multi_fidelity:
            scenario = Scenario(
                to_configspace(space, seed), min_budget=1, max_budget=problem.max_budget, **common
            )
            facade: Any = MultiFidelityFacade(
                scenario,
                intensifier=MultiFidelityFacade.get_intensifier(scenario, eta=ETA),
                overwrite=True,
                # False: SMAC3 would otherwise dictConfig the *root* logger (level, handlers)
                # for the whole process; `_quiet` mutes its own logger instead.
                logging_level=False,
            )
        else:
            scenario = Scenario(to_configspace(space, seed), **common)
            facade = HyperparameterOptimizationFacade(
                scenario, overwrite=True, logging_level=False
            )
        while not spend.done:
            info = facade.ask()
            fidelity = (
                info.budget if multi_fidelity and info.budget is not None else problem.max_budget
            )
            value = spend(_config(info.config, space), fidelity)
            facade.tell(info, TrialValue(cost=value))
    trace.info["evaluations"] = len(trace.costs)


def _run_dehb(problem: Any, seed: int, trace: Any, budget: float) -> None:
    from dehb import DEHB

    space = problem.space
    spend = _Spend(problem, trace, budget)
    with tempfile.TemporaryDirectory(prefix="speechtune-dehb-") as tmp:
        dehb = DEHB(
            cs=to_configspace(space, seed),
            min_fidelity=1,
            max_fidelity=problem.max_budget,
            eta=ETA,
            n_workers=1,
            seed=seed,
            output_path=tmp,
        )
        while not spend.done:
            job = dehb.ask()
            value = spend(_config(job["config"], space), job["fidelity"])
            dehb.tell(job, {"fitness": value, "cost": job["fidelity"] / problem.max_budget})
    trace.info["evaluations"] = len(trace.costs)


def _run_syne_bohb(problem: Any, seed: int, trace: Any, budget: float) -> None:
    """Syne Tune's BOHB, driven trial by trial: results at Hyperband's rung budgets only.

    Syne Tune's schedulers decide on each reported result whether a trial goes on; a problem
    here is evaluated at the rung budgets of its ladder (1, 3, 9, ... ``max_budget``), each a
    new evaluation paid in full, and the scheduler is told the results in order.
    """
    from syne_tune.backend.trial_status import Trial
    from syne_tune.config_space import choice, lograndint, loguniform, randint, uniform
    from syne_tune.optimizer.baselines import BOHB
    from syne_tune.optimizer.scheduler import SchedulerDecision

    space = problem.space
    domains: dict[str, Any] = {}
    for name, param in space.params.items():
        if isinstance(param, FloatParam):
            domains[name] = (loguniform if param.log else uniform)(param.low, param.high)
        elif isinstance(param, IntParam):
            domains[name] = (lograndint if param.log else randint)(param.low, param.high)
        elif isinstance(param, CategoricalParam):
            domains[name] = choice(list(param.choices))
    resource = "budget"
    domains[resource] = problem.max_budget
    scheduler = BOHB(
        domains,
        metric="value",
        do_minimize=True,
        time_attr=resource,
        max_t=problem.max_budget,
        grace_period=1,
        reduction_factor=ETA,
        random_seed=seed,
    )
    spend = _Spend(problem, trace, budget)
    ladder = _ladder(problem.max_budget)
    trial_id = 0
    while not spend.done:
        suggestion = scheduler.suggest()
        if suggestion is None:
            break
        config = dict(suggestion.config or {})
        trial = Trial(trial_id=trial_id, config=config, creation_time=None)
        scheduler.on_trial_add(trial)
        trial_id += 1
        paid = 0.0
        for b in ladder:
            value = spend(_active(config, space), b, paid)
            # A Syne Tune trial is one training run that reports as it goes: on problems whose
            # budget continues (epochs) it pays each rung's increment, elsewhere every rung.
            paid = float(b) if problem.continues else 0.0
            decision = scheduler.on_trial_result(trial, {resource: b, "value": value})
            if spend.done or decision != SchedulerDecision.CONTINUE or b >= problem.max_budget:
                break
        scheduler.on_trial_complete(trial, {resource: b, "value": value})
    trace.info["evaluations"] = len(trace.costs)


def _ladder(max_budget: int) -> list[int]:
    out, b = [], float(max_budget)
    while b >= 1 - 1e-9:
        out.append(round(b))
        b /= ETA
    return sorted(set(out))


def _active(config: Mapping[str, Any], space: SearchSpace) -> dict[str, Any]:
    """Syne Tune samples every param; keep those whose ``when`` conditions hold (as ConfigSpace does)."""
    out = {k: v for k, v in config.items() if k in space.params}
    for name, param in space.params.items():
        for parent, values in (param.when or {}).items():
            if out.get(parent) not in values:
                out.pop(name, None)
    return _config(out, space)


_RUNNERS: dict[str, Callable[[Any, int, Any, float], None]] = {
    "smac_mf": lambda p, s, t, b: _run_smac(p, s, t, b, multi_fidelity=True),
    "smac_hpo": lambda p, s, t, b: _run_smac(p, s, t, b, multi_fidelity=False),
    "dehb": _run_dehb,
    "syne_bohb": _run_syne_bohb,
}


def run_peer(problem: Any, strategy: str, seed: int, trace: Any, budget: float) -> None:
    """Run a peer strategy on ``problem`` until ``budget`` full evaluations are spent.

    Raises:
        RuntimeError: the peer is not installed (``pip install 'speechtune[bench]'``).
    """
    module = PEER_STRATEGIES[strategy]
    if strategy not in available_peers():
        raise RuntimeError(
            f"strategy {strategy!r} needs {module}: pip install 'speechtune[bench]'"
        )
    with _quiet():
        _RUNNERS[strategy](problem, seed, trace, budget)
