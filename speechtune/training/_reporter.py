"""The trainer's only link to whoever drives it (a CLI, an Optuna trial, a Ray Tune trial).

Following Syne Tune's ``Reporter``: the training loop reports metrics once per epoch and learns
whether to stop. It never imports anything from the tuner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable


@runtime_checkable
class Reporter(Protocol):
    """Receives per-epoch metrics; returning True asks the trainer to stop (e.g. pruned)."""

    def report(self, epoch: int, **metrics: float) -> bool: ...


class NullReporter:
    """Never asks to stop."""

    def report(self, epoch: int, **metrics: float) -> bool:
        return False


class CallbackReporter:
    """Wraps a function ``fn(epoch, metrics) -> bool | None``; None means "continue"."""

    def __init__(self, fn: Callable[[int, dict[str, float]], bool | None]) -> None:
        self._fn = fn

    def report(self, epoch: int, **metrics: float) -> bool:
        return bool(self._fn(epoch, dict(metrics)))
