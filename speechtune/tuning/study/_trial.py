"""One trial: sample a config, run the objective once per seed, record the outcome in the trial.

Pruning decisions are taken on the first seed only. The outcome becomes an Optuna state:

* complete -> the objective value(s) (mean over seeds);
* stopped by the pruner -> ``TrialPruned`` (status ``stopped``, reason ``pruned-by-<pruner>``);
* a violated constraint of the search space -> pruned with reason ``constraint: ...``;
* diverged / flatline / oom / error -> FAIL (the study goes on; failures never end it);
* Ctrl-C -> FAIL with status ``interrupted``, reason ``interrupted by the user`` and the user
  attr ``interrupted=True`` (Optuna has no interrupted state); the ``KeyboardInterrupt`` goes on
  to end the study, and ``--resume`` re-queues the trial (see :mod:`._interrupt`).

Every trial's record (config, metrics, history, per-seed values...) lives in the trial's user
attributes, so that reports and MLflow read the storage and nothing else.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import socket
import statistics
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from speechtune._jsonable import _jsonable
from speechtune.devices import gpus_for_device
from speechtune.metrics import EnergyMeter
from speechtune.tuning.objectives import CONTINUE_MARKER, Objective, TrialOutcome
from speechtune.tuning.space import ConstraintViolation, SearchSpace
from speechtune.tuning.spec import TuningSpec
from speechtune.tuning.study._interrupt import interrupt_requested, mark_interrupted
from speechtune.tuning.study._values import (
    complete_metrics,
    parse_metric_constraint,
)

log = logging.getLogger("speechtune.tuning")

#: Per-epoch lines of every trial (``trial 3 epoch 2: wer 0.4120 ...``) are logged at DEBUG on
#: this logger: silent by default, shown by ``speechtune tune -v`` (which sets it to DEBUG).
EPOCH_LOGGER = "speechtune.tuning.epochs"
epoch_log = logging.getLogger(EPOCH_LOGGER)


#: Trial states that count towards ``n_trials`` (a failed trial is retried by a new one).
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


#: Outcome statuses that fail a trial.
FAILED_STATUSES = ("diverged", "flatline", "oom", "error")


class TrialFailed(RuntimeError):
    """Raised inside a trial to mark it FAIL; caught by ``study.optimize`` so the study goes on."""


class _NoTracebackForTrialFailed(logging.Filter):
    """Optuna logs a caught trial exception with its traceback; ours carries its reason already.

    Ctrl-C too: the trial's record says it was interrupted, and a traceback would read as a crash.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (TrialFailed, KeyboardInterrupt)):
            record.exc_info = None
        return True


_TRACEBACK_FILTER = _NoTracebackForTrialFailed()


def quiet_trial_failures() -> None:
    optuna_logger = logging.getLogger("optuna.study._optimize")
    if _TRACEBACK_FILTER not in optuna_logger.filters:
        optuna_logger.addFilter(_TRACEBACK_FILTER)


# ---------------------------------------------------------------------------------------------
# the reporter a trial's objective talks to
# ---------------------------------------------------------------------------------------------
class TrialReporter:
    """Per-epoch metrics -> ``trial.report`` of the primary metric; answers ``trial.should_prune()``.

    Args:
        trial: the running Optuna trial.
        metric: the metric reported as the intermediate value (the primary objective).
        prune: False for every seed after the first and for multi-objective studies (Optuna
            cannot prune those): metrics are then only recorded.
    """

    def __init__(self, trial: Trial, metric: str, *, prune: bool = True) -> None:
        self.trial = trial
        self.metric = metric
        self.prune = prune
        self.pruned = False
        self.history: list[dict[str, float]] = []

    def report(self, epoch: int, **metrics: float) -> bool:
        """Record one epoch; True when the pruner wants the trial stopped."""
        if interrupt_requested():
            # Ctrl-C reached the main thread: this trial (in a worker thread) ends too.
            raise KeyboardInterrupt
        self.history.append({"epoch": epoch, **metrics})
        if epoch_log.isEnabledFor(logging.DEBUG):
            epoch_log.debug(
                "trial %d epoch %s: %s", self.trial.number, epoch, _metrics_text(metrics)
            )
        if not self.prune or self.pruned:
            return self.pruned
        value = metrics.get(self.metric)
        if value is None and self.metric == "worst_group_wer":
            groups = {k: v for k, v in metrics.items() if k.startswith("wer/")}
            value = max(groups.values()) if groups else None
        if value is None or not math.isfinite(float(value)):
            return False
        with warnings.catch_warnings():
            # Re-reporting a step (an OOM retry) only warns; the first value stands.
            warnings.simplefilter("ignore", UserWarning)
            self.trial.report(float(value), step=int(epoch))
        self.pruned = self.trial.should_prune()
        return self.pruned


