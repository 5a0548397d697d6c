"""Reading audio headers and samples with soundfile (libsndfile).

Formats: whatever libsndfile opens (WAV, FLAC, NIST SPHERE, ...) plus headerless ``.raw``
files in the CMU AN4 convention (16 kHz, 16-bit signed, big-endian, mono).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from speechtune.data._manifest import Manifest, Utterance

#: Format of headerless ``.raw`` files (AN4's distributed raw form).
RAW_SAMPLE_RATE = 16000
_RAW_BYTES_PER_SAMPLE = 2


class AudioError(ValueError):
    """An audio file is missing, unreadable or unusable."""


@dataclass(frozen=True)
class AudioInfo:
    """What an audio header says.

    Attributes:
        sample_rate: samples per second.
        num_frames: samples per channel.
        channels: number of channels.
        duration: seconds (``num_frames / sample_rate``).
    """

    sample_rate: int
    num_frames: int
    channels: int
    duration: float


def is_raw(path: str | Path) -> bool:
    """Whether ``path`` is a headerless raw file (judged by its ``.raw`` extension)."""
    return Path(path).suffix.lower() == ".raw"


def audio_info(path: str | Path) -> AudioInfo:
    """Read an audio file's header (no samples are decoded).

    Args:
        path: a file libsndfile can open, or a headerless ``.raw`` AN4 file.

    Returns:
        The file's :class:`AudioInfo`.

    Raises:
        AudioError: the file is missing or cannot be opened as audio.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    if is_raw(path):
        # No header: the size is all there is to go on.
        frames = path.stat().st_size // _RAW_BYTES_PER_SAMPLE
        return AudioInfo(RAW_SAMPLE_RATE, frames, 1, frames / RAW_SAMPLE_RATE)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"cannot read audio header of {path}: {exc}") from exc
    return AudioInfo(
        int(info.samplerate),
        int(info.frames),
        int(info.channels),
        float(info.frames) / info.samplerate,
    )


def _read_file(path: Path) -> tuple[np.ndarray, int]:
    """Decode a file to (frames, channels) float32 and its sample rate."""
    if is_raw(path):
        data, rate = sf.read(
            str(path),
            dtype="float32",
            always_2d=True,
            format="RAW",
            subtype="PCM_16",
            endian="BIG",
            samplerate=RAW_SAMPLE_RATE,
            channels=1,
        )
    else:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data, int(rate)


def resample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample mono audio with a polyphase filter (anti-aliased); a no-op at equal rates.

    Args:
        samples: 1-D float array.
        orig_rate: its sample rate.
        new_rate: the wanted sample rate.

    Returns:
        float32 samples at ``new_rate``.
    """
    if orig_rate == new_rate:
        return samples.astype(np.float32, copy=False)
    g = gcd(orig_rate, new_rate)
    return resample_poly(samples, new_rate // g, orig_rate // g).astype(np.float32)


def load_audio(manifest: Manifest, utt: Utterance, sample_rate: int) -> np.ndarray:
    """Load an utterance's audio as mono float32 at ``sample_rate``.

    Multi-channel audio is mixed down by averaging the channels. In-memory audio
    (``utt.samples`` at ``utt.sample_rate``) is used when present.

    Args:
        manifest: the manifest the utterance belongs to (resolves relative paths).
        utt: the utterance.
        sample_rate: the wanted sample rate.

    Returns:
        1-D float32 array.

    Raises:
        AudioError: naming the utterance and path, when the audio cannot be loaded.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if utt.samples is not None:
        if utt.sample_rate is None:
            raise AudioError(f"utterance {utt.id!r} has in-memory samples but no sample_rate")
        samples = np.asarray(utt.samples, dtype=np.float32)
        if samples.ndim == 2:
            samples = samples.mean(axis=1)
        return resample(samples, int(utt.sample_rate), sample_rate)
    path = manifest.resolve(utt)
    if path is None:
        raise AudioError(f"utterance {utt.id!r} has neither an audio file nor in-memory samples")
    if not path.is_file():
        raise AudioError(f"utterance {utt.id!r}: audio file not found: {path}")
    try:
        data, rate = _read_file(path)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(f"utterance {utt.id!r}: cannot decode audio file {path}: {exc}") from exc
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return resample(mono, rate, sample_rate)
