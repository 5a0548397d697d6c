"""Gradual magnitude pruning during training (``edge.prune_sparsity``), with torch.nn.utils.prune.

The weights of every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` (QAT versions included) are
pruned layer by layer: each loses the same share of its smallest-magnitude entries (L1,
unstructured), as in Zhu & Gupta (2017). Biases, norms, embeddings, LSTM/GRU weights and
parametrised (weight-normalised) convolutions stay dense. The same holds for the layers of a
Hugging Face encoder (``hf_wav2vec2``, ``hf_whisper``). The share follows :func:`sparsity_at`,
a pure function of the optimizer step: 0 before ``edge.prune_start``, the target from
``edge.prune_end`` on, and a linear or cubic ramp between.

Inside an epoch the masks are torch's reparametrisation (``weight = weight_orig * weight_mask``),
so pruned weights get no gradient. At the end of each epoch they are made permanent
(``prune.remove``): evaluation, checkpoints and ``model.pt`` see plain weights with zeros, and
the next epoch's masks are found again from those zeros (they are the smallest magnitudes), so
a resumed run prunes exactly as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from speechtune.config import EdgeConfig

#: Layers whose ``weight`` is pruned (subclasses too: torch.ao's QAT Linear/Conv).
PRUNABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
#: Most mask updates over the ramp: Zhu & Gupta update every Δt steps, not every step.
MAX_UPDATES = 100


def sparsity_at(step: int, final: float, start: int, end: int, schedule: str) -> float:
    """The share of zeros the pruned weights should have after ``step`` optimizer steps.

    Args:
        step: optimizer steps done.
        final: the target sparsity, reached at ``end``.
        start: the step at which pruning begins (sparsity 0 up to it).
        end: the step at which ``final`` is reached (``> start``).
        schedule: ``linear``, or ``cubic``: Zhu & Gupta (2017)'s
            ``final * (1 - (1 - (step - start) / (end - start)) ** 3)``.

    Raises:
        ValueError: ``end <= start`` or an unknown schedule.
    """
    if end <= start:
        raise ValueError(f"pruning must end after it starts, but got start={start}, end={end}")
    if schedule not in ("linear", "cubic"):
        raise ValueError(f"edge.prune_schedule: unknown {schedule!r}; valid: linear, cubic")
    if step <= start:
        return 0.0
    if step >= end:
        return final
    progress = (step - start) / (end - start)
    return final * (progress if schedule == "linear" else 1.0 - (1.0 - progress) ** 3)


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The ``(module, "weight")`` pairs that pruning acts on, in module order.

    A weight computed by a parametrisation (the weight-normalised positional convolution of
    Wav2Vec2/HuBERT) is left dense: it is not a stored tensor that a mask could zero.
    """
    return [
        (m, "weight")
        for m in model.modules()
        if isinstance(m, PRUNABLE) and not parametrize.is_parametrized(m, "weight")
    ]


def measured_sparsity(model: nn.Module) -> float:
    """The share of exact zeros among the prunable weights of ``model`` (0.0 without any)."""
    zeros = total = 0
    for module, name in prunable_weights(model):
        w = getattr(module, name)
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total if total else 0.0


def _make_permanent(module: nn.Module, name: str) -> None:
    """``prune.remove``, with the pruned entries +0.0.

    ``weight_orig * weight_mask`` leaves -0.0 where a negative weight was pruned; the value is
    the same, but the sign bit would make it a nonzero entry to the bit-exact sparse storage of
    ``model.pt`` (``edge.sparse_storage``).
    """
    prune.remove(module, name)
    weight = getattr(module, name)
    with torch.no_grad():
        weight.masked_fill_(weight == 0, 0.0)


def _reprune(model: nn.Module, sparsity: float, keep_masks: bool) -> None:
    """Set every prunable weight to exactly ``round(sparsity * numel)`` zeros (L1 magnitude).

    Earlier masks are folded in first, so pruned weights are zeros and stay pruned.
    """
    for module, name in prunable_weights(model):
        if prune.is_pruned(module) and hasattr(module, f"{name}_orig"):
            _make_permanent(module, name)
        count = round(sparsity * getattr(module, name).numel())
        if count == 0:
            continue
        prune.l1_unstructured(module, name, amount=count)
        if not keep_masks:
            _make_permanent(module, name)


@torch.no_grad()
def prune_to(model: nn.Module, sparsity: float) -> None:
    """Prune ``model``'s weights to ``sparsity`` in one shot, permanently (no masks left)."""
    _reprune(model, sparsity, keep_masks=False)


@dataclass
class GradualPruner:
    """Applies :func:`sparsity_at` to a model during training.

    Call :meth:`begin_epoch` before an epoch's first step, :meth:`step` after each optimizer
    step and :meth:`end_epoch` before evaluating or saving. With ``final == 0`` every call is a
    no-op.

    Args:
        model: the model being trained.
        final: target sparsity.
        start: optimizer step at which pruning begins.
        end: optimizer step at which ``final`` is reached.
        schedule: ``linear`` or ``cubic``.
    """

    model: nn.Module
    final: float
    start: int
    end: int
    schedule: str

    @classmethod
    def from_config(cls, model: nn.Module, edge: EdgeConfig, total_steps: int) -> GradualPruner:
        """The pruner of ``edge`` over a run of ``total_steps`` optimizer steps (the LR
        schedule's horizon, so that a shorter run continued to it prunes as one run would)."""
        start = round(edge.prune_start * total_steps)
        end = max(start + 1, round(edge.prune_end * total_steps))
        return cls(model, edge.prune_sparsity, start, end, edge.prune_schedule)

    @property
    def every(self) -> int:
        """Steps between mask updates on the ramp."""
        return max(1, (self.end - self.start) // MAX_UPDATES)

    def target(self, step: int) -> float:
        """The sparsity of the masks after ``step`` steps: :func:`sparsity_at` at the latest
        update step (masks change every :attr:`every` steps, and at ``end``)."""
        if step < self.end:
            step = self.start + max(0, step - self.start) // self.every * self.every
        return sparsity_at(step, self.final, self.start, self.end, self.schedule)

    @torch.no_grad()
    def begin_epoch(self, step: int) -> None:
        """Put the masks of ``step`` on the weights (reparametrised: no gradient through them)."""
        if self.final > 0:
            _reprune(self.model, self.target(step), keep_masks=True)

    @torch.no_grad()
    def step(self, step: int) -> None:
        """After optimizer step ``step``: move the masks on when the ramp says so."""
        if self.final > 0 and self.target(step) != self.target(step - 1):
            _reprune(self.model, self.target(step), keep_masks=True)

    def end_epoch(self) -> None:
        """Make the masks permanent (``prune.remove``): plain weights with zeros."""
        if self.final <= 0:
            return
        for module, name in prunable_weights(self.model):
            if prune.is_pruned(module) and hasattr(module, f"{name}_orig"):
                _make_permanent(module, name)
