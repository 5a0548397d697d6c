"""The Ray Tune backend: the same spec, objective and records as the local backend, on a Ray cluster.

* Search: OptunaSearch with a define-by-run function over the one search-space model.
* Trials: a Ray function trainable runs the same objective (:mod:`._trainable`).
* Schedulers (``ray.scheduler``): fifo, asha, hyperband, pbt, pb2. Stoppers: a per-trial metric
  plateau and a global time/compute budget.
* Records: every finished Ray trial is written to the study's Optuna storage (:mod:`._sink`).

Ray is imported inside functions only: ``import speechtune.tuning`` never needs it.

Multi-node note: trial dirs live under ``run_dir`` on the node that runs the trial; what moves
between nodes is the Ray checkpoint, persisted under ``run_dir/ray`` (a shared filesystem or a
``storage_path`` every node can reach, as Ray requires for multi-node fault tolerance).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from speechtune.tuning.backends._base import needs_objective
from speechtune.tuning.backends.ray._schedulers import _make_scheduler, _max_t
from speechtune.tuning.backends.ray._search import _Sampler
from speechtune.tuning.backends.ray._sink import _SINKS, _Sink
from speechtune.tuning.backends.ray._trainable import (
    OBJECTIVE_KEY,
    _Payload,
    _resources,
    _train_trial,
)
from speechtune.tuning.objectives import Objective
from speechtune.tuning.spec import RaySpec, TuningSpec
from speechtune.tuning.study import (
    BASELINE_SOURCE,
    OpenOptions,
    StudyProgress,
    StudySession,
    make_sampler,
)

log = logging.getLogger(__name__)


#: The Ray experiment's directory name under ``run_dir/ray``.
EXPERIMENT = "experiment"


# ---------------------------------------------------------------------------------------------
# Ray itself
# ---------------------------------------------------------------------------------------------
def _import_ray() -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # One checkpoint per epoch of short trials makes Ray warn about snapshot frequency: noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            f"--backend ray needs Ray Tune: pip install 'ray[tune]' ({exc})"
        ) from None
    return ray


def _init_ray(ray: Any, address: str | None, quiet: bool) -> bool:
    """Connect to ``address`` or start a local Ray; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": not quiet}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, **kwargs)
    return True


def _key(run_dir: Path, study_name: str) -> str:
    return f"{run_dir.resolve()}::{study_name}"


@dataclass(frozen=True)
class RayBackend:
    """Trials on Ray Tune: a local Ray, or the cluster ``address`` (or ``ray.address``) names.

    The spec's ``ray:`` section (:class:`~speechtune.tuning.spec.RaySpec`) sets the scheduler,
    resources, checkpoints, failures and stoppers (defaults when absent). With ``resume``, the
    interrupted Ray experiment in ``run_dir/ray`` is restored (``Tuner.restore``: errored and
    unfinished trials continue from their last checkpoint); a new experiment when there is none.
    ``n_trials`` is the number of Ray trials to run, less those already complete or pruned in
    the study when it is resumed without an experiment to restore.

    Args:
        address: a Ray cluster (``auto``, ``ray://host:port``, ``host:port``); default
            ``ray.address`` of the spec, else a local Ray started (and shut down) here.
    """

    address: str | None = None

    def open_options(self, spec: TuningSpec, run_dir: Path) -> OpenOptions:
        """See :meth:`Backend.open_options`.

        Raises:
            ValueError: a multi-objective study (Ray schedulers rank by one value), or a
                ``fidelity:`` section (the multi-fidelity backend runs those).
        """
        if spec.objective.is_multi_objective:
            raise ValueError(
                "--backend ray: a multi-objective study cannot be ranked by Ray's schedulers; fold the extra "
                "objectives in with objective.scalarize, or use --backend optuna"
            )
        if spec.fidelity is not None:
            raise ValueError(
                "--backend ray: a fidelity: section is run by the optuna backend; "
                "use ray.scheduler asha/hyperband instead"
            )
        rspec = spec.ray or RaySpec()
        # The baseline (the base recipe's defaults) goes to Ray's searcher as its first point:
        # a trial enqueued in the study itself would wait there forever.
        return OpenOptions(n_jobs=max(2, rspec.max_concurrent_trials or 2), enqueue_baseline=False)

    def run(
        self,
        session: StudySession,
        objective: Objective | None,
        *,
        n_trials: int | None,
        progress: bool,
    ) -> None:
        """See :meth:`Backend.run`.

        Raises:
            RuntimeError: Ray (or PB2's dependencies) missing.
        """
        objective = needs_objective(objective)
        spec, study, run_dir = session.spec, session.study, session.run_dir
        if spec.objective.direction != "minimize":
            # Ray's searchers, schedulers and the result sink all rank with mode "min".
            raise ValueError(
                "objective.direction: maximize is not supported with --backend ray yet; "
                "use the optuna backend (the default)"
            )
        rspec = spec.ray or RaySpec()
        ray = _import_ray()
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch
        from ray.tune.stopper import CombinedStopper

        exp_dir = run_dir / "ray" / EXPERIMENT
        restoring = session.resume and exp_dir.is_dir() and tune.Tuner.can_restore(str(exp_dir))
        target = int(session.target(n_trials) or spec.study.n_trials)
        remaining = target - (session.counted() if session.resume else 0)
        max_t = _max_t(rspec, spec)
        key = _key(run_dir, spec.study.name)
        view = StudyProgress(
            study, n_trials=target, n_jobs=rspec.max_concurrent_trials or 1, live=progress
        )
        sink = _Sink(
            study, spec, run_dir, rspec.scheduler, max_t, on_finished=session.trial_finished
        )
        sink.progress = view
        started = _init_ray(ray, self.address or rspec.address, quiet=not progress)
        _SINKS[key] = sink
        try:
            payload = _Payload(
                objective,
                spec.objective,
                str(run_dir),
                rspec.checkpoint_every,
                cost_model=spec.cost,
                gpus_per_trial=_resources(rspec)["gpu"],
            )
            trainable = tune.with_resources(
                tune.with_parameters(_train_trial, payload=payload), _resources(rspec)
            )
            if restoring:
                log.info("restoring the Ray experiment in %s", exp_dir)
                tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True)
            elif remaining <= 0:
                tuner = None
            else:
                shutil.rmtree(
                    exp_dir, ignore_errors=True
                )  # a stale experiment of a study that has no trials
                tuner = _new_tuner(
                    spec,
                    rspec,
                    trainable,
                    run_dir,
                    key,
                    remaining,
                    max_t,
                    OptunaSearch,
                    CombinedStopper,
                    baseline=session.baseline,
                )
            if tuner is not None:
                with view:
                    results = tuner.fit()
                sink.sweep(results)
        finally:
            _SINKS.pop(key, None)
            if started:
                ray.shutdown()


