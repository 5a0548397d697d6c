"""Building blocks shared by the encoders and the decoder.

Masks follow one convention throughout the package: a boolean ``valid`` tensor of shape
``[B, T]`` that is ``True`` on real frames and ``False`` on padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def valid_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean ``[B, max_len]`` mask, ``True`` where ``t < lengths[b]``.

    Args:
        lengths: ``[B]`` integer lengths.
        max_len: Number of time steps of the padded tensor.

    Returns:
        The mask, on the device of ``lengths``.
    """
    steps = torch.arange(max_len, device=lengths.device)
    return steps[None, :] < lengths[:, None]


def sinusoidal_encoding(length: int, d_model: int, device: torch.device) -> torch.Tensor:
    """The fixed sinusoidal positional encoding of Vaswani et al. (2017), ``[length, d_model]``."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    # Odd d_model is allowed by the config, so build ceil(d/2) frequencies and trim.
    idx = torch.arange(0, d_model, 2, device=device, dtype=torch.float32)
    freqs = torch.exp(-math.log(10000.0) * idx / d_model)
    pe = torch.zeros(length, d_model + d_model % 2, device=device)
    pe[:, 0::2] = torch.sin(pos * freqs)
    pe[:, 1::2] = torch.cos(pos * freqs)
    return pe[:, :d_model]


class PositionalEncoding(nn.Module):
    """Scale by ``sqrt(d_model)`` and add absolute sinusoidal positions, then dropout."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.d_model = d_model
        self.scale = math.sqrt(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pe = sinusoidal_encoding(x.size(1), self.d_model, x.device)
        return self.dropout(x * self.scale + pe.to(x.dtype))


class MultiHeadAttention(nn.Module):
    """Multi-head attention on :func:`torch.nn.functional.scaled_dot_product_attention`.

    Separate q/k/v projections (rather than one packed matrix) so that DeepNorm can
    initialise the value and output projections on their own.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(
                f"model.d_model ({d_model}) must be divisible by model.num_heads ({num_heads})"
            )
        self.num_heads = num_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        key_valid: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """Attend from ``query [B, Tq, D]`` to ``memory [B, Tk, D]``.

        Args:
            query: Queries.
            memory: Keys and values (``query`` itself for self-attention).
            key_valid: ``[B, Tk]`` mask of keys that may be attended to.
            causal: Forbid attending to later positions (decoder self-attention).

        Returns:
            ``[B, Tq, D]``.
        """
        q = self._split(self.q_proj(query))
        k = self._split(self.k_proj(memory))
        v = self._split(self.v_proj(memory))
        mask = None if key_valid is None else key_valid[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and mask is None,
        )
        b, h, t, dh = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, h * dh))


class FeedForward(nn.Module):
    """Position-wise ``Linear -> activation -> dropout -> Linear``."""

    def __init__(self, d_model: int, ff_dim: int, dropout: float, activation: nn.Module) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, ff_dim)
        self.act = activation
        self.dropout = nn.Dropout(dropout)
        self.w2 = nn.Linear(ff_dim, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.dropout(self.act(self.w1(x))))


class Residual(nn.Module):
    """A residual sub-layer in one of two normalisation layouts.

    * pre-LN (default): ``x + scale * dropout(body(LN(x)))``; stable without warm-up tricks.
    * DeepNorm (Wang et al., 2022, "DeepNet: Scaling Transformers to 1,000 Layers"):
      ``LN(alpha * x + scale * dropout(body(x)))``, i.e. post-LN with the skip branch
      up-weighted by ``alpha`` so that each update to the residual stream stays bounded.

    ``scale`` is 0.5 for the Conformer's macaron half-step feed-forward modules.
    """

    def __init__(
        self,
        d_model: int,
        body: nn.Module,
        dropout: float,
        scale: float = 1.0,
        deepnorm_alpha: float | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        self.alpha = deepnorm_alpha

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if self.alpha is None:
            return x + self.scale * self.dropout(self.body(self.norm(x), *args, **kwargs))
        return self.norm(self.alpha * x + self.scale * self.dropout(self.body(x, *args, **kwargs)))


class SelfAttention(nn.Module):
    """Self-attention body for :class:`Residual` (takes the key mask as its extra argument)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(d_model, num_heads, dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, key_valid=valid)
