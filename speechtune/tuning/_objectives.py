"""One objective interface for the three kinds of thing a study can tune.

An objective takes a trial's flat config (dotted keys), a :class:`~speechtune.training.Reporter`
(per-epoch metrics in, "stop now" out), the trial's own directory and a seed, and returns a
:class:`TrialOutcome`. It never raises for a bad trial: a failed trial is a recorded outcome,
so that a study moves on to the next one. Objectives know nothing about Optuna; they can be
unit-tested with any reporter.

* :class:`RecipeObjective`: the built-in ASR recipe (:func:`speechtune.training.train`).
* :class:`FunctionObjective`: a user's Python function.
* :class:`~speechtune.tuning.CommandObjective` (``_command.py``): an external training command.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, runtime_checkable

from ..config import ConfigError, config_from_dict, merge, unflatten

if TYPE_CHECKING:  # torch is imported only when a recipe trial runs
    from ..config import DataConfig
    from ..data._prepare import PreparedData
    from ..training import Reporter, TrainResult

log = logging.getLogger(__name__)

#: Statuses of a trial: the recipe's own (complete, stopped, diverged, flatline, oom) plus error.
COMPLETE, STOPPED, ERROR = "complete", "stopped", "error"


@dataclass
class TrialOutcome:
    """How one trial (one config, one seed) ended and what it measured.

    Attributes:
        status: ``complete``, ``stopped`` (the reporter asked), ``diverged``, ``flatline``, ``oom``
            or ``error``.
        reason: a human-readable sentence for logs and trial records.
        metrics: final metrics, e.g. ``wer``, ``cer``, ``worst_group_wer``,
            ``latency_ms_per_audio_s``, ``num_parameters`` (all floats).
        history: per-epoch rows (``epoch`` plus metrics).
        extra: anything else worth recording (``group_wer``, ``exit_code``, ``output_dir``, ...).
    """

    status: str
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the trial produced usable metrics (complete, or stopped early by the tuner)."""
        return self.status in (COMPLETE, STOPPED)


@runtime_checkable
class Objective(Protocol):
    """Evaluate one trial config; never raise for a failing trial (return status ``error``)."""

    def __call__(self, config: dict[str, Any], reporter: Reporter, trial_dir: Path, seed: int) -> TrialOutcome: ...


# ---------------------------------------------------------------------------------------------
# helpers shared by the objectives
# ---------------------------------------------------------------------------------------------
def merge_config(base: Mapping[str, Any] | None, config: Mapping[str, Any]) -> dict[str, Any]:
    """A nested base config with a flat trial config (dotted keys) applied over it."""
    return merge(dict(base or {}), unflatten(config))


def numeric_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of ``values`` as floats (strings, dicts, lists and bools dropped)."""
    return {
        k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def error_outcome(exc: BaseException, trial_dir: Path | None, **extra: Any) -> TrialOutcome:
    """An ``error`` outcome for an unexpected exception; the traceback goes to ``error.log``."""
    if trial_dir is not None:
        try:
            trial_dir.mkdir(parents=True, exist_ok=True)
            (trial_dir / "error.log").write_text("".join(traceback.format_exception(exc)))
            extra.setdefault("error_log", str(trial_dir / "error.log"))
        except OSError:  # the record of the error matters more than its log file
            log.exception("could not write error.log in %s", trial_dir)
    return TrialOutcome(ERROR, f"error: {type(exc).__name__}: {exc}", extra=extra)


class StopTrackingReporter:
    """Wraps a reporter, remembering the rows it saw and whether it asked to stop.

    Once the wrapped reporter has said stop, every later call answers True without asking it
    again: a pruner must not see metrics of a trial it already pruned.
    """

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner
        self.stop_requested = False
        self.stopped_at: int | None = None
        self.history: list[dict[str, float]] = []

    def report(self, epoch: int, **metrics: float) -> bool:
        if self.stop_requested:
            return True
        self.history.append({"epoch": epoch, **metrics})
        if self.inner.report(epoch, **metrics):
            self.stop_requested, self.stopped_at = True, epoch
        return self.stop_requested


# ---------------------------------------------------------------------------------------------
# the built-in recipe
# ---------------------------------------------------------------------------------------------
#: Marker a study runner writes into a new trial dir (beside a copy of the parent trial's
#: ``last.pt``, ``model.pt``, ``config.yaml`` and metrics) to make the trial continue that training.
CONTINUE_MARKER = "continue_from.json"


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
    """

    def __init__(
        self,
        base_recipe: Mapping[str, Any],
        *,
        device: str = "auto",
        cache_dir: str | Path = ".cache/speechtune",
        num_threads: int | None = None,
        data: PreparedData | None = None,
    ) -> None:
        self.base_recipe = dict(base_recipe)
        self.device = device
        self.cache_dir = str(cache_dir)
        self.num_threads = num_threads
        self.data = data

    def recipe_dict(self, config: Mapping[str, Any], seed: int) -> dict[str, Any]:
        """The nested recipe a trial trains: base, then the trial's keys, then its seed."""
        return {**merge_config(self.base_recipe, config), "seed": seed}

    def __call__(self, config: dict[str, Any], reporter: Reporter, trial_dir: Path, seed: int) -> TrialOutcome:
        """Train one trial; see :class:`Objective`."""
        trial_dir = Path(trial_dir)
        try:
            cfg = config_from_dict(self.recipe_dict(config, seed), "trial config")
        except (ConfigError, ValueError) as exc:  # ValueError: conflicting dotted keys
            return TrialOutcome(ERROR, f"error: invalid config: {exc}", extra={"output_dir": str(trial_dir)})
        # Imported here so that building a study (and the command/python objectives) stays torch-free.
        from ..config import RunOptions
        from ..training import train

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
    from ..data import PreparedData, proxy_subset

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
    for key in ("group_wer", "worst_group"):
        if key in result.metrics:
            extra[key] = result.metrics[key]
    return TrialOutcome(
        status=result.status,
        reason=result.reason,
        metrics=numeric_metrics(result.metrics),
        history=[dict(row) for row in result.history],
        extra=extra,
    )