def _metrics_text(metrics: Mapping[str, Any], limit: int = 8) -> str:
    """The first ``limit`` numeric metrics as ``name value`` pairs (4 significant digits)."""
    shown = [
        f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and k != "epoch"
    ]
    return "  ".join(shown[:limit])


# ---------------------------------------------------------------------------------------------
# one trial
# ---------------------------------------------------------------------------------------------
@dataclass
class _SeedRun:
    seed: int
    outcome: TrialOutcome
    values: list[float] = field(default_factory=list)


def _halve_batch(
    config: Mapping[str, Any], base_flat: Mapping[str, Any]
) -> tuple[dict[str, Any], str] | None:
    batch = int(config.get("train.batch_size", base_flat.get("train.batch_size", 16)))
    accum = int(config.get("train.grad_accum", base_flat.get("train.grad_accum", 1)))
    if batch < 2:
        return None
    new = {**config, "train.batch_size": batch // 2, "train.grad_accum": accum * 2}
    return (
        new,
        f"oom retry: train.batch_size {batch} -> {batch // 2}, train.grad_accum {accum} -> {accum * 2}",
    )


class TrialRunner:
    """The Optuna objective function of a study (a callable taking a trial).

    Args:
        spec: the tuning spec (space, objective section, cost model, OOM retry).
        objective: evaluates one config.
        run_dir: trial dirs go to ``run_dir/trials/<number>``.
        slots: per-trial objectives of parallel trials (:func:`device_slots`); None: ``objective``.
    """

    def __init__(
        self,
        spec: TuningSpec,
        objective: Objective,
        run_dir: Path,
        *,
        slots: Callable[[int], Objective] | None = None,
    ) -> None:
        self.spec = spec
        self.objective = objective
        self.run_dir = run_dir
        self.pruner_name = spec.study.pruner
        self.base_flat = spec.base_flat
        self.slots = slots
        self.obj_spec = spec.objective
        self.multi = self.obj_spec.is_multi_objective
        self.constraints = [parse_metric_constraint(c) for c in (self.obj_spec.constraints or [])]
        self.cost_model = spec.cost

    def __call__(self, trial: Trial) -> float | list[float]:
        """Run one trial, measured: its ``cost`` user attr is written however it ends."""
        # First: should this process die, a resumed study tells its trial by the pid at once.
        trial.set_user_attr("worker", WORKER_ID)
        objective = self.slots(trial.number) if self.slots is not None else self.objective
        meter = EnergyMeter(self.cost_model, gpus=trial_gpus(objective))
        meter.start()
        try:
            return self._run_trial(trial)
        except KeyboardInterrupt:
            # Recorded before Optuna fails the trial and re-raises: the record must say why it
            # ended (an empty reason reads as a crash), and --resume re-runs it by this mark.
            mark_interrupted(trial)
            raise
        except (optuna.TrialPruned, TrialFailed):
            raise  # recorded where they were raised
        except Exception as exc:
            # Not the objective's failure (call_objective records those) but ours or the
            # storage's: the record still says why the trial failed.
            _record_error(trial, exc)
            raise
        finally:
            # Pruned and failed trials too: their compute was spent all the same.
            meter.stop()
            try:
                trial.set_user_attr("cost", _jsonable(meter.record().as_dict()))
            except (
                Exception
            ) as exc:  # the record is a convenience; the trial's outcome matters more
                log.warning(
                    "trial %d: could not record its cost: %s: %s",
                    trial.number,
                    type(exc).__name__,
                    exc,
                )

    def _run_trial(self, trial: Trial) -> float | list[float]:
        config = self._sample(trial)
        trial_dir = self.run_dir / "trials" / f"{trial.number:04d}"
        # Read before trial_dir is overwritten: a retry inherits the dead trial's user attrs.
        resumed_from = _resume_failed_trial(trial, trial_dir)
        trial.set_user_attr("config", _jsonable(config))
        trial.set_user_attr("trial_dir", str(trial_dir))
        if resumed_from is not None:
            trial.set_user_attr("resumed_from_trial", resumed_from)
        objective = self.slots(trial.number) if self.slots is not None else self.objective
        seeds = list(self.obj_spec.seeds or [0])
        runs: list[_SeedRun] = []
        for i, seed in enumerate(seeds):
            seed_dir = trial_dir if len(seeds) == 1 else trial_dir / f"seed{seed}"
            reporter = TrialReporter(
                trial, self.report_metric(trial), prune=(i == 0 and not self.multi)
            )
            outcome, config_used, notes = self._run_seed(
                objective, config, reporter, seed_dir, seed
            )
            if notes:
                trial.set_user_attr("oom_retry", notes)
                trial.set_user_attr("config", _jsonable(config_used))
            run = _SeedRun(seed, outcome)
            runs.append(run)
            if i == 0:
                trial.set_user_attr("history", _jsonable(outcome.history or reporter.history))
            if reporter.pruned:
                self._record(trial, runs, status="stopped", reason=f"pruned-by-{self.pruner_name}")
                raise optuna.TrialPruned(
                    f"pruned-by-{self.pruner_name} at epoch {reporter.history[-1]['epoch']}"
                )
            if outcome.status in FAILED_STATUSES or not outcome.ok:
                reason = outcome.reason if not notes else f"{outcome.reason} ({notes})"
                self._record(trial, runs, status=outcome.status, reason=reason)
                raise TrialFailed(f"seed {seed}: {reason}")
            try:
                run.values = self.obj_spec.values(complete_metrics(outcome.metrics, outcome.extra))
            except KeyError as exc:
                self._record(trial, runs, status="error", reason=f"error: {exc.args[0]}")
                raise TrialFailed(str(exc.args[0])) from None
        reason = runs[0].outcome.reason + (
            f" ({trial.user_attrs['oom_retry']})" if "oom_retry" in trial.user_attrs else ""
        )
        values = self._record(trial, runs, status="complete", reason=reason)
        nan = [name for name, v in zip(self.obj_spec.names, values) if math.isnan(v)]
        if nan:
            # Optuna fails a NaN value without a word: the record must say which one it was.
            reason = f"error: the objective value {', '.join(nan)} is NaN ({reason})"
            trial.set_user_attr("status", "error")
            trial.set_user_attr("reason", reason)
            raise TrialFailed(reason)
        return values[0] if len(values) == 1 else values

    def report_metric(self, trial: Trial) -> str:
        """The metric reported per epoch (and judged by the pruner): the primary objective."""
        return self.obj_spec.primary_metric

    def _sample(self, trial: Trial) -> dict[str, Any]:

        try:
            return dict(sample_space(self.spec.space, trial, self.base_flat))
        except ConstraintViolation as exc:
            reason = f"constraint: {exc}"
            trial.set_user_attr("status", "stopped")
            trial.set_user_attr("reason", reason)
            raise optuna.TrialPruned(reason) from None
        except (
            ValueError,
            ArithmeticError,
            TypeError,
            KeyError,
        ) as exc:  # e.g. a derived value dividing by zero
            reason = f"error: sampling the config: {type(exc).__name__}: {exc}"
            trial.set_user_attr("status", "error")
            trial.set_user_attr("reason", reason)
            raise TrialFailed(reason) from None

    def _run_seed(
        self,
        objective: Objective,
        config: dict[str, Any],
        reporter: TrialReporter,
        seed_dir: Path,
        seed: int,
    ) -> tuple[TrialOutcome, dict[str, Any], str]:
        outcome = call_objective(objective, config, reporter, seed_dir, seed)
        if outcome.status != "oom" or not self.spec.study.oom_retry:
            return outcome, config, ""
        halved = _halve_batch(config, self.base_flat)
        if halved is None:
            return outcome, config, ""
        retry_config, note = halved
        log.warning("trial in %s ran out of memory; %s", seed_dir, note)
        reporter.history.clear()
        outcome = call_objective(objective, retry_config, reporter, seed_dir / "oom_retry", seed)
        return outcome, retry_config, note

    def _record(
        self, trial: Trial, runs: list[_SeedRun], *, status: str, reason: str
    ) -> list[float]:
        """Write the trial's user attrs; return the mean objective value(s) over finished seeds."""
        first = runs[0].outcome
        metrics = _mean_metrics(
            [
                complete_metrics(r.outcome.metrics, r.outcome.extra)
                for r in runs
                if r.outcome.metrics
            ]
        )
        trial.set_user_attr("status", status)
        # Never an empty reason: trials.csv and the report explain every trial by it.
        trial.set_user_attr("reason", reason or f"{status} (the objective gave no reason)")
        trial.set_user_attr("metrics", _jsonable(metrics))
        for key in ("group_wer", "group_dev_loss"):
            if key in first.extra:
                trial.set_user_attr(key, _jsonable(first.extra[key]))
        valued = [r.values for r in runs if r.values]
        if not valued:
            return []
        means = [statistics.fmean(col) for col in zip(*valued)]
        stds = [statistics.pstdev(col) if len(col) > 1 else 0.0 for col in zip(*valued)]
        single = len(means) == 1
        trial.set_user_attr("seed_values", [v[0] if single else v for v in valued])
        trial.set_user_attr("objective_std", stds[0] if single else stds)
        if self.constraints:
            # Read by the sampler's constraints_func once the trial has finished.
            try:
                trial.set_user_attr("constraints", [c.value(metrics) for c in self.constraints])
            except KeyError as exc:
                log.warning("trial %d: %s; counted as infeasible", trial.number, exc.args[0])
        return means


#: This process, as recorded in each trial's ``worker`` user attribute: ``host:pid``.
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def trial_gpus(objective: Any) -> list[int] | None:
    """The CUDA indices a trial of ``objective`` runs on, for its cost record.

    The objective's ``device`` decides (``cpu`` -> none, ``cuda:k`` -> k); a packed objective
    (:class:`~speechtune.tuning._gpu.SlottedObjective`) that is not pinned to the CPU leases a
    GPU per trial, so it is charged for the GPUs this process sees; an objective without a
    device (a function, a command) likewise (None).
    """
    inner = getattr(objective, "inner", None)
    if not hasattr(objective, "device") and inner is not None and hasattr(inner, "device"):
        return [] if str(inner.device) == "cpu" else None
    device = getattr(objective, "device", None)
    try:
        return gpus_for_device(None if device is None else str(device))
    except Exception as exc:  # probing the GPUs must never fail a trial
        log.debug("could not tell the GPUs of %r: %s", device, exc)
        return None


def _resume_failed_trial(trial: Trial, trial_dir: Path) -> int | None:
    """Continue a retried trial from the checkpoint of the trial it replaces.

    When a worker dies, its trial stops beating, is failed, and Optuna's retry callback enqueues
    a copy of it (same params, the dead trial's user attrs, and the system attrs
    ``failed_trial``/``retry_history``). For such a trial the dead trial's directory (its
    ``trial_dir`` user attr, else ``<run_dir>/trials/<N>``) is copied into the new one, and
    :data:`~speechtune.tuning._objectives.CONTINUE_MARKER` is written beside every ``last.pt``
    (the recipe then continues its run). A command objective finds the copied files in its
    output dir and can resume from its own checkpoint. A directory on another machine that this
    one cannot see means a fresh start (logged).

    Returns:
        The number of the trial whose files were copied, or None.
    """
    # Optuna 5's Trial has no system_attrs; the FrozenTrial it was created from (at ask) does.
    frozen = getattr(trial, "_cached_frozen_trial", trial)
    system_attrs = getattr(frozen, "system_attrs", None) or {}
    history = system_attrs.get("retry_history") or []
    failed = history[-1] if history else system_attrs.get("failed_trial")
    if failed is None:
        return None
    failed = int(failed)
    source = trial.user_attrs.get("trial_dir")
    source_dir = Path(source) if source else trial_dir.parent / f"{failed:04d}"
    if not source_dir.is_dir() or source_dir.resolve() == trial_dir.resolve():
        log.warning(
            "trial %d retries trial %d, whose directory %s is not reachable here: starting afresh",
            trial.number,
            failed,
            source_dir,
        )
        return None
    try:
        shutil.copytree(source_dir, trial_dir, dirs_exist_ok=True)
        for checkpoint in trial_dir.rglob("last.pt"):
            (checkpoint.parent / CONTINUE_MARKER).write_text(
                json.dumps({"from_trial": failed, "from_dir": str(source_dir)})
            )
    except OSError as exc:  # a partial copy must not stop the retry: it just starts afresh
        log.warning(
            "trial %d: could not copy the files of trial %d (%s): starting afresh",
            trial.number,
            failed,
            exc,
        )
        shutil.rmtree(trial_dir, ignore_errors=True)
        return None
    log.info("trial %d resumes trial %d from %s", trial.number, failed, source_dir)
    return failed


def sample_space(
    space: SearchSpace, trial: optuna.trial.BaseTrial, base_flat: Mapping[str, Any]
) -> dict[str, Any]:
    """Sample a config; the space's own ``base`` (set by the spec loader) wins over ``base_flat``."""
    if space.base or not base_flat:
        return space.sample(trial)
    return space.sample(trial, base=base_flat)


def _record_error(trial: Trial, exc: Exception) -> None:
    """Record on a running trial the exception that is about to fail it."""
    lines = str(exc).strip().splitlines()
    reason = f"error: {type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    try:
        trial.set_user_attr("status", "error")
        trial.set_user_attr("reason", reason)
    except Exception as record_exc:  # e.g. the storage is gone: the original error matters more
        log.warning("trial %d: could not record its failure: %s", trial.number, record_exc)


def call_objective(
    objective: Objective,
    config: dict[str, Any],
    reporter: TrialReporter,
    trial_dir: Path,
    seed: int,
) -> TrialOutcome:
    try:
        return objective(dict(config), reporter, trial_dir, seed)
    except (
        Exception
    ) as exc:  # objectives should not raise; if one does, the trial fails, not the study
        log.exception("objective raised in %s", trial_dir)
        return TrialOutcome("error", f"error: {type(exc).__name__}: {exc}")


def _mean_metrics(per_seed: list[dict[str, float]]) -> dict[str, float]:
    if not per_seed:
        return {}
    if len(per_seed) == 1:
        return dict(per_seed[0])
    keys = [k for k in per_seed[0] if all(k in m for m in per_seed)]
    return {k: statistics.fmean(float(m[k]) for m in per_seed) for k in keys}


# ---------------------------------------------------------------------------------------------
# device slots for parallel recipe trials
# ---------------------------------------------------------------------------------------------
def device_slots(objective: Objective, n_jobs: int) -> Callable[[int], Objective] | None:
    """Per-trial objectives for ``n_jobs`` parallel trials of an objective with a ``device``.

    An objective that can (``isolate``: the recipe) trains each trial in its own process, so
    that parallel trials do not share torch's random generator: each reproduces the same config
    and seed trained alone. With CUDA GPUs (and device auto/cuda) trial k runs on
    ``cuda:(k % n_gpus)``; on CPU every trial gets ``max(1, cores // n_jobs)`` threads (unless
    ``--threads`` set them) so parallel trials do not oversubscribe. Objectives without a
    ``device`` attribute (functions, commands) are left alone (None).
    """
    if n_jobs <= 1 or not hasattr(objective, "device"):
        return None
    base = copy.copy(objective)
    isolated = hasattr(base, "isolate")
    if isolated:
        base.isolate = True  # type: ignore[attr-defined]
    device = str(base.device)
    n_gpus = 0
    if device in ("auto", "cuda"):
        try:
            import torch

            n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except ImportError:
            n_gpus = 0
    if n_gpus:
        per_gpu = []
        for k in range(n_gpus):
            clone = copy.copy(base)
            clone.device = f"cuda:{k}"
            per_gpu.append(clone)
        return lambda number: per_gpu[number % n_gpus]
    if hasattr(base, "num_threads") and base.num_threads is None:
        base.num_threads = max(1, (os.cpu_count() or 1) // n_jobs)
        return lambda number: base
    return (lambda number: base) if isolated else None
