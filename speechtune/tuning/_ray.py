"""The Ray Tune backend: the same spec, objective and records as :func:`run_study`, on a Ray cluster.

* Search: :class:`ray.tune.search.optuna.OptunaSearch` with a define-by-run function that calls
  :func:`~speechtune.tuning._study.sample_space` (the one search-space model, conditionals,
  derived values and constraint repairs included), sampler and seed from ``study:``.
* Trials: a Ray function trainable runs the SAME objective. Its reporter forwards every epoch to
  ``ray.tune.report`` with a checkpoint of the trial dir every ``ray.checkpoint_every`` epochs
  (the recipe has written ``last.pt`` by then). On a (re)start with ``ray.tune.get_checkpoint()``
  the checkpoint is copied into the trial dir with :data:`CONTINUE_MARKER`, so the recipe continues
  that training: after a worker/node died (``max_failures``), after ``Tuner.restore`` of an
  interrupted experiment, and when PBT exploits a donor (its checkpoint, the perturbed config).
* Schedulers (``ray.scheduler``): fifo, asha, hyperband, pbt, pb2. Stoppers: a per-trial metric
  plateau and a global time/compute budget.
* Records: every finished Ray trial is written to the spec's Optuna storage with the user attrs
  of :class:`~speechtune.tuning._study._TrialRunner` (config, trial_dir, history, metrics, status,
  reason, seed_values...), so trials.csv, best.yaml, report.html and MLflow work unchanged.
  States: COMPLETE; PRUNED (stopped by the scheduler, a stopper or a constraint); FAIL.

Ray is imported inside functions only: ``import speechtune.tuning`` never needs it.

Multi-node note: trial dirs live under ``run_dir`` on the node that runs the trial; what moves
between nodes is the Ray checkpoint, persisted under ``run_dir/ray`` (a shared filesystem or a
``storage_path`` every node can reach, as Ray requires for multi-node fault tolerance).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..metrics._cost import CostModel, EnergyMeter, estimate_cost
from ._objectives import CONTINUE_MARKER, Objective, TrialOutcome
from ._optuna import make_sampler
from ._ray_spec import RaySpec
from ._study import (
    FAILED_STATUSES,
    Tracker,
    _call_objective,
    _end_tracking,
    _flat_base,
    _jsonable,
    _start_tracking,
    _TrackerCallback,
    _write_spec,
    complete_metrics,
    is_multi_objective,
    objective_values,
    open_study,
    primary_metric,
    record_cost_total,
    sample_space,
    write_study_outputs,
)

log = logging.getLogger("speechtune.tuning")

__all__ = ["EXPERIMENT", "run_ray_study"]

#: The Ray experiment's directory name under ``run_dir/ray``.
EXPERIMENT = "experiment"
#: The metric Ray's searcher and schedulers read (the primary metric per epoch, the objective value at the end).
OBJECTIVE_KEY = "speechtune_objective"
#: A config entry carrying what the driver needs back (Optuna params/distributions, sampling problems).
META_KEY = "_speechtune"
_FINAL = "speechtune_final"
_OUTCOME = "speechtune_outcome"
_CKPT_META = "speechtune_checkpoint.json"
_CKPT_TRIAL = "trial"
# Driver-side state looked up by key, so that the callback and stoppers Ray pickles into the
# experiment (and restores with it) find the live study writer of this process.
_SINKS: dict[str, _Sink] = {}


# ---------------------------------------------------------------------------------------------
# search: the one search-space model, define-by-run
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Sampler:
    """OptunaSearch's define-by-run function (a picklable object: Ray saves the searcher)."""

    space: Any
    base_flat: dict[str, Any]

    def __call__(self, trial: Any) -> dict[str, Any]:
        from ._space import ConstraintViolation

        meta: dict[str, Any] = {}
        try:
            config = dict(sample_space(self.space, trial, self.base_flat))
        except ConstraintViolation as exc:
            config, meta["invalid"] = {}, ("stopped", f"constraint: {exc}")
        except (ValueError, ArithmeticError, TypeError, KeyError) as exc:  # e.g. a derived value dividing by zero
            config, meta["invalid"] = {}, ("error", f"error: sampling the config: {type(exc).__name__}: {exc}")
        meta["params"] = _jsonable(dict(trial.params))
        meta["distributions"] = {
            n: optuna.distributions.distribution_to_json(d) for n, d in trial.distributions.items()
        }
        if trial.user_attrs.get("repaired"):
            meta["repaired"] = _jsonable(trial.user_attrs["repaired"])
        meta["keys"] = sorted(config)
        # A JSON string: Ray's variant generator walks nested dicts of a config as search paths.
        return {**config, META_KEY: json.dumps(meta)}


