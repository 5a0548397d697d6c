"""What every stage of the workflow is given (:class:`Context`), and one training run (:func:`train_once`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechtune._jsonable import _jsonable
from speechtune.config import config_from_dict
from speechtune.data import PreparedData, prepare_data
from speechtune.metrics import CostModel
from speechtune.tuning.objectives import CONTINUE_MARKER, RecipeObjective, merge_config
from speechtune.tuning.spec import TuningSpec
from speechtune.tuning.study import complete_metrics
from speechtune.workflow._config import WorkflowSpec
from speechtune.workflow._results import Metrics, RunRecord
from speechtune.workflow._state import WorkflowState

log = logging.getLogger(__name__)

#: A finished training's record in its run directory (the recipe's own result.json is beside it).
RUN_RECORD = "workflow_run.json"

#: Per-group metrics kept in results and the registry.
_DEV_KEYS = ("wer", "cer", "worst_group_wer", "worst_group", "group_wer", "dev_loss")


class WorkflowError(RuntimeError):
    """A stage cannot go on (bad data, no trial completed, a failed final training, ...)."""


@dataclass
class Context:
    """What every stage needs: the specs, where to write, how to run, and the shared data."""

    spec: WorkflowSpec
    tuning: TuningSpec
    run_dir: Path
    state: WorkflowState
    device: str = "auto"
    cache_dir: Path = Path(".cache/speechtune")
    num_threads: int | None = None
    progress: bool = False
    #: Registry/tracking override from the command line (else ``gating.tracking_uri``).
    tracking_uri: str | None = None
    #: Log the coarse and fine studies to MLflow (the registry of stage 7 is used regardless).
    track_studies: bool = True
    #: Worker processes for the coarse and fine studies (1: trials in this process). On a GPU
    #: they pack several trials onto it (``speechtune tune --workers``).
    workers: int = 1
    #: Concurrent trials per GPU with ``workers`` > 1 (None: ``workers`` on a GPU).
    gpu_slots: int | None = None
    _data: PreparedData | None = field(default=None, repr=False)

    @property
    def cost_model(self) -> CostModel:
        """The tuning YAML's cost model (prices, grid intensity, TDPs)."""
        return self.tuning.cost

    @property
    def run_uid(self) -> str:
        """The run's short random id (study and registry run names carry it)."""
        return str(self.state.record.run_uid)

    # -- recipes -------------------------------------------------------------------------------
    def proxy_overrides(self) -> dict[str, Any]:
        """The recipe keys that put a run on the proxy subset (stages 2 to 5)."""
        p = self.spec.proxy
        if p.hours is not None:
            return {"data.proxy_fraction": 1.0, "data.proxy_hours": float(p.hours)}
        return {"data.proxy_fraction": float(p.fraction or 1.0), "data.proxy_hours": None}

    def proxy_recipe(self) -> dict[str, Any]:
        """The tuning YAML's base recipe (its overrides applied) on the proxy subset."""

        return merge_config(self.tuning.base_recipe, self.proxy_overrides())

    def full_recipe(self) -> dict[str, Any]:
        """The base recipe at the top fidelity on all the training data, with ``full.overrides``."""

        top: dict[str, Any] = {}
        fidelity = getattr(self.tuning, "fidelity", None)
        if fidelity is not None:
            top = dict(fidelity.fidelity.rungs[-1].overrides)
        overrides = {
            **top,
            **self.spec.full.overrides,
            "data.proxy_fraction": 1.0,
            "data.proxy_hours": None,
        }
        return merge_config(self.tuning.base_recipe, overrides)

    # -- data ----------------------------------------------------------------------------------
    def data(self) -> PreparedData:
        """Train (all of it) and dev, prepared once per process (corpus caches make it cheap)."""
        if self._data is None:
            cfg = config_from_dict(self.full_recipe(), "the workflow's recipe")
            self._data = prepare_data(
                cfg.data, cfg.features.sample_rate, self.cache_dir, self.progress
            )
        return self._data

    def objective(self, recipe: Mapping[str, Any]) -> Any:
        """The recipe objective that trains ``recipe`` (with a trial's config) on the shared data."""

        return RecipeObjective(
            recipe,
            device=self.device,
            cache_dir=self.cache_dir,
            num_threads=self.num_threads,
            data=self.data(),
        )

    def tracker(self) -> Any:
        """MLflow tracking of a stage's study, in the registry's store (experiment = workflow name); None when off."""
        if not self.track_studies:
            return None
        from speechtune.track import StudyTracker

        uri = self.tracking_uri or self.spec.gating.tracking_uri
        return StudyTracker(uri, self.spec.name, self.spec.gating.registry_dir)

    def value(self, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> float:
        """The tuned objective (e.g. dev WER, or worst-group WER) of one run's final metrics."""

        numeric = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        return self.tuning.objective.values(complete_metrics(numeric, extra or metrics))[0]


def dev_metrics(metrics: Mapping[str, Any]) -> Metrics:
    """The dev metrics a stage keeps of a run's final metrics (overall, worst and per-group)."""
    return Metrics.from_dict({k: metrics[k] for k in _DEV_KEYS if k in metrics})


def train_once(
    ctx: Context, recipe: Mapping[str, Any], config: Mapping[str, Any], out_dir: Path, seed: int
) -> RunRecord:
    """Train one config once, or read back the run it already finished (:data:`RUN_RECORD`).

    A run that died part-way continues from its ``last.pt``. Returns the recorded run
    (``value`` None when it failed).
    """
    from speechtune.training import NullReporter

    out_dir = Path(out_dir)
    done = out_dir / RUN_RECORD
    if done.is_file():
        return RunRecord.from_dict(json.loads(done.read_text()))
    if (out_dir / "last.pt").is_file():
        (out_dir / CONTINUE_MARKER).write_text(
            json.dumps({"reason": "workflow resumed an interrupted training"})
        )
    outcome = ctx.objective(recipe)(dict(config), NullReporter(), out_dir, seed)
    value = None
    if outcome.ok:
        try:
            value = ctx.value(outcome.metrics, outcome.extra)
        except KeyError as exc:
            log.warning("run in %s: %s", out_dir, exc)
    metrics = {
        **outcome.metrics,
        **{k: outcome.extra[k] for k in ("group_wer", "worst_group") if k in outcome.extra},
    }
    run = RunRecord(
        status=outcome.status,
        reason=outcome.reason,
        metrics=_jsonable(metrics),
        value=value,
        seed=seed,
        run_dir=str(out_dir),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(run.to_dict(), indent=2))
    return run
