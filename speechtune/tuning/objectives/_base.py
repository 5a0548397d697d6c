"""One objective interface for the three kinds of thing a study can tune.

An objective takes a trial's flat config (dotted keys), a :class:`~speechtune.training.Reporter`
(per-epoch metrics in, "stop now" out), the trial's own directory and a seed, and returns a
:class:`TrialOutcome`. It never raises for a bad trial: a failed trial is a recorded outcome,
so that a study moves on to the next one. Objectives know nothing about Optuna; they can be
unit-tested with any reporter.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from speechtune.config import merge, unflatten

if TYPE_CHECKING:  # torch is imported only when a recipe trial runs
    from speechtune.training import Reporter


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

    def __call__(
        self, config: dict[str, Any], reporter: Reporter, trial_dir: Path, seed: int
    ) -> TrialOutcome: ...


# ---------------------------------------------------------------------------------------------
# helpers shared by the objectives
# ---------------------------------------------------------------------------------------------
def merge_config(base: Mapping[str, Any] | None, config: Mapping[str, Any]) -> dict[str, Any]:
    """A nested base config with a flat trial config (dotted keys) applied over it."""
    return merge(dict(base or {}), unflatten(config))


def numeric_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of ``values`` as floats (strings, dicts, lists and bools dropped)."""
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
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
