"""The study engine: run a tuning spec's trials with Optuna and record them per the contract.

One trial = sample a config from the search space, run the objective once per seed (pruning
decisions on the first seed only), and turn the outcome into an Optuna state:

* complete -> the objective value(s) (mean over seeds);
* stopped by the pruner -> ``TrialPruned`` (status ``stopped``, reason ``pruned-by-<pruner>``);
* a violated constraint of the search space -> pruned with reason ``constraint: ...``;
* diverged / flatline / oom / error -> FAIL (the study goes on; failures never end it).

Every trial's record (config, metrics, history, per-seed values...) lives in the trial's user
attributes, so that reports and MLflow read the storage and nothing else.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import shutil
import socket
import statistics
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
import yaml
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, Trial, TrialState

from ..metrics._cost import CostModel, EnergyMeter, gpus_for_device, summarize_costs
from ._objectives import CONTINUE_MARKER, Objective, TrialOutcome
from ._optuna import CONSTRAINED_SAMPLERS, DEFAULT_HEARTBEAT_S, make_pruner, make_sampler, make_storage
from ._progress import StudyProgress

log = logging.getLogger("speechtune.tuning")

#: Trial states that count towards ``n_trials`` (a failed trial is retried by a new one).
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
#: Outcome statuses that fail a trial.
FAILED_STATUSES = ("diverged", "flatline", "oom", "error")


class StudyExistsError(RuntimeError):
    """The study already has trials and ``resume`` was not asked for."""


class TrialFailed(RuntimeError):
    """Raised inside a trial to mark it FAIL; caught by ``study.optimize`` so the study goes on."""


class _NoTracebackForTrialFailed(logging.Filter):
    """Optuna logs a caught trial exception with its traceback; ours carries its reason already."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TrialFailed):
            record.exc_info = None
        return True


_TRACEBACK_FILTER = _NoTracebackForTrialFailed()


def _quiet_trial_failures() -> None:
    optuna_logger = logging.getLogger("optuna.study._optimize")
    if _TRACEBACK_FILTER not in optuna_logger.filters:
        optuna_logger.addFilter(_TRACEBACK_FILTER)


class Tracker(Protocol):
    """What the study engine needs of an experiment tracker (:class:`speechtune.track.StudyTracker`)."""

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
        self, best_value: float | None, best_params: Mapping[str, Any] | None, cost: Mapping[str, Any] | None = None
    ) -> None: ...


# ---------------------------------------------------------------------------------------------
# objective names, values and constraints
# ---------------------------------------------------------------------------------------------
def primary_metric(objective_spec: Any) -> str:
    """The metric optimised first: ``objective.metric``, or ``worst_group_wer`` for group worst_group."""
    if getattr(objective_spec, "group", "mean") == "worst_group":
        return "worst_group_wer"
    return str(objective_spec.metric)


def is_multi_objective(objective_spec: Any) -> bool:
    """Extra objectives without scalarization make a multi-objective (Pareto) study."""
    return bool(objective_spec.extra_objectives) and not objective_spec.scalarize


def objective_names(objective_spec: Any) -> list[str]:
    """The names of the study's objectives, primary first."""
    primary = primary_metric(objective_spec)
    if objective_spec.scalarize:
        terms = " + ".join(f"{w:g}*{m}" for m, w in objective_spec.scalarize.items())
        return [f"{primary} + {terms}"]
    if is_multi_objective(objective_spec):
        return [primary, *objective_spec.extra_objectives]
    return [primary]


@dataclass(frozen=True)
class MetricConstraint:
    """``lhs <= rhs`` (or ``>=``) over final metrics; ``g = lhs - rhs`` is feasible iff ``<= 0``."""

    lhs: str
    op: str
    rhs: str
    text: str

    def value(self, metrics: Mapping[str, float]) -> float:
        """The Optuna constraint value of a trial's metrics (``<= 0`` means feasible)."""
        lhs, rhs = _operand(self.lhs, metrics, self.text), _operand(self.rhs, metrics, self.text)
        return lhs - rhs if self.op == "<=" else rhs - lhs


