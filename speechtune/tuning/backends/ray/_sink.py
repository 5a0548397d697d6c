"""The driver side of the Ray backend: finished Ray trials written into the Optuna study, once each.

Every finished Ray trial is written to the spec's Optuna storage with the user attrs of the
local trial runner (config, trial_dir, history, metrics, status, reason, seed_values...), so
trials.csv, best.yaml, report.html and MLflow work unchanged. States: COMPLETE; PRUNED (stopped
by the scheduler, a stopper or a constraint); FAIL.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from speechtune._jsonable import _jsonable
from speechtune.metrics import estimate_cost
from speechtune.tuning.backends.ray._trainable import (
    _FINAL,
    _OUTCOME,
    OBJECTIVE_KEY,
    _resources,
    _split,
)
from speechtune.tuning.spec import RaySpec, TuningSpec
from speechtune.tuning.study import complete_metrics

log = logging.getLogger("speechtune.tuning")


# Driver-side state looked up by key, so that the callback and stoppers Ray pickles into the
# experiment (and restores with it) find the live study writer of this process.
_SINKS: dict[str, _Sink] = {}


# ---------------------------------------------------------------------------------------------
# the driver: results -> the Optuna study
# ---------------------------------------------------------------------------------------------
class _Sink:
    """Writes finished Ray trials into the Optuna study (once each), logs them to the tracker."""

    def __init__(
        self,
        study: optuna.Study,
        spec: TuningSpec,
        run_dir: Path,
        scheduler: str,
        max_t: int | None,
        on_finished: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> None:
        self.study = study
        self.spec = spec
        self.run_dir = run_dir
        self.scheduler = scheduler
        self.max_t = max_t
        self.on_finished = on_finished
        self.metric = spec.objective.primary_metric
        self.rows: dict[str, dict[int, dict[str, Any]]] = {}
        self.stopped_by: dict[str, str] = {}
        self.budget_reason: str | None = None
        self.epochs_run = 0
        self.recorded = {
            t.user_attrs["ray_trial_id"]
            for t in study.get_trials(deepcopy=False)
            if "ray_trial_id" in t.user_attrs
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
    def finish(
        self,
        trial_id: str,
        config: Mapping[str, Any],
        last: Mapping[str, Any],
        error: str | None,
        num_failures: int = 0,
        rows: list[dict[str, Any]] | None = None,
    ) -> None:
        """Record one finished Ray trial (idempotent per Ray trial id)."""
        if trial_id in self.recorded or (not last and error is None):
            return  # recorded already, or never ran (a budget stop before it started)
        meta, cfg = _split(config)
        seen = dict(self.rows.get(trial_id, {}))
        for row in rows or []:
            if "epoch" in row and not row.get(_FINAL):
                seen.setdefault(
                    int(row["epoch"]), {k: v for k, v in row.items() if _is_metric(k, v)}
                )
        attrs: dict[str, Any] = {
            "config": _jsonable(cfg),
            "trial_dir": str(self.run_dir / "trials" / trial_id),
            "ray_trial_id": trial_id,
            "ray_failures": int(num_failures),
        }
        if meta.get("repaired"):
            attrs["repaired"] = meta["repaired"]
        if meta.get("source"):
            attrs["source"] = meta["source"]  # e.g. baseline: the base recipe's defaults
        values: list[float] | None = None
        if last.get(_FINAL) and _OUTCOME in last:
            record = json.loads(last[_OUTCOME])
            for row in record["history"] or []:
                seen[int(row.get("epoch", 0))] = (
                    row  # the objective's own rows win (a recipe's span restarts)
                )
            status, reason, metrics = record["status"], record["reason"], record["metrics"]
            if record.get("continued_from"):
                attrs["continued_from"] = record["continued_from"]
                cont = record["continued_from"]
                if isinstance(cont, Mapping) and cont.get("exploited"):
                    # PBT replaced this trial's config with another's: it no longer is the
                    # config its source named (the baseline's own is another trial).
                    attrs.pop("source", None)
            if isinstance(record.get("cost"), dict):
                attrs["cost"] = record["cost"]
            if record.get("extra", {}).get("group_wer"):
                attrs["group_wer"] = record["extra"]["group_wer"]
            if status == "complete" and record["seed_values"]:
                values = [sum(record["seed_values"]) / len(record["seed_values"])]
                attrs["seed_values"] = record["seed_values"]
                sv = record["seed_values"]
                mean = values[0]
                attrs["objective_std"] = (
                    math.sqrt(sum((v - mean) ** 2 for v in sv) / len(sv)) if len(sv) > 1 else 0.0
                )
            state = (
                TrialState.COMPLETE
                if values
                else (TrialState.PRUNED if status == "stopped" else TrialState.FAIL)
            )
        elif error is not None:
            status, reason, metrics, state = "error", f"error: {error}", {}, TrialState.FAIL
        else:
            state, status, reason, metrics, values = self._stopped(trial_id, seen)
        if "cost" not in attrs:
            estimated = self._estimated_cost(last)
            if estimated is not None:
                attrs["cost"] = estimated
        history = [seen[e] for e in sorted(seen)]
        attrs.update(
            status=status, reason=reason, metrics=_jsonable(metrics), history=_jsonable(history)
        )
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
        res = _resources(self.spec.ray or RaySpec())
        hours = float(wall) / 3600.0
        record = estimate_cost(
            self.spec.cost,
            wall_s=float(wall),
            cpu_core_hours=hours * res["cpu"],
            gpu_hours=hours * res["gpu"],
        ).as_dict()
        return {**record, "basis": "ray-wall-time"}

    def _stopped(
        self, trial_id: str, seen: Mapping[int, Mapping[str, Any]]
    ) -> tuple[TrialState, str, str, dict, list[float] | None]:
        """A trial Ray ended before its objective returned: a scheduler, a stopper or the budget."""
        last_epoch = max(seen) if seen else 0
        best = min(seen.values(), key=lambda r: _num(r.get(OBJECTIVE_KEY))) if seen else {}
        metrics = {k: v for k, v in best.items() if k not in ("epoch", OBJECTIVE_KEY)}
        why = self.stopped_by.get(trial_id)
        done_budget = self.max_t is not None and last_epoch >= self.max_t
        if why is not None and why.startswith("plateau") or (why is None and done_budget):
            # A plateau, or every epoch of its budget run: a result, measured at its best epoch.
            reason = (
                f"stopped: {why} after epoch {last_epoch}"
                if why
                else f"completed {last_epoch} epochs (ended by the {self.scheduler} scheduler)"
            )
            try:
                value = self.spec.objective.values(complete_metrics(metrics, {}))
                return TrialState.COMPLETE, "complete", reason, metrics, value[:1]
            except KeyError:
                pass
        if why is None:
            why = self.budget_reason or f"pruned-by-{self.scheduler}"
        return TrialState.PRUNED, "stopped", f"{why} at epoch {last_epoch}", metrics, None

    def _write(
        self,
        meta: Mapping[str, Any],
        cfg: Mapping[str, Any],
        state: TrialState,
        values: list[float] | None,
        attrs: dict[str, Any],
        history: list[dict[str, Any]],
    ) -> None:
        dists = {
            n: optuna.distributions.json_to_distribution(d)
            for n, d in (meta.get("distributions") or {}).items()
        }
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
        inter = {
            int(r["epoch"]): _num(r.get(OBJECTIVE_KEY, r.get(self.metric)))
            for r in history
            if "epoch" in r
        }
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
        if self.on_finished is not None:
            self.on_finished(self.study, added)
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
            error = (
                f"{type(result.error).__name__}: {result.error}"
                if result.error is not None
                else None
            )
            self.finish(
                trial_id,
                result.config or {},
                metrics,
                error if not metrics.get(_FINAL) else None,
                0,
                rows,
            )


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


_RAY_KEYS = {
    "done",
    "training_iteration",
    "trial_id",
    "date",
    "timestamp",
    "time_this_iter_s",
    "time_total_s",
    "pid",
    "hostname",
    "node_ip",
    "time_since_restore",
    "iterations_since_restore",
    "checkpoint_dir_name",
    "config",
}


def _is_metric(key: str, value: Any) -> bool:
    return (
        key not in _RAY_KEYS
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not key.startswith("config/")
    )


def _error_text(trial: Any) -> str:
    try:
        err = trial.get_error()
    except Exception:  # reading the error file may fail on a lost node
        err = None
    if err is None:
        return f"the trial failed {trial.num_failures} times"
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:500]
