"""Decoding latency, normalised by the amount of audio decoded."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["LatencyResult", "measure_latency"]


@dataclass(frozen=True)
class LatencyResult:
    """Median decoding time of one call.

    Attributes:
        ms_per_audio_second: Milliseconds of compute per second of audio.
        real_time_factor: Compute seconds per audio second (< 1 is faster than real time).
        seconds: Median wall-clock seconds of one call.
    """

    ms_per_audio_second: float
    real_time_factor: float
    seconds: float


def _synchronizer(device: torch.device | str) -> Callable[[], None]:
    dev = torch.device(device)
    if dev.type == "cuda":
        # CUDA kernels run asynchronously: without a sync the timer stops before the work does.
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def measure_latency(
    decode_fn: Callable[[], object],
    audio_seconds: float,
    device: torch.device | str,
    repeats: int = 3,
    warmup: int = 1,
) -> LatencyResult:
    """Time ``decode_fn`` and normalise by the audio it decodes.

    Warm-up calls (untimed) absorb one-off costs such as CUDA context creation, allocator
    growth and kernel autotuning. The median of ``repeats`` timed calls is reported because a
    single slow call (another process, a GC pause) should not move the result.

    Args:
        decode_fn: Decodes the same fixed input on every call.
        audio_seconds: Total seconds of audio one call decodes.
        device: Device the decoding runs on (CUDA devices are synchronised around each call).
        repeats: Timed calls.
        warmup: Untimed calls before timing.

    Returns:
        The :class:`LatencyResult`.

    Raises:
        ValueError: If ``audio_seconds <= 0``, ``repeats < 1`` or ``warmup < 0``.
    """
    if not audio_seconds > 0:
        raise ValueError(f"audio_seconds must be > 0, but got audio_seconds={audio_seconds}.")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, but got repeats={repeats}.")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, but got warmup={warmup}.")
    sync = _synchronizer(device)
    for _ in range(warmup):
        decode_fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        decode_fn()
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    rtf = seconds / audio_seconds
    return LatencyResult(ms_per_audio_second=1000.0 * rtf, real_time_factor=rtf, seconds=seconds)
