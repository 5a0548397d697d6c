"""The multi-fidelity backend: a :class:`~speechtune.tuning.search.MultiFidelitySearch` run as a stored study.

The search decides every job (a config at a rung); :class:`~._mf_driver.Driver` runs each as an
Optuna trial in this process (``n_jobs`` threads) and tells the search its outcome. The study
stops when ``fidelity.budget`` full-training units are spent, or ``n_trials`` jobs (default
``study.n_trials``; with a budget, the job limit is only a safety net), or ``study.timeout_s``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from speechtune.tuning.backends._base import needs_objective
from speechtune.tuning.backends._mf_driver import (
    Driver,
    JobRunner,
    RungPruner,
    fidelity_record,
)
from speechtune.tuning.objectives import Objective, RecipeObjective
from speechtune.tuning.search import Fidelity, MultiFidelitySearch
from speechtune.tuning.space import SearchSpace, fit_params, with_priors
from speechtune.tuning.spec import FidelitySpec, TuningSpec
from speechtune.tuning.study import (
    DEFAULT_HEARTBEAT_S,
    FailureGuard,
    OpenOptions,
    StudyProgress,
    StudySession,
    device_slots,
    interruptible_trials,
    load_warm_start,
    make_pruner,
    quiet_trial_failures,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MultiFidelityBackend:
    """Jobs of the multi-fidelity search in this process, ``n_jobs`` at a time (threads).

    Args:
        n_jobs: jobs run at once (ASHA-style promotion with several); default ``study.n_jobs``.
        heartbeat_s: heartbeat interval of RDB storages.
        monitor_gpus: record GPU utilisation over the study.
    """

    n_jobs: int | None = None
    heartbeat_s: int = DEFAULT_HEARTBEAT_S
    monitor_gpus: bool = False

    def jobs(self, spec: TuningSpec) -> int:
        """Jobs run at once for ``spec``."""
        return max(1, int(self.n_jobs if self.n_jobs is not None else spec.study.n_jobs or 1))

    def open_options(self, spec: TuningSpec, run_dir: Path) -> OpenOptions:
        """See :meth:`Backend.open_options`: the search enqueues every trial itself.

        Raises:
            ValueError: no ``fidelity:`` section, or a multi-objective spec.
        """
        fspec = _fidelity_spec(spec)
        if spec.objective.is_multi_objective:
            raise ValueError(
                "fidelity: multi-fidelity search optimises one objective; drop objective.extra_objectives "
                "(or fold them in with objective.scalarize)"
            )
        return OpenOptions(
            n_jobs=self.jobs(spec),
            heartbeat_s=self.heartbeat_s,
            monitor_gpus=self.monitor_gpus,
            # Every trial is enqueued: the search decides, this sampler never does.
            sampler=optuna.samplers.RandomSampler(seed=0),
            pruner=RungPruner(
                make_pruner(spec.study.pruner, max_resource=_top_epochs(spec, fspec.fidelity))
            ),
        )

    def run(
        self,
        session: StudySession,
        objective: Objective | None,
        *,
        n_trials: int | None,
        progress: bool,
    ) -> None:
        """See :meth:`Backend.run`; ``n_trials`` counts jobs."""
        quiet_trial_failures()
        spec, study = session.spec, session.study
        fspec = _fidelity_spec(spec)
        fidelity = fspec.fidelity
        jobs = self.jobs(spec)
        max_jobs = (
            n_trials
            if n_trials is not None
            else (None if fspec.budget is not None else spec.study.n_trials)
        )
        study.set_user_attr("fidelity", fidelity_record(fspec.strategy, fidelity))
        space, warm = _warm_start(fspec, spec.space)
        search = MultiFidelitySearch(
            space,
            fidelity,
            strategy=fspec.strategy,
            seed=spec.study.seed or 0,
            use_priors=fspec.priors,
            warm_start=warm,
            baseline=_baseline(fspec, spec, space, study),
            prior_first=fspec.baseline and _prior_first_ok(study),
            base=None if space.base else spec.base_flat or None,
            n_workers=jobs,
        )
        objective = needs_objective(objective)
        runner = JobRunner(
            spec,
            objective,
            session.run_dir,
            slots=device_slots(objective, jobs),
            rank_metric=fspec.rank_metric,
        )
        view = StudyProgress(study, n_trials=max_jobs, n_jobs=jobs, live=progress)
        callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [
            FailureGuard(max(10, max_jobs or 10)),
            view,
            session.trial_finished,
        ]
        driver = Driver(
            study,
            search,
            runner,
            session.run_dir,
            budget=fspec.budget,
            max_jobs=max_jobs,
            timeout_s=spec.study.timeout_s,
            callbacks=callbacks,
            # The recipe's LR schedule runs to the top rung a run may be continued to.
            recipe_epochs=isinstance(objective, RecipeObjective),
            rank_metric=fspec.rank_metric,
        )
        driver.replay()
        with view, interruptible_trials():
            original = study.stop

            def stop() -> None:  # the failure guard calls study.stop()
                driver.stopped = True

            study.stop = stop  # type: ignore[method-assign]
            try:
                driver.run(jobs)
            finally:
                study.stop = original  # type: ignore[method-assign]
        study.set_user_attr("budget_used", search.budget_used)
        correlation = search.rung_correlation().items()
        study.set_user_attr(
            "rung_correlation",
            {str(r): [v[0] if math.isfinite(v[0]) else None, v[1]] for r, v in correlation},
        )


def _fidelity_spec(spec: TuningSpec) -> FidelitySpec:
    if spec.fidelity is None:
        raise ValueError(
            "the multi-fidelity backend needs a fidelity: section; use the local backend without one"
        )
    return spec.fidelity


def _top_epochs(spec: TuningSpec, fidelity: Fidelity) -> int | None:
    epochs = fidelity.rungs[fidelity.top].overrides.get("train.epochs")
    if isinstance(epochs, int):
        return epochs
    return spec.max_epochs


def _baseline(
    fspec: FidelitySpec, spec: TuningSpec, space: SearchSpace, study: optuna.Study
) -> dict[str, Any] | None:
    """The base recipe's values of the tuned keys (the defaults), run first at full fidelity.

    Only for recipe objectives (others have no defaults to compare with). A resumed study
    replays what its first run asked, so one begun without a baseline goes on without it.
    """
    if not fspec.baseline or spec.objective.kind != "recipe" or not spec.base_flat:
        return None
    for t in study.get_trials(deepcopy=False):
        job = t.user_attrs.get("job")
        if isinstance(job, dict) and job.get("number") == 0 and job.get("source") != "baseline":
            return None

    def warn(key: str, message: str) -> None:
        log.info("baseline: the base recipe's %s %s", key, message)

    params = fit_params(space, spec.base_flat, warn)
    return params or None


def _prior_first_ok(study: optuna.Study) -> bool:
    """Whether the priors' own config may come first: not in a study resumed from one begun
    before speechtune did that (its replay must ask the same jobs)."""
    sources = {
        job.get("number"): job.get("source")
        for t in study.get_trials(deepcopy=False)
        if isinstance(job := t.user_attrs.get("job"), dict)
    }
    if not sources:
        return True
    return "prior_default" in sources.values() or (
        sources.get(0) == "baseline" and len(sources) == 1
    )


def _warm_start(
    fspec: FidelitySpec, space: SearchSpace
) -> tuple[SearchSpace, list[dict[str, Any]]]:
    """The space with the previous study's region as its prior, and the configs to try first."""
    if not fspec.warm_start:
        return space, []
    warm = load_warm_start(fspec.warm_start, space, top_k=fspec.warm_start_top_k)
    log.info(
        "warm start from %s: %d config(s) first, priors on %s",
        fspec.warm_start,
        len(warm.configs),
        sorted(warm.priors),
    )
    return with_priors(space, warm.priors), list(warm.configs)
