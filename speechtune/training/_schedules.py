"""Learning-rate schedules as pure functions of the optimiser step.

``lr_at(step, ...)`` returns the lr for optimiser step ``step`` (counted from 0), so a resumed run
only needs the step counter to be back on schedule, and a schedule can be plotted or tested
without an optimiser. ``optim.lr`` (after batch scaling) always means the *peak* lr.

Warmup convention (all schedules except ``noam``, which has its own): for ``step < warmup`` the lr
rises linearly as ``peak * (step + 1) / (warmup + 1)`` and reaches ``peak`` exactly at
``step == warmup``; the post-warmup phase starts there. ``warmup_steps = 0`` means the first step
already uses the peak lr. ``noam`` keeps Vaswani et al.'s indexing (``s = step + 1``), so it peaks
one step earlier, at ``step == warmup - 1``.

The only state that is not a function of the step is reduce-on-plateau's count of reductions,
which :class:`PlateauTracker` keeps from dev losses and the trainer passes in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from speechtune.config import ScheduleConfig

__all__ = ["PlateauTracker", "lr_at"]


@dataclass(frozen=True)
class _Ctx:
    """Everything a schedule function needs besides the step."""

    cfg: ScheduleConfig
    peak: float
    total_steps: int
    d_model: int
    plateau_reductions: int

    @property
    def floor(self) -> float:
        return self.cfg.min_lr_ratio * self.peak


def _warmup_factor(step: int, warmup: int) -> float:
    # (step + 1) / (warmup + 1): the first step is never lr=0 (a wasted step), and the ramp
    # ends exactly at peak on step == warmup.
    if step >= warmup:
        return 1.0
    return (step + 1) / (warmup + 1)


def _constant(step: int, c: _Ctx) -> float:
    return c.peak * _warmup_factor(step, c.cfg.warmup_steps)


def _noam(step: int, c: _Ctx) -> float:
    # Vaswani et al. (2017): factor * d_model^-0.5 * min(s^-0.5, s * warmup^-1.5), s = step + 1,
    # whose maximum, at s = warmup, is factor * (d_model * warmup)^-0.5. Choosing
    # factor = peak * sqrt(d_model * warmup) makes that maximum equal to peak, so d_model cancels
    # and optim.lr keeps meaning the peak lr whatever the model width.
    warmup = max(c.cfg.warmup_steps, 1)  # warmup 0: decay as s^-0.5 from the first step
    s = step + 1
    factor = c.peak * math.sqrt(c.d_model * warmup)
    return factor * c.d_model**-0.5 * min(s**-0.5, s * warmup**-1.5)


def _warmup_cosine(step: int, c: _Ctx) -> float:
    warmup = c.cfg.warmup_steps
    if step < warmup:
        return _constant(step, c)
    decay_steps = max(c.total_steps - warmup, 1)
    progress = min((step - warmup) / decay_steps, 1.0)  # flat at the floor after total_steps
    return c.floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (c.peak - c.floor)


def _warmup_exponential(step: int, c: _Ctx) -> float:
    warmup = c.cfg.warmup_steps
    if step < warmup:
        return _constant(step, c)
    return max(c.peak * c.cfg.gamma ** (step - warmup), c.floor)


def _cyclic(step: int, c: _Ctx) -> float:
    # Triangular cycles between floor and peak (Smith, 2017). A cycle starts at the peak so the
    # lr is continuous at the end of warmup: peak -> floor (half a cycle) -> peak.
    warmup = c.cfg.warmup_steps
    if step < warmup:
        return _constant(step, c)
    phase = ((step - warmup) % c.cfg.cycle_steps) / c.cfg.cycle_steps
    height = abs(1.0 - 2.0 * phase)  # 1 at the cycle's start, 0 half-way
    return c.floor + height * (c.peak - c.floor)


def _plateau(step: int, c: _Ctx) -> float:
    return _constant(step, c) * c.cfg.plateau_factor**c.plateau_reductions


_SCHEDULES: dict[str, Callable[[int, _Ctx], float]] = {
    "constant": _constant,
    "noam": _noam,
    "warmup_cosine": _warmup_cosine,
    "warmup_exponential": _warmup_exponential,
    "cyclic": _cyclic,
    "plateau": _plateau,
}


def lr_at(
    step: int,
    cfg: ScheduleConfig,
    peak_lr: float,
    total_steps: int,
    d_model: int,
    plateau_reductions: int = 0,
) -> float:
    """The learning rate for optimiser step ``step`` (counted from 0).

    Schedules (``cfg.name``), ``W = cfg.warmup_steps``, ``floor = cfg.min_lr_ratio * peak_lr``:

    * ``constant``: linear warmup, then ``peak_lr``.
    * ``noam``: ``factor * d_model^-0.5 * min(s^-0.5, s * W^-1.5)`` with ``s = step + 1`` and
      ``factor = peak_lr * sqrt(d_model * W)``, so its maximum (at ``s = W``) is ``peak_lr``.
    * ``warmup_cosine``: warmup, then cosine from ``peak_lr`` at ``step = W`` to ``floor`` at
      ``step = total_steps``, flat afterwards.
    * ``warmup_exponential``: warmup, then ``peak_lr * gamma^(step - W)``, never below ``floor``.
    * ``cyclic``: warmup, then triangular cycles of ``cfg.cycle_steps`` steps, each going
      ``peak_lr -> floor -> peak_lr``.
    * ``plateau``: warmup, then ``peak_lr * plateau_factor ** plateau_reductions`` (the count
      comes from :class:`PlateauTracker`).

    Args:
        step: Optimiser step, from 0.
        cfg: The schedule configuration.
        peak_lr: The peak learning rate (``optim.lr`` after batch-size scaling).
        total_steps: Planned optimiser steps in the whole run (used by ``warmup_cosine``).
        d_model: Model width (used by ``noam``; it cancels out of the peak, see above).
        plateau_reductions: Reductions so far (``plateau`` only).

    Returns:
        The learning rate.

    Raises:
        ValueError: On an unknown schedule name or out-of-range arguments.
    """
    fn = _SCHEDULES.get(cfg.name)
    if fn is None:
        raise ValueError(
            f"schedule.name must be one of {sorted(_SCHEDULES)}, but got {cfg.name!r}."
        )
    problems = [
        f"{name} must be {rule}, but got {name}={value}"
        for name, value, rule, ok in (
            ("step", step, ">= 0", step >= 0),
            ("peak_lr", peak_lr, "> 0", peak_lr > 0),
            ("total_steps", total_steps, ">= 1", total_steps >= 1),
            ("d_model", d_model, ">= 1", d_model >= 1),
            ("plateau_reductions", plateau_reductions, ">= 0", plateau_reductions >= 0),
        )
        if not ok
    ]
    if problems:
        raise ValueError("lr_at: " + "; ".join(problems) + ".")
    return fn(step, _Ctx(cfg, peak_lr, total_steps, d_model, plateau_reductions))


@dataclass
class PlateauTracker:
    """Reduce-on-plateau bookkeeping, with the semantics of ``torch.optim.lr_scheduler.
    ReduceLROnPlateau(mode="min", threshold=0)``.

    An epoch whose dev loss is not strictly below the best so far (NaN included) is a bad epoch;
    when bad epochs in a row exceed ``patience``, the reduction count goes up and the count of
    bad epochs restarts. The lr itself comes from :func:`lr_at` with ``plateau_reductions``.

    Attributes:
        patience: Bad epochs tolerated before a reduction (``schedule.plateau_patience``).
        best: Lowest dev loss seen, or ``None`` before the first update.
        bad_epochs: Bad epochs in a row since the last improvement or reduction.
        reductions: Reductions so far.
    """

    patience: int = 2
    best: float | None = None
    bad_epochs: int = 0
    reductions: int = 0

    def __post_init__(self) -> None:
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, but got patience={self.patience}.")

    def update(self, dev_loss: float) -> int:
        """Record one epoch's dev loss.

        Args:
            dev_loss: The epoch's dev loss (lower is better).

        Returns:
            The number of reductions so far.
        """
        if self.best is None or dev_loss < self.best:
            self.best = float(dev_loss)
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.reductions += 1
                self.bad_epochs = 0
        return self.reductions

    def state_dict(self) -> dict[str, Any]:
        """The tracker's state as a plain (JSON-safe) dict."""
        return {"best": self.best, "bad_epochs": self.bad_epochs, "reductions": self.reductions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state written by :meth:`state_dict`.

        Raises:
            ValueError: If a key is missing.
        """
        missing = [k for k in ("best", "bad_epochs", "reductions") if k not in state]
        if missing:
            raise ValueError(
                f"PlateauTracker state is missing keys {missing}; got {sorted(state)}."
            )
        self.best = None if state["best"] is None else float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.reductions = int(state["reductions"])
