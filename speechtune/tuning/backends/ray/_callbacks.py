"""Ray Tune classes of the Ray backend (imported by :mod:`speechtune.tuning._ray` when a study runs).

They live at module level so that Ray can pickle them into the experiment and restore them with it
(``Tuner.restore``); the live driver state they feed is looked up in ``_ray._SINKS`` by key.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune import Callback
from ray.tune.stopper import Stopper

from speechtune.tuning.backends.ray._sink import _SINKS, _error_text, _num, _Sink, log
from speechtune.tuning.backends.ray._trainable import _FINAL


class RecordTrials(Callback):
    """Feeds the driver's :class:`_Sink`; its per-trial rows are saved with the experiment."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.rows: dict[str, dict[int, dict[str, Any]]] = {}

    def _sink(self) -> _Sink | None:
        sink = _SINKS.get(self.key)
        if sink is not None and self.rows and not sink.rows:
            sink.rows = self.rows  # restored from the experiment checkpoint
        if sink is not None:
            self.rows = sink.rows
        return sink

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        sink = self._sink()
        if sink is not None:
            sink.on_result(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        sink = self._sink()
        if sink is not None:
            sink.finish(
                trial.trial_id, trial.config, trial.last_result or {}, None, trial.num_failures
            )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        sink = self._sink()
        if sink is not None:
            sink.finish(
                trial.trial_id,
                trial.config,
                trial.last_result or {},
                _error_text(trial),
                trial.num_failures,
            )

    def get_state(self) -> dict | None:
        return {"rows": self.rows}

    def set_state(self, state: dict) -> None:
        self.rows = dict(state.get("rows") or {})


class PlateauStopper(Stopper):
    """Stops a trial whose ``metric`` has not improved by more than ``min_delta`` in ``patience`` epochs."""

    def __init__(self, key: str, metric: str, patience: int, min_delta: float) -> None:
        self.key, self.metric, self.patience, self.min_delta = key, metric, patience, min_delta
        self.best: dict[str, float] = {}
        self.since: dict[str, int] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        if result.get(_FINAL) or self.metric not in result:
            return False
        value = _num(result[self.metric])
        if not math.isfinite(value):
            return False
        best = self.best.get(trial_id, math.inf)
        if value < best - self.min_delta:
            self.best[trial_id], self.since[trial_id] = value, 0
            return False
        self.since[trial_id] = self.since.get(trial_id, 0) + 1
        if self.since[trial_id] < self.patience:
            return False
        sink = _SINKS.get(self.key)
        if sink is not None:
            sink.stopped_by[trial_id] = (
                f"plateau: {self.metric} improved by <= {self.min_delta:g} in {self.patience} epochs"
            )
        return True

    def stop_all(self) -> bool:
        return False


class BudgetStopper(Stopper):
    """Stops the whole experiment after ``time_budget_s`` seconds (this run) or ``epochs`` epochs (all trials)."""

    def __init__(self, key: str, time_budget_s: float | None, epochs: int | None) -> None:
        self.key, self.time_budget_s, self.epochs = key, time_budget_s, epochs
        self.started: float | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "started": None}  # the clock restarts with each run of the driver

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        now = time.monotonic()
        if self.started is None:
            self.started = now
        sink = _SINKS.get(self.key)
        reason = None
        if self.time_budget_s is not None and now - self.started >= self.time_budget_s:
            reason = f"stopped: time budget of {self.time_budget_s:g} s spent"
        elif self.epochs is not None and sink is not None and sink.epochs_run >= self.epochs:
            reason = f"stopped: compute budget of {self.epochs} epochs spent"
        if reason and sink is not None and sink.budget_reason is None:
            sink.budget_reason = reason
            log.warning("%s: stopping the Ray experiment", reason)
        return reason is not None
