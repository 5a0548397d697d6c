"""MLflow tracking of a study: one parent run, one nested child run per finished trial.

Only ``MlflowClient`` calls with explicit run ids are used: MLflow's fluent API keeps the
active run in thread-local state, which breaks when trials finish on several threads
(``n_jobs > 1``). A lock serialises the client calls for the same reason.

The default store is ``sqlite:///<run_dir>/mlflow.db`` with artifacts under ``<run_dir>/mlruns``:
MLflow 3.17 refuses the plain file store (``file:./mlruns``) unless
``MLFLOW_ALLOW_FILE_STORE=true`` is set, while SQLite needs no server.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from speechtune._urls import mask_url, scrub
from speechtune.config import flatten

ROLE_TAG = "speechtune.role"
STUDY_TAG = "speechtune.study"
PARENT_TAG = "mlflow.parentRunId"
_BATCH = 100  # MLflow's limit of params per log_batch call
_METRIC_BATCH = 1000  # and of metrics
_MAX_PARAM_CHARS = 6000  # MLflow 3 rejects longer param values
_SPEC_SECTIONS = ("recipe", "presets", "overrides", "study", "objective", "command")
# Terminal MLflow status per trial status: pruned trials end normally but early.
_RUN_STATUS = {"complete": "FINISHED", "stopped": "KILLED"}
_STATE = {"complete": "COMPLETE", "stopped": "PRUNED"}


def default_tracking_uri(run_dir: Path) -> str:
    """The local, serverless MLflow store of a run directory."""
    return f"sqlite:///{(Path(run_dir) / 'mlflow.db').resolve()}"


def _key(name: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space : and /; anything else would be rejected.
    return re.sub(r"[^\w\-. :/]", "_", str(name))


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:_MAX_PARAM_CHARS]


def _spec_params(spec: Mapping[str, Any]) -> dict[str, str]:
    """The parts of a tuning spec worth comparing across studies, flat, as MLflow params."""
    out: dict[str, str] = {}
    for section in _SPEC_SECTIONS:
        value = spec.get(section)
        if isinstance(value, Mapping):
            out.update({f"{section}.{k}": _param_value(v) for k, v in flatten(value).items()})
        elif value is not None:
            out[section] = _param_value(value)
    # One param per searched key, its definition as JSON: the space is the study's identity.
    for key, definition in (spec.get("space") or {}).items():
        out[f"space.{key}"] = _param_value(definition)
    if "study.storage" in out:  # a spec recorded elsewhere may still hold the password
        out["study.storage"] = mask_url(out["study.storage"])
    return {_key(k): v for k, v in out.items()}


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class StudyTracker:
    """Log a study to MLflow: a parent run for the study, a child run for each trial.

    Args:
        tracking_uri: MLflow tracking URI; None means :func:`default_tracking_uri` of ``run_dir``.
        experiment: MLflow experiment name (created when missing).
        run_dir: The study's run directory (holds the default store and ``mlruns/`` artifacts).

    Raises:
        RuntimeError: the store cannot be opened (the message masks the URI's password).
    """

    def __init__(self, tracking_uri: str | None, experiment: str, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        # A SQLite store (the default, or one named explicitly) has no artifact server: without an
        # explicit location MLflow would write artifacts to ./mlruns of whatever the cwd is.
        self.local = tracking_uri is None or tracking_uri.startswith("sqlite:")
        self.tracking_uri = tracking_uri or default_tracking_uri(self.run_dir)
        if self.local:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            self.experiment_id = self._experiment(experiment)
        except Exception as exc:  # MLflow, SQLAlchemy, OS errors: messages may quote the URI
            raise RuntimeError(
                f"cannot open the MLflow store {mask_url(self.tracking_uri)}: "
                f"{type(exc).__name__}: {scrub(exc, [self.tracking_uri])}"
            ) from exc
        self.parent_run_id: str | None = None
        self._lock = threading.Lock()

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        # With the SQLite store MLflow would put artifacts in ./mlruns of the *current*
        # directory; keep them in the run directory instead. A server decides for itself.
        location = (self.run_dir / "mlruns").resolve().as_uri() if self.local else None
        return self.client.create_experiment(name, artifact_location=location)

    def _log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[i : i + _BATCH])

    def _existing_parent(self, name: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'study'"
        )
        for run in runs:
            if run.data.tags.get(STUDY_TAG) == name:
                return run.info.run_id
        return None

    def start_study(self, name: str, spec: Mapping[str, Any]) -> str:
        """Open (or, when the study resumes, reopen) the parent run of study ``name``.

        Args:
            name: The study name (tagged ``speechtune.study``, also the run name).
            spec: The composed tuning spec; its study/objective/space sections become params.

        Returns:
            The parent run id.
        """
        with self._lock:
            run_id = self._existing_parent(name)
            if run_id is not None:
                self.client.update_run(run_id, status="RUNNING")
            else:
                tags = {ROLE_TAG: "study", STUDY_TAG: name}
                run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
                run_id = run.info.run_id
                self._log_params(run_id, _spec_params(spec))
            self.parent_run_id = run_id
            return run_id

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
    ) -> str:
        """Log one finished trial as a child run of the study's run.

        Args:
            number: The Optuna trial number.
            config: The flat trial config (becomes the run's params).
            history: Per-epoch rows; each numeric column is a metric series with ``step=epoch``.
            metrics: Final metrics, logged as ``final_<name>``.
            status: complete | stopped | diverged | flatline | oom | error.
            reason: Why the trial ended.
            config_path: The trial's config file, logged as an artifact when it exists.
            cost: The trial's cost record (``CostRecord.as_dict()``): its numbers become metrics
                ``cost.<field>`` (device-hours, energy, CO2e, money), its energy source a tag.

        Returns:
            The child run id.
        """
        with self._lock:
            if self.parent_run_id is None:
                raise RuntimeError("StudyTracker.log_trial called before start_study")
            state = _STATE.get(status, "FAIL")
            tags = {
                PARENT_TAG: self.parent_run_id,
                ROLE_TAG: "trial",
                "trial_number": str(number),
                "state": state,
                "status": status,
                "reason": reason[:5000],
            }
            run_id = self.client.create_run(
                self.experiment_id, run_name=f"trial-{number}", tags=tags
            ).info.run_id
            self._log_params(run_id, {_key(k): _param_value(v) for k, v in config.items()})
            if cost and cost.get("energy_source"):
                self.client.set_tag(run_id, "cost.energy_source", str(cost["energy_source"]))
            series = self._metrics(history, metrics) + self._cost_metrics(cost or {})
            for i in range(0, len(series), _METRIC_BATCH):
                self.client.log_batch(run_id, metrics=series[i : i + _METRIC_BATCH])
            if config_path is not None and Path(config_path).is_file():
                self.client.log_artifact(run_id, str(config_path))
            self.client.set_terminated(run_id, status=_RUN_STATUS.get(status, "FAILED"))
            return run_id

    @staticmethod
    def _metrics(history: Sequence[Mapping[str, Any]], final: Mapping[str, Any]) -> list[Metric]:
        now = int(time.time() * 1000)
        out: list[Metric] = []
        for i, row in enumerate(history):
            step = int(row.get("epoch", i + 1))
            for key, value in row.items():
                number = _numeric(value)
                if key != "epoch" and number is not None:
                    out.append(Metric(_key(key), number, now, step))
        for key, value in final.items():
            number = _numeric(value)
            if number is not None:
                out.append(Metric(_key(f"final_{key}"), number, now, 0))
        return out

    @staticmethod
    def _cost_metrics(cost: Mapping[str, Any]) -> list[Metric]:
        now = int(time.time() * 1000)
        return [
            Metric(_key(f"cost.{k}"), float(v), now, 0)
            for k, v in cost.items()
            if _numeric(v) is not None and math.isfinite(v)
        ]

    def end_study(
        self,
        best_value: float | None,
        best_params: Mapping[str, Any] | None,
        cost: Mapping[str, Any] | None = None,
    ) -> None:
        """Record the best result on the parent run and close it.

        ``best_value`` becomes metric ``best_value``; ``best_params`` become ``best.<key>`` tags
        (tags, not params, because a resumed study may find a new best); ``cost``, the study's
        total cost record, becomes metrics ``cost.<field>``.
        """
        with self._lock:
            if self.parent_run_id is None:
                raise RuntimeError("StudyTracker.end_study called before start_study")
            run_id = self.parent_run_id
            if best_value is not None and not math.isnan(best_value):
                self.client.log_metric(run_id, "best_value", float(best_value))
            if cost:
                self.client.log_batch(run_id, metrics=self._cost_metrics(cost))
            tags = [
                RunTag(_key(f"best.{k}"), _param_value(v)[:5000])
                for k, v in (best_params or {}).items()
            ]
            if tags:
                self.client.log_batch(run_id, tags=tags)
            self.client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FINISHED))
