"""Building blocks shared by the encoders and the decoder.

Masks follow one convention throughout the package: a boolean ``valid`` tensor of shape
``[B, T]`` that is ``True`` on real frames and ``False`` on padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


def sinusoidal_encoding(
    length: int, d_model: int, device: torch.device, start: int = 0
) -> torch.Tensor:
    """The fixed sinusoidal positional encoding of Vaswani et al. (2017), ``[length, d_model]``.

    Rows are positions ``start .. start + length - 1`` (a streaming chunk starts past 0).
    """
    pos = torch.arange(start, start + length, device=device, dtype=torch.float32)[:, None]
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

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """``x [B, T, D]`` whose first frame is at position ``offset`` (a streaming chunk's)."""
        pe = sinusoidal_encoding(x.size(1), self.d_model, x.device, offset)
        return self.dropout(x * self.scale + pe.to(x.dtype))


def relative_sinusoidal_encoding(length: int, d_model: int, device: torch.device) -> torch.Tensor:
    """Sinusoids of the relative offsets ``length-1, ..., 1, 0, -1, ..., -(length-1)``.

    Row ``k`` encodes the offset ``r = length - 1 - k`` (query position minus key position)
    with the frequencies of :func:`sinusoidal_encoding`: ``sin(r w)`` and ``cos(r w)``. The
    row of an offset depends on the offset alone, not on ``length``, which is what makes
    relative attention independent of how much padding follows an utterance.

    Returns:
        ``[2 * length - 1, d_model]``.
    """
    offsets = (length - 1) - torch.arange(2 * length - 1, device=device, dtype=torch.float32)
    idx = torch.arange(0, d_model, 2, device=device, dtype=torch.float32)
    angles = offsets[:, None] * torch.exp(-math.log(10000.0) * idx / d_model)[None, :]
    # Interleave sin/cos like sinusoidal_encoding (stack rather than strided writes into a
    # zeros tensor keeps the op traceable with a dynamic length); trim for odd d_model.
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(1)[:, :d_model]


class RelPositionalEncoding(nn.Module):
    """Scale by ``sqrt(d_model)`` and return the relative offset embeddings alongside.

    Unlike :class:`PositionalEncoding` nothing is added to the frames: positions enter every
    :class:`RelPositionSelfAttention` instead. Dropout applies to both outputs (as in
    ESPnet's ``RelPositionalEncoding``).
    """

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.d_model = d_model
        self.scale = math.sqrt(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, T, D]`` -> ``(scaled x [B, T, D], pos_emb [2T-1, D])``."""
        pe = relative_sinusoidal_encoding(x.size(1), self.d_model, x.device)
        return self.dropout(x * self.scale), self.dropout(pe.to(x.dtype))


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

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` -> ``[B, H, T, D/H]``."""
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
            key_valid: ``[B, Tk]`` mask of keys that may be attended to, or ``[B, Tq, Tk]``
                per query (chunked attention of a streaming encoder).
            causal: Forbid attending to later positions (decoder self-attention).

        Returns:
            ``[B, Tq, D]``.
        """
        q, k, v = self.project(query, memory)
        mask = None if key_valid is None else _heads_mask(key_valid)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and mask is None,
        )
        return self.merge(out)

    def project(
        self, query: torch.Tensor, memory: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head queries, keys and values, each ``[B, H, T, D/H]``."""
        q = self.split_heads(self.q_proj(query))
        k = self.split_heads(self.k_proj(memory))
        v = self.split_heads(self.v_proj(memory))
        return q, k, v

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        """Concatenate the heads of ``out [B, H, T, D/H]`` and apply the output projection."""
        b, h, t, dh = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, h * dh))


