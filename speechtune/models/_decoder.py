"""Transformer attention decoder and its label-smoothed teacher-forcing loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speechtune.models._layers import (
    FeedForward,
    MultiHeadAttention,
    PositionalEncoding,
    Residual,
)

IGNORE_ID = -1


class _CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(d_model, num_heads, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Targets are right-padded, so a causal mask alone keeps real positions off padding.
        return self.attn(x, x, causal=True)


class _CrossAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(d_model, num_heads, dropout)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor
    ) -> torch.Tensor:
        return self.attn(x, memory, key_valid=memory_valid)


class DecoderLayer(nn.Module):
    """Pre-LN causal self-attention, cross-attention and ReLU feed-forward."""

    def __init__(self, d_model: int, num_heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self_attn = _CausalSelfAttention(d_model, num_heads, dropout)
        self.self_attn = Residual(d_model, self_attn, dropout)
        self.cross_attn = Residual(d_model, _CrossAttention(d_model, num_heads, dropout), dropout)
        self.ff = Residual(d_model, FeedForward(d_model, ff_dim, dropout, nn.ReLU()), dropout)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor
    ) -> torch.Tensor:
        return self.ff(self.cross_attn(self.self_attn(x), memory, memory_valid))


class TransformerDecoder(nn.Module):
    """Autoregressive Transformer decoder over the encoder output.

    Args:
        vocab_size: Output classes (``vocab_size - 1`` is sos/eos).
        d_model: Width (the encoder's).
        num_layers: Decoder layers.
        num_heads: Attention heads.
        ff_dim: Feed-forward width.
        dropout: Dropout.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        ff_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = PositionalEncoding(d_model, dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, num_heads, ff_dim, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, vocab_size)

    def forward(
        self, tokens: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[B, L, V]`` for every position of ``tokens [B, L]`` (causal).

        Args:
            tokens: Input token ids (starting with sos).
            memory: ``[B, T, d_model]`` encoder output.
            memory_valid: ``[B, T]`` mask of valid encoder frames.
        """
        x = self.pos(self.embed(tokens))
        for layer in self.layers:
            x = layer(x, memory, memory_valid)
        return self.out(self.norm(x))


def teacher_forcing_pairs(
    targets: torch.Tensor, target_lens: torch.Tensor, sos_eos: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs ``[sos, y...]`` and outputs ``[y..., eos]`` (``IGNORE_ID`` beyond).

    Args:
        targets: ``[B, U]`` token ids padded with -1.
        target_lens: ``[B]`` valid tokens.
        sos_eos: The sos/eos id.

    Returns:
        ``(ys_in [B, U+1], ys_out [B, U+1])``; ``ys_in`` is padded with eos (never attended
        to by real positions).
    """
    b, u = targets.shape
    idx = torch.arange(u + 1, device=targets.device)[None, :]
    lens = target_lens[:, None].to(targets.device)
    body = torch.cat([targets, targets.new_full((b, 1), IGNORE_ID)], dim=1)
    ys_out = torch.where(idx < lens, body, torch.where(idx == lens, sos_eos, IGNORE_ID))
    ys_in = torch.cat(
        [targets.new_full((b, 1), sos_eos), torch.where(idx[:, :u] < lens, targets, sos_eos)],
        dim=1,
    )
    return ys_in.long(), ys_out.long()


def attention_loss(
    decoder: TransformerDecoder,
    memory: torch.Tensor,
    memory_valid: torch.Tensor,
    targets: torch.Tensor,
    target_lens: torch.Tensor,
    sos_eos: int,
    label_smoothing: float = 0.1,
) -> torch.Tensor:
    """Label-smoothed cross-entropy of the decoder under teacher forcing.

    Summed over tokens (eos included, padding ignored) and divided by the batch size, the
    same normalisation as the CTC loss so that ``ctc_weight`` mixes like with like.
    """
    ys_in, ys_out = teacher_forcing_pairs(targets, target_lens, sos_eos)
    logits = decoder(ys_in, memory, memory_valid).float()
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        ys_out.reshape(-1),
        ignore_index=IGNORE_ID,
        label_smoothing=label_smoothing,
        reduction="sum",
    )
    return loss / memory.size(0)
