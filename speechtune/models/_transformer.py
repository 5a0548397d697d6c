"""Transformer encoder: pre-LN layers (or DeepNorm post-LN) with sinusoidal positions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from speechtune.models._layers import (
    FeedForward,
    PositionalEncoding,
    Residual,
    SelfAttention,
    valid_mask,
)


class TransformerEncoderLayer(nn.Module):
    """Self-attention then feed-forward (ReLU), each a :class:`Residual` sub-layer."""

    def __init__(
        self, d_model: int, num_heads: int, ff_dim: int, dropout: float, alpha: float | None
    ) -> None:
        super().__init__()
        self.attn = Residual(
            d_model, SelfAttention(d_model, num_heads, dropout), dropout, deepnorm_alpha=alpha
        )
        self.ff = Residual(
            d_model,
            FeedForward(d_model, ff_dim, dropout, nn.ReLU()),
            dropout,
            deepnorm_alpha=alpha,
        )

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.ff(self.attn(x, valid))


class TransformerEncoder(nn.Module):
    """A stack of Transformer encoder layers over subsampled features.

    Args:
        d_model: Width.
        num_layers: Depth.
        num_heads: Attention heads (must divide ``d_model``).
        ff_dim: Feed-forward width.
        dropout: Dropout on positions, attention weights and residual branches.
        deepnorm_alpha: ``None`` for pre-LN; otherwise DeepNorm post-LN with this ``alpha``.
    """

    def __init__(
        self,
        d_model: int,
        num_layers: int,
        num_heads: int,
        ff_dim: int,
        dropout: float,
        deepnorm_alpha: float | None = None,
    ) -> None:
        super().__init__()
        self.pos = PositionalEncoding(d_model, dropout)
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(d_model, num_heads, ff_dim, dropout, deepnorm_alpha)
            for _ in range(num_layers)
        )
        # Pre-LN leaves the residual stream unnormalised; DeepNorm already ends in a LayerNorm.
        self.final_norm = nn.LayerNorm(d_model) if deepnorm_alpha is None else nn.Identity()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``x [B, T, d_model]``; returns ``(out [B, T, d_model], lengths)``."""
        out, lengths, _ = self.forward_taps(x, lengths, ())
        return out, lengths

    def forward_taps(
        self, x: torch.Tensor, lengths: torch.Tensor, taps: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Encode and also return the outputs of the 1-based layers ``taps`` (intermediate CTC).

        A tapped output goes through the final LayerNorm too (as ESPnet's intermediate CTC
        does), so it is on the scale the shared CTC head expects.
        """
        valid = valid_mask(lengths, x.size(1))
        x = self.pos(x)
        tapped: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers, start=1):
            x = layer(x, valid)
            if i in taps:
                tapped.append(self.final_norm(x).masked_fill(~valid[..., None], 0.0))
        x = self.final_norm(x)
        return x.masked_fill(~valid[..., None], 0.0), lengths, tapped
