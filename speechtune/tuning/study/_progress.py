"""Live view of a running study: counts, best so far, elapsed time and ETA.

A rich ``Live`` panel on a terminal; one plain log line per finished trial otherwise (CI logs,
files, ``progress=False``): its number, state, value, sampled params (short) and duration, then
the study's counts. Either way it is fed by an Optuna study callback, so it sees trials finished
by every thread of ``study.optimize``. Per-epoch lines come from the trial reporter
(:data:`~speechtune.tuning.study._trial.EPOCH_LOGGER`), shown when that logger is set to DEBUG
(``speechtune tune -v``).
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

import optuna
from optuna.trial import FrozenTrial, TrialState

from speechtune.tuning.study._records import comparable_trials

log = logging.getLogger("speechtune.tuning")


#: Seconds between storage re-counts of running trials by the live panel.
RECOUNT_S = 2.0


@dataclass
class ProgressState:
    """What the display shows; updated after every finished trial."""

    n_trials: int | None
    n_jobs: int = 1
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    best_value: float | None = None
    best_number: int | None = None
    durations: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        """Trials that count towards ``n_trials`` (complete + pruned)."""
        return self.complete + self.pruned

    def eta_s(self) -> float | None:
        """Mean trial duration x remaining trials / parallel jobs; None when unknown."""
        if self.n_trials is None or not self.durations:
            return None
        remaining = max(0, self.n_trials - self.finished)
        return sum(self.durations) / len(self.durations) * remaining / max(1, self.n_jobs)

    def parts(self) -> list[str]:
        """Counts; best so far; elapsed and ETA."""
        total = "?" if self.n_trials is None else str(self.n_trials)
        best = (
            "-" if self.best_value is None else f"{self.best_value:.4f} (trial {self.best_number})"
        )
        eta = self.eta_s()
        return [
            f"{self.finished}/{total} done ({self.complete} complete, {self.pruned} pruned, "
            f"{self.failed} failed, {self.running} running)",
            f"best {best}",
            f"elapsed {_hms(time.monotonic() - self.started)}  ETA {'-' if eta is None else _hms(eta)}",
        ]

    def line(self) -> str:
        """A one-line summary."""
        return "  ".join(self.parts())


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _best(study: optuna.Study) -> tuple[float | None, int | None]:
    # Multi-objective studies have a front, not a best trial: show the size of the front instead.
    if len(study.directions) > 1:
        return None, None
    if "fidelity" in study.user_attrs:
        # Multi-fidelity: only values at the top rung are comparable.

        done = [t for t in comparable_trials(study) if t.value is not None]
        if not done:
            return None, None
        best = min(done, key=lambda t: (t.value, t.number))
        return best.value, best.number
    try:
        best = study.best_trial
    except ValueError:
        return None, None
    return (
        best.value if best.value is not None and math.isfinite(best.value) else None
    ), best.number


class StudyProgress:
    """Study callback + context manager that shows the progress of a study.

    Usage::

        with StudyProgress(study, n_trials=20, n_jobs=2, live=True) as progress:
            study.optimize(objective, callbacks=[progress])
    """

    def __init__(
        self, study: optuna.Study, *, n_trials: int | None, n_jobs: int = 1, live: bool = True
    ) -> None:
        self.state = ProgressState(n_trials=n_trials, n_jobs=n_jobs)
        # A live panel only makes sense on a terminal; otherwise one log line per trial.
        self._live_enabled = live and sys.stdout.isatty()
        self._live: Any = None  # a rich Live display while one is shown
        self._lock = threading.Lock()
        self._study: optuna.Study | None = study
        self._counted_at = 0.0
        self._refresh_counts(study)

    def _refresh_counts(self, study: optuna.Study) -> None:
        self._counted_at = time.monotonic()
        trials = study.get_trials(deepcopy=False)
        counts = dict.fromkeys(TrialState, 0)
        for t in trials:
            counts[t.state] += 1
        s = self.state
        s.complete, s.pruned = counts[TrialState.COMPLETE], counts[TrialState.PRUNED]
        s.failed, s.running = counts[TrialState.FAIL], counts[TrialState.RUNNING]
        s.best_value, s.best_number = _best(study)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback: record the finished trial and refresh the view."""
        with self._lock:
            self._refresh_counts(study)
            if trial.duration is not None and trial.state in (
                TrialState.COMPLETE,
                TrialState.PRUNED,
            ):
                self.state.durations.append(trial.duration.total_seconds())
            if self._live is None:
                log.info("%s | %s", trial_line(trial), self.state.line())

    def __rich__(self) -> object:
        from rich.panel import Panel

        # Between trials only the storage knows how many are running: re-count now and then.
        if time.monotonic() - self._counted_at > RECOUNT_S and self._study is not None:
            with self._lock:
                self._refresh_counts(self._study)
        return Panel("\n".join(self.state.parts()), title="speechtune study", expand=False)

    def __enter__(self) -> StudyProgress:
        if self._live_enabled:
            from rich.live import Live

            # Live renders any object with __rich__; its stubs ask for a renderable type.
            self._live = Live(cast(Any, self), refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
            self._live = None


#: The sampled params of a trial line are cut to this many characters (a long space would
#: otherwise bury the trial's number and value in every log line).
PARAMS_CHARS = 100


def trial_line(trial: FrozenTrial) -> str:
    """One plain line for a finished trial: number, state, value or reason, params, duration.

    E.g. ``trial 3 complete value 0.4120 [optim.lr=0.00312 model.num_layers=4] 0:01:12``.
    """
    parts = [f"trial {trial.number} {trial.state.name.lower()}"]
    if trial.state == TrialState.COMPLETE and trial.values:
        parts.append("value " + ", ".join(f"{v:.4f}" for v in trial.values))
    else:
        reason = trial.user_attrs.get("reason")
        if reason:
            parts.append(f"({reason})")
    params = short_params(trial.params)
    if params:
        parts.append(f"[{params}]")
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        parts.append(_hms((trial.datetime_complete - trial.datetime_start).total_seconds()))
    return " ".join(parts)


def short_params(params: dict[str, Any], limit: int = PARAMS_CHARS) -> str:
    """``key=value`` pairs, floats to 3 significant digits, cut to ``limit`` characters."""
    text = " ".join(
        f"{k}={format(v, '.3g') if isinstance(v, float) else v}" for k, v in params.items()
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."
