"""Log-mel filterbank front end in plain torch (torchaudio is not usable with the CPU build).

The numbers match ``librosa.feature.melspectrogram(power=2, center=True, pad_mode="reflect",
window="hann", htk=False, norm="slaney")`` followed by ``log(max(mel, 1e-10))``; the tests
check that on generated audio.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from speechtune.config import FeaturesConfig

#: Floor applied before the log, so silence gives a finite value.
LOG_FLOOR = 1e-10

# Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's htk=False).
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    log_region = hz >= _MIN_LOG_HZ
    mel[log_region] = _MIN_LOG_MEL + np.log(hz[log_region] / _MIN_LOG_HZ) / _LOGSTEP
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * _F_SP
    log_region = mel >= _MIN_LOG_MEL
    hz[log_region] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel[log_region] - _MIN_LOG_MEL))
    return hz


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters (as ``librosa.filters.mel`` defaults).

    Args:
        sample_rate: audio sample rate in Hz.
        n_fft: FFT size; the filters cover its ``n_fft // 2 + 1`` bins.
        n_mels: number of filters.
        f_min: lowest edge in Hz.
        f_max: highest edge in Hz; None means Nyquist.

    Returns:
        float64 array ``[n_mels, n_fft // 2 + 1]``.

    Raises:
        ValueError: when the frequency range is empty or beyond Nyquist.
    """
    nyquist = sample_rate / 2.0
    f_max = nyquist if f_max is None else float(f_max)
    if not 0.0 <= f_min < f_max <= nyquist:
        raise ValueError(
            f"mel filterbank needs 0 <= f_min < f_max <= sample_rate/2, got "
            f"f_min={f_min}, f_max={f_max}, sample_rate={sample_rate}"
        )
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    mel_edges = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array([f_min]))[0], _hz_to_mel(np.array([f_max]))[0], n_mels + 2)
    )
    fdiff = np.diff(mel_edges)
    ramps = mel_edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    # Slaney norm: each filter has unit area, so wide high-frequency filters are not louder.
    weights *= (2.0 / (mel_edges[2:] - mel_edges[:-2]))[:, None]
    return weights


def _reflect_indices(lengths: Tensor, total: int, pad: int) -> Tensor:
    """Sample indices that reflect-pad each utterance by ``pad`` on both sides.

    Each row is padded by reflecting *its own* valid samples (not the batch's zero padding),
    so a batched utterance gets exactly the frames it would get on its own.

    Returns:
        long tensor ``[B, total + 2 * pad]`` of indices into the unpadded rows.
    """
    pos = torch.arange(-pad, total + pad, device=lengths.device)[None, :]
    last = (lengths - 1).clamp(min=0)[:, None]
    idx = pos.abs()  # left edge: x[-i] -> x[i]
    idx = torch.where(idx > last, 2 * last - idx, idx)  # right edge: x[L-1+i] -> x[L-1-i]
    # Utterances shorter than the pad (or positions far past the end, whose frames are
    # dropped anyway) would need a second reflection; clamping keeps the gather in range.
    return torch.minimum(idx.clamp(min=0), last)


class LogMel(nn.Module):
    """Batched log-mel spectrogram on the waves' device.

    Args:
        sample_rate: audio sample rate in Hz.
        window_ms: analysis window length in milliseconds.
        hop_ms: frame shift in milliseconds.
        n_mels: number of mel filters.
        f_min: lowest filter edge in Hz.
        f_max: highest filter edge in Hz; None means Nyquist.

    Raises:
        ValueError: on a window or hop shorter than one sample, or an empty frequency range.
    """

    mel_fb: Tensor
    window: Tensor

    def __init__(
        self,
        sample_rate: int,
        window_ms: float,
        hop_ms: float,
        n_mels: int,
        f_min: float = 0.0,
        f_max: float | None = None,
    ) -> None:
        super().__init__()
        self.sample_rate = int(sample_rate)
        self.win_length = int(round(sample_rate * window_ms / 1000.0))
        self.hop_length = int(round(sample_rate * hop_ms / 1000.0))
        if self.win_length < 2 or self.hop_length < 1:
            raise ValueError(
                f"window_ms={window_ms} and hop_ms={hop_ms} give a window of {self.win_length} and a hop "
                f"of {self.hop_length} samples at {sample_rate} Hz; need a window >= 2 and a hop >= 1"
            )
        self.n_fft = 1 << (self.win_length - 1).bit_length()
        self.n_mels = int(n_mels)
        fb = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, f_min, f_max)
        # [n_freq, n_mels] so that the projection is one matmul on [..., n_freq].
        self.register_buffer("mel_fb", torch.from_numpy(fb.T.astype(np.float32)).contiguous())
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=True))

    @classmethod
    def from_config(cls, cfg: FeaturesConfig) -> LogMel:
        """Build from the recipe's ``features`` section."""
        return cls(cfg.sample_rate, cfg.window_ms, cfg.hop_ms, cfg.n_mels, cfg.f_min, cfg.f_max)

    def num_frames(self, lengths: Tensor) -> Tensor:
        """Frames per utterance for sample counts ``lengths`` (centred STFT)."""
        return 1 + torch.div(lengths, self.hop_length, rounding_mode="floor")

    def forward(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Log-mel features of a padded batch.

        Args:
            waves: ``[B, T]`` float samples, zero-padded after each utterance's end.
            lengths: ``[B]`` valid sample counts.

        Returns:
            ``(feats [B, F, n_mels], frames [B])``; frames past an utterance's count are 0.
        """
        if waves.dim() != 2:
            raise ValueError(f"LogMel expects waves of shape [B, T], got {tuple(waves.shape)}")
        lengths = lengths.to(device=waves.device, dtype=torch.long)
        if lengths.shape != waves.shape[:1]:
            raise ValueError(
                f"lengths must have shape [{waves.shape[0]}], got {tuple(lengths.shape)}"
            )
        pad = self.n_fft // 2
        idx = _reflect_indices(lengths, waves.shape[1], pad)
        padded = torch.gather(waves.float(), 1, idx)
        spec = torch.stft(
            padded,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window.to(device=padded.device, dtype=padded.dtype),
            center=False,
            return_complex=True,
        )  # [B, n_freq, F]
        power = torch.view_as_real(spec).pow(2).sum(-1).transpose(1, 2)  # [B, F, n_freq]
        mel = power @ self.mel_fb.to(power.dtype)
        feats = mel.clamp(min=LOG_FLOOR).log()
        frames = self.num_frames(lengths)
        valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < frames[:, None]
        return feats.masked_fill(~valid[:, :, None], 0.0), frames