_CONSTRAINT_RE = re.compile(r"^\s*(?P<lhs>[^<>=]+?)\s*(?P<op><=|>=)\s*(?P<rhs>[^<>=]+?)\s*$")


def parse_metric_constraint(text: str) -> MetricConstraint:
    """Parse ``"latency_ms_per_audio_s <= 50"``.

    Raises:
        ValueError: when the text is not ``<metric or number> <=|>= <metric or number>``.
    """
    match = _CONSTRAINT_RE.match(str(text))
    if match is None:
        raise ValueError(f"objective.constraints: {text!r} must look like 'metric <= number' (or '>=')")
    return MetricConstraint(match["lhs"], match["op"], match["rhs"], str(text))


def _operand(token: str, metrics: Mapping[str, float], text: str) -> float:
    try:
        return float(token)
    except ValueError:
        pass
    if token not in metrics:
        raise KeyError(f"constraint {text!r} needs metric {token!r}, which the trial did not report")
    return float(metrics[token])


def complete_metrics(metrics: Mapping[str, float], extra: Mapping[str, Any]) -> dict[str, float]:
    """Final metrics with ``worst_group_wer`` filled in from ``group_wer`` when the objective left it out."""
    out = dict(metrics)
    group_wer = extra.get("group_wer")
    if "worst_group_wer" not in out and isinstance(group_wer, Mapping) and group_wer:
        out["worst_group_wer"] = max(float(v) for v in group_wer.values())
    if "worst_group_wer" not in out and "wer" in out and not group_wer:
        # A single-group corpus: the worst group is the whole set.
        out["worst_group_wer"] = out["wer"]
    return out


def objective_values(objective_spec: Any, metrics: Mapping[str, float]) -> list[float]:
    """The objective value(s) of one run from its final metrics.

    Raises:
        KeyError: when a needed metric is missing (the message lists the metrics reported).
    """

    def get(name: str) -> float:
        if name not in metrics:
            raise KeyError(f"the objective did not report metric {name!r} (reported: {', '.join(sorted(metrics)) or 'none'})")
        return float(metrics[name])

    primary = get(primary_metric(objective_spec))
    if objective_spec.scalarize:
        return [primary + sum(float(w) * get(m) for m, w in objective_spec.scalarize.items())]
    if is_multi_objective(objective_spec):
        return [primary, *(get(m) for m in objective_spec.extra_objectives)]
    return [primary]


def constraints_from_attrs(n_constraints: int) -> Callable[[FrozenTrial], Sequence[float]]:
    """Optuna ``constraints_func`` reading the trial's ``constraints`` user attribute.

    A trial that ended without metrics has no such attribute: it counts as infeasible.
    """

    def constraints_func(trial: FrozenTrial) -> Sequence[float]:
        values = trial.user_attrs.get("constraints")
        if not isinstance(values, list) or len(values) != n_constraints:
            return [math.inf] * n_constraints
        return [float(v) for v in values]

    return constraints_func


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
        self.history.append({"epoch": epoch, **metrics})
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


# ---------------------------------------------------------------------------------------------
# one trial
# ---------------------------------------------------------------------------------------------
@dataclass
class _SeedRun:
    seed: int
    outcome: TrialOutcome
    values: list[float] = field(default_factory=list)


