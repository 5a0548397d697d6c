"""Named reasons for runs that end early, so a tuner can record them and move on."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

#: Final status of a training run.
COMPLETE, STOPPED, DIVERGED, FLATLINE, OOM = "complete", "stopped", "diverged", "flatline", "oom"


class RunEnded(Exception):
    """Raised inside the loop to end a run with a status and a human-readable reason."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def is_oom(exc: BaseException) -> bool:
    """True for CUDA/CPU out-of-memory errors (torch raises several spellings)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in msg or isinstance(exc, MemoryError)
    )


def check_finite(value: float, what: str, epoch: int, step: int) -> None:
    """End the run as diverged when a loss or gradient norm is NaN/inf."""
    if not math.isfinite(value):
        raise RunEnded(DIVERGED, f"diverged: {what} is {value} at epoch {epoch}, step {step}")


@dataclass
class FlatlineDetector:
    """Flags a run whose training loss stops moving.

    The relative change of the epoch's mean training loss must stay below ``tol`` for
    ``patience`` consecutive epochs. ``patience=0`` disables the check.
    """

    patience: int
    tol: float
    _last: float | None = None
    _flat_epochs: int = 0
    history: list[float] = field(default_factory=list)

    def update(self, train_loss: float, epoch: int) -> None:
        self.history.append(train_loss)
        if self.patience <= 0:
            return
        if self._last is not None:
            rel = abs(train_loss - self._last) / max(abs(self._last), 1e-12)
            self._flat_epochs = self._flat_epochs + 1 if rel < self.tol else 0
            if self._flat_epochs >= self.patience:
                raise RunEnded(
                    FLATLINE,
                    f"flatline: training loss moved less than {self.tol:g} (relative) for "
                    f"{self.patience} epochs, ending at {train_loss:.4f} in epoch {epoch}",
                )
        self._last = train_loss

    def state_dict(self) -> dict:
        return {
            "last": self._last,
            "flat_epochs": self._flat_epochs,
            "history": list(self.history),
        }

    def load_state_dict(self, d: dict) -> None:
        self._last, self._flat_epochs, self.history = (
            d["last"],
            d["flat_epochs"],
            list(d["history"]),
        )
