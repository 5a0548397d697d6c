"""SpecAugment time and frequency masking (Park et al., 2019), vectorised over the batch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from speechtune.config import SpecAugmentConfig


def _uniform_ints(high: Tensor, u: Tensor) -> Tensor:
    """Integers uniform in ``[0, high]`` from uniforms ``u`` in ``[0, 1)`` (elementwise)."""
    return torch.minimum((u * (high + 1).to(u.dtype)).floor().long(), high)


def _band_masks(u: Tensor, max_width: int, limit: Tensor, size: int) -> Tensor:
    """Union of random bands along one axis.

    Args:
        u: ``[num_masks, B, 2]`` uniforms (width, start) in ``[0, 1)``.
        max_width: largest band width W; each width is uniform in ``[0, W]``.
        limit: ``[B]`` valid extent per utterance; bands lie inside ``[0, limit)``.
        size: length of the axis.

    Returns:
        bool ``[B, size]``, True where masked.
    """
    limit = limit.long()
    widths = _uniform_ints(torch.clamp(limit, max=max_width).expand(u.shape[0], -1), u[..., 0])
    starts = _uniform_ints(limit - widths, u[..., 1])  # start + width <= limit
    pos = torch.arange(size, device=u.device)[None, None, :]
    inside = (pos >= starts[..., None]) & (pos < (starts + widths)[..., None])  # [M, B, size]
    return inside.any(0)


class SpecAugment(nn.Module):
    """Random time and frequency masks, set to 0.0, only in training mode.

    Args:
        time_mask_width: largest time mask, in frames (each width is uniform in ``[0, W]``).
        freq_mask_width: largest frequency mask, in mel bins.
        num_time_masks: time masks per utterance.
        num_freq_masks: frequency masks per utterance.
    """

    def __init__(
        self, time_mask_width: int, freq_mask_width: int, num_time_masks: int, num_freq_masks: int
    ) -> None:
        super().__init__()
        for name, value in (
            ("time_mask_width", time_mask_width),
            ("freq_mask_width", freq_mask_width),
            ("num_time_masks", num_time_masks),
            ("num_freq_masks", num_freq_masks),
        ):
            if value < 0:
                raise ValueError(f"SpecAugment: {name} must be >= 0, got {value}")
        self.time_mask_width = int(time_mask_width)
        self.freq_mask_width = int(freq_mask_width)
        self.num_time_masks = int(num_time_masks)
        self.num_freq_masks = int(num_freq_masks)

    @classmethod
    def from_config(cls, cfg: SpecAugmentConfig) -> SpecAugment | None:
        """Build from the recipe's ``specaugment`` section; None when it is disabled."""
        if not cfg.enabled:
            return None
        return cls(
            cfg.time_mask_width, cfg.freq_mask_width, cfg.num_time_masks, cfg.num_freq_masks
        )

    def extra_repr(self) -> str:
        return (
            f"time_mask_width={self.time_mask_width}, freq_mask_width={self.freq_mask_width}, "
            f"num_time_masks={self.num_time_masks}, num_freq_masks={self.num_freq_masks}"
        )

    def forward(
        self, feats: Tensor, lengths: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Mask a padded batch.

        Args:
            feats: ``[B, T, F]`` features.
            lengths: ``[B]`` valid frame counts; frames at or past them are never touched.
            generator: source of randomness; it may live on the CPU while ``feats`` is on an
                accelerator (the uniforms are drawn on the generator's device, then moved).

        Returns:
            a masked copy of ``feats`` (``feats`` itself in eval mode or with no masks).
        """
        if not self.training or (self.num_time_masks == 0 and self.num_freq_masks == 0):
            return feats
        if feats.dim() != 3:
            raise ValueError(
                f"SpecAugment expects feats of shape [B, T, F], got {tuple(feats.shape)}"
            )
        batch, num_frames, num_bins = feats.shape
        device = feats.device
        lengths = lengths.to(device=device, dtype=torch.long).clamp(0, num_frames)
        rand_device = generator.device if generator is not None else device
        # One draw for every mask of the batch, in a fixed order, so a seed fixes all masks.
        u = torch.rand(
            self.num_time_masks + self.num_freq_masks,
            batch,
            2,
            generator=generator,
            device=rand_device,
        ).to(device)
        valid = torch.arange(num_frames, device=device)[None, :] < lengths[:, None]
        mask = torch.zeros(batch, num_frames, num_bins, dtype=torch.bool, device=device)
        if self.num_time_masks:
            time = _band_masks(u[: self.num_time_masks], self.time_mask_width, lengths, num_frames)
            mask |= time[:, :, None]
        if self.num_freq_masks:
            full = torch.full((batch,), num_bins, dtype=torch.long, device=device)
            freq = _band_masks(u[self.num_time_masks :], self.freq_mask_width, full, num_bins)
            mask |= freq[:, None, :]
        # Frequency bands span all frames; keep them off the padding.
        mask &= valid[:, :, None]
        return feats.masked_fill(mask, 0.0)
