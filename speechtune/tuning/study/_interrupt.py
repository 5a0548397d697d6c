"""Ctrl-C during a study: the running trials are recorded as interrupted, and re-run on resume.

Optuna has no interrupted state: such a trial is FAIL with status ``interrupted``, reason
:data:`INTERRUPTED_REASON` and the user attr ``interrupted=True``. Ctrl-C only reaches the main
thread; :func:`interruptible_trials` passes it on to trials in other threads (``n_jobs`` > 1),
which stop at their next report instead of running to their end.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from speechtune.tuning.study._retry import (
    DEFAULT_MAX_RETRIES,
    given_up_trials,
    requeue_or_give_up,
    retry_history,
)

log = logging.getLogger("speechtune.tuning")

#: The reason recorded for a trial that Ctrl-C ended.
INTERRUPTED_REASON = "interrupted by the user"


#: Set by Ctrl-C while :func:`interruptible_trials` is open: trials in other threads (``n_jobs``
#: > 1) stop at their next report. Ctrl-C itself only reaches the main thread, and Optuna's
#: thread pool would otherwise wait for every running trial to finish.
_INTERRUPT = threading.Event()


def interrupt_requested() -> bool:
    """Has Ctrl-C been pressed while :func:`interruptible_trials` is open?"""
    return _INTERRUPT.is_set()


@contextmanager
def interruptible_trials() -> Iterator[None]:
    """While open, Ctrl-C also ends the trials running in other threads (at their next report).

    The handler sets :data:`_INTERRUPT`, then raises ``KeyboardInterrupt`` in the main thread as
    Python's own does. A no-op outside the main thread (signal handlers can only be set there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: Any) -> None:
        _INTERRUPT.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    _INTERRUPT.clear()
    try:
        yield
    finally:
        # None: the previous handler was not set from Python; Python's own is the closest.
        signal.signal(
            signal.SIGINT, previous if previous is not None else signal.default_int_handler
        )
        _INTERRUPT.clear()


def mark_interrupted(trial: Trial) -> None:
    """Record on a running trial that Ctrl-C ended it (before Optuna fails it)."""
    try:
        trial.set_user_attr("status", "interrupted")
        trial.set_user_attr("reason", INTERRUPTED_REASON)
        trial.set_user_attr("interrupted", True)
    except Exception as exc:  # a storage error must not replace the KeyboardInterrupt
        log.warning("trial %d: could not record the interruption: %s", trial.number, exc)


def pending_interrupted(study: optuna.Study) -> list[FrozenTrial]:
    """The trials Ctrl-C interrupted that no later trial re-runs yet, nor was given up."""
    trials = study.get_trials(deepcopy=False)
    retried = given_up_trials(study)
    for t in trials:
        retried.update(retry_history(t))
        if t.system_attrs.get("failed_trial") is not None:
            retried.add(int(t.system_attrs["failed_trial"]))
    return [
        t
        for t in trials
        if t.state == TrialState.FAIL
        and t.user_attrs.get("interrupted")
        and t.number not in retried
    ]


def requeue_interrupted(study: optuna.Study, max_retries: int = DEFAULT_MAX_RETRIES) -> list[int]:
    """Queue a re-run of every interrupted trial (Ctrl-C) that has none yet; return their numbers.

    Called when a study is resumed. The re-run is a WAITING trial with the same params, marked as
    a retry of the interrupted one (the system attrs ``failed_trial``/``retry_history``, as
    Optuna's retry callback writes them), so :class:`TrialRunner` copies the interrupted trial's
    directory and the recipe continues from its ``last.pt``. A trial some retry already names is
    skipped, so resuming twice queues it once. Retries count per config, killed and interrupted
    ones alike: a config that had ``max_retries`` of them is given up (one warning line).
    """
    return [
        t.number
        for t in pending_interrupted(study)
        if requeue_or_give_up(study, t, INTERRUPTED_REASON, max_retries)
    ]
