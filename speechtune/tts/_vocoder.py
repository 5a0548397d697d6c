"""Vocoders: log-mel frames -> waveform.

* :class:`GriffinLim`: no training. The mel power spectrum is mapped back to a linear power
  spectrum by non-negative least squares against the mel filterbank, then the phase is
  estimated by fast Griffin-Lim (Perraudin, Balazs & Sondergaard, 2013): Griffin-Lim's
  alternating projections with a momentum term that speeds convergence.
* :class:`NeuralVocoder`: Vocos-style (Siuzdak, 2023) without the GAN: ConvNeXt blocks at the
  frame rate predict the STFT's log-magnitude and phase, and ``torch.istft`` gives the samples.
  It trains on real audio with a multi-resolution STFT loss plus a log-mel loss, in minutes on
  a CPU.

Both use the STFT of the front end (:class:`speechtune.features.LogMel`: its FFT size, hop,
window and filterbank), so they invert exactly the mels the ASR recipe computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechtune.features import LogMel
from speechtune.tts._config import GriffinLimConfig, NeuralVocoderConfig


def stft(wave: Tensor, frontend: LogMel) -> Tensor:
    """The complex STFT ``[..., n_freq, T]`` with the front end's parameters (centred, reflect)."""
    return torch.stft(
        wave,
        n_fft=frontend.n_fft,
        hop_length=frontend.hop_length,
        win_length=frontend.win_length,
        window=frontend.window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )


def istft(spec: Tensor, frontend: LogMel, length: int | None = None) -> Tensor:
    """The inverse of :func:`stft`."""
    return torch.istft(
        spec,
        n_fft=frontend.n_fft,
        hop_length=frontend.hop_length,
        win_length=frontend.win_length,
        window=frontend.window,
        center=True,
        length=length,
    )


def mel_to_linear_power(log_mel: Tensor, mel_fb: Tensor, iterations: int) -> Tensor:
    """Non-negative least-squares linear power spectrum of a log-mel power spectrogram.

    Starts from the pseudo-inverse (clamped to a small positive floor) and refines it with the
    multiplicative update of Lee & Seung for ``min ||M p - m||^2, p >= 0``, which keeps every
    bin non-negative without a step size.

    Args:
        log_mel: ``[T, n_mels]`` natural-log mel power.
        mel_fb: ``[n_freq, n_mels]`` filterbank (``LogMel.mel_fb``).
        iterations: multiplicative updates after the pseudo-inverse.

    Returns:
        ``[n_freq, T]`` linear power.
    """
    mel = log_mel.exp().T  # [n_mels, T]
    basis = mel_fb.T.to(mel.dtype)  # [n_mels, n_freq]
    power = torch.linalg.pinv(basis) @ mel
    floor = 1e-6 * float(mel.max().clamp(min=1e-10))
    power = power.clamp(min=floor)
    gram, target = basis.T @ basis, basis.T @ mel
    for _ in range(iterations):
        power = power * target / (gram @ power + 1e-12)
    return power


class GriffinLim:
    """Mel -> waveform with NNLS + fast Griffin-Lim (``n_iter`` iterations, ``momentum``).

    Args:
        frontend: the log-mel front end the mels came from.
        cfg: iterations, momentum and NNLS iterations.
        seed: seeds the random initial phase.
    """

    def __init__(self, frontend: LogMel, cfg: GriffinLimConfig, seed: int = 0):
        self.frontend = frontend
        self.cfg = cfg
        self.seed = seed

    def magnitude(self, log_mel: Tensor) -> Tensor:
        """``[n_freq, T]`` STFT magnitude estimated from ``[T, n_mels]`` log-mel power."""
        power = mel_to_linear_power(log_mel.float(), self.frontend.mel_fb, self.cfg.nnls_iter)
        return power.sqrt()

    @torch.no_grad()
    def phase_from_magnitude(self, magnitude: Tensor, length: int | None = None) -> Tensor:
        """A waveform whose STFT magnitude approaches ``magnitude`` ``[n_freq, T]``."""
        gen = torch.Generator().manual_seed(self.seed)
        angles = torch.exp(2j * torch.pi * torch.rand(magnitude.shape, generator=gen))
        previous = torch.zeros_like(angles)
        alpha = self.cfg.momentum / (1.0 + self.cfg.momentum)
        for _ in range(self.cfg.n_iter):
            rebuilt = stft(istft(magnitude * angles, self.frontend, length), self.frontend)
            # Fast Griffin-Lim: extrapolate past the last projection, then renormalise.
            angles = rebuilt - alpha * previous
            angles = angles / angles.abs().clamp(min=1e-16)
            previous = rebuilt
        return istft(magnitude * angles, self.frontend, length)

    def __call__(self, log_mel: Tensor) -> Tensor:
        """``[T, n_mels]`` log-mel power (un-normalised) -> 1-D waveform."""
        return self.phase_from_magnitude(self.magnitude(log_mel))


