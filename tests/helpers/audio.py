"""Audio files the tests write themselves (no recordings in the repository)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def noise_wav(path: Path, seconds: float = 0.5, seed: int = 0, rate: int = 8000) -> Path:
    """A 16-bit WAV of seeded low-level noise at ``path`` (parents created); returns ``path``.

    8 kHz by default, so that a file over the 30 s duration limit stays small.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))
    sf.write(str(path), noise.astype(np.float32), rate, subtype="PCM_16")
    return path


def short_and_long_corpus(root: Path) -> Path:
    """``root/wav/short.wav`` (1 s) and ``root/wav/long.wav`` (31 s: over the default limit)."""
    noise_wav(root / "wav" / "short.wav", 1.0, seed=1)
    noise_wav(root / "wav" / "long.wav", 31.0, seed=2)
    return root
