"""DARTS' collapse, watched and stopped: op weights per epoch, and DARTS+ early stopping.

DARTS drifts towards parameter-free ops (skip connections, zero) as its supernet trains: they
pass gradients through unchanged, so the dev loss falls fastest by leaning on them, and the
derived network ends up shallow and weak (Zela et al., 2020, "Understanding and Robustifying
Differentiable Architecture Search"; Chen & Hsieh, 2020). DARTS+ (Liang et al., 2019, "DARTS+:
Improved Differentiable Architecture Search with Early Stopping") stops the search when the
derived cell holds too many skip connections, or when the ranking of the architecture weights
has been stable for some epochs. :class:`CollapseGuard` applies both rules per epoch to the
argmax architecture; every epoch's op weights are recorded for the plot and the JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechtune.models import PARAMETER_FREE_OPS


def argmax_ops(weights: Sequence[Sequence[float]], ops: Sequence[str]) -> list[str]:
    """The op of the largest weight in each block."""
    return [ops[max(range(len(row)), key=lambda k: row[k])] for row in weights]


@dataclass
class OpWeightsLog:
    """``softmax(alpha)`` of every block after each epoch, and the argmax architecture."""

    ops: list[str]
    epochs: list[dict[str, Any]] = field(default_factory=list)

    def record(self, epoch: int, weights: Sequence[Sequence[float]], **metrics: float) -> None:
        """Add one epoch's weights (``[blocks][ops]``) and any metrics (dev loss...)."""
        rows = [[float(w) for w in row] for row in weights]
        self.epochs.append(
            {"epoch": epoch, "weights": rows, "argmax": argmax_ops(rows, self.ops), **metrics}
        )

    def to_json(self) -> dict[str, Any]:
        return {"ops": self.ops, "epochs": self.epochs}

    def write(self, json_path: Path, png_path: Path | None = None) -> None:
        """Write the record as JSON and, when given a path, the plot (one panel per block)."""
        json_path.write_text(json.dumps(self.to_json(), indent=2))
        if png_path is not None and self.epochs:
            plot_op_weights(self, png_path)


def plot_op_weights(log: OpWeightsLog, path: Path) -> None:
    """One panel per block: each op's weight over the epochs (parameter-free ops dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = len(log.epochs[0]["weights"])
    cols = min(blocks, 4)
    rows = -(-blocks // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    epochs = [e["epoch"] for e in log.epochs]
    for b in range(blocks):
        ax = axes[b // cols][b % cols]
        for k, op in enumerate(log.ops):
            ys = [e["weights"][b][k] for e in log.epochs]
            style = "--" if op in PARAMETER_FREE_OPS else "-"
            ax.plot(epochs, ys, style, label=op, marker="." if len(epochs) < 3 else None)
        ax.set_title(f"block {b + 1}", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    for b in range(blocks, rows * cols):
        axes[b // cols][b % cols].axis("off")
    axes[0][0].set_ylabel("softmax(alpha)", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=7)
    fig.tight_layout(rect=(0, 0.12 if rows == 1 else 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class GuardDecision:
    """What the guard said after an epoch: stop or go on, and why."""

    stop: bool
    reason: str = ""
    # True when the current architecture itself has collapsed (derive from an earlier epoch).
    collapsed: bool = False


class CollapseGuard:
    """DARTS+ early stopping on the argmax architecture (see the module docstring).

    Args:
        max_parameter_free: Stop once this many blocks' argmax is ``skip`` or ``zero``
            (``None``: off). The architecture of the last epoch below the limit is kept.
        stable_epochs: Stop once the argmax architecture has not changed for this many
            epochs (0: off).
    """

    def __init__(self, max_parameter_free: int | None = None, stable_epochs: int = 0) -> None:
        self.max_parameter_free = max_parameter_free
        self.stable_epochs = stable_epochs
        self._last: list[str] | None = None
        self._unchanged = 0
        #: The argmax architecture of the last epoch that had not collapsed (None: none yet).
        self.last_healthy: list[str] | None = None

    def update(self, arch: Sequence[str]) -> GuardDecision:
        """Check the argmax architecture after an epoch."""
        arch = list(arch)
        free = sum(op in PARAMETER_FREE_OPS for op in arch)
        if self.max_parameter_free is not None and free >= self.max_parameter_free:
            return GuardDecision(
                True,
                f"collapse: {free} of {len(arch)} blocks chose a parameter-free op "
                f"({','.join(arch)}; limit {self.max_parameter_free})",
                collapsed=True,
            )
        self.last_healthy = arch
        self._unchanged = self._unchanged + 1 if arch == self._last else 0
        self._last = arch
        if self.stable_epochs and self._unchanged >= self.stable_epochs:
            return GuardDecision(
                True, f"stable: the architecture has not changed for {self._unchanged} epochs"
            )
        return GuardDecision(False)