class _ConvNeXt(nn.Module):
    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.dw = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.up = nn.Linear(channels, 3 * channels)
        self.down = nn.Linear(3 * channels, channels)
        # Layer scale (ConvNeXt): each block starts near the identity.
        self.gamma = nn.Parameter(torch.full((channels,), 0.1))

    def forward(self, x: Tensor) -> Tensor:  # [B, C, T]
        h = self.norm(self.dw(x).transpose(1, 2))
        h = self.gamma * self.down(F.gelu(self.up(h)))
        return x + h.transpose(1, 2)


class NeuralVocoder(nn.Module):
    """Normalised log-mel ``[B, T, n_mels]`` -> waveform ``[B, (T - 1) * hop]``.

    The mel statistics it normalises with are its own buffers, so that it can be swapped
    under any acoustic model that speaks the same front end.
    """

    mel_mean: Tensor
    mel_std: Tensor

    def __init__(self, frontend: LogMel, cfg: NeuralVocoderConfig):
        super().__init__()
        self.frontend = frontend
        c = cfg.channels
        self.inp = nn.Conv1d(frontend.n_mels, c, cfg.kernel, padding=cfg.kernel // 2)
        self.norm = nn.LayerNorm(c)
        self.blocks = nn.Sequential(*(_ConvNeXt(c, cfg.kernel) for _ in range(cfg.num_blocks)))
        self.final = nn.LayerNorm(c)
        self.n_freq = frontend.n_fft // 2 + 1
        self.out = nn.Linear(c, 2 * self.n_freq)
        self.register_buffer("mel_mean", torch.zeros(frontend.n_mels))
        self.register_buffer("mel_std", torch.ones(frontend.n_mels))

    def forward(self, log_mel: Tensor) -> Tensor:
        """``[B, T, n_mels]`` un-normalised log-mel power -> ``[B, (T - 1) * hop]`` samples."""
        x = (log_mel - self.mel_mean) / self.mel_std
        h = self.norm(self.inp(x.transpose(1, 2)).transpose(1, 2)).transpose(1, 2)
        h = self.final(self.blocks(h).transpose(1, 2))
        log_mag, phase = self.out(h).transpose(1, 2).chunk(2, dim=1)  # [B, n_freq, T] each
        # exp of a clamped log keeps an untrained net from overflowing the inverse STFT.
        mag = torch.exp(log_mag.clamp(max=6.0))
        spec = torch.polar(mag, phase)
        return istft(spec, self.frontend)


#: (n_fft, hop) of the multi-resolution STFT loss at 16 kHz (ParallelWaveGAN's three, halved).
STFT_RESOLUTIONS = ((256, 64), (512, 128), (1024, 256))


def multi_resolution_stft_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Spectral convergence + log-magnitude L1, averaged over :data:`STFT_RESOLUTIONS`
    (Yamamoto et al., 2020)."""
    total = pred.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        window = torch.hann_window(n_fft, device=pred.device)
        p = torch.stft(pred, n_fft, hop, window=window, return_complex=True).abs()
        t = torch.stft(target, n_fft, hop, window=window, return_complex=True).abs()
        sc = torch.linalg.norm(t - p) / torch.linalg.norm(t).clamp(min=1e-7)
        mag = (torch.log(p.clamp(min=1e-5)) - torch.log(t.clamp(min=1e-5))).abs().mean()
        total = total + sc + mag
    return total / len(STFT_RESOLUTIONS)


def spectral_convergence(magnitude: Tensor, wave: Tensor, frontend: LogMel) -> float:
    """``||S - |STFT(x)|||_F / ||S||_F``: how far ``wave``'s magnitude is from ``magnitude``."""
    rebuilt = stft(wave, frontend).abs()
    frames = min(rebuilt.shape[-1], magnitude.shape[-1])
    diff = torch.linalg.norm(magnitude[..., :frames] - rebuilt[..., :frames])
    return float(diff / torch.linalg.norm(magnitude[..., :frames]).clamp(min=1e-12))
