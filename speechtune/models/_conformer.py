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
  batches train stably;
* streaming (``model.chunk_ms > 0``, :mod:`speechtune.models._streaming`): chunked
  self-attention masks and causal depthwise convolutions, and ``forward_chunk`` methods that
  encode one chunk at a time from cached keys, values and convolution inputs. LayerNorm (not
  BatchNorm) matters here too: a chunk's normalisation must not depend on later frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

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
from speechtune.models._streaming import (
    EncoderCache,
    LayerCache,
    StreamingSpec,
    attention_mask,
    dynamic_chunk,
    keep_left,
)

POS_ENCODINGS = ("abs", "rel")


class ConvolutionModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, LayerNorm, Swish, pointwise conv.

    Padded frames are zeroed right before the depthwise convolution, whose ``'same'`` padding
    (left ``(k-1)//2``, right the rest) is zeros too: an utterance's valid frames see the
    same neighbours whether or not it was batched with a longer one. A ``causal`` module pads
    ``k-1`` zeros on the left only, so that frame ``t`` sees no frame after ``t``.
    """

    def __init__(self, d_model: int, kernel: int, causal: bool = False) -> None:
        super().__init__()
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.glu = nn.GLU(dim=-1)
        self.causal = causal
        # 'same' zero padding done by hand (extra frame on the right for even kernels) to
        # avoid the copy-and-warn path of Conv1d(padding="same") with even kernels.
        left = kernel - 1 if causal else (kernel - 1) // 2
        self.pad = (left, kernel - 1 - left)
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

    def forward_chunk(
        self, x: torch.Tensor, cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A causal module on a chunk ``x [B, Tc, D]`` after the inputs ``cache [B, k-1, D]``.

        Returns:
            ``(out [B, Tc, D], cache)``: the cache now holds the last ``k-1`` inputs.
        """
        if not self.causal:
            raise ValueError(
                "chunk-by-chunk convolution needs a causal module (model.chunk_ms > 0)"
            )
        y = torch.cat([cache, self.glu(self.pointwise_in(x))], dim=1)
        out = self.depthwise(y.transpose(1, 2)).transpose(1, 2)
        return self.pointwise_out(self.act(self.norm(out))), y[:, y.size(1) - cache.size(1) :]


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
        causal: bool = False,
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
            d_model, ConvolutionModule(d_model, kernel, causal), dropout, deepnorm_alpha=alpha
        )
        self.ff2 = Residual(d_model, ff(), dropout, scale=0.5, deepnorm_alpha=alpha)
        self.final_norm = nn.LayerNorm(d_model)

    def forward(
        self,
        x: torch.Tensor,
        valid: torch.Tensor,
        pos_emb: torch.Tensor | None = None,
        attn_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``pos_emb [2T-1, D]``: offset embeddings, given exactly when the block is relative;
        ``attn_valid [B, T, T]``: a chunked attention mask (default: ``valid`` for every query)."""
        keys = valid if attn_valid is None else attn_valid
        x = self.ff1(x)
        x = self.attn(x, keys) if pos_emb is None else self.attn(x, keys, pos_emb)
        x = self.conv(x, valid)
        return self.final_norm(self.ff2(x))

    def forward_chunk(
        self, x: torch.Tensor, cache: LayerCache, left_frames: int | None
    ) -> tuple[torch.Tensor, LayerCache]:
        """Encode one chunk ``x [B, Tc, D]`` (all frames real) after the frames in ``cache``.

        Args:
            x: The chunk, after the block below (or the positional encoding).
            cache: Keys, values and convolution inputs of the frames before the chunk.
            left_frames: Frames of left context the next chunk sees (``None``: all).

        Returns:
            ``(out [B, Tc, D], cache)`` for the next chunk.
        """
        kv: list[torch.Tensor] = []
        conv: list[torch.Tensor] = []
        attention = cast(SelfAttention | RelPositionSelfAttention, self.attn.body)
        convolution = cast(ConvolutionModule, self.conv.body)

        def attend(y: torch.Tensor) -> torch.Tensor:
            out, k, v = attention.forward_chunk(y, cache.keys, cache.values)
            kv.extend((k, v))
            return out

        def convolve(y: torch.Tensor) -> torch.Tensor:
            out, c = convolution.forward_chunk(y, cache.conv)
            conv.append(c)
            return out

        x = self.attn.around(self.ff1(x), attend)
        x = self.conv.around(x, convolve)
        x = self.final_norm(self.ff2(x))
        return x, LayerCache(keep_left(kv[0], left_frames), keep_left(kv[1], left_frames), conv[0])


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
        streaming: Chunked attention and causal convolutions when its ``chunk`` is > 0.
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
        streaming: StreamingSpec | None = None,
    ) -> None:
        super().__init__()
        if pos_enc not in POS_ENCODINGS:
            raise ValueError(
                f"model.pos_enc={pos_enc!r} is not known; expected one of {list(POS_ENCODINGS)}"
            )
        relative = pos_enc == "rel"
        self.streaming = streaming or StreamingSpec()
        self.d_model = d_model
        self.num_heads = num_heads
        self.conv_kernel = conv_kernel
        self.pos: PositionalEncoding | RelPositionalEncoding = (
            RelPositionalEncoding(d_model, dropout)
            if relative
            else PositionalEncoding(d_model, dropout)
        )
        self.layers = nn.ModuleList(
            ConformerBlock(
                d_model,
                num_heads,
                ff_dim,
                conv_kernel,
                dropout,
                deepnorm_alpha,
                relative,
                causal=self.streaming.enabled,
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
        attn_valid = self.attention_mask(valid)
        pos_emb: torch.Tensor | None = None
        if isinstance(self.pos, RelPositionalEncoding):
            x, pos_emb = self.pos(x)
        else:
            x = self.pos(x)
        tapped: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers, start=1):
            x = layer(x, valid, pos_emb, attn_valid)
            if i in taps:
                tapped.append(x.masked_fill(~valid[..., None], 0.0))
        return x.masked_fill(~valid[..., None], 0.0), lengths, tapped

    def attention_mask(self, valid: torch.Tensor) -> torch.Tensor | None:
        """The chunked ``[B, T, T]`` attention mask of a streaming encoder (``None``: full
        context); in training with ``dynamic`` chunks, for a random chunk size."""
        spec = self.streaming
        if not spec.enabled:
            return None
        chunk, left = spec.chunk, spec.left_chunks
        if self.training and spec.dynamic:
            chunk, left = dynamic_chunk(spec, valid.size(1))
        return attention_mask(valid, chunk, left)

    def init_cache(
        self, batch: int, device: torch.device | str, dtype: torch.dtype = torch.float32
    ) -> EncoderCache:
        """The empty cache a stream starts from (no left context, zero convolution inputs)."""
        if not self.streaming.enabled:
            raise ValueError(
                "this encoder is full-context (model.chunk_ms = 0): its convolutions look "
                "ahead, so it cannot encode chunk by chunk; train with model.chunk_ms > 0"
            )
        d_head = self.d_model // self.num_heads
        empty = torch.zeros(batch, self.num_heads, 0, d_head, device=device, dtype=dtype)
        conv = torch.zeros(batch, self.conv_kernel - 1, self.d_model, device=device, dtype=dtype)
        layer = LayerCache(empty, empty, conv)
        return EncoderCache(0, tuple(layer for _ in self.layers))

    def forward_chunk(
        self, x: torch.Tensor, cache: EncoderCache
    ) -> tuple[torch.Tensor, EncoderCache]:
        """Encode the next chunk ``x [B, Tc, D]`` of subsampled frames (eval mode, no padding).

        Feeding a sequence's chunks of ``streaming.chunk`` frames in order (the last may be
        shorter) gives, chunk after chunk, the output :meth:`forward` computes for the whole
        sequence with the chunked mask.

        Returns:
            ``(out [B, Tc, D], cache)`` for the next chunk.
        """
        if isinstance(self.pos, RelPositionalEncoding):
            x, _ = self.pos(x)  # positions enter each block's attention instead
        else:
            x = self.pos(x, cache.offset)
        layers: list[LayerCache] = []
        for layer, layer_cache in zip(self.layers, cache.layers):
            block = cast(ConformerBlock, layer)
            x, layer_cache = block.forward_chunk(x, layer_cache, self.streaming.left_frames)
            layers.append(layer_cache)
        return x, EncoderCache(cache.offset + x.size(1), tuple(layers))
