"""A user's Python function as an objective: ``fn(config, reporter) -> metrics``."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported only when a recipe trial runs
    from speechtune.training import Reporter
import importlib
import logging
import sys
from collections.abc import Sequence

from speechtune.tuning.objectives._base import (
    COMPLETE,
    ERROR,
    STOPPED,
    StopTrackingReporter,
    TrialOutcome,
    error_outcome,
    numeric_metrics,
)

log = logging.getLogger(__name__)


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

    def __call__(
        self, config: dict[str, Any], reporter: Reporter, trial_dir: Path, seed: int
    ) -> TrialOutcome:
        """Run one trial; see :class:`Objective`."""
        trial_dir = Path(trial_dir)
        tracker = StopTrackingReporter(reporter)
        kwargs = {
            k: v for k, v in (("trial_dir", trial_dir), ("seed", seed)) if k in self._extra_params
        }
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
    bad = {
        k: v for k, v in returned.items() if isinstance(v, bool) or not isinstance(v, (int, float))
    }
    if bad:
        key, value = next(iter(bad.items()))
        return TrialOutcome(
            ERROR,
            f"error: TypeError: metric {key!r} returned by the objective function must be a number, got {value!r}",
            history=tracker.history,
        )
    metrics = {k: float(v) for k, v in returned.items()}
    if tracker.stop_requested:
        last = (
            {k: v for k, v in tracker.history[-1].items() if k != "epoch"}
            if tracker.history
            else {}
        )
        return TrialOutcome(
            STOPPED,
            f"stopped by the reporter after epoch {tracker.stopped_at}",
            metrics={**numeric_metrics(last), **metrics},
            history=tracker.history,
        )
    nonfinite = [k for k, v in metrics.items() if not math.isfinite(v)]
    reason = (
        "completed" if not nonfinite else f"completed (non-finite metrics: {', '.join(nonfinite)})"
    )
    return TrialOutcome(COMPLETE, reason, metrics=metrics, history=tracker.history)


def import_function(path: str, search_paths: Sequence[Path] = ()) -> Callable[..., Any]:
    """Import ``MODULE:ATTR`` (``ATTR`` may be dotted: ``pkg.mod:Class.method``).

    Args:
        path: ``MODULE:ATTR``.
        search_paths: directories tried for ``MODULE`` before ``sys.path`` (the tuning YAML's
            directory, the working directory), so a script beside the YAML imports as is.

    Raises:
        ValueError: not of the form MODULE:ATTR, not importable, or not callable.
    """
    for directory in reversed([str(Path(p).resolve()) for p in search_paths]):
        if directory not in sys.path:
            sys.path.insert(0, directory)
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"--function must look like MODULE:ATTR (e.g. mypkg.train:objective), got {path!r}"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"--function {path!r}: cannot import module {module_name!r}: {exc}"
        ) from exc
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(
                f"--function {path!r}: module {module_name!r} has no attribute {attr!r}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"--function {path!r} is a {type(target).__name__}, not a function")
    return target
