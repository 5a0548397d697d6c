"""Trials a killed process left running: failed with a reason, re-run at most ``study.max_retries`` times.

A trial is known to be killed when its process, on this machine, is gone (its ``worker`` user
attr is ``host:pid``), or when its heartbeat (RDB storages) has been silent for two intervals.
It is failed with the status ``killed`` and a reason that says which and what happens next
(``killed while running (process 1234 gone); retry 1/2``), then re-queued with the same params
as a retry: a WAITING trial carrying the system attrs ``failed_trial`` (the config's first
trial) and ``retry_history`` (every trial of the chain), as Optuna's retry callback writes them,
so that :class:`~speechtune.tuning.study.TrialRunner` continues from the dead trial's files.

Retries are counted per config along that chain, killed and Ctrl-C'd ones alike (see
:mod:`._interrupt`): once a config has had ``study.max_retries`` retries, the next kill gives it
up, its reason says so, and one warning line is logged. The numbers of the trials given up are
kept in the study's ``given_up_trials`` user attr.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections.abc import Iterable

import optuna
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from speechtune.tuning.spec import StudySpec
from speechtune.tuning.study._progress import short_params

log = logging.getLogger("speechtune.tuning")

#: Re-runs a config gets after its trial was killed or interrupted (``study.max_retries``).
DEFAULT_MAX_RETRIES: int = StudySpec.max_retries

#: The status of a trial a killed process left running.
KILLED_STATUS = "killed"

#: The study user attr listing the trials whose config was given up.
GIVEN_UP_ATTR = "given_up_trials"

#: The user attrs a retry inherits: ``trial_dir`` so that it continues from that trial's files,
#: ``source`` because a retry of the baseline still trains the defaults; the rest (status,
#: reason, metrics, cost...) described how the dead trial ended.
INHERITED_ATTRS = ("trial_dir", "config", "source")


def retry_history(trial: FrozenTrial) -> list[int]:
    """The trials before ``trial`` in its config's chain of retries (empty for a first try)."""
    return [int(n) for n in trial.system_attrs.get("retry_history") or []]


def retry_note(trial: FrozenTrial, max_retries: int) -> tuple[str | None, str]:
    """The retry a killed or interrupted ``trial`` gets (``"1/2"``; None: given up), and the
    words its reason ends with."""
    attempt = len(retry_history(trial)) + 1
    if attempt <= max_retries:
        return f"{attempt}/{max_retries}", f"retry {attempt}/{max_retries}"
    return None, f"given up after {max_retries} retries (study.max_retries)"


def requeue_or_give_up(
    study: optuna.Study, trial: FrozenTrial, why: str, max_retries: int
) -> bool:
    """Queue a retry of the failed ``trial``, or give its config up; True when it was queued.

    Args:
        study: the study.
        trial: a FAIL trial that a killed process or Ctrl-C ended.
        why: what ended it, for the log (``killed while running (process 1234 gone)``).
        max_retries: ``study.max_retries``.
    """
    retry, note = retry_note(trial, max_retries)
    if retry is None:
        _give_up(study, trial, why, max_retries)
        return False
    history = [*retry_history(trial), trial.number]
    inherited = {k: v for k, v in trial.user_attrs.items() if k in INHERITED_ATTRS}
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={**inherited, "retry_of": trial.number, "retry": retry},
            system_attrs={"failed_trial": history[0], "retry_history": history},
        )
    )
    log.info("trial %d: %s; re-queued (%s)", trial.number, why, note)
    return True


def _give_up(study: optuna.Study, trial: FrozenTrial, why: str, max_retries: int) -> None:
    given_up = [int(n) for n in study.user_attrs.get(GIVEN_UP_ATTR) or []]
    if trial.number in given_up:
        return
    study.set_user_attr(GIVEN_UP_ATTR, [*given_up, trial.number])
    tries = len(retry_history(trial)) + 1
    params = short_params(dict(trial.params))
    log.warning(
        "trial %d: %s, the %s try of its config [%s]; giving up on this config "
        "(study.max_retries: %d)",
        trial.number,
        why,
        _ordinal(tries),
        params,
        max_retries,
    )


