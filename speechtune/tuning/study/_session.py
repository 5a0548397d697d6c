"""One run over one study: what every backend does around its trials, in one place.

A :class:`StudySession` opens (or resumes) the study of a tuning spec and, however its trials
run, owns the rest of the lifecycle::

    with StudySession(spec, run_dir, resume=True, tracker=tracker, outputs=write_outputs) as session:
        backend.run(session, objective, n_trials=20, progress=True)

* on entry: the run directory, the study (storage, sampler, pruner), ``spec.yaml``, the
  tracker's parent run, and (optionally) a GPU utilisation monitor; in a new recipe study, the
  base recipe's defaults as its first trial (``study.baseline``); on resume, a re-run of
  every trial that Ctrl-C interrupted or a killed process left running (at most
  ``study.max_retries`` per config);
* for each finished trial, :meth:`StudySession.trial_finished` (an Optuna study callback) logs
  it to the tracker, once;
* on exit, also after Ctrl-C or an error: the study's total cost, the trials this run finished
  that no callback saw (trials of worker processes) to the tracker, the tracker's end, and the
  outputs.

A failure of tracking or of the outputs is logged, never raised: the study's storage is the
record.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from speechtune._jsonable import _jsonable
from speechtune.devices import GpuMonitor
from speechtune.tuning.spec import TuningSpec
from speechtune.tuning.study._baseline import baseline_params, enqueue_baseline
from speechtune.tuning.study._interrupt import requeue_interrupted
from speechtune.tuning.study._open import open_study, record_cost_total
from speechtune.tuning.study._records import TrialRecord
from speechtune.tuning.study._retry import fail_killed_trials
from speechtune.tuning.study._storage import DEFAULT_HEARTBEAT_S
from speechtune.tuning.study._trial import COUNTED_STATES

log = logging.getLogger(__name__)

#: Trial states a tracker logs (a running trial is logged when it finishes).
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class Tracker(Protocol):
    """What a study needs of an experiment tracker (:class:`speechtune.track.StudyTracker`)."""

    def start_study(self, name: str, spec: Mapping[str, Any]) -> str: ...

    def log_trial(
        self,
        number: int,
        config: Mapping[str, Any],
        history: Sequence[Mapping[str, Any]],
        metrics: Mapping[str, Any],
        status: str,
        reason: str,
        config_path: str | Path | None = None,
        cost: Mapping[str, Any] | None = None,
    ) -> str: ...

    def end_study(
        self,
        best_value: float | None,
        best_params: Mapping[str, Any] | None,
        cost: Mapping[str, Any] | None = None,
    ) -> None: ...


class StudyOutputs(Protocol):
    """Writes a study's outputs (``trials.csv``, ``best.yaml``, ``report.html``...) into its run dir.

    :func:`speechtune.reports.write_study_outputs` is the one the command line and
    :func:`speechtune.tune` use.
    """

    def __call__(self, study: optuna.Study, run_dir: Path) -> Mapping[str, Path]: ...


@dataclass(frozen=True)
class OpenOptions:
    """How a backend wants its study opened.

    Attributes:
        n_jobs: trials that run at once; above 1 the TPE sampler uses the constant liar so that
            concurrent trials do not propose the same region.
        heartbeat_s: heartbeat interval of RDB storages (a silent trial is stale after two).
        sampler: used instead of the one ``study.sampler`` names (the multi-fidelity engine
            enqueues every trial itself).
        pruner: used instead of the one ``study.pruner`` names.
        storage: a storage URL replacing ``study.storage`` (packed workers need a journal file).
        monitor_gpus: sample GPU utilisation while the study runs (``gpu_utilization`` attr).
        enqueue_baseline: enqueue :attr:`StudySession.baseline` in the study; False where the
            backend's own searcher must run it (Ray's OptunaSearch keeps a study of its own).
    """

    n_jobs: int = 1
    heartbeat_s: int = DEFAULT_HEARTBEAT_S
    sampler: optuna.samplers.BaseSampler | None = None
    pruner: optuna.pruners.BasePruner | None = None
    storage: str | None = None
    monitor_gpus: bool = False
    enqueue_baseline: bool = True


class FailureGuard:
    """Stops a study whose trials keep failing (a broken objective would otherwise loop forever)."""

    def __init__(self, max_failures: int) -> None:
        self.max_failures = max_failures
        self.failures = 0
        self.tripped = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """An Optuna study callback: count a failed trial, stop the study at ``max_failures``."""
        if trial.state == TrialState.FAIL:
            self.failures += 1
            if self.failures >= self.max_failures:
                self.tripped = True
                log.error(
                    "%d trials failed in this run; stopping the study (see the reasons in trials.csv)",
                    self.failures,
                )
                study.stop()


class StudySession:
    """The study of ``spec`` in ``run_dir``, opened for one run of a backend (a context manager).

    Args:
        spec: the tuning spec.
        run_dir: where the default storage, trial dirs, ``spec.yaml`` and the outputs go; made
            absolute, so that trial dirs recorded in the study stay valid from any directory.
        resume: continue the existing study of this name; without it a study that already has
            trials is an error (:class:`~speechtune.tuning.study.StudyExistsError`).
        tracker: logs the study and each finished trial (MLflow); None: no tracking.
        outputs: writes the outputs at the end; None: none.
        options: how the backend wants the study opened.

    Attributes:
        baseline: once entered, the params of the base recipe's defaults when this run began
            the study and it trains them first (:func:`~speechtune.tuning.study.baseline_params`);
            None otherwise (a resumed study, a worker joining one, no baseline).
    """

    def __init__(
        self,
        spec: TuningSpec,
        run_dir: str | Path,
        *,
        resume: bool = False,
        tracker: Tracker | None = None,
        outputs: StudyOutputs | None = None,
        options: OpenOptions = OpenOptions(),
    ) -> None:
        self.spec = spec.with_storage(options.storage)
        self.run_dir = Path(run_dir).resolve()
        self.resume = resume
        self.tracker = tracker
        self.outputs = outputs
        self.options = options
        self.gpu_monitor: GpuMonitor | None = None
        self.baseline: dict[str, Any] | None = None
        self._study: optuna.Study | None = None
        self._tracking = False
        self._logged: set[int] = set()
        self._lock = threading.Lock()

    @property
    def study(self) -> optuna.Study:
        """The open study.

        Raises:
            RuntimeError: the session has not been entered.
        """
        if self._study is None:
            raise RuntimeError(
                "the study is opened when the session is entered (use `with StudySession(...)`)"
            )
        return self._study

    # -- the lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> StudySession:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        options = self.options
        self._study = open_study(
            self.spec,
            self.run_dir,
            resume=self.resume,
            n_jobs=options.n_jobs,
            heartbeat_s=options.heartbeat_s,
            sampler=options.sampler,
            pruner=options.pruner,
            on_new=self._begin,
        )
        if self.resume and self.spec.fidelity is None:
            # Trials Ctrl-C ended are re-run first (the multi-fidelity driver re-runs its
            # unfinished jobs itself when it replays the study).
            requeue_interrupted(self._study, self.spec.study.max_retries)
        # Trials finished before this run (a resumed study, warm-start evidence) were logged by
        # the run that made them, or are not this run's to log.
        self._logged = {
            t.number for t in self._study.get_trials(deepcopy=False, states=FINISHED_STATES)
        }
        if self.spec.raw:
            (self.run_dir / "spec.yaml").write_text(
                yaml.safe_dump(_jsonable(self.spec.raw), sort_keys=False)
            )
        self._tracking = self.tracker is not None and self._start_tracking(self.tracker)
        if options.monitor_gpus:
            # A no-op without an NVIDIA driver: its summary then says why.
            self.gpu_monitor = GpuMonitor()
            self.gpu_monitor.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Also after Ctrl-C or an error: the trials finished so far are worth their records.
        study = self.study
        if self.gpu_monitor is not None:
            self.gpu_monitor.stop()
            if self.gpu_monitor.available:
                study.set_user_attr("gpu_utilization", _jsonable(self.gpu_monitor.summary()))
        record_cost_total(study)
        if self._tracking and self.tracker is not None:
            for trial in study.get_trials(deepcopy=False, states=FINISHED_STATES):
                self.trial_finished(
                    study, trial
                )  # trials of other processes; logged ones are skipped
            self._end_tracking(self.tracker, study)
        if self.outputs is not None:
            try:
                self.outputs(study, self.run_dir)
            except Exception as exc:  # a broken report must not hide the study's results
                log.warning("could not write the study's outputs: %s: %s", type(exc).__name__, exc)

    def _begin(self, study: optuna.Study) -> None:
        # Called only by the process that begins the study: workers joining it, and any resume,
        # leave its trials as they are (a study begun before baselines existed goes on without).
        self.baseline = baseline_params(self.spec)
        if self.baseline is not None and self.options.enqueue_baseline:
            enqueue_baseline(study, self.baseline)

    # -- what backends call -------------------------------------------------------------------
    def trial_finished(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """An Optuna study callback: log a finished trial to the tracker (each trial once)."""
        if not self._tracking or self.tracker is None:
            return
        with self._lock:
            if trial.number in self._logged:
                return
            self._logged.add(trial.number)
        rec = TrialRecord.from_trial(trial)
        try:
            self.tracker.log_trial(
                rec.number,
                rec.config,
                list(rec.history),
                rec.metrics,
                rec.status,
                rec.reason,
                _first_config_file(Path(rec.trial_dir) if rec.trial_dir else None),
                cost=rec.cost,
            )
        except Exception as exc:  # tracking is a convenience; the study's storage is the record
            log.warning(
                "could not log trial %d to the tracker: %s: %s",
                trial.number,
                type(exc).__name__,
                exc,
            )

    def reap_killed(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """An Optuna study callback: fail and re-queue the trials of processes that died meanwhile.

        Run after each trial, before Optuna's own check of silent heartbeats, so that such a
        trial is failed with its reason (and a dead process on this machine is seen at once,
        also on a journal storage, which has no heartbeat).
        """
        try:
            fail_killed_trials(
                study,
                max_retries=self.spec.study.max_retries,
                requeue=self.spec.fidelity is None,
            )
        except Exception as exc:  # bookkeeping of others' trials must not end this study
            log.warning("could not check for killed trials: %s: %s", type(exc).__name__, exc)

    def counted(self) -> int:
        """Trials that count towards ``n_trials``: complete and pruned (a failed trial is replaced)."""
        return len(self.study.get_trials(deepcopy=False, states=COUNTED_STATES))

    def target(self, n_trials: int | None) -> int | None:
        """``n_trials`` when given, else the spec's ``study.n_trials``."""
        return n_trials if n_trials is not None else self.spec.study.n_trials

    # -- tracking -------------------------------------------------------------------------------
    def _start_tracking(self, tracker: Tracker) -> bool:
        try:
            tracker.start_study(self.spec.study.name, _jsonable(self.spec.raw))
            return True
        except Exception as exc:  # see trial_finished
            log.warning("could not start tracking the study: %s: %s", type(exc).__name__, exc)
            return False

    @staticmethod
    def _end_tracking(tracker: Tracker, study: optuna.Study) -> None:
        best_value, best_params = None, None
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if complete:
            best = min(complete, key=lambda t: t.values[0])
            best_value, best_params = best.values[0], best.user_attrs.get("config") or best.params
        try:
            total = study.user_attrs.get("cost_total")
            cost = total.get("total") if isinstance(total, Mapping) else None
            tracker.end_study(best_value, best_params, cost=cost)
        except Exception as exc:  # see trial_finished
            log.warning("could not end tracking the study: %s: %s", type(exc).__name__, exc)


def _first_config_file(trial_dir: Path | None) -> Path | None:
    if trial_dir is None:
        return None
    for candidate in (trial_dir / "config.yaml", *sorted(trial_dir.glob("seed*/config.yaml"))):
        if candidate.exists():
            return candidate
    return None
