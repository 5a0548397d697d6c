"""A FastSpeech-style acoustic model (Ren et al., 2019) with a learned aligner.

Tokens and a speaker embedding go through feed-forward transformer (FFT) blocks; a duration
predictor learns each token's log-duration; the length regulator repeats each token's encoding
for its duration; FFT decoder blocks and a linear layer give the (normalised) log-mel frames.
In training the durations are the aligner's (:mod:`speechtune.tts._align`); at synthesis they
are the predictor's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechtune.tts._align import batch_durations, forward_sum_loss
from speechtune.tts._config import AcousticConfig, AlignerConfig


def sinusoids(length: int, dim: int, device: torch.device) -> Tensor:
    """``[length, dim]`` sinusoidal position encodings (Vaswani et al., 2017)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    out = torch.zeros(length, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return out


def padding_mask(lengths: Tensor, size: int) -> Tensor:
    """``[B, size]``: True past each length (padding)."""
    return torch.arange(size, device=lengths.device)[None, :] >= lengths[:, None]


class FFTBlock(nn.Module):
    """Self-attention and a two-layer 1-D convolution, each with a residual and post-norm."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, kernel: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.conv1 = nn.Conv1d(d_model, ff_dim, kernel, padding=kernel // 2)
        # FastSpeech 2's FFT uses kernel sizes (9, 1): context in the first conv only.
        self.conv2 = nn.Conv1d(ff_dim, d_model, 1)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        a, _ = self.attn(x, x, x, key_padding_mask=pad, need_weights=False)
        x = self.norm1(x + self.drop(a)).masked_fill(pad[..., None], 0.0)
        h = self.conv2(F.relu(self.conv1(x.transpose(1, 2)))).transpose(1, 2)
        return self.norm2(x + self.drop(h)).masked_fill(pad[..., None], 0.0)


class DurationPredictor(nn.Module):
    """Two convolutions with ReLU, layer norm and dropout, then one log-duration per token."""

    def __init__(self, d_model: int, channels: int, kernel: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv1d(d_model, channels, kernel, padding=kernel // 2)
        self.norm1 = nn.LayerNorm(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel, padding=kernel // 2)
        self.norm2 = nn.LayerNorm(channels)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(channels, 1)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        h = self.drop(self.norm1(F.relu(self.conv1(x.transpose(1, 2)).transpose(1, 2))))
        h = self.drop(self.norm2(F.relu(self.conv2(h.transpose(1, 2)).transpose(1, 2))))
        return self.out(h).squeeze(-1).masked_fill(pad, 0.0)


class Aligner(nn.Module):
    """Soft alignment of mel frames to tokens: distances between two small conv encoders."""

    def __init__(self, d_model: int, n_mels: int, channels: int):
        super().__init__()
        self.keys = nn.Sequential(
            nn.Conv1d(d_model, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(2 * channels, channels, 1),
        )
        self.queries = nn.Sequential(
            nn.Conv1d(n_mels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(2 * channels, channels, 1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 1),
        )

    def forward(
        self, tokens: Tensor, mels: Tensor, log_prior: Tensor, token_pad: Tensor
    ) -> Tensor:
        """``[B, T, N]`` log-probabilities of each frame on each token (prior included)."""
        k = self.keys(tokens.transpose(1, 2)).transpose(1, 2)  # [B, N, C]
        q = self.queries(mels.transpose(1, 2)).transpose(1, 2)  # [B, T, C]
        # Scaled squared distances; 1/C keeps the first logits small whatever the width.
        dist = torch.cdist(q, k).pow(2) / k.shape[-1]
        scores = (-dist).masked_fill(token_pad[:, None, :], -1e4).log_softmax(-1)
        return (scores + log_prior).masked_fill(token_pad[:, None, :], -1e4).log_softmax(-1)


def length_regulate(
    x: Tensor, durations: Tensor, max_frames: int | None = None
) -> tuple[Tensor, Tensor]:
    """Repeat each token's encoding ``durations`` times (FastSpeech's length regulator).

    Returns:
        ``(frames [B, T, D], frame_lengths [B])``.
    """
    lengths = durations.sum(1)
    total = int(lengths.max()) if max_frames is None else max_frames
    out = x.new_zeros(x.shape[0], max(total, 1), x.shape[2])
    for b in range(x.shape[0]):
        expanded = torch.repeat_interleave(x[b], durations[b], dim=0)[:total]
        out[b, : expanded.shape[0]] = expanded
    return out, lengths.clamp(max=max(total, 1))


@dataclass
class AcousticLosses:
    total: Tensor
    mel: Tensor
    duration: Tensor
    align: Tensor


class FastSpeech(nn.Module):
    """Tokens + speaker -> normalised log-mel frames."""

    def __init__(
        self, cfg: AcousticConfig, aligner: AlignerConfig, vocab: int, speakers: int, n_mels: int
    ):
        super().__init__()
        d = cfg.d_model
        self.embed = nn.Embedding(vocab, d, padding_idx=0)
        self.speaker = nn.Embedding(max(speakers, 1), d)
        self.encoder = nn.ModuleList(
            FFTBlock(d, cfg.num_heads, cfg.ff_dim, cfg.ff_kernel, cfg.dropout)
            for _ in range(cfg.encoder_layers)
        )
        self.decoder = nn.ModuleList(
            FFTBlock(d, cfg.num_heads, cfg.ff_dim, cfg.ff_kernel, cfg.dropout)
            for _ in range(cfg.decoder_layers)
        )
        self.duration = DurationPredictor(
            d, cfg.duration_channels, cfg.duration_kernel, cfg.dropout
        )
        self.aligner = Aligner(d, n_mels, aligner.channels)
        self.to_mel = nn.Linear(d, n_mels)
        self.d_model = d

    def encode(
        self, tokens: Tensor, token_lengths: Tensor, speakers: Tensor
    ) -> tuple[Tensor, Tensor]:
        pad = padding_mask(token_lengths, tokens.shape[1])
        x = self.embed(tokens) * math.sqrt(self.d_model)
        x = x + sinusoids(tokens.shape[1], self.d_model, tokens.device)
        for block in self.encoder:
            x = block(x, pad)
        return (x + self.speaker(speakers)[:, None, :]).masked_fill(pad[..., None], 0.0), pad

    def decode(self, frames: Tensor, frame_lengths: Tensor) -> Tensor:
        pad = padding_mask(frame_lengths, frames.shape[1])
        x = frames + sinusoids(frames.shape[1], self.d_model, frames.device)
        for block in self.decoder:
            x = block(x, pad)
        return self.to_mel(x).masked_fill(pad[..., None], 0.0)

    def losses(
        self,
        tokens: Tensor,
        token_lengths: Tensor,
        speakers: Tensor,
        mels: Tensor,
        frame_lengths: Tensor,
        log_prior: Tensor,
        *,
        align_weight: float = 1.0,
        duration_weight: float = 1.0,
    ) -> tuple[AcousticLosses, Tensor]:
        """The training losses of a batch, and the aligner's durations ``[B, N]``.

        Mel: L1 on normalised log-mel frames; duration: MSE on ``log(1 + d)``; align: the
        forward-sum loss of the soft alignment.
        """
        token_pad = padding_mask(token_lengths, tokens.shape[1])
        log_attn = self.aligner(self.embed(tokens), mels, log_prior, token_pad)
        durations = batch_durations(log_attn, token_lengths, frame_lengths)
        align = forward_sum_loss(log_attn, token_lengths, frame_lengths)
        enc, pad = self.encode(tokens, token_lengths, speakers)
        log_dur = self.duration(enc, pad)
        target = torch.log1p(durations.float())
        valid = (~pad).float()
        dur_loss = ((log_dur - target) ** 2 * valid).sum() / valid.sum()
        frames, _ = length_regulate(enc, durations, mels.shape[1])
        pred = self.decode(frames, frame_lengths)
        fmask = (~padding_mask(frame_lengths, mels.shape[1])).float()[..., None]
        mel_loss = ((pred - mels).abs() * fmask).sum() / (fmask.sum() * mels.shape[2])
        total = mel_loss + duration_weight * dur_loss + align_weight * align
        return AcousticLosses(total, mel_loss, dur_loss, align), durations

    @torch.no_grad()
    def infer(
        self, tokens: Tensor, token_lengths: Tensor, speakers: Tensor, pace: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """Normalised log-mels ``[B, T, n_mels]`` and frame lengths, with predicted durations."""
        enc, pad = self.encode(tokens, token_lengths, speakers)
        log_dur = self.duration(enc, pad)
        durations = torch.round(torch.expm1(log_dur).clamp(min=0.0) / pace).long()
        durations = durations.masked_fill(pad, 0)
        empty = durations.sum(1) == 0
        if empty.any():  # say at least one frame per token rather than nothing
            durations[empty] = (~pad[empty]).long()
        frames, lengths = length_regulate(enc, durations)
        return self.decode(frames, lengths), lengths
