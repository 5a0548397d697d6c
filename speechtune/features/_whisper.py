"""Whisper's log-mel front end (``features.kind: whisper``), for ``model.encoder: hf_whisper``.

A pretrained Whisper encoder must see the features it was trained on, computed as transformers'
``WhisperFeatureExtractor`` does: 16 kHz audio, a 25 ms periodic Hann window (400 samples) every
10 ms (160), the power spectrum without its last frame, ``features.n_mels`` Slaney mel filters
(80, or 128 for large-v3), ``log10`` floored at 1e-10, clipped to 8 below the utterance's
maximum, then ``(x + 4) / 4``. Computed per utterance (padding never enters its maximum), so
that a batch gives each utterance what it gets alone, and cached like log-mels. The extractor
pads every input to 30 s; the encoder (:class:`~speechtune.models.HFWhisperEncoder`) pads the
features to its window instead, with the utterance's floor (the value silence has).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from speechtune.config import FeaturesConfig
from speechtune.features._logmel import mel_filterbank

#: Whisper's STFT: 25 ms windows every 10 ms at 16 kHz.
N_FFT = 400
HOP = 160
#: The dynamic range kept below an utterance's loudest bin, in log10 units (80 dB).
RANGE = 8.0


class WhisperLogMel(nn.Module):
    """``[B, T]`` samples -> ``([B, frames, n_mels], frames)`` of Whisper's log-mel features.

    Args:
        n_mels: mel bins (the pretrained encoder's ``num_mel_bins``).
    """

    hop_length = HOP
    fb: Tensor
    window: Tensor

    def __init__(self, n_mels: int = 80) -> None:
        super().__init__()
        self.n_mels = n_mels
        fb = torch.from_numpy(mel_filterbank(16000, N_FFT, n_mels, 0.0, 8000.0)).float()
        self.register_buffer("fb", fb, persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True), persistent=False)

    @classmethod
    def from_config(cls, cfg: FeaturesConfig) -> WhisperLogMel:
        """The front end of ``cfg`` (``n_mels``; the rate is checked to be 16 kHz elsewhere)."""
        return cls(cfg.n_mels)

    def forward(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Features of each utterance of ``waves [B, T]`` (``lengths [B]`` valid samples)."""
        lengths = lengths.to(waves.device)
        feats = []
        frames = lengths // HOP
        for wave, n, f in zip(waves.float(), lengths.tolist(), frames.tolist()):
            spec = torch.stft(
                wave[: int(n)],
                N_FFT,
                HOP,
                window=self.window,
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )
            power = spec[:, :-1].abs() ** 2  # [freq, frames]; Whisper drops the last frame
            mel = torch.clamp(self.fb @ power, min=1e-10).log10()
            mel = torch.maximum(mel, mel.max() - RANGE)
            feats.append(((mel + 4.0) / 4.0).T[: int(f)])
        width = max((x.size(0) for x in feats), default=0)
        out = waves.new_zeros(len(feats), width, self.n_mels, dtype=torch.float32)
        for i, x in enumerate(feats):
            out[i, : x.size(0)] = x
        return out, frames
