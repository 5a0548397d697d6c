"""Global mean/variance normalisation with statistics from the training split."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

#: Lower bound on the standard deviation, so a constant mel bin does not divide by zero.
MIN_STD = 1e-5


class GlobalCMVN(nn.Module):
    """Per-mel-bin ``(x - mean) / std``; statistics live in buffers (saved in ``state_dict``).

    Build one with :meth:`fit`, or construct it unfitted and ``load_state_dict`` a fitted one.
    Calling an unfitted module raises instead of silently passing features through.

    Args:
        n_mels: feature dimension.
    """

    mean: Tensor
    std: Tensor
    count: Tensor

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        if n_mels < 1:
            raise ValueError(f"GlobalCMVN needs n_mels >= 1, got {n_mels}")
        self.n_mels = int(n_mels)
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))
        # Frames the statistics came from; 0 means "not fitted".
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @property
    def fitted(self) -> bool:
        """Whether the statistics were computed (or loaded)."""
        return bool(self.count.item() > 0)

    @classmethod
    def fit(cls, feats: Iterable[Tensor]) -> GlobalCMVN:
        """Statistics over all frames of ``feats``.

        Each utterance's mean and sum of squared deviations are computed in float64 and merged
        with Chan et al.'s parallel update, which avoids the cancellation of the naive
        ``E[x^2] - E[x]^2`` on large corpora.

        Args:
            feats: ``[F, n_mels]`` tensors, one per utterance (any device).

        Returns:
            a fitted module (float32 buffers on the CPU).

        Raises:
            ValueError: when there are no frames, or the feature dimensions disagree.
        """
        n = 0
        mean: Tensor | None = None
        m2: Tensor | None = None
        for i, x in enumerate(feats):
            if x.dim() != 2 or (mean is not None and x.shape[1] != mean.shape[0]):
                expected = f"[F, {mean.shape[0]}]" if mean is not None else "[F, n_mels]"
                raise ValueError(
                    f"GlobalCMVN.fit: feature {i} has shape {tuple(x.shape)}, expected {expected}"
                )
            if x.shape[0] == 0:
                continue
            x = x.detach().to(device="cpu", dtype=torch.float64)
            nb = x.shape[0]
            mean_b = x.mean(0)
            m2_b = (x - mean_b).pow(2).sum(0)
            if mean is None or m2 is None:
                n, mean, m2 = nb, mean_b, m2_b
                continue
            delta = mean_b - mean
            total = n + nb
            mean = mean + delta * (nb / total)
            m2 = m2 + m2_b + delta.pow(2) * (n * nb / total)
            n = total
        if mean is None or m2 is None or n == 0:
            raise ValueError("GlobalCMVN.fit: no feature frames given (empty training split?)")
        module = cls(mean.shape[0])
        module.mean.copy_(mean.float())
        module.std.copy_((m2 / n).sqrt().clamp(min=MIN_STD).float())
        module.count.fill_(float(n))
        return module

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` of shape ``[..., n_mels]``.

        Raises:
            RuntimeError: when the statistics were never fitted or loaded.
            ValueError: when the last dimension is not ``n_mels``.
        """
        if not self.fitted:
            raise RuntimeError(
                "GlobalCMVN is not fitted: call GlobalCMVN.fit(train_feats) or load a state_dict"
            )
        if x.shape[-1] != self.n_mels:
            raise ValueError(
                f"GlobalCMVN expects [..., {self.n_mels}] features, got {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std