def _heads_mask(valid: torch.Tensor) -> torch.Tensor:
    """A ``[B, Tk]`` or ``[B, Tq, Tk]`` key mask, broadcastable over heads (and queries)."""
    return valid[:, None, None, :] if valid.dim() == 2 else valid[:, None]


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
        return self.around(x, lambda y: self.body(y, *args, **kwargs))

    def around(
        self, x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """This sub-layer with ``branch`` in place of ``body(y)``.

        A streaming step calls the body's chunk method (which also updates a cache) inside the
        same normalisation and residual sum as :meth:`forward`.
        """
        if self.alpha is None:
            return x + self.scale * self.dropout(branch(self.norm(x)))
        return self.norm(self.alpha * x + self.scale * self.dropout(branch(x)))


class SelfAttention(nn.Module):
    """Self-attention body for :class:`Residual` (takes the key mask as its extra argument)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(d_model, num_heads, dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``valid``: ``[B, T]`` key mask, or ``[B, T, T]`` per query (chunked attention)."""
        return self.attn(x, x, key_valid=valid)

    def forward_chunk(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attend from a chunk ``x [B, Tc, D]`` to the cached left context and the chunk.

        Every cached frame and every frame of the chunk is visible to every query of the chunk
        (the chunk rule); the caller keeps only the left context in the cache.

        Returns:
            ``(out [B, Tc, D], keys, values)`` with the chunk's keys and values appended.
        """
        q, k, v = self.attn.project(x, x)
        k, v = torch.cat([keys, k], dim=2), torch.cat([values, v], dim=2)
        return self.attn.merge(F.scaled_dot_product_attention(q, k, v)), k, v


def rel_shift(scores: torch.Tensor) -> torch.Tensor:
    """Turn query-by-offset scores into query-by-key scores (the "relative shift").

    ``scores [..., T, 2T-1]`` has one column per offset, column ``k`` for offset
    ``T-1-k`` (the row order of :func:`relative_sinusoidal_encoding`). The result
    ``[..., T, T]`` holds, at ``[i, j]``, the score of offset ``i - j``: column
    ``T-1-i+j`` of row ``i``. Rather than gathering, prepend one zero column, read the
    rows back with a stride of ``2T-1`` instead of ``2T`` starting ``T`` elements in: each
    row then starts one column further left than the row above, which is exactly the
    diagonal shift needed (Dai et al., 2019, appendix B).
    """
    t, n = scores.shape[-2], scores.shape[-1]
    flat = F.pad(scores, (1, 0)).flatten(-2)  # [..., T * 2T]; row i starts at i*2T
    return flat[..., t:].unflatten(-1, (t, n))[..., :t]


class RelPositionSelfAttention(nn.Module):
    """Relative positional self-attention body for :class:`Residual` (Transformer-XL style).

    The logit of query ``i`` and key ``j`` (per head, ``d`` = head width) is::

        ((q_i + u) . k_j  +  (q_i + v) . W_p pe(i - j)) / sqrt(d)

    with learned per-head biases ``u`` (``pos_bias_u``) and ``v`` (``pos_bias_v``), a linear
    map ``W_p`` of the sinusoidal offset embedding ``pe`` and :func:`rel_shift` to line the
    offsets up with the keys. Padded keys are masked out as in :class:`SelfAttention`.

    The query/key/value/output projections live in a :class:`MultiHeadAttention` so that
    DeepNorm initialises them exactly as it does for absolute attention; ``W_p`` plays the
    role of a key projection and keeps its default initialisation.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.pos_proj = nn.Linear(d_model, d_model, bias=False)
        d_head = d_model // num_heads
        self.pos_bias_u = nn.Parameter(torch.empty(num_heads, d_head))
        self.pos_bias_v = nn.Parameter(torch.empty(num_heads, d_head))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def position_scores(self, q: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        """Unscaled positional logits ``(q_i + v) . W_p pe(i - j)``, ``[B, H, T, T]``.

        Args:
            q: ``[B, H, T, D/H]`` per-head queries.
            pos_emb: ``[2T-1, D]`` offset embeddings from :class:`RelPositionalEncoding`.
        """
        p = self.attn.split_heads(self.pos_proj(pos_emb)[None])  # [1, H, 2T-1, D/H]
        q_v = q + self.pos_bias_v.to(q.dtype)[:, None, :]
        return rel_shift(torch.matmul(q_v, p.transpose(-2, -1)))

    def forward(self, x: torch.Tensor, valid: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        """Attend over ``x [B, T, D]`` with key mask ``valid`` (``[B, T]``, or ``[B, T, T]`` per
        query for chunked attention); returns ``[B, T, D]``."""
        q, k, v = self.attn.project(x, x)
        scale = q.size(-1) ** -0.5
        # The positional term enters scaled_dot_product_attention as an additive float mask
        # (which it adds after scaling q.k), with padded keys at -inf.
        bias = self.position_scores(q, pos_emb) * scale
        bias = bias.masked_fill(~_heads_mask(valid), float("-inf"))
        out = F.scaled_dot_product_attention(
            q + self.pos_bias_u.to(q.dtype)[:, None, :],
            k,
            v,
            attn_mask=bias,
            dropout_p=self.attn.dropout if self.training else 0.0,
        )
        return self.attn.merge(out)

    def forward_chunk(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`SelfAttention.forward_chunk` with relative positions.

        The chunk's ``Tc`` queries are the last ``Tc`` of the ``Tk`` keys (cache + chunk): query
        ``a`` and key ``b`` are ``Tk - Tc + a - b`` apart, which is column ``Tc - 1 - a + b`` of
        the offsets ``Tk - 1 .. -(Tk - 1)`` of :func:`relative_sinusoidal_encoding`.
        """
        q, k, v = self.attn.project(x, x)
        k, v = torch.cat([keys, k], dim=2), torch.cat([values, v], dim=2)
        tq, tk = q.size(2), k.size(2)
        pe = relative_sinusoidal_encoding(tk, self.pos_bias_u.numel(), x.device).to(x.dtype)
        p = self.attn.split_heads(self.pos_proj(pe)[None])  # [1, H, 2Tk-1, D/H]
        q_v = q + self.pos_bias_v.to(q.dtype)[:, None, :]
        by_offset = torch.matmul(q_v, p.transpose(-2, -1))  # [B, H, Tq, 2Tk-1]
        steps = torch.arange(tk, device=x.device)
        cols = (tq - 1 - torch.arange(tq, device=x.device))[:, None] + steps[None, :]
        bias = by_offset.gather(-1, cols.expand(*by_offset.shape[:2], tq, tk))
        out = F.scaled_dot_product_attention(
            q + self.pos_bias_u.to(q.dtype)[:, None, :], k, v, attn_mask=bias * q.size(-1) ** -0.5
        )
        return self.attn.merge(out), k, v
