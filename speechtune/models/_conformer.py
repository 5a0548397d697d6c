"""Conformer encoder (Gulati et al., 2020, "Conformer: Convolution-augmented Transformer").

Choices made here:

* positions (``model.pos_enc``): ``"abs"`` (the default) adds an absolute sinusoidal encoding
  once after subsampling; ``"rel"`` is the paper's relative positional self-attention
  (Transformer-XL's, Dai et al., 2019, as ESPnet's ``rel_pos``): every attention layer sees the
  sinusoidal embeddings of the query-key offsets, through learned biases and a projection (see
  :class:`~speechtune.models._layers.RelPositionSelfAttention`), and nothing is added to the
  frames;
* convolution-module normalisation: LayerNorm instead of BatchNorm, so that an utterance's
  output does not depend on the other utterances of its batch (padding invariance) and tiny
  batches train stably.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from speechtune.models._layers import (
    FeedForward,
    PositionalEncoding,
    RelPositionalEncoding,
    RelPositionSelfAttention,
    Residual,
    SelfAttention,
    valid_mask,
)

POS_ENCODINGS = ("abs", "rel")


class ConvolutionModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, LayerNorm, Swish, pointwise conv.

    Padded frames are zeroed right before the depthwise convolution, whose ``'same'`` padding
    (left ``(k-1)//2``, right the rest) is zeros too: an utterance's valid frames see the
    same neighbours whether or not it was batched with a longer one.
    """

    def __init__(self, d_model: int, kernel: int) -> None:
        super().__init__()
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.glu = nn.GLU(dim=-1)
        # 'same' zero padding done by hand (extra frame on the right for even kernels) to
        # avoid the copy-and-warn path of Conv1d(padding="same") with even kernels.
        self.pad = ((kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, groups=d_model)
        self.norm = nn.LayerNorm(d_model)
        self.act = nn.SiLU()
        self.pointwise_out = nn.Linear(d_model, d_model)

    def deepnorm_linears(self) -> list[nn.Linear]:
        """The position-wise projections DeepNorm initialises with gain ``beta``."""
        return [self.pointwise_in, self.pointwise_out]

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        y = self.glu(self.pointwise_in(x))
        y = y.masked_fill(~valid[..., None], 0.0)
        y = self.depthwise(F.pad(y.transpose(1, 2), self.pad)).transpose(1, 2)
        return self.pointwise_out(self.act(self.norm(y)))


class ConformerBlock(nn.Module):
    """½FF -> MHSA -> Conv -> ½FF -> LayerNorm (macaron layout, Swish feed-forwards)."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        ff_dim: int,
        kernel: int,
        dropout: float,
        alpha: float | None,
        relative: bool = False,
    ) -> None:
        super().__init__()

        def ff() -> FeedForward:
            return FeedForward(d_model, ff_dim, dropout, nn.SiLU())

        self.ff1 = Residual(d_model, ff(), dropout, scale=0.5, deepnorm_alpha=alpha)
        attn: nn.Module = (
            RelPositionSelfAttention(d_model, num_heads, dropout)
            if relative
            else SelfAttention(d_model, num_heads, dropout)
        )
        self.attn = Residual(d_model, attn, dropout, deepnorm_alpha=alpha)
        self.conv = Residual(
            d_model, ConvolutionModule(d_model, kernel), dropout, deepnorm_alpha=alpha
        )
        self.ff2 = Residual(d_model, ff(), dropout, scale=0.5, deepnorm_alpha=alpha)
        self.final_norm = nn.LayerNorm(d_model)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor, pos_emb: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``pos_emb [2T-1, D]``: offset embeddings, given exactly when the block is relative."""
        x = self.ff1(x)
        x = self.attn(x, valid) if pos_emb is None else self.attn(x, valid, pos_emb)
        x = self.conv(x, valid)
        return self.final_norm(self.ff2(x))


class ConformerEncoder(nn.Module):
    """A stack of :class:`ConformerBlock` over subsampled features.

    Args:
        d_model: Width.
        num_layers: Number of blocks.
        num_heads: Attention heads (must divide ``d_model``).
        ff_dim: Feed-forward width.
        conv_kernel: Depthwise convolution kernel size.
        dropout: Dropout on positions, attention weights and residual branches.
        deepnorm_alpha: ``None`` for pre-LN sub-layers; otherwise DeepNorm with this ``alpha``.
        pos_enc: ``"abs"`` (sinusoids added after subsampling) or ``"rel"`` (relative
            positional self-attention in every block).
    """

    def __init__(
        self,
        d_model: int,
        num_layers: int,
        num_heads: int,
        ff_dim: int,
        conv_kernel: int,
        dropout: float,
        deepnorm_alpha: float | None = None,
        pos_enc: str = "abs",
    ) -> None:
        super().__init__()
        if pos_enc not in POS_ENCODINGS:
            raise ValueError(
                f"model.pos_enc={pos_enc!r} is not known; expected one of {list(POS_ENCODINGS)}"
            )
        relative = pos_enc == "rel"
        self.pos: PositionalEncoding | RelPositionalEncoding = (
            RelPositionalEncoding(d_model, dropout)
            if relative
            else PositionalEncoding(d_model, dropout)
        )
        self.layers = nn.ModuleList(
            ConformerBlock(
                d_model, num_heads, ff_dim, conv_kernel, dropout, deepnorm_alpha, relative
            )
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``x [B, T, d_model]``; returns ``(out [B, T, d_model], lengths)``."""
        out, lengths, _ = self.forward_taps(x, lengths, ())
        return out, lengths

    def forward_taps(
        self, x: torch.Tensor, lengths: torch.Tensor, taps: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Encode and also return the outputs of the 1-based blocks ``taps`` (intermediate CTC).

        Every block ends in a LayerNorm, so a tapped output is on the final output's scale and
        can share its CTC head.
        """
        valid = valid_mask(lengths, x.size(1))
        pos_emb: torch.Tensor | None = None
        if isinstance(self.pos, RelPositionalEncoding):
            x, pos_emb = self.pos(x)
        else:
            x = self.pos(x)
        tapped: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers, start=1):
            x = layer(x, valid, pos_emb)
            if i in taps:
                tapped.append(x.masked_fill(~valid[..., None], 0.0))
        return x.masked_fill(~valid[..., None], 0.0), lengths, tapped
