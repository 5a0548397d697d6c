"""The built-in ASR recipe as an objective (:func:`speechtune.training.train` per trial)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speechtune.config import ConfigError, config_from_dict

if TYPE_CHECKING:  # torch is imported only when a recipe trial runs
    from speechtune.config import DataConfig
    from speechtune.data import PreparedData
    from speechtune.training import Reporter, TrainResult
import logging

from speechtune.tuning.objectives._base import (
    CONTINUE_MARKER,
    ERROR,
    TrialOutcome,
    error_outcome,
    merge_config,
    numeric_metrics,
)
from speechtune.tuning.objectives._isolated import run_isolated

log = logging.getLogger(__name__)


#: Statuses of a trial: the recipe's own (complete, stopped, diverged, flatline, oom) plus error.


class RecipeObjective:
    """Train the built-in ASR recipe with the trial's config merged into a base recipe.

    Continuation: when ``trial_dir`` already holds ``last.pt`` and :data:`CONTINUE_MARKER`, the
    trial resumes that checkpoint instead of starting anew (the config may differ from the saved
    one only by a larger ``train.epochs``); its history then holds every epoch, the parent's too,
    while the reporter sees only the new ones. The marker's JSON content is returned in
    ``extra["continued_from"]``.

    With ``data`` given, ``data.train`` is taken to be the whole training split (prepared with
    no proxy), and a trial's ``data.proxy_fraction`` / ``data.proxy_hours`` still apply: it
    trains on the same stratified proxy subset of it that corpus preparation would have made
    (multi-fidelity rungs vary these keys). Dev is never subsampled.

    Args:
        base_recipe: the nested base recipe (a tuning spec's ``base_recipe``).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...
        cache_dir: corpus and feature cache, shared by all trials.
        num_threads: CPU threads for torch (None leaves torch's default).
        data: prepared manifests to reuse across trials (skips corpus preparation); its train
            split must be the full one (see above).
        isolate: train each trial in a child process (:mod:`._isolated`), so that parallel
            trials of one study do not share torch's random generator (or the GIL); set for
            ``n_jobs`` > 1.
    """

    def __init__(
        self,
        base_recipe: Mapping[str, Any],
        *,
        device: str = "auto",
        cache_dir: str | Path = ".cache/speechtune",
        num_threads: int | None = None,
        data: PreparedData | None = None,
        isolate: bool = False,
    ) -> None:
        self.base_recipe = dict(base_recipe)
        self.device = device
        self.cache_dir = str(cache_dir)
        self.num_threads = num_threads
        self.data = data
        self.isolate = isolate

    def recipe_dict(self, config: Mapping[str, Any], seed: int) -> dict[str, Any]:
        """The nested recipe a trial trains: base, then the trial's keys, then its seed."""
        return {**merge_config(self.base_recipe, config), "seed": seed}

    def __call__(
        self, config: dict[str, Any], reporter: Reporter, trial_dir: Path, seed: int
    ) -> TrialOutcome:
        """Train one trial; see :class:`Objective`."""
        trial_dir = Path(trial_dir)
        if self.isolate:
            inner = copy.copy(self)
            inner.isolate = False
            return run_isolated(inner, config, reporter, trial_dir, seed)
        try:
            cfg = config_from_dict(self.recipe_dict(config, seed), "trial config")
        except (ConfigError, ValueError) as exc:  # ValueError: conflicting dotted keys
            return TrialOutcome(
                ERROR, f"error: invalid config: {exc}", extra={"output_dir": str(trial_dir)}
            )
        # Imported here so that building a study (and the command/python objectives) stays torch-free.
        from speechtune.config import RunOptions
        from speechtune.training import train

        marker = trial_dir / CONTINUE_MARKER
        resume = marker.is_file() and (trial_dir / "last.pt").is_file()
        opts = RunOptions(
            output_dir=str(trial_dir),
            device=self.device,
            cache_dir=self.cache_dir,
            num_threads=self.num_threads,
            progress=False,
            resume=resume,
        )
        try:
            result = train(cfg, opts, reporter, data=_proxy_data(self.data, cfg.data))
        except Exception as exc:  # a crashing trial is recorded, never allowed to end the study
            log.exception("trial in %s failed", trial_dir)
            return error_outcome(exc, trial_dir, output_dir=str(trial_dir))
        outcome = outcome_from_result(result)
        if resume:
            outcome.extra["continued_from"] = _read_marker(marker)
        return outcome


def _proxy_data(data: PreparedData | None, cfg: DataConfig) -> PreparedData | None:
    """``data`` with the proxy subset that ``cfg`` (a DataConfig) asks for, as corpus preparation makes it."""
    if data is None or (cfg.proxy_hours is None and cfg.proxy_fraction >= 1.0):
        return data
    from speechtune.data import PreparedData, proxy_subset

    if cfg.proxy_hours is not None:
        train = proxy_subset(data.train, hours=cfg.proxy_hours, seed=cfg.split_seed)
    else:
        train = proxy_subset(data.train, fraction=cfg.proxy_fraction, seed=cfg.split_seed)
    return PreparedData(train=train, dev=data.dev, report=data.report)


def _read_marker(path: Path) -> dict[str, Any]:
    """The continuation marker's JSON object; an unreadable one is recorded, not fatal."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"unreadable": f"{type(exc).__name__}: {exc}"}
    return content if isinstance(content, dict) else {"value": content}


def outcome_from_result(result: TrainResult) -> TrialOutcome:
    """Map a recipe :class:`~speechtune.training.TrainResult` to a :class:`TrialOutcome`.

    A run stopped by the reporter still carries the final metrics of its best epoch (the recipe
    evaluates that checkpoint on the way out), so a pruned trial is fully recorded.
    """
    extra: dict[str, Any] = {"output_dir": str(result.output_dir) if result.output_dir else None}
    for key in ("group_wer", "worst_group", "group_dev_loss"):
        if key in result.metrics:
            extra[key] = result.metrics[key]
    return TrialOutcome(
        status=result.status,
        reason=result.reason,
        metrics=numeric_metrics(result.metrics),
        history=[dict(row) for row in result.history],
        extra=extra,
    )