# ---------------------------------------------------------------------------------------------
# the trainable (runs on a Ray worker)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Payload:
    """What every trial needs besides its config (shipped once through the object store)."""

    objective: Objective
    objective_spec: Any
    run_dir: str
    checkpoint_every: int
    #: The spec's ``cost:`` section; None: the defaults.
    cost_model: CostModel | None = None
    #: GPUs Ray gives each trial (``ray.resources_per_trial.gpu``): 0 makes a trial's cost CPU-only.
    gpus_per_trial: float = 0.0


def _split(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Ray trial config -> (our metadata, the trial's own flat config)."""
    raw = config.get(META_KEY)
    meta = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
    keys = meta.get("keys")
    cfg = {k: v for k, v in config.items() if k != META_KEY and (keys is None or k in keys)}
    return meta, cfg


def _epoch_objective(metric: str, metrics: Mapping[str, Any]) -> float:
    """The primary metric of one epoch (``worst_group_wer`` from ``wer/<group>`` when not reported)."""
    value = metrics.get(metric)
    if value is None and metric == "worst_group_wer":
        groups = [v for k, v in metrics.items() if k.startswith("wer/")]
        value = max(groups) if groups else None
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


class _RayReporter:
    """A :class:`~speechtune.training.Reporter` forwarding each epoch to ``ray.tune.report``.

    Every ``checkpoint_every`` epochs the trial dir (the recipe wrote ``last.pt`` just before
    reporting) goes along as a Ray checkpoint. It never asks to stop: Ray's scheduler stops a
    trial by ending its worker.
    """

    def __init__(self, payload: _Payload, trial_dir: Path, config: Mapping[str, Any], trial_id: str, report: bool) -> None:
        self.payload = payload
        self.trial_dir = trial_dir
        self.config = dict(config)
        self.trial_id = trial_id
        self.active = report
        self.metric = primary_metric(payload.objective_spec)
        self.history: list[dict[str, Any]] = []
        self.since_checkpoint = 0

    def report(self, epoch: int, **metrics: float) -> bool:
        from ray import tune

        self.history.append({"epoch": epoch, **metrics})
        if not self.active:
            return False
        row = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        row.update(epoch=epoch, **{OBJECTIVE_KEY: _epoch_objective(self.metric, metrics)})
        self.since_checkpoint += 1
        if self.since_checkpoint < self.payload.checkpoint_every:
            tune.report(row)
            return False
        self.since_checkpoint = 0
        with tempfile.TemporaryDirectory(prefix="speechtune-ckpt-") as tmp:
            # A copy: the recipe goes on writing into the trial dir while Ray persists this one.
            shutil.copytree(self.trial_dir, Path(tmp) / _CKPT_TRIAL, dirs_exist_ok=True)
            meta = {"epoch": epoch, "trial_id": self.trial_id, "config": _jsonable(self.config)}
            (Path(tmp) / _CKPT_META).write_text(json.dumps(meta))
            # report() persists the checkpoint to storage before it returns.
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(tmp))
        return False


def _restore_checkpoint(checkpoint: Any, trial_dir: Path, config: Mapping[str, Any], trial_id: str) -> dict[str, Any]:
    """Copy a Ray checkpoint into ``trial_dir`` and mark it to be continued; return the marker."""
    with checkpoint.as_directory() as tmp:
        meta = json.loads((Path(tmp) / _CKPT_META).read_text())
        shutil.rmtree(trial_dir, ignore_errors=True)
        shutil.copytree(Path(tmp) / _CKPT_TRIAL, trial_dir)
    saved = meta.get("config") or {}
    changed = {k: [saved.get(k), v] for k, v in _jsonable(dict(config)).items() if saved.get(k) != v}
    if changed:
        # PBT explore: the donor's weights continue with perturbed hyperparameters (lr, dropout:
        # nothing that changes parameter shapes). The recipe refuses to resume a run whose saved
        # config differs, to protect users from mixing runs by accident; here it is the point.
        (trial_dir / "config.yaml").unlink(missing_ok=True)
    marker = {
        "source": "ray-checkpoint",
        "epoch": meta.get("epoch"),
        "from_trial": meta.get("trial_id"),
        "exploited": meta.get("trial_id") != trial_id,
        "changed": changed,
    }
    (trial_dir / CONTINUE_MARKER).write_text(json.dumps(marker))
    return marker


def _train_trial(config: dict[str, Any], payload: _Payload) -> None:
    """The Ray function trainable: one config, the study's seeds, one final report."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    # Measured here, in the trial's own process; Ray sets CUDA_VISIBLE_DEVICES to the GPUs it
    # gave this trial, which is what the meter sees. A trial ended by a scheduler never gets to
    # its final report: the driver then estimates its cost from Ray's time_total_s.
    meter = EnergyMeter(payload.cost_model, gpus=[] if not payload.gpus_per_trial else None)
    meter.start()
    meta, cfg = _split(config)
    trial_dir = Path(payload.run_dir) / "trials" / trial_id
    if meta.get("invalid"):
        status, reason = meta["invalid"]
        _final_report(payload, TrialOutcome(status, reason), [], {}, meter)
        return
    seeds = list(payload.objective_spec.seeds or [0])
    checkpoint = tune.get_checkpoint()
    first_dir = trial_dir if len(seeds) == 1 else trial_dir / f"seed{seeds[0]}"
    marker: dict[str, Any] = {}
    if checkpoint is not None:
        marker = _restore_checkpoint(checkpoint, first_dir, cfg, trial_id)
    else:
        shutil.rmtree(trial_dir, ignore_errors=True)  # a retry without a checkpoint starts anew
    outcomes: list[TrialOutcome] = []
    for i, seed in enumerate(seeds):
        seed_dir = trial_dir if len(seeds) == 1 else trial_dir / f"seed{seed}"
        seed_dir.mkdir(parents=True, exist_ok=True)
        # Only the first seed's epochs reach Ray (its schedulers judge one learning curve).
        reporter = _RayReporter(payload, seed_dir, cfg, trial_id, report=(i == 0))
        outcome = _call_objective(payload.objective, dict(cfg), reporter, seed_dir, seed)  # type: ignore[arg-type]
        if not outcome.history:
            outcome.history = reporter.history
        outcomes.append(outcome)
        if outcome.status in FAILED_STATUSES or not outcome.ok:
            break
    _final_report(payload, outcomes[0], outcomes, marker, meter)


def _final_report(payload: _Payload, first: TrialOutcome, outcomes: list[TrialOutcome], marker: Mapping[str, Any],
                  meter: EnergyMeter | None = None) -> None:
    """The trial's last result: ``done`` (no scheduler decision on it) with the whole outcome (and its cost)."""
    from ray import tune

    obj_spec = payload.objective_spec
    status, reason = first.status, first.reason
    failed = next((o for o in outcomes if o.status in FAILED_STATUSES or not o.ok), None)
    if failed is not None:
        status, reason = failed.status, failed.reason
    seed_values: list[float] = []
    metrics: dict[str, float] = {}
    if failed is None and outcomes:
        per_seed = [complete_metrics(o.metrics, o.extra) for o in outcomes]
        try:
            seed_values = [objective_values(obj_spec, m)[0] for m in per_seed]
        except KeyError as exc:
            status, reason = "error", f"error: {exc.args[0]}"
        keys = [k for k in per_seed[0] if all(k in m for m in per_seed)]
        metrics = {k: sum(float(m[k]) for m in per_seed) / len(per_seed) for k in keys}
        if status == "stopped" and seed_values:
            status = "complete"  # stopped by its own reporter/logic, with final metrics: a result
    elif first.metrics:
        metrics = complete_metrics(first.metrics, first.extra)
    record = {
        "status": status,
        "reason": reason,
        "metrics": _jsonable(metrics),
        "history": _jsonable(first.history),
        "extra": _jsonable({k: v for k, v in first.extra.items() if k in ("group_wer", "worst_group", "output_dir")}),
        "seed_values": seed_values,
        "continued_from": _jsonable(dict(marker)) if marker else None,
    }
    if meter is not None:
        meter.stop()
        record["cost"] = _jsonable(meter.record().as_dict())
    value = sum(seed_values) / len(seed_values) if seed_values else math.nan
    tune.report({OBJECTIVE_KEY: value, _FINAL: True, "done": True, _OUTCOME: json.dumps(record)})


# ---------------------------------------------------------------------------------------------
# the driver: results -> the Optuna study
# ---------------------------------------------------------------------------------------------
class _Sink:
    """Writes finished Ray trials into the Optuna study (once each), logs them to the tracker."""

    def __init__(self, study: optuna.Study, spec: Any, run_dir: Path, scheduler: str, max_t: int | None, tracker: Any) -> None:
        self.study = study
        self.spec = spec
        self.run_dir = run_dir
        self.scheduler = scheduler
        self.max_t = max_t
        self.tracker_cb = _TrackerCallback(tracker) if tracker is not None else None
        self.metric = primary_metric(spec.objective)
        self.rows: dict[str, dict[int, dict[str, Any]]] = {}
        self.stopped_by: dict[str, str] = {}
        self.budget_reason: str | None = None
        self.epochs_run = 0
        self.recorded = {
            t.user_attrs["ray_trial_id"] for t in study.get_trials(deepcopy=False) if "ray_trial_id" in t.user_attrs
        }
        self.progress: Any = None

    # results as they come ---------------------------------------------------------------------
    def on_result(self, trial_id: str, result: Mapping[str, Any]) -> None:
        if result.get(_FINAL) or "epoch" not in result:
            return
        row = {k: v for k, v in result.items() if _is_metric(k, v)}
        self.rows.setdefault(trial_id, {})[int(result["epoch"])] = row
        self.epochs_run += 1

    # one finished trial -----------------------------------------------------------------------
    def finish(self, trial_id: str, config: Mapping[str, Any], last: Mapping[str, Any], error: str | None,
               num_failures: int = 0, rows: list[dict[str, Any]] | None = None) -> None:
        """Record one finished Ray trial (idempotent per Ray trial id)."""
        if trial_id in self.recorded or (not last and error is None):
            return  # recorded already, or never ran (a budget stop before it started)
        meta, cfg = _split(config)
        seen = dict(self.rows.get(trial_id, {}))
        for row in rows or []:
            if "epoch" in row and not row.get(_FINAL):
                seen.setdefault(int(row["epoch"]), {k: v for k, v in row.items() if _is_metric(k, v)})
        attrs: dict[str, Any] = {
            "config": _jsonable(cfg),
            "trial_dir": str(self.run_dir / "trials" / trial_id),
            "ray_trial_id": trial_id,
            "ray_failures": int(num_failures),
        }
        if meta.get("repaired"):
            attrs["repaired"] = meta["repaired"]
        values: list[float] | None = None
        if last.get(_FINAL) and _OUTCOME in last:
            record = json.loads(last[_OUTCOME])
            for row in record["history"] or []:
                seen[int(row.get("epoch", 0))] = row  # the objective's own rows win (a recipe's span restarts)
            status, reason, metrics = record["status"], record["reason"], record["metrics"]
            if record.get("continued_from"):
                attrs["continued_from"] = record["continued_from"]
            if isinstance(record.get("cost"), dict):
                attrs["cost"] = record["cost"]
            if record.get("extra", {}).get("group_wer"):
                attrs["group_wer"] = record["extra"]["group_wer"]
            if status == "complete" and record["seed_values"]:
                values = [sum(record["seed_values"]) / len(record["seed_values"])]
                attrs["seed_values"] = record["seed_values"]
                sv = record["seed_values"]
                mean = values[0]
                attrs["objective_std"] = math.sqrt(sum((v - mean) ** 2 for v in sv) / len(sv)) if len(sv) > 1 else 0.0
            state = TrialState.COMPLETE if values else (TrialState.PRUNED if status == "stopped" else TrialState.FAIL)
        elif error is not None:
            status, reason, metrics, state = "error", f"error: {error}", {}, TrialState.FAIL
        else:
            state, status, reason, metrics, values = self._stopped(trial_id, seen)
        if "cost" not in attrs:
            estimated = self._estimated_cost(last)
            if estimated is not None:
                attrs["cost"] = estimated
        history = [seen[e] for e in sorted(seen)]
        attrs.update(status=status, reason=reason, metrics=_jsonable(metrics), history=_jsonable(history))
        self._write(meta, cfg, state, values, attrs, history)
        self.recorded.add(trial_id)

    def _estimated_cost(self, last: Mapping[str, Any]) -> dict[str, Any] | None:
        """A cost for a trial that never sent its measured one (ended by a scheduler, or crashed).

        Ray's ``time_total_s`` x the trial's resources (``ray.resources_per_trial``), priced with
        TDPs: an upper bound on CPU time (it assumes every reserved core was busy). Marked with
        ``basis: ray-wall-time``.
        """
        wall = last.get("time_total_s")
        if not isinstance(wall, (int, float)) or isinstance(wall, bool) or not math.isfinite(wall):
            return None
        res = _resources(getattr(self.spec, "ray", None) or RaySpec())
        model = getattr(self.spec, "cost", None)
        hours = float(wall) / 3600.0
        record = estimate_cost(
            model if isinstance(model, CostModel) else CostModel(),
            wall_s=float(wall),
            cpu_core_hours=hours * res["cpu"],
            gpu_hours=hours * res["gpu"],
        ).as_dict()
        return {**record, "basis": "ray-wall-time"}

    def _stopped(self, trial_id: str, seen: Mapping[int, Mapping[str, Any]]) -> tuple[TrialState, str, str, dict, list[float] | None]:
        """A trial Ray ended before its objective returned: a scheduler, a stopper or the budget."""
        last_epoch = max(seen) if seen else 0
        best = min(seen.values(), key=lambda r: _num(r.get(OBJECTIVE_KEY))) if seen else {}
        metrics = {k: v for k, v in best.items() if k not in ("epoch", OBJECTIVE_KEY)}
        why = self.stopped_by.get(trial_id)
        done_budget = self.max_t is not None and last_epoch >= self.max_t
        if why is not None and why.startswith("plateau") or (why is None and done_budget):
            # A plateau, or every epoch of its budget run: a result, measured at its best epoch.
            reason = f"stopped: {why} after epoch {last_epoch}" if why else f"completed {last_epoch} epochs (ended by the {self.scheduler} scheduler)"
            try:
                value = objective_values(self.spec.objective, complete_metrics(metrics, {}))
                return TrialState.COMPLETE, "complete", reason, metrics, value[:1]
            except KeyError:
                pass
        if why is None:
            why = self.budget_reason or f"pruned-by-{self.scheduler}"
        return TrialState.PRUNED, "stopped", f"{why} at epoch {last_epoch}", metrics, None

    def _write(self, meta: Mapping[str, Any], cfg: Mapping[str, Any], state: TrialState, values: list[float] | None,
               attrs: dict[str, Any], history: list[dict[str, Any]]) -> None:
        dists = {n: optuna.distributions.json_to_distribution(d) for n, d in (meta.get("distributions") or {}).items()}
        params = dict(meta.get("params") or {})
        for name in list(params):
            # PBT may have perturbed a searched value: record the one the trial ended with when it is in range.
            now = cfg.get(name)
            if now is not None and now != params[name] and name in dists:
                try:
                    if dists[name]._contains(dists[name].to_internal_repr(now)):
                        params[name] = now
                except (ValueError, TypeError):
                    pass
        inter = {int(r["epoch"]): _num(r.get(OBJECTIVE_KEY, r.get(self.metric))) for r in history if "epoch" in r}
        inter = {k: v for k, v in inter.items() if math.isfinite(v)}
        frozen = optuna.trial.create_trial(
            state=state,
            values=values if state == TrialState.COMPLETE else None,
            params={n: v for n, v in params.items() if n in dists},
            distributions={n: d for n, d in dists.items() if n in params},
            user_attrs=_jsonable(attrs),
            intermediate_values=inter,
        )
        self.study.add_trial(frozen)
        added = self.study.get_trials(deepcopy=False)[-1]
        if self.tracker_cb is not None:
            self.tracker_cb(self.study, added)
        if self.progress is not None:
            self.progress(self.study, added)

    def sweep(self, results: Any) -> None:
        """Record what the callback did not see (Ray Client runs the callbacks on the cluster)."""
        for result in results:
            metrics = dict(result.metrics or {})
            trial_id = metrics.get("trial_id")
            if not trial_id:
                continue
            rows = []
            frame = getattr(result, "metrics_dataframe", None)
            if frame is not None:
                rows = frame.to_dict("records")
            error = f"{type(result.error).__name__}: {result.error}" if result.error is not None else None
            self.finish(trial_id, result.config or {}, metrics, error if not metrics.get(_FINAL) else None, 0, rows)


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


_RAY_KEYS = {
    "done", "training_iteration", "trial_id", "date", "timestamp", "time_this_iter_s", "time_total_s", "pid",
    "hostname", "node_ip", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name", "config",
}


def _is_metric(key: str, value: Any) -> bool:
    return key not in _RAY_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool) and not key.startswith("config/")


