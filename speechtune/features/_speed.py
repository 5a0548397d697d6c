"""Speed perturbation: resampling that changes tempo and pitch together, like ``sox speed``.

Playing audio ``factor`` times faster is resampling it from ``factor * rate`` to ``rate``: the
output has ``1 / factor`` as many samples and every frequency is ``factor`` times higher
(Ko et al., 2015, "Audio augmentation for speech recognition", as Kaldi and ESPnet recipes
use it with factors 0.9, 1.0 and 1.1).

The resampler is a polyphase windowed-sinc filter in plain torch (torchaudio is not usable
here): the factor is written as a fraction ``orig / new`` of small integers, and each of the
``new`` output phases is one row of a ``conv1d`` kernel applied with stride ``orig``. The
low-pass cut-off sits at ``rolloff`` of the lower Nyquist frequency, so speeding up does not
alias; the filter spans ``width`` zero crossings on each side (Hann window). With the defaults
(16 crossings, cut-off at 0.945) a tone that speeding up by 1.1 would fold back is down by
28 dB at 7.4 kHz and 50 dB at 7.9 kHz (16 kHz audio); 60 s of audio takes a few milliseconds.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

import numpy as np
import torch

#: Bump when the resampling changes, so that cached features of perturbed copies are redone.
SPEED_VERSION = 1

#: Factors are rounded to a fraction with at most this denominator (0.9 = 9/10, 1.1 = 11/10);
#: it bounds the filter size, and so the cost, for an arbitrary float factor.
MAX_DENOMINATOR = 100

#: Allowed factors (``data.speed_perturb``); outside it speech is no longer speech-like.
MIN_FACTOR, MAX_FACTOR = 0.5, 2.0


def speed_ratio(factor: float) -> tuple[int, int]:
    """``(orig, new)``: coprime integers with ``orig / new`` ~= ``factor`` (denominator <= 100).

    Raises:
        ValueError: ``factor`` is not a finite number in [0.5, 2.0].
    """
    ok = isinstance(factor, numbers.Real) and not isinstance(factor, bool)
    if not (ok and MIN_FACTOR <= float(factor) <= MAX_FACTOR):  # NaN fails the comparison too
        raise ValueError(f"speed factor must be in [{MIN_FACTOR}, {MAX_FACTOR}], got {factor!r}")
    frac = Fraction(float(factor)).limit_denominator(MAX_DENOMINATOR)
    return frac.numerator, frac.denominator


def _kernel(orig: int, new: int, width: int, rolloff: float) -> tuple[torch.Tensor, int]:
    """``[new, 1, taps]`` float32 polyphase kernel and the left padding it needs (input samples).

    Output sample ``q * new + p`` lies at input position ``q * orig + p * orig / new``; row ``p``
    holds the windowed sinc centred there, sampled at the input taps around it.
    """
    cutoff = min(orig, new) * rolloff / orig  # twice the cut-off, in cycles per input sample
    half = math.ceil(width / cutoff)
    taps = torch.arange(-half, half + orig, dtype=torch.float64)  # input offsets from q * orig
    phase = torch.arange(new, dtype=torch.float64)[:, None] * orig / new
    x = (taps[None, :] - phase) * cutoff  # distance in units of the filter's zero crossings
    x = x.clamp(-width, width)
    window = torch.cos(x * math.pi / (2 * width)) ** 2
    sinc = torch.special.sinc(x)  # sin(pi x) / (pi x), 1 at 0
    kernel = cutoff * sinc * window
    return kernel.to(torch.float32)[:, None, :], half


def speed_perturb(
    samples: np.ndarray, factor: float, *, width: int = 16, rolloff: float = 0.945
) -> np.ndarray:
    """``samples`` played ``factor`` times faster: tempo and pitch both scale by ``factor``.

    Args:
        samples: mono 1-D float audio.
        factor: speed factor in [0.5, 2.0]; 1.1 gives a signal ``1 / 1.1`` as long with every
            frequency 1.1 times higher. 1.0 returns the input itself (as float32).
        width: zero crossings of the sinc on each side of a tap (quality vs. cost).
        rolloff: cut-off as a share of the lower Nyquist frequency (anti-aliasing margin).

    Returns:
        float32 1-D array of ``ceil(len(samples) * new / orig)`` samples, where
        ``orig / new`` is :func:`speed_ratio` of ``factor``.

    Raises:
        ValueError: a factor out of range, or audio that is not 1-D.
    """
    orig, new = speed_ratio(factor)
    wave = np.asarray(samples, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"speed_perturb takes mono 1-D audio, got shape {wave.shape}")
    if orig == new:
        return wave
    kernel, half = _kernel(orig, new, width, rolloff)
    n = wave.size
    out_len = math.ceil(n * new / orig)
    x = torch.from_numpy(np.ascontiguousarray(wave))[None, None, :]
    x = torch.nn.functional.pad(x, (half, half + orig))
    with torch.no_grad():
        y = torch.nn.functional.conv1d(x, kernel, stride=orig)  # [1, new, frames]
    y = y[0].transpose(0, 1).reshape(-1)[:out_len]  # interleave the phases
    return y.numpy().copy()
