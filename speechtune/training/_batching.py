"""Duration-bucketed batch sampling with exact mid-epoch resume.

Utterances of similar length batched together waste little compute on padding. The sampler
sorts by duration, cuts the sorted list into ``num_buckets`` equal-count (quantile) buckets,
shuffles inside each bucket, cuts batches, and shuffles the order of the batches. Every random
choice comes from a generator seeded by ``(seed, epoch)``, so an epoch's batches are a pure
function of those two numbers, and resuming needs only ``(epoch, position)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["BucketBatchSampler", "padding_ratio"]


def _rng(seed: int, epoch: int) -> np.random.Generator:
    # SeedSequence wants non-negative entropy; the modulo keeps any int seed usable.
    return np.random.default_rng([seed % 2**64, epoch % 2**64])


def _cut(order: np.ndarray, batch_size: int, drop_last: bool) -> list[list[int]]:
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


class BucketBatchSampler:
    """Yields lists of utterance indices, one list per batch (a ``batch_sampler`` for
    ``torch.utils.data.DataLoader``).

    Order per epoch:

    * ``shuffle=True, bucketed=True``: sort by duration, split into ``num_buckets`` quantile
      buckets, shuffle within each bucket, concatenate the buckets (shortest first) and cut
      batches, so at most one batch straddles two neighbouring buckets and at most one batch is
      short; then shuffle the order of the batches.
    * ``shuffle=True, bucketed=False``: a random permutation cut into batches.
    * ``shuffle=False``: deterministic, for evaluation: sorted by duration (shortest first) when
      ``bucketed``, dataset order otherwise.

    Resume: ``position`` counts the batches this sampler has yielded in the current epoch;
    after ``load_state_dict`` iteration continues with exactly the remaining batches. A finished
    epoch iterated again is replayed from its start; call :meth:`set_epoch` for the next one.
    With DataLoader workers, batches are prefetched, so ``position`` runs ahead of the batches
    actually trained on; a trainer that uses workers should save the count it trained on
    (``{"epoch": e, "position": batches_done}``) instead of this sampler's own state.

    Args:
        durations: Duration of each utterance in seconds (index ``i`` is utterance ``i``).
        batch_size: Utterances per batch.
        num_buckets: Quantile buckets (clipped to the number of utterances).
        bucketed: Batch similar durations together.
        seed: Base seed; the epoch's generator is seeded by ``(seed, epoch)``.
        shuffle: Randomise the order (training) or not (evaluation).
        drop_last: Drop the one short batch, if any.

    Raises:
        ValueError: On a non-positive batch size or bucket count, or a negative or non-finite
            duration (naming its index).
    """

    def __init__(
        self,
        durations: Sequence[float],
        batch_size: int,
        *,
        num_buckets: int = 10,
        bucketed: bool = True,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, but got batch_size={batch_size}.")
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, but got num_buckets={num_buckets}.")
        self._durations = np.asarray(durations, dtype=np.float64).reshape(-1)
        bad = np.flatnonzero(~np.isfinite(self._durations) | (self._durations < 0))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"durations must be finite and >= 0, but durations[{i}]={self._durations[i]} "
                f"({bad.size} bad value(s) in all)."
            )
        self.batch_size = batch_size
        self.num_buckets = num_buckets
        self.bucketed = bucketed
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        """Batches in one full epoch."""
        n = len(self._durations)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches to yield.

        Moving to another epoch restarts at its first batch; setting the current epoch again
        keeps the position, so ``load_state_dict`` followed by ``set_epoch(same_epoch)`` still
        resumes mid-epoch.

        Args:
            epoch: Epoch number (from 0).
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, but got epoch={epoch}.")
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of an epoch, in order, without touching the sampler's position.

        Args:
            epoch: Epoch number; the current one when ``None``.

        Returns:
            The list of batches (lists of indices).
        """
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            order = (
                np.argsort(self._durations, kind="stable")
                if self.bucketed
                else np.arange(len(self._durations))
            )
            return _cut(order, self.batch_size, self.drop_last)
        rng = _rng(self.seed, epoch)
        if self.bucketed:
            order = np.argsort(self._durations, kind="stable")
            buckets = np.array_split(order, min(self.num_buckets, max(len(order), 1)))
            order = np.concatenate([rng.permutation(b) for b in buckets]) if buckets else order
        else:
            order = rng.permutation(len(self._durations))
        batches = _cut(order, self.batch_size, self.drop_last)
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        if self.position >= len(batches):
            self.position = 0  # replay a finished epoch rather than yield nothing
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": ..., "position": ...}``: enough to resume mid-epoch."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state written by :meth:`state_dict`.

        Raises:
            ValueError: If a key is missing or a value is out of range.
        """
        missing = [k for k in ("epoch", "position") if k not in state]
        if missing:
            raise ValueError(
                f"BucketBatchSampler state is missing keys {missing}; got {sorted(state)}."
            )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= len(self):
            raise ValueError(
                f"BucketBatchSampler state out of range: epoch={epoch} (must be >= 0), "
                f"position={position} (must be in [0, {len(self)}])."
            )
        self.epoch, self.position = epoch, position


def padding_ratio(batches: Sequence[Sequence[int]], durations: Sequence[float]) -> float:
    """Fraction of padded compute: ``1 - sum(durations) / sum(len(batch) * max(batch))``.

    Args:
        batches: Batches of utterance indices.
        durations: Duration of each utterance.

    Returns:
        The padding ratio in ``[0, 1)``; 0 when nothing is padded or there is nothing at all.
    """
    d = np.asarray(durations, dtype=np.float64)
    padded = sum(len(b) * float(d[list(b)].max()) for b in batches if len(b))
    used = sum(float(d[list(b)].sum()) for b in batches if len(b))
    return 0.0 if padded == 0 else 1.0 - used / padded
