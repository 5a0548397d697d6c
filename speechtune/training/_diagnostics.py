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


#: Optimiser steps between reads of the running loss and gradient-norm sums. Each read waits
#: for the GPU; a NaN is still caught within this many steps (its sum stays NaN), and a run that
#: diverged cannot recover in between, so only the step it is reported at moves.
FINITE_CHECK_STEPS = 25


def check_finite(value: float, what: str, epoch: int, step: int) -> None:
    """End the run as diverged when a loss or gradient norm is NaN/inf."""
    if not math.isfinite(value):
        raise RunEnded(DIVERGED, f"diverged: {what} is {value} at epoch {epoch}, step {step}")


def check_sums_finite(
    loss_sum: torch.Tensor, gnorm_sum: torch.Tensor, epoch: int, step: int
) -> tuple[float, float]:
    """Read the epoch's running sums (one host sync) and end the run if either is NaN/inf.

    Returns:
        ``(loss_sum, gnorm_sum)`` as floats.
    """
    loss, gnorm = (float(v) for v in torch.stack([loss_sum, gnorm_sum]).cpu())
    for what, value in (("training loss", loss), ("gradient norm", gnorm)):
        if not math.isfinite(value):
            raise RunEnded(
                DIVERGED,
                f"diverged: the {what} became {value} in epoch {epoch} (checked at step {step}, "
                f"every {FINITE_CHECK_STEPS} steps)",
            )
    return loss, gnorm


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
