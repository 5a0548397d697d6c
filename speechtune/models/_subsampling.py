"""Convolutional front end that shortens the feature sequence before the encoder."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

from speechtune.models._layers import valid_mask

# (kernel, stride) of each unpadded 3x3 / 5x5 Conv2d per subsampling factor; the product of
# strides is the factor. 6 = 2 * 3 follows ESPnet's Conv2dSubsampling6.
_CONV_PLANS: dict[int, tuple[tuple[int, int], ...]] = {
    1: (),
    2: ((3, 2),),
    4: ((3, 2), (3, 2)),
    6: ((3, 2), (5, 3)),
    8: ((3, 2), (3, 2), (3, 2)),
}


_Length = TypeVar("_Length", int, torch.Tensor)


def _conv_out(length: _Length, plan: tuple[tuple[int, int], ...]) -> _Length:
    for kernel, stride in plan:
        length = (length - kernel) // stride + 1
    return length


class Conv2dSubsampling(nn.Module):
    """Subsample ``[B, T, F]`` features in time by ``factor`` and project to ``d_model``.

    Each stage is an unpadded ``Conv2d`` (stride 2, or 3 for the second stage of factor 6)
    followed by ReLU; the flattened channels x frequency map is then projected to
    ``d_model`` by a Linear layer. ``factor=1`` is the Linear projection alone.

    Length arithmetic is exact: for each stage ``T <- (T - kernel) // stride + 1``. Output
    frame ``t`` of a stage reads input frames ``t*stride .. t*stride + kernel - 1``, so it is
    valid exactly when ``t < (T - kernel) // stride + 1``: valid outputs never see padding,
    and padded outputs are zeroed.

    Args:
        in_feats: Feature dimension ``F``.
        d_model: Output dimension.
        factor: One of 1, 2, 4, 6, 8.
        channels: Conv channels (defaults to ``d_model``).
    """

    def __init__(self, in_feats: int, d_model: int, factor: int = 4, channels: int | None = None):
        super().__init__()
        if factor not in _CONV_PLANS:
            raise ValueError(
                f"model.subsampling must be one of {sorted(_CONV_PLANS)}, got {factor!r}"
            )
        self.factor = factor
        self.plan = _CONV_PLANS[factor]
        freq_out = _conv_out(in_feats, self.plan)
        if freq_out < 1:
            raise ValueError(
                f"input_dim={in_feats} is too small for subsampling factor {factor}: "
                f"the convolutions need at least {self.min_input_frames} feature bins"
            )
        channels = channels or d_model
        layers: list[nn.Module] = []
        in_ch = 1
        for kernel, stride in self.plan:
            layers += [nn.Conv2d(in_ch, channels, kernel, stride), nn.ReLU()]
            in_ch = channels
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Linear(in_ch * freq_out, d_model)

    @property
    def min_input_frames(self) -> int:
        """The fewest input frames that yield one output frame."""
        need = 1
        for kernel, stride in reversed(self.plan):
            need = (need - 1) * stride + kernel
        return need

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Exact output lengths for ``[B]`` input lengths (0 when too short)."""
        return _conv_out(lengths, self.plan).clamp(min=0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Subsample.

        Args:
            x: ``[B, T, F]`` features.
            lengths: ``[B]`` valid frames per utterance.

        Returns:
            ``(y [B, T', d_model], lengths' [B])`` with padded frames of ``y`` set to zero.

        Raises:
            ValueError: An utterance is shorter than :attr:`min_input_frames`.
        """
        short = lengths < self.min_input_frames
        if bool(short.any()):
            idx = int(torch.nonzero(short)[0])
            raise ValueError(
                f"utterance {idx} of the batch has {int(lengths[idx])} feature frames; "
                f"subsampling factor {self.factor} needs at least {self.min_input_frames}"
            )
        return self.subsample(x, lengths)

    def subsample(
        self, x: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` without the length check: a graph for export (tracing) has no
        data-dependent branches; its caller guarantees :attr:`min_input_frames`."""
        if self.plan:
            y = self.conv(x.unsqueeze(1))  # [B, C, T', F']
            b, c, t, f = y.shape
            y = self.proj(y.transpose(1, 2).reshape(b, t, c * f))
        else:
            y = self.proj(x)
        out_lengths = self.output_lengths(lengths)
        y = y.masked_fill(~valid_mask(out_lengths, y.size(1))[..., None], 0.0)
        return y, out_lengths
