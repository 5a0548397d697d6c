"""Checkpoint averaging: the final model is the mean of the N best epochs' weights.

ESPnet and NeMo recipes end this way (ESPnet averages the 10 best epochs by validation accuracy):
the weights of neighbouring good epochs lie in one basin, and their mean generalises better than
any one of them, most of all on small corpora where dev WER jumps from epoch to epoch.

:class:`BestEpochs` keeps the N best epochs' weights on disk (``best/epoch<E>.pt`` in the run
dir, so that a resumed run still has them), ranked by dev WER and then dev loss (WER ties often
on a small dev set). :func:`average_state_dicts` averages them; integer buffers (counters) are
taken from the most recent epoch, since a mean of counters means nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from speechtune.training._checkpoint import load_checkpoint, save_atomic

__all__ = ["BestEpochs", "average_state_dicts"]


def average_state_dicts(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors; other tensors from the last state.

    Raises:
        ValueError: no states, or states with different keys or shapes.
    """
    if not states:
        raise ValueError("average_state_dicts: no state dicts to average")
    keys = list(states[-1])
    for i, s in enumerate(states):
        if list(s) != keys:
            raise ValueError(f"average_state_dicts: state {i} has different parameters")
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        last = states[-1][key]
        if not torch.is_floating_point(last):
            out[key] = last.clone()
            continue
        if any(s[key].shape != last.shape for s in states):
            raise ValueError(f"average_state_dicts: {key!r} differs in shape between states")
        # Sum in float64 so that averaging many fp32 (or bf16) tensors loses nothing.
        total = torch.zeros(last.shape, dtype=torch.float64, device=last.device)
        for s in states:
            total += s[key].to(torch.float64)
        out[key] = (total / len(states)).to(last.dtype)
    return out


class BestEpochs:
    """The ``n`` best epochs so far by ``(dev WER, dev loss)``, their weights kept on disk.

    Args:
        directory: where the weights go (created when needed).
        n: how many to keep; 1 keeps only the best epoch.
        ranked: entries restored from a resumed run's state (``[wer, loss, epoch]`` lists).
    """

    def __init__(self, directory: str | Path, n: int, ranked: Sequence[Sequence[float]] = ()):
        self.directory = Path(directory)
        self.n = int(n)
        self.ranked: list[tuple[float, float, int]] = sorted(
            (float(w), float(loss), int(e)) for w, loss, e in ranked
        )

    def path(self, epoch: int) -> Path:
        """Where epoch ``epoch``'s weights are kept."""
        return self.directory / f"epoch{epoch}.pt"

    def update(
        self, epoch: int, wer: float, loss: float, state: Mapping[str, torch.Tensor]
    ) -> bool:
        """Keep ``epoch`` when it is among the ``n`` best; drop the one it pushes out.

        Returns whether it was kept.
        """
        entry = (float(wer), float(loss), int(epoch))
        if len(self.ranked) >= self.n and entry >= self.ranked[-1]:
            return False
        save_atomic({k: v.detach().cpu() for k, v in state.items()}, self.path(epoch))
        self.ranked = sorted([*self.ranked, entry])
        for _, _, dropped in self.ranked[self.n :]:
            self.path(dropped).unlink(missing_ok=True)
        self.ranked = self.ranked[: self.n]
        return True

    @property
    def epochs(self) -> list[int]:
        """The kept epochs, best first."""
        return [e for _, _, e in self.ranked]

    def state(self) -> list[list[float]]:
        """What :class:`BestEpochs` needs to be rebuilt after a resume (JSON-friendly)."""
        return [[w, loss, e] for w, loss, e in self.ranked]

    def averaged(self, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The mean of the kept epochs' weights (integer buffers from the latest epoch).

        Raises:
            FileNotFoundError: a kept epoch's weights are missing.
        """
        order = sorted(self.epochs)  # chronological: the latest epoch's buffers win
        return average_state_dicts(
            [load_checkpoint(self.path(e), map_location=map_location) for e in order]
        )
