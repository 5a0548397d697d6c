"""The Ray function trainable: one config, the study's seeds, a checkpoint every few epochs.

It runs the SAME objective as the other backends. Its reporter forwards every epoch to
``ray.tune.report`` with a checkpoint of the trial dir every ``ray.checkpoint_every`` epochs
(the recipe has written ``last.pt`` by then). On a (re)start with ``ray.tune.get_checkpoint()``
the checkpoint is copied into the trial dir with the continue marker, so the recipe continues
that training: after a worker/node died (``max_failures``), after ``Tuner.restore`` of an
interrupted experiment, and when PBT exploits a donor (its checkpoint, the perturbed config).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speechtune._jsonable import _jsonable
from speechtune.metrics import CostModel, EnergyMeter
from speechtune.tuning.objectives import CONTINUE_MARKER, Objective, TrialOutcome
from speechtune.tuning.spec import ObjectiveSpec, RaySpec
from speechtune.tuning.study import FAILED_STATUSES, call_objective, complete_metrics

#: The metric Ray's searcher and schedulers read (the primary metric per epoch, the objective value at the end).
OBJECTIVE_KEY = "speechtune_objective"


#: A config entry carrying what the driver needs back (Optuna params/distributions, sampling problems).
META_KEY = "_speechtune"


_FINAL = "speechtune_final"


_OUTCOME = "speechtune_outcome"


_CKPT_META = "speechtune_checkpoint.json"


_CKPT_TRIAL = "trial"


# ---------------------------------------------------------------------------------------------
# the trainable (runs on a Ray worker)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Payload:
    """What every trial needs besides its config (shipped once through the object store)."""

    objective: Objective
    objective_spec: ObjectiveSpec
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


def _resources(rspec: RaySpec) -> dict[str, float]:
    res = rspec.resources_per_trial
    return {"cpu": float(res.cpu), "gpu": float(res.gpu)}


class _RayReporter:
    """A :class:`~speechtune.training.Reporter` forwarding each epoch to ``ray.tune.report``.

    Every ``checkpoint_every`` epochs the trial dir (the recipe wrote ``last.pt`` just before
    reporting) goes along as a Ray checkpoint. It never asks to stop: Ray's scheduler stops a
    trial by ending its worker.
    """

    def __init__(
        self,
        payload: _Payload,
        trial_dir: Path,
        config: Mapping[str, Any],
        trial_id: str,
        report: bool,
    ) -> None:
        self.payload = payload
        self.trial_dir = trial_dir
        self.config = dict(config)
        self.trial_id = trial_id
        self.active = report
        self.metric = payload.objective_spec.primary_metric
        self.history: list[dict[str, Any]] = []
        self.since_checkpoint = 0

    def report(self, epoch: int, **metrics: float) -> bool:
        from ray import tune

        self.history.append({"epoch": epoch, **metrics})
        if not self.active:
            return False
        row = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
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


def _restore_checkpoint(
    checkpoint: Any, trial_dir: Path, config: Mapping[str, Any], trial_id: str
) -> dict[str, Any]:
    """Copy a Ray checkpoint into ``trial_dir`` and mark it to be continued; return the marker."""
    with checkpoint.as_directory() as tmp:
        meta = json.loads((Path(tmp) / _CKPT_META).read_text())
        shutil.rmtree(trial_dir, ignore_errors=True)
        shutil.copytree(Path(tmp) / _CKPT_TRIAL, trial_dir)
    saved = meta.get("config") or {}
    changed = {
        k: [saved.get(k), v] for k, v in _jsonable(dict(config)).items() if saved.get(k) != v
    }
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
        outcome = call_objective(payload.objective, dict(cfg), reporter, seed_dir, seed)  # type: ignore[arg-type]
        if not outcome.history:
            outcome.history = reporter.history
        outcomes.append(outcome)
        if outcome.status in FAILED_STATUSES or not outcome.ok:
            break
    _final_report(payload, outcomes[0], outcomes, marker, meter)


def _final_report(
    payload: _Payload,
    first: TrialOutcome,
    outcomes: list[TrialOutcome],
    marker: Mapping[str, Any],
    meter: EnergyMeter | None = None,
) -> None:
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
            seed_values = [obj_spec.values(m)[0] for m in per_seed]
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
        "extra": _jsonable(
            {
                k: v
                for k, v in first.extra.items()
                if k in ("group_wer", "worst_group", "output_dir")
            }
        ),
        "seed_values": seed_values,
        "continued_from": _jsonable(dict(marker)) if marker else None,
    }
    if meter is not None:
        meter.stop()
        record["cost"] = _jsonable(meter.record().as_dict())
    value = sum(seed_values) / len(seed_values) if seed_values else math.nan
    tune.report({OBJECTIVE_KEY: value, _FINAL: True, "done": True, _OUTCOME: json.dumps(record)})