def _error_text(trial: Any) -> str:
    try:
        err = trial.get_error()
    except Exception:  # reading the error file may fail on a lost node
        err = None
    if err is None:
        return f"the trial failed {trial.num_failures} times"
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:500]


# ---------------------------------------------------------------------------------------------
# schedulers
# ---------------------------------------------------------------------------------------------
def _mutation_domains(rspec: RaySpec, space: Any) -> dict[str, Any]:
    """Ray domains for the keys PBT perturbs: the param's own range in ``space``, or the listed values."""
    from ray import tune

    from ._space import CategoricalParam, FloatParam, IntParam

    out: dict[str, Any] = {}
    explicit = rspec.pbt.hyperparam_mutations or {}
    for name in rspec.mutation_keys(space.params):
        how = explicit.get(name, "space")
        if how != "space":
            out[name] = list(how)
            continue
        p = space.params[name]
        if isinstance(p, FloatParam):
            out[name] = tune.loguniform(p.low, p.high) if p.log else tune.uniform(p.low, p.high)
        elif isinstance(p, IntParam):
            out[name] = tune.lograndint(p.low, p.high + 1) if p.log else tune.randint(p.low, p.high + 1)
        elif isinstance(p, CategoricalParam):
            out[name] = list(p.choices)
    return out


