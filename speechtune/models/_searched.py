"""Encoder blocks chosen per layer from a set of candidate operations (architecture search).

One op per block, each a pre-norm residual ``x + dropout(op(LN(x)))`` that keeps the shape
``[B, T, d_model]``. The discrete encoder (``model.encoder: searched`` with
``model.block_ops: "mhsa,conv15,ff,conv7"``) stacks them; the supernet of
:mod:`speechtune.nas` mixes all of them in every block and reuses the same op modules, so a
derived architecture is exactly what the search scored.

The ops:

* ``conv3 / conv7 / conv15 / conv31``: the Conformer convolution module (pointwise + GLU,
  depthwise conv of that kernel, LayerNorm, Swish, pointwise);
* ``dconv7``: the same with a depthwise kernel of 7 dilated by 2 (a 13-frame receptive field
  for the parameters of a 7-tap kernel);
* ``mhsa``: multi-head self-attention (positions: sinusoids added once below the first block);
* ``ff`` / ``ff_half``: a Swish feed-forward of ``model.ff_dim`` / ``ff_dim // 2``;
* ``skip``: the normalised input itself (parameter-free apart from the block's LayerNorm);
* ``zero``: nothing; the block passes its input through (a shallower encoder).

``skip`` and ``zero`` are the parameter-free choices DARTS is known to collapse onto
(Zela et al., 2020; Chen & Hsieh, 2020); see :mod:`speechtune.nas` for the guard.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from speechtune.models._layers import FeedForward, PositionalEncoding, SelfAttention, valid_mask


class DepthwiseConvOp(nn.Module):
    """Conformer-style convolution module with an optional dilation of the depthwise kernel.

    Padded frames are zeroed before the depthwise convolution (as in the Conformer), so that an
    utterance's valid frames see the same neighbours however it was batched.
    """

    def __init__(self, d_model: int, kernel: int, dilation: int = 1) -> None:
        super().__init__()
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.glu = nn.GLU(dim=-1)
        span = dilation * (kernel - 1)
        self.pad = (span // 2, span - span // 2)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, groups=d_model, dilation=dilation)
        self.norm = nn.LayerNorm(d_model)
        self.act = nn.SiLU()
        self.pointwise_out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        y = self.glu(self.pointwise_in(x)).masked_fill(~valid[..., None], 0.0)
        y = self.depthwise(F.pad(y.transpose(1, 2), self.pad)).transpose(1, 2)
        return self.pointwise_out(self.act(self.norm(y)))


class _FeedForwardOp(nn.Module):
    def __init__(self, d_model: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.ff = FeedForward(d_model, ff_dim, dropout, nn.SiLU())

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class _SkipOp(nn.Module):
    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return x


class ZeroOp(nn.Module):
    """The ``zero`` op: contributes nothing (its block passes the residual stream through)."""

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


#: An op builder: ``(d_model, ff_dim, num_heads, dropout) -> module(x, valid) -> [B, T, D]``.
OpBuilder = Callable[[int, int, int, float], nn.Module]

#: The one mapping from op names (``model.block_ops``) to their builders.
SEARCH_OPS: dict[str, OpBuilder] = {
    "conv3": lambda d, ff, h, p: DepthwiseConvOp(d, 3),
    "conv7": lambda d, ff, h, p: DepthwiseConvOp(d, 7),
    "conv15": lambda d, ff, h, p: DepthwiseConvOp(d, 15),
    "conv31": lambda d, ff, h, p: DepthwiseConvOp(d, 31),
    "dconv7": lambda d, ff, h, p: DepthwiseConvOp(d, 7, dilation=2),
    "mhsa": lambda d, ff, h, p: SelfAttention(d, h, p),
    "ff": lambda d, ff, h, p: _FeedForwardOp(d, ff, p),
    "ff_half": lambda d, ff, h, p: _FeedForwardOp(d, max(1, ff // 2), p),
    "skip": lambda d, ff, h, p: _SkipOp(),
    "zero": lambda d, ff, h, p: ZeroOp(),
}

#: Ops without weights of their own: the choices a DARTS search tends to collapse onto.
PARAMETER_FREE_OPS = ("skip", "zero")


def parse_block_ops(text: str, key: str = "model.block_ops") -> list[str]:
    """The op names of a comma-separated ``block_ops`` string, one per block.

    Raises:
        ValueError: an empty list or an unknown op; one line naming ``key`` and the allowed ops.
    """
    ops = [part.strip() for part in str(text).split(",")]
    if not text or not all(ops):
        raise ValueError(
            f"{key}={text!r} must list one op per block, comma-separated, e.g. "
            f"'mhsa,conv15,ff'; allowed ops: {', '.join(SEARCH_OPS)}"
        )
    bad = [op for op in ops if op not in SEARCH_OPS]
    if bad:
        raise ValueError(
            f"{key}={text!r}: unknown op {bad[0]!r}; allowed ops: {', '.join(SEARCH_OPS)}"
        )
    return ops


class SearchedBlock(nn.Module):
    """One pre-norm residual block ``x + dropout(op(LN(x)))`` around a named op."""

    def __init__(self, op: str, d_model: int, ff_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.op_name = op
        self.norm = nn.LayerNorm(d_model)
        self.op = SEARCH_OPS[op](d_model, ff_dim, num_heads, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.op_name == "zero":  # nothing to compute: the block is absent
            return x
        return x + self.dropout(self.op(self.norm(x), valid))


class SearchedEncoder(nn.Module):
    """A stack of blocks over subsampled features, then a final LayerNorm.

    Each block is called as ``block(x, valid)`` and keeps the shape; :meth:`from_ops` builds
    the discrete encoder of ``model.block_ops``, and the NAS supernet passes mixed blocks.

    Args:
        blocks: The blocks, bottom first.
        d_model: Width.
        dropout: Dropout on the positional encoding.
    """

    def __init__(self, blocks: Sequence[nn.Module], d_model: int, dropout: float) -> None:
        super().__init__()
        self.pos = PositionalEncoding(d_model, dropout)
        self.layers = nn.ModuleList(blocks)
        self.final_norm = nn.LayerNorm(d_model)

    @classmethod
    def from_ops(
        cls, ops: Sequence[str], d_model: int, ff_dim: int, num_heads: int, dropout: float
    ) -> SearchedEncoder:
        """The discrete encoder: one :class:`SearchedBlock` per op name.

        Args:
            ops: One op name per block (see :data:`SEARCH_OPS`).
            d_model: Width.
            ff_dim: Feed-forward width of ``ff`` (``ff_half`` uses half of it).
            num_heads: Attention heads of ``mhsa`` (must divide ``d_model``).
            dropout: Dropout on positions, attention weights and residual branches.
        """
        if "mhsa" in ops and d_model % num_heads:
            raise ValueError(
                f"model.d_model ({d_model}) must be divisible by model.num_heads ({num_heads}) "
                "for the mhsa op"
            )
        blocks = [SearchedBlock(op, d_model, ff_dim, num_heads, dropout) for op in ops]
        return cls(blocks, d_model, dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``x [B, T, d_model]``; returns ``(out [B, T, d_model], lengths)``."""
        valid = valid_mask(lengths, x.size(1))
        x = self.pos(x)
        for layer in self.layers:
            x = layer(x, valid)
        return self.final_norm(x).masked_fill(~valid[..., None], 0.0), lengths