def given_up_trials(study: optuna.Study) -> set[int]:
    """The trials whose config was given up (no retry will be queued for them)."""
    return {int(n) for n in study.user_attrs.get(GIVEN_UP_ATTR) or []}


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def gone_process(trial: FrozenTrial) -> int | None:
    """The pid of ``trial``'s process when it ran on this machine and is gone; else None.

    A process of another machine, or one this process may not signal, is never judged gone:
    its heartbeat decides.
    """
    worker = trial.user_attrs.get("worker")
    if not isinstance(worker, str):
        return None
    host, _, pid_text = worker.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    except OSError:  # e.g. EPERM: someone else's live process
        return None
    return pid if _zombie(pid) else None


def _zombie(pid: int) -> bool:
    # A killed process its parent has not reaped yet still answers signal 0 (Linux only).
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()[:1] == ["Z"]
    except OSError:
        return False


def _stale_trial_ids(study: optuna.Study) -> set[int]:
    storage = study._storage
    if not isinstance(storage, BaseHeartbeat) or not is_heartbeat_enabled(storage):
        return set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return set(storage._get_stale_trial_ids(study._study_id))


def _grace_s(study: optuna.Study) -> int | None:
    storage = study._storage
    interval = storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None
    return None if interval is None else 2 * int(interval)


def fail_killed_trials(
    study: optuna.Study, *, max_retries: int = DEFAULT_MAX_RETRIES, requeue: bool = True
) -> list[int]:
    """Fail the RUNNING trials whose process is gone or silent, and re-queue their configs.

    Each gets the status ``killed`` and a reason such as ``killed while running (process 1234
    gone); retry 1/2`` (``...; given up after 2 retries (study.max_retries)`` once its config
    used them up, with a warning). Another process failing the same trial first is no error.

    Args:
        study: the study (its storage is read and written).
        max_retries: ``study.max_retries``.
        requeue: False for a multi-fidelity study, whose driver re-runs its unfinished jobs
            itself: the trials are failed, nothing is queued.

    Returns:
        The numbers of the trials failed here.
    """
    stale = _stale_trial_ids(study)
    failed = []
    for trial in _running(study):
        pid = gone_process(trial)
        if pid is not None:
            why = f"killed while running (process {pid} gone)"
        elif trial._trial_id in stale:
            worker = trial.user_attrs.get("worker")
            who = f"process {worker}" if isinstance(worker, str) else "its process"
            why = f"killed while running ({who} silent for over {_grace_s(study)} s)"
        else:
            continue
        if _fail(study, trial, why, max_retries, requeue):
            failed.append(trial.number)
    return failed


def _running(study: optuna.Study) -> Iterable[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def _fail(
    study: optuna.Study, trial: FrozenTrial, why: str, max_retries: int, requeue: bool
) -> bool:
    storage = study._storage
    _, note = retry_note(trial, max_retries)
    if not requeue:
        note = "its job re-runs when the multi-fidelity search resumes"
    try:
        # The reason first: a finished trial's attrs can no longer be written.
        storage.set_trial_user_attr(trial._trial_id, "status", KILLED_STATUS)
        storage.set_trial_user_attr(trial._trial_id, "reason", f"{why}; {note}")
        if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # another process failed (or finished) it first, and re-queued it
    if requeue:
        requeue_or_give_up(study, storage.get_trial(trial._trial_id), why, max_retries)
    return True


class RetryKilledTrials:
    """The heartbeat's stale-trial callback of a study's RDB storage: re-queue, counted per config.

    Optuna calls it with a trial it has already failed (its heartbeat went silent while
    ``study.optimize`` ran); the record's reason is then read as a killed trial's
    (:class:`~speechtune.tuning.study.TrialRecord`). Most such trials are failed earlier, with
    their reason, by :func:`fail_killed_trials`.

    Args:
        max_retries: ``study.max_retries``.
    """

    def __init__(self, max_retries: int = DEFAULT_MAX_RETRIES) -> None:
        self.max_retries = max_retries

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Re-queue the failed ``trial``'s config unless it used up its retries."""
        grace = _grace_s(study)
        silent = f" for over {grace} s" if grace is not None else ""
        requeue_or_give_up(
            study,
            trial,
            f"killed while running (its process went silent{silent})",
            self.max_retries,
        )