def _new_tuner(
    spec: TuningSpec,
    rspec: RaySpec,
    trainable: Any,
    run_dir: Path,
    key: str,
    n: int,
    max_t: int,
    OptunaSearch: Any,
    CombinedStopper: Any,
    baseline: dict[str, Any] | None = None,
) -> Any:
    from ray import tune

    from speechtune.tuning.backends.ray._callbacks import (
        BudgetStopper,
        PlateauStopper,
        RecordTrials,
    )

    study_spec = spec.study
    concurrency = rspec.max_concurrent_trials
    sampler = make_sampler(
        study_spec.sampler, seed=study_spec.seed, n_jobs=max(2, concurrency or 2)
    )
    # Points to evaluate first: the base recipe's defaults when this run began the study.
    first = [baseline] if baseline is not None else []
    define_by_run = _Sampler(spec.space, spec.base_flat, sources=(BASELINE_SOURCE,) * len(first))
    if rspec.scheduler in ("pbt", "pb2"):
        # Ray's PBT refuses a searcher (it is the search): the initial population comes from the
        # same space and sampler, drawn here, and runs as fixed points (the baseline first).
        from ray.tune.search.basic_variant import BasicVariantGenerator

        population = optuna.create_study(sampler=sampler)
        for params in first:
            population.enqueue_trial(params)
        points = [define_by_run(population.ask()) for _ in range(n)]
        search: Any = BasicVariantGenerator(points_to_evaluate=points)
        # Every key a point sets must exist in param_space; a point's absent (inactive) keys are dropped by _split.
        param_space = {k: None for point in points for k in point}
    else:
        search = OptunaSearch(
            space=define_by_run,
            metric=OBJECTIVE_KEY,
            mode="min",
            sampler=sampler,
            points_to_evaluate=first or None,
        )
        param_space = None
    stoppers: list[Any] = []
    stop = rspec.stop
    if stop.plateau is not None:
        metric = stop.plateau.metric or spec.objective.primary_metric
        stoppers.append(PlateauStopper(key, metric, stop.plateau.patience, stop.plateau.min_delta))
    if stop.time_budget_s is not None or stop.compute_budget_epochs is not None:
        stoppers.append(BudgetStopper(key, stop.time_budget_s, stop.compute_budget_epochs))
    keep = (
        None if rspec.scheduler in ("pbt", "pb2", "hyperband") else 2
    )  # PBT/HyperBand read older checkpoints
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=_make_scheduler(rspec, spec, max_t),
            num_samples=n,
            max_concurrent_trials=concurrency,
            reuse_actors=False,
            # Short, stable names: the default one spells out the config (with our metadata).
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=str(run_dir / "ray"),
            failure_config=tune.FailureConfig(max_failures=rspec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
            stop=CombinedStopper(*stoppers) if stoppers else None,
            callbacks=[RecordTrials(key)],
            verbose=0,
        ),
    )


def _trial_name(trial: Any) -> str:
    return str(trial.trial_id)
