"""The local backend: trials in this process with Optuna's ``study.optimize`` (threads for ``n_jobs``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from speechtune.tuning.backends._base import needs_objective
from speechtune.tuning.objectives import Objective
from speechtune.tuning.spec import TuningSpec
from speechtune.tuning.study import (
    COUNTED_STATES,
    DEFAULT_HEARTBEAT_S,
    FailureGuard,
    OpenOptions,
    StudyProgress,
    StudySession,
    TrialFailed,
    TrialRunner,
    device_slots,
    interruptible_trials,
    quiet_trial_failures,
)


class _StopAtTarget:
    """Stop the study once its finished (complete, pruned) and coming trials reach ``target``.

    Coming trials: at least the ``in_flight - 1`` other threads of this round (``in_flight``:
    the round's n_jobs), each of which runs a trial unless stopped, and at least the trials
    running in the study (those of other processes sharing it, workers, count too). Counting
    only the running trials let n_jobs threads start one trial too many: Optuna submits the
    next thread as soon as a trial ends, and that thread's trial is not in storage yet when
    another thread's callback counts. Counting too many only stops a round early (a thread
    that has not started its trial then starts none, one that fails leaves the count short),
    and the caller's next round starts what is missing.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.in_flight = 1

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        finished = len(study.get_trials(deepcopy=False, states=COUNTED_STATES))
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if finished + max(running, self.in_flight - 1) >= self.target:
            study.stop()


@dataclass(frozen=True)
class LocalBackend:
    """Trials in this process, ``n_jobs`` at a time (threads).

    Args:
        n_jobs: parallel trials; default ``study.n_jobs``. With CUDA GPUs trial k runs on
            ``cuda:(k % n_gpus)``; on the CPU each trial gets its share of the cores.
        heartbeat_s: heartbeat interval of RDB storages; a trial silent for twice that is stale.
        shared: other processes (``speechtune worker``) run trials of this study at the same
            time: the TPE sampler then uses the constant liar, as it does for ``n_jobs`` > 1,
            so that concurrent workers do not propose the same region.
        monitor_gpus: record GPU utilisation over the study (how much one-at-a-time trials
            leave idle is what ``--workers N`` would recover).
    """

    n_jobs: int | None = None
    heartbeat_s: int = DEFAULT_HEARTBEAT_S
    shared: bool = False
    monitor_gpus: bool = False

    def jobs(self, spec: TuningSpec) -> int:
        """Trials run at once for ``spec``."""
        return max(1, int(self.n_jobs if self.n_jobs is not None else spec.study.n_jobs or 1))

    def open_options(self, spec: TuningSpec, run_dir: Path) -> OpenOptions:
        """See :meth:`Backend.open_options`; a ``fidelity:`` spec needs the multi-fidelity backend."""
        if spec.fidelity is not None:
            raise ValueError(
                "a fidelity: section is run by the multi-fidelity backend (MultiFidelityBackend)"
            )
        jobs = self.jobs(spec)
        return OpenOptions(
            n_jobs=max(jobs, 2) if self.shared else jobs,
            heartbeat_s=self.heartbeat_s,
            monitor_gpus=self.monitor_gpus,
        )

    def run(
        self,
        session: StudySession,
        objective: Objective | None,
        *,
        n_trials: int | None,
        progress: bool,
    ) -> None:
        """See :meth:`Backend.run`."""
        quiet_trial_failures()
        spec, study = session.spec, session.study
        target = session.target(n_trials)
        jobs = self.jobs(spec)
        objective = needs_objective(objective)
        runner = TrialRunner(spec, objective, session.run_dir, slots=device_slots(objective, jobs))
        view = StudyProgress(study, n_trials=target, n_jobs=jobs, live=progress)
        guard = FailureGuard(max(10, target or 10))
        callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [
            guard,
            view,
            session.trial_finished,
            session.reap_killed,
        ]
        stop = None if target is None else _StopAtTarget(int(target))
        if stop is not None:
            callbacks.insert(0, stop)
        timeout = spec.study.timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        with view, interruptible_trials():
            # Rounds: each starts at most the trials still missing, and stops once the finished
            # and running trials make the count (a callback counting finished ones only lets
            # n_jobs threads start up to n_jobs - 1 trials too many); a failed or interrupted
            # trial does not count, so another round replaces it. n_trials stays None: with it,
            # Optuna's main thread leaves its wait once everything is submitted, and a Ctrl-C
            # then would not wait for the running trials to stop.
            while True:
                remaining = None if target is None else target - session.counted()
                left = None if deadline is None else deadline - time.monotonic()
                if (remaining is not None and remaining <= 0) or (left is not None and left <= 0):
                    return
                round_jobs = jobs if remaining is None else min(jobs, remaining)
                if stop is not None:
                    stop.in_flight = round_jobs
                study.optimize(
                    runner,
                    n_trials=None,
                    timeout=left,
                    n_jobs=round_jobs,
                    catch=(TrialFailed,),
                    callbacks=callbacks,
                )
                if remaining is None or guard.tripped:
                    return
