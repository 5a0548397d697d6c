"""Opening a study of a tuning spec: create it, or load it to resume, with its sampler and pruner."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection

from speechtune._jsonable import _jsonable
from speechtune.metrics import summarize_costs
from speechtune.tuning.spec import TuningSpec
from speechtune.tuning.study._retry import fail_killed_trials
from speechtune.tuning.study._samplers import (
    CONSTRAINED_SAMPLERS,
    make_pruner,
    make_sampler,
    resume_seed,
)
from speechtune.tuning.study._storage import DEFAULT_HEARTBEAT_S, make_storage
from speechtune.tuning.study._values import constraints_from_attrs

log = logging.getLogger(__name__)


class StudyExistsError(RuntimeError):
    """The study already has trials and ``resume`` was not asked for."""


def _existing_trials(storage: optuna.storages.BaseStorage, name: str) -> int | None:
    """Number of trials of study ``name`` in ``storage``; None when there is no such study."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    return len(storage.get_all_trials(study_id, deepcopy=False))


def open_study(
    spec: TuningSpec,
    run_dir: Path,
    *,
    resume: bool = False,
    n_jobs: int = 1,
    heartbeat_s: int = DEFAULT_HEARTBEAT_S,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    on_new: Callable[[optuna.Study], None] | None = None,
) -> optuna.Study:
    """Create the study of ``spec`` (or load it when resuming).

    Args:
        spec: the tuning spec.
        run_dir: the run directory (default storage lives there).
        resume: continue an existing study; without it an existing study with trials is an error.
            The sampler's seed then mixes in the number of stored trials
            (:func:`~speechtune.tuning.study.resume_seed`), and the trials of killed processes are
            failed and re-queued (:func:`~speechtune.tuning.study.fail_killed_trials`).
        n_jobs: parallel trials (the TPE sampler uses the constant liar when > 1).
        heartbeat_s: heartbeat interval of RDB storages.
        sampler, pruner: used instead of the ones ``spec.study`` names (multi-fidelity studies).
        on_new: called with the study, once its attributes are set, when this call begins it:
            it created the study, or (without ``resume``) found it without trials. Of processes
            that open one shared study at once, only the one whose create succeeded is called:
            the place to enqueue the trials a new study runs first, exactly once.

    Returns:
        The study, with its study attributes set.

    Raises:
        StudyExistsError: the study exists with trials and ``resume`` is False.
    """
    study_spec, obj_spec = spec.study, spec.objective
    storage = make_storage(
        study_spec.storage, run_dir, heartbeat_s=heartbeat_s, max_retries=study_spec.max_retries
    )
    existing = _existing_trials(storage, study_spec.name)
    if existing and not resume:
        raise StudyExistsError(
            f"study {study_spec.name!r} already has {existing} trials in {run_dir}; pass --resume to continue it, "
            "or choose another study.name or --run-dir"
        )
    names = obj_spec.names
    constraints = list(obj_spec.constraints or [])
    if constraints and study_spec.sampler not in CONSTRAINED_SAMPLERS:
        log.warning(
            "objective.constraints are recorded but sampler %r ignores them; use one of %s to search feasible configs",
            study_spec.sampler,
            ", ".join(CONSTRAINED_SAMPLERS),
        )
    if sampler is None:
        # Resumed with the study's own seed, a sampler would replay the configs it proposed
        # before the interruption.
        seed = (
            resume_seed(study_spec.sampler, study_spec.seed, existing or 0)
            if resume
            else study_spec.seed
        )
        sampler = make_sampler(
            study_spec.sampler,
            seed=seed,
            n_jobs=n_jobs,
            constraints_func=constraints_from_attrs(len(constraints)) if constraints else None,
        )
    if pruner is None:
        pruner = make_pruner(study_spec.pruner, max_resource=spec.max_epochs)
    # The primary metric's direction is the spec's; extra objectives (latency, size) minimise.
    primary = (
        StudyDirection.MAXIMIZE
        if spec.objective.direction == "maximize"
        else StudyDirection.MINIMIZE
    )
    directions = [primary] + [StudyDirection.MINIMIZE] * (len(names) - 1)
    try:
        # Not load_if_exists: the storage's own refusal of a duplicate name (a unique key, or the
        # journal's ordered log) is what tells apart the one worker that created a shared study.
        study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            study_name=study_spec.name,
            directions=directions,
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(
            study_name=study_spec.name, storage=storage, sampler=sampler, pruner=pruner
        )
        created = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if resume:
            # Trials left RUNNING by a killed process: FAIL them with the reason and re-queue their
            # configs (the multi-fidelity driver re-runs its unfinished jobs itself).
            fail_killed_trials(
                study, max_retries=study_spec.max_retries, requeue=spec.fidelity is None
            )
        study.set_metric_names(names)
    study.set_user_attr("objective_names", names)
    study.set_user_attr("directions", [d.name.lower() for d in directions])
    study.set_user_attr("spec", _jsonable(spec.raw))
    if spec.base_recipe:
        study.set_user_attr("base_recipe", _jsonable(spec.base_recipe))
    # Without resume a study with trials was refused above: an empty one left by a run that
    # stopped before its first trial is begun again.
    if on_new is not None and (created or not resume):
        on_new(study)
    return study


def record_cost_total(study: optuna.Study) -> dict[str, Any] | None:
    """Sum the ``cost`` of every trial (and per state) into the study's ``cost_total`` user attr.

    Returns:
        The summary (:func:`speechtune.metrics.summarize_costs`), or None when it could not be
        stored (logged: the trials' own records stay).
    """
    try:
        total = summarize_costs(study.get_trials(deepcopy=False))
        study.set_user_attr("cost_total", _jsonable(total))
    except Exception as exc:  # e.g. mixed currencies after a resume with another cost: section
        log.warning("could not sum the study's cost: %s: %s", type(exc).__name__, exc)
        return None
    return total