def _clip_to_space(space: Any) -> Any:
    """PBT's explore step multiplies a value by 0.8/1.2: keep the result inside the space's range."""
    from ._space import FloatParam, IntParam

    def explore(config: dict) -> dict:
        for name, p in space.params.items():
            if isinstance(p, (FloatParam, IntParam)) and isinstance(config.get(name), (int, float)):
                value = min(max(config[name], p.low), p.high)
                config[name] = int(round(value)) if isinstance(p, IntParam) else float(value)
        return config

    return explore


def _make_scheduler(rspec: RaySpec, spec: Any, max_t: int) -> Any:
    """The Ray scheduler of ``ray.scheduler``; its time unit is the epoch (one report per epoch).

    ASHA/HyperBand get ``max_t + 1``: a trial's last report is its final result after
    ``max_t`` epochs, which must not be cut off at ``max_t``.
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, PopulationBasedTraining

    common = {"time_attr": "training_iteration", "metric": OBJECTIVE_KEY, "mode": "min"}
    name = rspec.scheduler
    if name == "fifo":
        return FIFOScheduler()
    if name == "asha":
        return ASHAScheduler(max_t=max_t + 1, grace_period=rspec.grace_period, reduction_factor=rspec.reduction_factor, **common)
    if name == "hyperband":
        return HyperBandScheduler(max_t=max_t + 1, reduction_factor=rspec.reduction_factor, **common)
    pbt = rspec.pbt
    if name == "pbt":
        return PopulationBasedTraining(
            perturbation_interval=pbt.perturbation_interval,
            hyperparam_mutations=_mutation_domains(rspec, spec.space),
            quantile_fraction=pbt.quantile_fraction,
            resample_probability=pbt.resample_probability,
            synch=pbt.synch,
            custom_explore_fn=_clip_to_space(spec.space),
            **common,
        )
    try:
        from ray.tune.schedulers.pb2 import PB2

        import GPy  # noqa: F401  (PB2's Gaussian process)
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            f"ray.scheduler: pb2 needs GPy and scikit-learn ({exc}); install them with `pip install GPy scikit-learn`, "
            "or use scheduler: pbt"
        ) from None
    bounds = {n: [space_p.low, space_p.high] for n in rspec.mutation_keys(spec.space.params) for space_p in [spec.space.params[n]]}
    return PB2(perturbation_interval=pbt.perturbation_interval, hyperparam_bounds=bounds,
               quantile_fraction=pbt.quantile_fraction, synch=pbt.synch, **common)


def _max_t(rspec: RaySpec, spec: Any) -> int:
    if rspec.max_t is not None:
        return rspec.max_t
    epochs = (getattr(spec, "base_recipe", None) or {}).get("train", {}).get("epochs")
    return int(epochs) if isinstance(epochs, int) else 100


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
        raise RuntimeError(f"--backend ray needs Ray Tune: pip install 'ray[tune]' ({exc})") from None
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


def _resources(rspec: RaySpec) -> dict[str, float]:
    res = rspec.resources_per_trial
    return {"cpu": float(res.cpu), "gpu": float(res.gpu)}


def _key(run_dir: Path, study_name: str) -> str:
    return f"{run_dir.resolve()}::{study_name}"


def run_ray_study(
    spec: Any,
    objective: Objective,
    run_dir: Path,
    *,
    n_trials: int | None = None,
    resume: bool = False,
    address: str | None = None,
    tracker: Tracker | None = None,
    progress: bool = True,
    write_outputs: bool = True,
) -> optuna.Study:
    """Run (or resume) the study of ``spec`` on Ray Tune; record it like :func:`run_study`.

    Args:
        spec: the tuning spec; its ``ray:`` section (:class:`RaySpec`) sets the scheduler,
            resources, checkpoints, failures and stoppers (defaults when absent).
        objective: the same objective the Optuna backend runs (recipe, function, command).
        run_dir: study storage (default SQLite), trial dirs, and the Ray experiment (``ray/``).
        n_trials: Ray trials to run (default ``spec.study.n_trials``), less those already complete
            or pruned in the study when it is resumed without a Ray experiment to restore.
        resume: restore the interrupted Ray experiment in ``run_dir`` (``Tuner.restore``: errored
            and unfinished trials continue from their last checkpoint); a new experiment when
            there is none to restore.
        address: a Ray cluster (``auto``, ``ray://host:port``, ``host:port``); default
            ``ray.address`` of the spec, else a local Ray started (and shut down) here.
        tracker: logs the study and every finished trial (MLflow).
        progress: the live progress view (Ray's own console output stays quiet).
        write_outputs: write best.yaml, trials.csv, report.html and spec.yaml at the end.

    Returns:
        The Optuna study holding every finished Ray trial.

    Raises:
        StudyExistsError: the study already has trials and ``resume`` is False.
        ValueError: a multi-objective study (Ray schedulers rank by one value).
        RuntimeError: Ray (or PB2's dependencies) missing.
    """
    from ._progress import StudyProgress
    from ._study import _counted

    if is_multi_objective(spec.objective):
        raise ValueError(
            "--backend ray: a multi-objective study cannot be ranked by Ray's schedulers; fold the extra objectives "
            "in with objective.scalarize, or use --backend optuna"
        )
    if getattr(spec, "fidelity", None) is not None:
        raise ValueError("--backend ray: a fidelity: section is run by the optuna backend; use ray.scheduler asha/hyperband instead")
    rspec: RaySpec = getattr(spec, "ray", None) or RaySpec()
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(spec, run_dir, resume=resume, n_jobs=max(2, rspec.max_concurrent_trials or 2))
    _write_spec(spec, run_dir)
    ray = _import_ray()
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.stopper import CombinedStopper

    exp_dir = run_dir / "ray" / EXPERIMENT
    restoring = resume and exp_dir.is_dir() and tune.Tuner.can_restore(str(exp_dir))
    target = int(n_trials if n_trials is not None else spec.study.n_trials)
    remaining = target - (_counted(study) if resume else 0)
    max_t = _max_t(rspec, spec)
    key = _key(run_dir, spec.study.name)
    sink = _Sink(study, spec, run_dir, rspec.scheduler, max_t, tracker if tracker is not None else None)
    tracking = tracker is not None and _start_tracking(tracker, spec)
    if not tracking:
        sink.tracker_cb = None
    view = StudyProgress(study, n_trials=target, n_jobs=rspec.max_concurrent_trials or 1, live=progress)
    sink.progress = view
    started = _init_ray(ray, address or rspec.address, quiet=not progress)
    _SINKS[key] = sink
    try:
        cost = getattr(spec, "cost", None)
        payload = _Payload(
            objective,
            spec.objective,
            str(run_dir),
            rspec.checkpoint_every,
            cost_model=cost if isinstance(cost, CostModel) else None,
            gpus_per_trial=_resources(rspec)["gpu"],
        )
        trainable = tune.with_resources(tune.with_parameters(_train_trial, payload=payload), _resources(rspec))
        if restoring:
            log.info("restoring the Ray experiment in %s", exp_dir)
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True)
        elif remaining <= 0 and not restoring:
            tuner = None
        else:
            shutil.rmtree(exp_dir, ignore_errors=True)  # a stale experiment of a study that has no trials
            tuner = _new_tuner(spec, rspec, trainable, run_dir, key, remaining, max_t, OptunaSearch, CombinedStopper)
        if tuner is not None:
            with view:
                results = tuner.fit()
            sink.sweep(results)
    finally:
        _SINKS.pop(key, None)
        record_cost_total(study)
        if tracking:
            _end_tracking(tracker, study)  # type: ignore[arg-type]
        if write_outputs:
            write_study_outputs(study, run_dir, spec)
        if started:
            ray.shutdown()
    return study


def _new_tuner(spec: Any, rspec: RaySpec, trainable: Any, run_dir: Path, key: str, n: int, max_t: int,
               OptunaSearch: Any, CombinedStopper: Any) -> Any:
    from ray import tune

    from ._ray_tune import BudgetStopper, PlateauStopper, RecordTrials

    study_spec = spec.study
    concurrency = rspec.max_concurrent_trials
    sampler = make_sampler(study_spec.sampler, seed=study_spec.seed, n_jobs=max(2, concurrency or 2))
    define_by_run = _Sampler(spec.space, _flat_base(spec))
    if rspec.scheduler in ("pbt", "pb2"):
        # Ray's PBT refuses a searcher (it is the search): the initial population comes from the
        # same space and sampler, drawn here, and runs as fixed points.
        from ray.tune.search.basic_variant import BasicVariantGenerator

        population = optuna.create_study(sampler=sampler)
        points = [define_by_run(population.ask()) for _ in range(n)]
        search: Any = BasicVariantGenerator(points_to_evaluate=points)
        # Every key a point sets must exist in param_space; a point's absent (inactive) keys are dropped by _split.
        param_space = {k: None for point in points for k in point}
    else:
        search = OptunaSearch(space=define_by_run, metric=OBJECTIVE_KEY, mode="min", sampler=sampler)
        param_space = None
    stoppers: list[Any] = []
    stop = rspec.stop
    if stop.plateau is not None:
        metric = stop.plateau.metric or primary_metric(spec.objective)
        stoppers.append(PlateauStopper(key, metric, stop.plateau.patience, stop.plateau.min_delta))
    if stop.time_budget_s is not None or stop.compute_budget_epochs is not None:
        stoppers.append(BudgetStopper(key, stop.time_budget_s, stop.compute_budget_epochs))
    keep = None if rspec.scheduler in ("pbt", "pb2", "hyperband") else 2  # PBT/HyperBand read older checkpoints
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