def _halve_batch(config: Mapping[str, Any], base_flat: Mapping[str, Any]) -> tuple[dict[str, Any], str] | None:
    batch = int(config.get("train.batch_size", base_flat.get("train.batch_size", 16)))
    accum = int(config.get("train.grad_accum", base_flat.get("train.grad_accum", 1)))
    if batch < 2:
        return None
    new = {**config, "train.batch_size": batch // 2, "train.grad_accum": accum * 2}
    return new, f"oom retry: train.batch_size {batch} -> {batch // 2}, train.grad_accum {accum} -> {accum * 2}"


class _TrialRunner:
    """The Optuna objective function of a study (a callable taking a trial)."""

    def __init__(
        self,
        spec: Any,
        objective: Objective,
        run_dir: Path,
        *,
        pruner_name: str,
        base_flat: Mapping[str, Any],
        slots: Callable[[int], Objective] | None,
    ) -> None:
        self.spec = spec
        self.objective = objective
        self.run_dir = run_dir
        self.pruner_name = pruner_name
        self.base_flat = dict(base_flat)
        self.slots = slots
        self.obj_spec = spec.objective
        self.multi = is_multi_objective(self.obj_spec)
        self.constraints = [parse_metric_constraint(c) for c in (self.obj_spec.constraints or [])]
        cost = getattr(spec, "cost", None)
        self.cost_model = cost if isinstance(cost, CostModel) else CostModel()

    def __call__(self, trial: Trial) -> float | list[float]:
        """Run one trial, measured: its ``cost`` user attr is written however it ends."""
        objective = self.slots(trial.number) if self.slots is not None else self.objective
        meter = EnergyMeter(self.cost_model, gpus=trial_gpus(objective))
        meter.start()
        try:
            return self._run_trial(trial)
        finally:
            # Pruned and failed trials too: their compute was spent all the same.
            meter.stop()
            try:
                trial.set_user_attr("cost", _jsonable(meter.record().as_dict()))
            except Exception as exc:  # the record is a convenience; the trial's outcome matters more
                log.warning("trial %d: could not record its cost: %s: %s", trial.number, type(exc).__name__, exc)

    def _run_trial(self, trial: Trial) -> float | list[float]:
        config = self._sample(trial)
        trial_dir = self.run_dir / "trials" / f"{trial.number:04d}"
        # Read before trial_dir is overwritten: a retry inherits the dead trial's user attrs.
        resumed_from = _resume_failed_trial(trial, trial_dir)
        trial.set_user_attr("config", _jsonable(config))
        trial.set_user_attr("trial_dir", str(trial_dir))
        trial.set_user_attr("worker", WORKER_ID)
        if resumed_from is not None:
            trial.set_user_attr("resumed_from_trial", resumed_from)
        objective = self.slots(trial.number) if self.slots is not None else self.objective
        seeds = list(self.obj_spec.seeds or [0])
        runs: list[_SeedRun] = []
        for i, seed in enumerate(seeds):
            seed_dir = trial_dir if len(seeds) == 1 else trial_dir / f"seed{seed}"
            reporter = TrialReporter(trial, self.report_metric(trial), prune=(i == 0 and not self.multi))
            outcome, config_used, notes = self._run_seed(objective, config, reporter, seed_dir, seed)
            if notes:
                trial.set_user_attr("oom_retry", notes)
                trial.set_user_attr("config", _jsonable(config_used))
            run = _SeedRun(seed, outcome)
            runs.append(run)
            if i == 0:
                trial.set_user_attr("history", _jsonable(outcome.history or reporter.history))
            if reporter.pruned:
                self._record(trial, runs, status="stopped", reason=f"pruned-by-{self.pruner_name}")
                raise optuna.TrialPruned(f"pruned-by-{self.pruner_name} at epoch {reporter.history[-1]['epoch']}")
            if outcome.status in FAILED_STATUSES or not outcome.ok:
                reason = outcome.reason if not notes else f"{outcome.reason} ({notes})"
                self._record(trial, runs, status=outcome.status, reason=reason)
                raise TrialFailed(f"seed {seed}: {reason}")
            try:
                run.values = objective_values(self.obj_spec, complete_metrics(outcome.metrics, outcome.extra))
            except KeyError as exc:
                self._record(trial, runs, status="error", reason=f"error: {exc.args[0]}")
                raise TrialFailed(str(exc.args[0])) from None
        reason = runs[0].outcome.reason + (f" ({trial.user_attrs['oom_retry']})" if "oom_retry" in trial.user_attrs else "")
        values = self._record(trial, runs, status="complete", reason=reason)
        return values[0] if len(values) == 1 else values

    def report_metric(self, trial: Trial) -> str:
        """The metric reported per epoch (and judged by the pruner): the primary objective."""
        return primary_metric(self.obj_spec)


    def _sample(self, trial: Trial) -> dict[str, Any]:
        from ._space import ConstraintViolation

        try:
            return dict(sample_space(self.spec.space, trial, self.base_flat))
        except ConstraintViolation as exc:
            reason = f"constraint: {exc}"
            trial.set_user_attr("status", "stopped")
            trial.set_user_attr("reason", reason)
            raise optuna.TrialPruned(reason) from None
        except (ValueError, ArithmeticError, TypeError, KeyError) as exc:  # e.g. a derived value dividing by zero
            reason = f"error: sampling the config: {type(exc).__name__}: {exc}"
            trial.set_user_attr("status", "error")
            trial.set_user_attr("reason", reason)
            raise TrialFailed(reason) from None

    def _run_seed(
        self, objective: Objective, config: dict[str, Any], reporter: TrialReporter, seed_dir: Path, seed: int
    ) -> tuple[TrialOutcome, dict[str, Any], str]:
        outcome = _call_objective(objective, config, reporter, seed_dir, seed)
        if outcome.status != "oom" or not self.spec.study.oom_retry:
            return outcome, config, ""
        halved = _halve_batch(config, self.base_flat)
        if halved is None:
            return outcome, config, ""
        retry_config, note = halved
        log.warning("trial in %s ran out of memory; %s", seed_dir, note)
        reporter.history.clear()
        outcome = _call_objective(objective, retry_config, reporter, seed_dir / "oom_retry", seed)
        return outcome, retry_config, note

    def _record(self, trial: Trial, runs: list[_SeedRun], *, status: str, reason: str) -> list[float]:
        """Write the trial's user attrs; return the mean objective value(s) over finished seeds."""
        first = runs[0].outcome
        metrics = _mean_metrics([complete_metrics(r.outcome.metrics, r.outcome.extra) for r in runs if r.outcome.metrics])
        trial.set_user_attr("status", status)
        trial.set_user_attr("reason", reason)
        trial.set_user_attr("metrics", _jsonable(metrics))
        if "group_wer" in first.extra:
            trial.set_user_attr("group_wer", _jsonable(first.extra["group_wer"]))
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
        log.warning("trial %d retries trial %d, whose directory %s is not reachable here: starting afresh", trial.number, failed, source_dir)
        return None
    try:
        shutil.copytree(source_dir, trial_dir, dirs_exist_ok=True)
        for checkpoint in trial_dir.rglob("last.pt"):
            (checkpoint.parent / CONTINUE_MARKER).write_text(json.dumps({"from_trial": failed, "from_dir": str(source_dir)}))
    except OSError as exc:  # a partial copy must not stop the retry: it just starts afresh
        log.warning("trial %d: could not copy the files of trial %d (%s): starting afresh", trial.number, failed, exc)
        shutil.rmtree(trial_dir, ignore_errors=True)
        return None
    log.info("trial %d resumes trial %d from %s", trial.number, failed, source_dir)
    return failed


def sample_space(space: Any, trial: optuna.trial.BaseTrial, base_flat: Mapping[str, Any]) -> dict[str, Any]:
    """Sample a config; the space's own ``base`` (set by the spec loader) wins over ``base_flat``."""
    if getattr(space, "base", None) or not base_flat:
        return space.sample(trial)
    return space.sample(trial, base=base_flat)


def _call_objective(objective: Objective, config: dict[str, Any], reporter: TrialReporter, trial_dir: Path, seed: int) -> TrialOutcome:
    try:
        return objective(dict(config), reporter, trial_dir, seed)
    except Exception as exc:  # objectives should not raise; if one does, the trial fails, not the study
        log.exception("objective raised in %s", trial_dir)
        return TrialOutcome("error", f"error: {type(exc).__name__}: {exc}")


def _mean_metrics(per_seed: list[dict[str, float]]) -> dict[str, float]:
    if not per_seed:
        return {}
    if len(per_seed) == 1:
        return dict(per_seed[0])
    keys = [k for k in per_seed[0] if all(k in m for m in per_seed)]
    return {k: statistics.fmean(float(m[k]) for m in per_seed) for k in keys}


def _jsonable(value: Any) -> Any:
    """Values Optuna can store as JSON (non-finite floats become None, tuples lists)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    return str(value)


# ---------------------------------------------------------------------------------------------
# device slots for parallel recipe trials
# ---------------------------------------------------------------------------------------------
def device_slots(objective: Objective, n_jobs: int) -> Callable[[int], Objective] | None:
    """Per-trial objectives for ``n_jobs`` parallel trials of an objective with a ``device``.

    With CUDA GPUs (and device auto/cuda) trial k runs on ``cuda:(k % n_gpus)``; on CPU every
    trial gets ``max(1, cores // n_jobs)`` threads so parallel trials do not oversubscribe.
    Objectives without a ``device`` attribute (functions, commands) are left alone (None).
    """
    if n_jobs <= 1 or not hasattr(objective, "device"):
        return None
    device = str(getattr(objective, "device"))
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
            clone = copy.copy(objective)
            clone.device = f"cuda:{k}"  # type: ignore[attr-defined]
            per_gpu.append(clone)
        return lambda number: per_gpu[number % n_gpus]
    if hasattr(objective, "num_threads") and getattr(objective, "num_threads") is None:
        clone = copy.copy(objective)
        clone.num_threads = max(1, (os.cpu_count() or 1) // n_jobs)  # type: ignore[attr-defined]
        return lambda number: clone
    return None


# ---------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------
def _existing_trials(storage: optuna.storages.BaseStorage, name: str) -> int | None:
    """Number of trials of study ``name`` in ``storage``; None when there is no such study."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    return len(storage.get_all_trials(study_id, deepcopy=False))


class _TrackerCallback:
    """Logs every finished trial to the tracker; a tracking failure is logged, never fatal."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        attrs = trial.user_attrs
        trial_dir = Path(attrs["trial_dir"]) if "trial_dir" in attrs else None
        config_path = _first_config_file(trial_dir)
        fallback = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "stopped"}.get(trial.state, "error")
        try:
            self.tracker.log_trial(
                trial.number,
                attrs.get("config") or trial.params,
                attrs.get("history") or [],
                attrs.get("metrics") or {},
                attrs.get("status", fallback),
                attrs.get("reason", ""),
                config_path,
                cost=attrs.get("cost"),
            )
        except Exception as exc:  # tracking is a convenience; the study's storage is the record
            log.warning("could not log trial %d to the tracker: %s: %s", trial.number, type(exc).__name__, exc)


def _first_config_file(trial_dir: Path | None) -> Path | None:
    if trial_dir is None:
        return None
    for candidate in (trial_dir / "config.yaml", *sorted(trial_dir.glob("seed*/config.yaml"))):
        if candidate.exists():
            return candidate
    return None


def _start_tracking(tracker: Tracker, spec: Any) -> bool:
    try:
        tracker.start_study(spec.study.name, _jsonable(getattr(spec, "raw", {}) or {}))
        return True
    except Exception as exc:  # see _TrackerCallback
        log.warning("could not start tracking the study: %s: %s", type(exc).__name__, exc)
        return False


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
    except Exception as exc:  # see _TrackerCallback
        log.warning("could not end tracking the study: %s: %s", type(exc).__name__, exc)


def log_finished_trials(study: optuna.Study, spec: Any, tracker: Tracker) -> None:
    """Log a study that other processes ran (``--workers``) to ``tracker``: one parent run, a child per finished trial."""
    if not _start_tracking(tracker, spec):
        return
    callback = _TrackerCallback(tracker)
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    for trial in study.get_trials(deepcopy=False, states=finished):
        callback(study, trial)
    _end_tracking(tracker, study)


def _counted(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED_STATES))


class _FailureGuard:
    """Stops a study whose trials keep failing (a broken objective would otherwise loop forever)."""

    def __init__(self, max_failures: int) -> None:
        self.max_failures = max_failures
        self.failures = 0
        self.tripped = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            self.failures += 1
            if self.failures >= self.max_failures:
                self.tripped = True
                log.error("%d trials failed in this run; stopping the study (see the reasons in trials.csv)", self.failures)
                study.stop()


def _max_epochs(spec: Any) -> int | None:
    epochs = (spec.base_recipe or {}).get("train", {}).get("epochs") if isinstance(spec.base_recipe, Mapping) else None
    return int(epochs) if isinstance(epochs, int) else None


def open_study(
    spec: Any,
    run_dir: Path,
    *,
    resume: bool = False,
    n_jobs: int = 1,
    heartbeat_s: int = DEFAULT_HEARTBEAT_S,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create the study of ``spec`` (or load it when resuming).

    Args:
        spec: the tuning spec.
        run_dir: the run directory (default storage lives there).
        resume: continue an existing study; without it an existing study with trials is an error.
        n_jobs: parallel trials (the TPE sampler uses the constant liar when > 1).
        heartbeat_s: heartbeat interval of RDB storages.
        sampler, pruner: used instead of the ones ``spec.study`` names (multi-fidelity studies).

    Returns:
        The study, with its study attributes set.

    Raises:
        StudyExistsError: the study exists with trials and ``resume`` is False.
    """
    study_spec, obj_spec = spec.study, spec.objective
    storage = make_storage(study_spec.storage, run_dir, heartbeat_s=heartbeat_s)
    existing = _existing_trials(storage, study_spec.name)
    if existing and not resume:
        raise StudyExistsError(
            f"study {study_spec.name!r} already has {existing} trials in {run_dir}; pass --resume to continue it, "
            "or choose another study.name or --run-dir"
        )
    names = objective_names(obj_spec)
    constraints = list(obj_spec.constraints or [])
    if constraints and study_spec.sampler not in CONSTRAINED_SAMPLERS:
        log.warning(
            "objective.constraints are recorded but sampler %r ignores them; use one of %s to search feasible configs",
            study_spec.sampler,
            ", ".join(CONSTRAINED_SAMPLERS),
        )
    if sampler is None:
        sampler = make_sampler(
            study_spec.sampler,
            seed=study_spec.seed,
            n_jobs=n_jobs,
            constraints_func=constraints_from_attrs(len(constraints)) if constraints else None,
        )
    if pruner is None:
        pruner = make_pruner(study_spec.pruner, max_resource=_max_epochs(spec))
    study = optuna.create_study(
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        study_name=study_spec.name,
        directions=["minimize"] * len(names),
        load_if_exists=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if resume:
            # Trials left RUNNING by a killed process: FAIL them, and the retry callback re-queues them.
            optuna.storages.fail_stale_trials(study)
        study.set_metric_names(names)
    study.set_user_attr("objective_names", names)
    study.set_user_attr("directions", ["minimize"] * len(names))
    study.set_user_attr("spec", _jsonable(getattr(spec, "raw", {}) or {}))
    if getattr(spec, "base_recipe", None):
        study.set_user_attr("base_recipe", _jsonable(spec.base_recipe))
    return study


def run_study(
    spec: Any,
    objective: Objective,
    run_dir: Path,
    *,
    n_trials: int | None = None,
    resume: bool = False,
    n_jobs: int | None = None,
    tracker: Tracker | None = None,
    progress: bool = True,
    heartbeat_s: int = DEFAULT_HEARTBEAT_S,
    write_outputs: bool = True,
    shared: bool = False,
) -> optuna.Study:
    """Run (or resume) the study described by ``spec`` until ``n_trials`` trials are complete or pruned.

    Args:
        spec: the tuning spec (:func:`speechtune.tuning.load_tuning`).
        objective: evaluates one config (recipe, function or command objective).
        run_dir: where the study database, trial outputs and reports go.
        n_trials: complete + pruned trials to reach in total (across resumes);
            default ``spec.study.n_trials`` (None: until ``study.timeout_s`` or Ctrl-C).
            Failed trials do not count: a new trial replaces them.
        resume: continue the existing study of this name (trials a killed process left running
            are failed and re-run once).
        n_jobs: parallel trials in this process (threads); default ``spec.study.n_jobs``.
        tracker: logs the study and every finished trial (:class:`speechtune.track.StudyTracker`).
        progress: live progress display (on a terminal; one log line per trial otherwise).
        heartbeat_s: heartbeat interval of RDB storages; a trial silent for twice that is stale.
        write_outputs: write best.yaml, trials.csv, report.html and spec.yaml at the end.
        shared: other processes (``speechtune worker``) run trials of this study at the same
            time: the TPE sampler then uses the constant liar, as it does for ``n_jobs`` > 1,
            so that concurrent workers do not propose the same region.

    Returns:
        The Optuna study.

    Raises:
        StudyExistsError: the study already has trials and ``resume`` is False.
        KeyboardInterrupt: re-raised after the outputs of the trials so far are written.
    """
    if getattr(spec, "fidelity", None) is not None:
        from ._mf_study import run_mf_study

        return run_mf_study(
            spec,
            objective,
            run_dir,
            n_trials=n_trials,
            resume=resume,
            n_jobs=n_jobs,
            tracker=tracker,
            progress=progress,
            heartbeat_s=heartbeat_s,
            write_outputs=write_outputs,
        )
    _quiet_trial_failures()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = n_trials if n_trials is not None else spec.study.n_trials
    jobs = max(1, int(n_jobs if n_jobs is not None else getattr(spec.study, "n_jobs", 1) or 1))
    sampler_jobs = max(jobs, 2) if shared else jobs
    study = open_study(spec, run_dir, resume=resume, n_jobs=sampler_jobs, heartbeat_s=heartbeat_s)
    _write_spec(spec, run_dir)
    runner = _TrialRunner(
        spec,
        objective,
        run_dir,
        pruner_name=spec.study.pruner,
        base_flat=_flat_base(spec),
        slots=device_slots(objective, jobs),
    )
    view = StudyProgress(study, n_trials=target, n_jobs=jobs, live=progress)
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [_FailureGuard(max(10, target or 10)), view]
    if target is not None:
        callbacks.insert(0, MaxTrialsCallback(int(target), states=COUNTED_STATES))
    tracking = tracker is not None and _start_tracking(tracker, spec)
    if tracking:
        callbacks.append(_TrackerCallback(tracker))  # type: ignore[arg-type]
    try:
        if target is None or _counted(study) < target:
            with view:
                study.optimize(
                    runner,
                    n_trials=None,
                    timeout=getattr(spec.study, "timeout_s", None),
                    n_jobs=jobs,
                    catch=(TrialFailed,),
                    callbacks=callbacks,
                )
    finally:
        # Also on Ctrl-C: the trials finished so far are worth a report.
        record_cost_total(study)
        if tracking:
            _end_tracking(tracker, study)  # type: ignore[arg-type]
        if write_outputs:
            write_study_outputs(study, run_dir, spec)
    return study


def _flat_base(spec: Any) -> dict[str, Any]:
    from ..config import flatten

    base = getattr(spec, "base_recipe", None)
    return flatten(base) if isinstance(base, Mapping) else {}


def _write_spec(spec: Any, run_dir: Path) -> None:
    raw = getattr(spec, "raw", None)
    if raw:
        (run_dir / "spec.yaml").write_text(yaml.safe_dump(_jsonable(raw), sort_keys=False))


def write_study_outputs(study: optuna.Study, run_dir: Path, spec: Any = None) -> dict[str, Path]:
    """Write trials.csv, best.yaml and report.html of a study (what exists of them so far).

    A report that cannot be written (no complete trial yet, plotting failure) is logged, never
    raised: the study's records in storage are what matters.

    Returns:
        The paths written, by name (``trials_csv``, ``best_yaml``, ``report_html``).
    """
    written: dict[str, Path] = {}
    try:
        from .. import reports
    except ImportError:  # the reports package is optional for the engine
        log.warning("speechtune.reports is not available: no trials.csv / best.yaml / report.html")
        return written
    jobs: list[tuple[str, Callable[[], Any]]] = [("trials_csv", lambda: reports.write_trials_csv(study, run_dir / "trials.csv"))]
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        jobs.append(("best_yaml", lambda: reports.write_best_yaml(study, run_dir / "best.yaml")))
    if hasattr(reports, "build_report"):
        jobs.append(("report_html", lambda: reports.build_report(study, run_dir)))
    for name, job in jobs:
        try:
            result = job()
        except Exception as exc:  # a broken report must not hide the study's results
            log.warning("could not write %s: %s: %s", name, type(exc).__name__, exc)
            continue
        written[name] = Path(result) if isinstance(result, (str, Path)) else run_dir
    return written
