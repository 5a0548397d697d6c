"""Running a study: :func:`run_study`, the one loop around every backend."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna

from speechtune.tuning.backends._base import Backend
from speechtune.tuning.backends._local import LocalBackend
from speechtune.tuning.backends._multifidelity import MultiFidelityBackend
from speechtune.tuning.objectives import Objective
from speechtune.tuning.spec import TuningSpec
from speechtune.tuning.study import (
    DEFAULT_HEARTBEAT_S,
    StudyOutputs,
    StudySession,
    Tracker,
    comparable_trials,
    confirm_seeds_for,
    run_confirmation,
)

log = logging.getLogger(__name__)


def default_backend(
    spec: TuningSpec,
    *,
    n_jobs: int | None = None,
    heartbeat_s: int = DEFAULT_HEARTBEAT_S,
    monitor_gpus: bool = False,
) -> Backend:
    """The in-process backend for ``spec``: multi-fidelity when it has a ``fidelity:`` section.

    Args:
        spec: the tuning spec.
        n_jobs: parallel trials (threads); default ``study.n_jobs``.
        heartbeat_s: heartbeat interval of RDB storages.
        monitor_gpus: record GPU utilisation over the study.
    """
    if spec.fidelity is not None:
        return MultiFidelityBackend(
            n_jobs=n_jobs, heartbeat_s=heartbeat_s, monitor_gpus=monitor_gpus
        )
    return LocalBackend(n_jobs=n_jobs, heartbeat_s=heartbeat_s, monitor_gpus=monitor_gpus)


def run_study(
    spec: TuningSpec,
    objective: Objective | None,
    run_dir: str | Path,
    *,
    backend: Backend | None = None,
    n_trials: int | None = None,
    resume: bool = False,
    tracker: Tracker | None = None,
    outputs: StudyOutputs | None = None,
    progress: bool = True,
) -> optuna.Study:
    """Run (or resume) the study of ``spec`` until ``n_trials`` trials are complete or pruned.

    Args:
        spec: the tuning spec (:func:`speechtune.tuning.load_tuning`).
        objective: evaluates one config (recipe, function or command objective); None for a
            backend whose workers build their own from the stored spec (packed workers).
        run_dir: where the study database, trial outputs and reports go.
        backend: where trials run; default :func:`default_backend` (this process).
        n_trials: complete + pruned trials to reach in total (across resumes); default
            ``spec.study.n_trials``. Failed trials do not count: a new trial replaces them. A
            multi-fidelity study counts jobs, and stops first at its ``fidelity.budget``.
        resume: continue the existing study of this name (trials a killed process left running
            are failed and re-run once).
        tracker: logs the study and every finished trial (:class:`speechtune.track.StudyTracker`).
        outputs: writes trials.csv, best.yaml, report.html at the end
            (:func:`speechtune.reports.write_study_outputs`); None: none.
        progress: live progress display (on a terminal; one log line per trial otherwise).

    Returns:
        The Optuna study.

    Raises:
        StudyExistsError: the study already has trials and ``resume`` is False.
        ValueError: ``spec`` asks for something ``backend`` cannot run.
        KeyboardInterrupt: re-raised after the records of the trials so far are written.
    """
    backend = backend if backend is not None else default_backend(spec)
    run_dir = Path(run_dir).resolve()
    options = backend.open_options(spec, run_dir)
    session = StudySession(
        spec, run_dir, resume=resume, tracker=tracker, outputs=outputs, options=options
    )
    with session:
        backend.run(session, objective, n_trials=n_trials, progress=progress)
        if spec.study.confirm_top > 0:
            # Inside the session: the outputs written on exit follow the confirmed pick.
            _confirm(session, objective, options.n_jobs, progress)
    return session.study


def _confirm(
    session: StudySession, objective: Objective | None, n_jobs: int, progress: bool
) -> None:
    """``study.confirm_top``: train the best configs again on new seeds (see run_confirmation)."""
    spec, study = session.spec, session.study
    if not comparable_trials(study):
        log.warning("confirmation skipped: no complete trial to confirm")
        return
    if objective is None:  # packed workers: the objective lives in the workers; build one here
        from speechtune.tuning.objectives import build_objective

        objective = build_objective(spec)
    seeds = confirm_seeds_for(spec)
    say = print if progress else (lambda line: log.info("%s", line))
    say(
        f"confirming the best {spec.study.confirm_top} configs (and the baseline) on seeds "
        f"{', '.join(map(str, seeds))}"
    )
    try:
        run_confirmation(
            study,
            objective,
            spec.objective,
            session.run_dir,
            top=spec.study.confirm_top,
            seeds=seeds,
            n_jobs=n_jobs,
            echo=say,
        )
    except ValueError as exc:  # e.g. every complete trial infeasible: the study stands as it is
        log.warning("confirmation skipped: %s", exc)
