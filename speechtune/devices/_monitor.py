"""GPU utilisation and memory sampled in a thread while a study (or any block) runs."""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

from speechtune.devices._nvml import device_name, load_nvml, nvml_handles, shutdown_nvml

__all__ = ["GpuMonitor"]

log = logging.getLogger(__name__)

_MIB = 2**20


class GpuMonitor:
    """Sample GPU utilisation and memory in a daemon thread while a ``with`` block runs.

    ``utilization.gpu`` is NVML's percentage of the last sample period (1/6 s to 1 s depending
    on the GPU) during which at least one kernel ran: the "GPU busy" figure of ``nvidia-smi``.
    The busy fraction is its mean over the samples, divided by 100.

    Without an NVIDIA driver (or without pynvml) the monitor does nothing and its summary says
    ``available: False`` with the ``reason``; it never raises for that.

    Args:
        interval_s: seconds between samples.
        gpus: CUDA indices to watch (default: every GPU this process sees).

    Example:
        >>> with GpuMonitor(interval_s=0.5) as mon:
        ...     run_trials()
        >>> mon.summary()["gpu_busy_fraction"]
    """

    def __init__(
        self, interval_s: float = 0.5, gpus: Sequence[int] | None = None, *, _nvml: Any = None
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"GpuMonitor interval_s must be > 0, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self.gpus = list(gpus) if gpus is not None else None
        self._nvml_given = _nvml  # tests inject a fake NVML module
        self._nvml: Any = None
        self._handles: dict[int, Any] = {}
        self._names: dict[int, str] = {}
        self._total_mb: dict[int, float] = {}
        self._util: dict[int, list[float]] = {}
        self._mem: dict[int, list[float]] = {}
        self._rounds = 0
        self._timeline: list[tuple[float, dict[int, float]]] = []
        self._errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._t0 = self._t1 = 0.0
        self.available = False
        self.reason = "not started"

    def __enter__(self) -> GpuMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start sampling (a no-op with ``available=False`` when NVML cannot be used)."""
        self._t0 = self._t1 = time.monotonic()
        if self._nvml_given is not None:
            nvml, reason = self._nvml_given, ""
            try:
                nvml.nvmlInit()
            except Exception as exc:
                nvml, reason = None, f"NVML unavailable: {type(exc).__name__}: {exc}"
        else:
            nvml, reason = load_nvml()
        if nvml is None:
            self.reason = reason
            log.info("GPU monitor off: %s", reason)
            return
        try:
            self._handles = nvml_handles(nvml, self.gpus)
            for k, h in self._handles.items():
                self._names[k] = device_name(nvml, h)
                self._total_mb[k] = float(nvml.nvmlDeviceGetMemoryInfo(h).total) / _MIB
        except Exception as exc:  # e.g. a GPU fallen off the bus
            self.reason = f"NVML could not open the GPUs: {type(exc).__name__}: {exc}"
            shutdown_nvml(nvml)
            return
        if not self._handles:
            self.reason = "no GPU visible to this process"
            shutdown_nvml(nvml)
            return
        self._nvml, self.available, self.reason = nvml, True, ""
        self._util = {k: [] for k in self._handles}
        self._mem = {k: [] for k in self._handles}
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="speechtune-gpu-monitor", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (bounded wait for the thread) and release NVML."""
        self._t1 = time.monotonic()
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=max(5.0, 4 * self.interval_s))
            self._thread = None
        if self._nvml is not None:
            shutdown_nvml(self._nvml)
            self._nvml = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        """Take one sample of every watched GPU (the thread calls this every ``interval_s``)."""
        nvml = self._nvml
        if nvml is None:
            return
        row: dict[int, tuple[float, float]] = {}
        for k, h in self._handles.items():
            try:
                util = float(nvml.nvmlDeviceGetUtilizationRates(h).gpu)
                used = float(nvml.nvmlDeviceGetMemoryInfo(h).used) / _MIB
            except Exception:  # one failed read must not end the monitor
                with self._lock:
                    self._errors += 1
                continue
            row[k] = (util, used)
        with self._lock:
            for k, (util, used) in row.items():
                self._util[k].append(util)
                self._mem[k].append(used)
            if row:
                self._rounds += 1
                self._timeline.append((time.time(), {k: u for k, (u, _) in row.items()}))

    def timeline(self) -> list[tuple[float, float]]:
        """``(unix time, mean utilisation % over the watched GPUs)`` of every sample."""
        with self._lock:
            return [(t, statistics.fmean(row.values())) for t, row in self._timeline]

    def busy_fraction_between(self, t0: float, t1: float) -> float | None:
        """Mean busy fraction of the samples taken between unix times ``t0`` and ``t1``.

        E.g. only while trials ran, leaving out worker start-up; None without samples there.
        """
        values = [u for t, u in self.timeline() if t0 <= t <= t1]
        return statistics.fmean(values) / 100.0 if values else None

    def summary(self) -> dict[str, Any]:
        """What was measured: busy fraction, peak memory used, samples, and the same per GPU.

        Returns:
            ``{"available", "reason", "interval_s", "duration_s", "samples", "gpu_busy_fraction",
            "gpu_mem_peak_mb", "per_gpu": {"0": {"name", "busy_fraction", "mem_peak_mb",
            "mem_total_mb", "samples"}}}``; busy fraction and memory are None without samples.
        """
        end = self._t1 if self._thread is None else time.monotonic()
        with self._lock:
            all_util = [u for values in self._util.values() for u in values]
            all_mem = [m for values in self._mem.values() for m in values]
            per_gpu = {
                str(k): {
                    "name": self._names.get(k, "?"),
                    "busy_fraction": statistics.fmean(self._util[k]) / 100.0
                    if self._util.get(k)
                    else None,
                    "mem_peak_mb": max(self._mem[k]) if self._mem.get(k) else None,
                    "mem_total_mb": self._total_mb.get(k),
                    "samples": len(self._util.get(k, [])),
                }
                for k in self._handles
            }
            return {
                "available": self.available,
                "reason": self.reason,
                "interval_s": self.interval_s,
                "duration_s": round(end - self._t0, 3),
                "samples": self._rounds,
                "read_errors": self._errors,
                "gpu_busy_fraction": statistics.fmean(all_util) / 100.0 if all_util else None,
                "gpu_mem_peak_mb": max(all_mem) if all_mem else None,
                "per_gpu": per_gpu,
            }