# ---------------------------------------------------------------------------------------------
# a Python function
# ---------------------------------------------------------------------------------------------
class FunctionObjective:
    """Tune a Python function ``fn(config, reporter) -> dict[str, float] | TrialOutcome``.

    The function reports per-epoch metrics with ``reporter.report(epoch, **metrics)``; when that
    returns True it should return promptly (the trial is then recorded as ``stopped``). If
    ``fn`` also accepts ``trial_dir`` and/or ``seed`` parameters, they are passed by keyword.
    An exception inside ``fn`` makes the trial an ``error`` (traceback in ``error.log``).

    Args:
        fn: the function to tune; ``config`` is the trial's flat dict of dotted keys.
    """

    def __init__(self, fn: Callable[..., Mapping[str, float] | TrialOutcome]) -> None:
        if not callable(fn):
            raise TypeError(f"FunctionObjective needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self._extra_params = _accepted_params(fn, ("trial_dir", "seed"))

    def __call__(self, config: dict[str, Any], reporter: Reporter, trial_dir: Path, seed: int) -> TrialOutcome:
        """Run one trial; see :class:`Objective`."""
        trial_dir = Path(trial_dir)
        tracker = StopTrackingReporter(reporter)
        kwargs = {k: v for k, v in (("trial_dir", trial_dir), ("seed", seed)) if k in self._extra_params}
        try:
            returned = self.fn(dict(config), tracker, **kwargs)
        except Exception as exc:  # recorded as a failed trial, not allowed to end the study
            log.exception("trial function %r failed", getattr(self.fn, "__name__", self.fn))
            outcome = error_outcome(exc, trial_dir)
            outcome.history = tracker.history
            return outcome
        return _function_outcome(returned, tracker)


def _accepted_params(fn: Callable[..., Any], names: tuple[str, ...]) -> set[str]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return set()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return set(names)
    return {n for n in names if n in params}


def _function_outcome(returned: Any, tracker: StopTrackingReporter) -> TrialOutcome:
    if isinstance(returned, TrialOutcome):
        if not returned.history:
            returned.history = tracker.history
        return returned
    if returned is None and tracker.stop_requested:
        # A pruned function may simply return; its last reported row stands for its metrics.
        returned = {}
    if not isinstance(returned, Mapping):
        return TrialOutcome(
            ERROR,
            f"error: TypeError: the objective function must return dict[str, float] or TrialOutcome, "
            f"got {type(returned).__name__}",
            history=tracker.history,
        )
    bad = {k: v for k, v in returned.items() if isinstance(v, bool) or not isinstance(v, (int, float))}
    if bad:
        key, value = next(iter(bad.items()))
        return TrialOutcome(
            ERROR,
            f"error: TypeError: metric {key!r} returned by the objective function must be a number, got {value!r}",
            history=tracker.history,
        )
    metrics = {k: float(v) for k, v in returned.items()}
    if tracker.stop_requested:
        last = {k: v for k, v in tracker.history[-1].items() if k != "epoch"} if tracker.history else {}
        return TrialOutcome(
            STOPPED,
            f"stopped by the reporter after epoch {tracker.stopped_at}",
            metrics={**numeric_metrics(last), **metrics},
            history=tracker.history,
        )
    nonfinite = [k for k, v in metrics.items() if not math.isfinite(v)]
    reason = "completed" if not nonfinite else f"completed (non-finite metrics: {', '.join(nonfinite)})"
    return TrialOutcome(COMPLETE, reason, metrics=metrics, history=tracker.history)
