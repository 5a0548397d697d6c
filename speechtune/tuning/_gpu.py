"""GPU packing on one machine: slots shared by processes, memory-aware leasing, utilisation.

Small proxy trials leave most of a modern GPU idle: one trial at a time is bounded by Python,
kernel launches and data movement, not by the GPU. Running several trials on one GPU at once
fills the gaps. Three pieces make that safe and measurable:

* :class:`GpuSlots`: ``slots_per_gpu`` lock files per GPU under a directory shared by every
  worker *process* on the machine. A trial holds one ``fcntl.flock`` lock while it runs; the
  kernel drops the lock when its process dies, even by SIGKILL, so a crashed worker never
  leaks a slot. A GPU whose free memory is below what a trial needs is skipped.
* :class:`SlottedObjective`: an :class:`~speechtune.tuning.Objective` that leases a slot, runs
  the wrapped objective on the leased ``cuda:k``, and records the trial's peak CUDA memory.
* :class:`GpuMonitor`: samples NVML utilisation and memory in a thread during a study.

Everything here imports torch and pynvml lazily, and nothing raises when there is no NVIDIA
driver: the monitor then reports ``available=False`` with the reason.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import json
import logging
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._objectives import ERROR, TrialOutcome

if TYPE_CHECKING:
    from ..training import Reporter
    from ._objectives import Objective

log = logging.getLogger(__name__)

#: Slots per GPU when neither ``slots_per_gpu`` nor the memory a trial needs is known.
DEFAULT_SLOTS_PER_GPU = 4
#: Upper bound on the slots derived from free memory (a tiny per-trial need would give thousands).
MAX_SLOTS_PER_GPU = 64
#: Safety factor on a measured peak before it is used as the memory a trial needs.
PEAK_MARGIN = 1.2
#: Default wait for a slot inside a study: trials queue behind each other for a long time.
DEFAULT_ACQUIRE_TIMEOUT_S = 6 * 3600.0

_MIB = 2**20


# ---------------------------------------------------------------------------------------------
# NVML access (pynvml from nvidia-ml-py), shared by the monitor and the memory probe
# ---------------------------------------------------------------------------------------------
def _load_nvml() -> tuple[Any | None, str]:
    """The initialised pynvml module, or None and why not."""
    try:
        import pynvml
    except ImportError as exc:
        return None, f"pynvml (nvidia-ml-py) is not installed: {exc}"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ... (no NVIDIA driver)
        return None, f"NVML unavailable (no NVIDIA driver?): {type(exc).__name__}: {exc}"
    return pynvml, ""


def _visible_nvml_ids(n_nvml: int) -> list[str | int]:
    """NVML identifiers of the CUDA devices this process sees, in CUDA order.

    CUDA numbers the devices listed in ``CUDA_VISIBLE_DEVICES`` from 0, NVML always sees them
    all: ``cuda:0`` with ``CUDA_VISIBLE_DEVICES=2,3`` is NVML device 2. Entries may be indices
    or UUIDs (``GPU-...``/``MIG-...``).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(n_nvml))
    ids: list[str | int] = []
    for token in (t.strip() for t in visible.split(",")):
        if not token:
            break  # CUDA stops at the first empty/invalid entry
        ids.append(int(token) if token.isdigit() else token)
    return ids


def _nvml_handles(nvml: Any, gpus: Sequence[int] | None) -> dict[int, Any]:
    """NVML handles by CUDA index (of the devices this process sees)."""
    ids = _visible_nvml_ids(int(nvml.nvmlDeviceGetCount()))
    wanted = range(len(ids)) if gpus is None else gpus
    handles: dict[int, Any] = {}
    for k in wanted:
        if k < 0 or k >= len(ids):
            raise ValueError(f"gpus: CUDA device {k} does not exist (this process sees {len(ids)} GPUs)")
        ident = ids[k]
        handles[k] = (
            nvml.nvmlDeviceGetHandleByIndex(ident) if isinstance(ident, int) else nvml.nvmlDeviceGetHandleByUUID(ident)
        )
    return handles


def _name(nvml: Any, handle: Any) -> str:
    try:
        name = nvml.nvmlDeviceGetName(handle)
    except Exception:  # a name is decoration
        return "?"
    return name.decode() if isinstance(name, bytes) else str(name)


# ---------------------------------------------------------------------------------------------
# utilisation monitor
# ---------------------------------------------------------------------------------------------
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

    def __init__(self, interval_s: float = 0.5, gpus: Sequence[int] | None = None, *, _nvml: Any = None) -> None:
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
            nvml, reason = _load_nvml()
        if nvml is None:
            self.reason = reason
            log.info("GPU monitor off: %s", reason)
            return
        try:
            self._handles = _nvml_handles(nvml, self.gpus)
            for k, h in self._handles.items():
                self._names[k] = _name(nvml, h)
                self._total_mb[k] = float(nvml.nvmlDeviceGetMemoryInfo(h).total) / _MIB
        except Exception as exc:  # e.g. a GPU fallen off the bus
            self.reason = f"NVML could not open the GPUs: {type(exc).__name__}: {exc}"
            self._shutdown(nvml)
            return
        if not self._handles:
            self.reason = "no GPU visible to this process"
            self._shutdown(nvml)
            return
        self._nvml, self.available, self.reason = nvml, True, ""
        self._util = {k: [] for k in self._handles}
        self._mem = {k: [] for k in self._handles}
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="speechtune-gpu-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (bounded wait for the thread) and release NVML."""
        self._t1 = time.monotonic()
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=max(5.0, 4 * self.interval_s))
            self._thread = None
        if self._nvml is not None:
            self._shutdown(self._nvml)
            self._nvml = None

    @staticmethod
    def _shutdown(nvml: Any) -> None:
        try:
            nvml.nvmlShutdown()
        except Exception:  # shutting down a half-initialised NVML is best effort
            pass

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
                    "busy_fraction": statistics.fmean(self._util[k]) / 100.0 if self._util.get(k) else None,
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


# ---------------------------------------------------------------------------------------------
# free-memory probe
# ---------------------------------------------------------------------------------------------
def gpu_free_mb(gpu: int) -> float | None:
    """Free memory of CUDA device ``gpu`` in MiB (NVML, else torch), None when unknown.

    NVML is asked first because it creates no CUDA context; ``torch.cuda.mem_get_info`` does
    (a few hundred MiB on the GPU), which is only acceptable in a process that trains anyway.
    """
    nvml, _ = _load_nvml()
    if nvml is not None:
        try:
            handle = _nvml_handles(nvml, [gpu])[gpu]
            return float(nvml.nvmlDeviceGetMemoryInfo(handle).free) / _MIB
        except Exception:
            pass
        finally:
            GpuMonitor._shutdown(nvml)
    try:
        import torch

        if torch.cuda.is_available():
            return float(torch.cuda.mem_get_info(gpu)[0]) / _MIB
    except Exception:  # no CUDA build / no device: the need cannot be checked
        pass
    return None


def visible_gpus() -> list[int]:
    """CUDA indices of the GPUs this process sees (NVML, else torch); [] without any."""
    nvml, _ = _load_nvml()
    if nvml is not None:
        try:
            return list(range(len(_visible_nvml_ids(int(nvml.nvmlDeviceGetCount())))))
        except Exception:
            pass
        finally:
            GpuMonitor._shutdown(nvml)
    try:
        import torch

        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    except ImportError:
        return []


# ---------------------------------------------------------------------------------------------
# slots
# ---------------------------------------------------------------------------------------------
@dataclass
class Lease:
    """One held GPU slot; release it (or leave the ``with`` block) when the trial ends.

    Attributes:
        device: the torch device string, e.g. ``cuda:0``.
        gpu: the CUDA index.
        slot: the slot number on that GPU.
        path: the lock file held.
        waited_s: how long :meth:`GpuSlots.acquire` waited for it.
    """

    device: str
    gpu: int
    slot: int
    path: Path
    waited_s: float = 0.0
    _fd: int | None = field(default=None, repr=False)

    @property
    def held(self) -> bool:
        """True until :meth:`release`."""
        return self._fd is not None

    def release(self) -> None:
        """Give the slot back (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lease must not hold the slot for the process' life
        try:
            self.release()
        except Exception:
            pass


class GpuSlots:
    """Slots on the GPUs of this machine, shared by every process that uses the same ``lock_dir``.

    Each slot is a lock file ``gpu<k>.slot<s>.lock``; holding it is an exclusive ``flock``.
    ``flock`` locks belong to an open file, so threads of one process contend like processes
    do, and the kernel releases a lock when its process dies (SIGKILL included).

    Memory awareness: before taking a slot on a GPU, its free memory is compared with what a
    trial needs: ``mem_per_trial_mb`` when given, else the largest trial peak measured so far in
    this process times :data:`PEAK_MARGIN` (:meth:`record_peak`); a GPU below the need is
    skipped. With no need known yet the slot count alone limits packing.

    Args:
        lock_dir: directory of the lock files (created); the same for every worker of a study,
            e.g. ``<run_dir>/.gpu-slots``.
        slots_per_gpu: concurrent trials per GPU. Default: ``free memory // mem_per_trial_mb``
            (at least 1, at most :data:`MAX_SLOTS_PER_GPU`) when ``mem_per_trial_mb`` is given,
            else :data:`DEFAULT_SLOTS_PER_GPU`.
        mem_per_trial_mb: GPU memory one trial needs (MiB), if known.
        gpus: CUDA indices to use (default: every GPU this process sees).
        free_mb: probe ``gpu -> free MiB or None`` (default :func:`gpu_free_mb`); tests inject one.
        poll_s: longest pause between two attempts while every slot is taken.

    Raises:
        ValueError: a non-positive ``slots_per_gpu`` or ``mem_per_trial_mb``.
    """

    def __init__(
        self,
        lock_dir: str | Path,
        slots_per_gpu: int | None = None,
        mem_per_trial_mb: float | None = None,
        gpus: Sequence[int] | None = None,
        free_mb: Callable[[int], float | None] | None = None,
        *,
        poll_s: float = 0.5,
    ) -> None:
        if slots_per_gpu is not None and int(slots_per_gpu) < 1:
            raise ValueError(f"slots_per_gpu (--gpu-slots) must be >= 1, got {slots_per_gpu!r}")
        if mem_per_trial_mb is not None and not float(mem_per_trial_mb) > 0:
            raise ValueError(f"mem_per_trial_mb (--gpu-mem-per-trial) must be > 0 MiB, got {mem_per_trial_mb!r}")
        self.lock_dir = Path(lock_dir)
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        self.mem_per_trial_mb = float(mem_per_trial_mb) if mem_per_trial_mb is not None else None
        self.free_mb = free_mb if free_mb is not None else gpu_free_mb
        self.poll_s = float(poll_s)
        self.gpus = list(gpus) if gpus is not None else visible_gpus()
        self._peak_mb: float | None = None
        self._peak_lock = threading.Lock()
        self._slots_given = int(slots_per_gpu) if slots_per_gpu is not None else None
        self.slots_per_gpu: dict[int, int] = {g: self._default_slots(g) for g in self.gpus}

    def _default_slots(self, gpu: int) -> int:
        if self._slots_given is not None:
            return self._slots_given
        if self.mem_per_trial_mb is None:
            return DEFAULT_SLOTS_PER_GPU
        free = self.free_mb(gpu)
        if free is None:
            return DEFAULT_SLOTS_PER_GPU
        return max(1, min(MAX_SLOTS_PER_GPU, int(free // self.mem_per_trial_mb)))

    # -- memory -----------------------------------------------------------------------------
    def record_peak(self, peak_mb: float) -> None:
        """Remember a trial's measured peak GPU memory (MiB); the largest one sets the need."""
        if peak_mb is None or not math.isfinite(float(peak_mb)) or float(peak_mb) <= 0:
            return
        with self._peak_lock:
            self._peak_mb = max(self._peak_mb or 0.0, float(peak_mb))

    def need_mb(self) -> float | None:
        """MiB of free memory a GPU needs to take one more trial; None when not known yet."""
        if self.mem_per_trial_mb is not None:
            return self.mem_per_trial_mb
        with self._peak_lock:
            return self._peak_mb * PEAK_MARGIN if self._peak_mb is not None else None

    # -- leasing ----------------------------------------------------------------------------
    def lock_path(self, gpu: int, slot: int) -> Path:
        """The lock file of one slot."""
        return self.lock_dir / f"gpu{gpu}.slot{slot}.lock"

    def _try_slot(self, gpu: int, slot: int) -> int | None:
        path = self.lock_path(gpu, slot)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        # Who holds it, for a person looking at the directory; the lock itself is what counts.
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {time.time():.3f}\n".encode(), 0)
        except OSError:
            pass
        return fd

    def _free_by_gpu(self) -> dict[int, float | None]:
        out: dict[int, float | None] = {}
        for g in self.gpus:
            try:
                out[g] = self.free_mb(g)
            except Exception as exc:  # a broken probe means "unknown", not "full"
                log.debug("free-memory probe of GPU %d failed: %s", g, exc)
                out[g] = None
        return out

    def try_acquire(self) -> Lease | None:
        """One attempt: a slot on a GPU with enough free memory (most free first), or None."""
        need = self.need_mb()
        free = self._free_by_gpu()
        # Most free memory first spreads trials over GPUs; unknown memory goes last.
        order = sorted(self.gpus, key=lambda g: (free[g] is None, -(free[g] or 0.0), g))
        for g in order:
            if need is not None and free[g] is not None and free[g] < need:
                continue
            for s in range(self.slots_per_gpu[g]):
                fd = self._try_slot(g, s)
                if fd is not None:
                    return Lease(device=f"cuda:{g}", gpu=g, slot=s, path=self.lock_path(g, s), _fd=fd)
        return None

    def acquire(self, timeout_s: float | None = None) -> Lease:
        """Wait for a slot on a GPU with enough free memory, polling at most every ``poll_s``.

        Args:
            timeout_s: give up after this many seconds (None: wait without limit).

        Returns:
            The held :class:`Lease` (a context manager that releases it).

        Raises:
            RuntimeError: there is no GPU to lease.
            TimeoutError: no slot came free in time; the message names every GPU with its busy
                slots, its free memory and the need.
        """
        if not self.gpus:
            raise RuntimeError("GpuSlots: no CUDA GPU is visible to this process; run on CPU (--device cpu) instead")
        t0 = time.monotonic()
        deadline = None if timeout_s is None else t0 + float(timeout_s)
        pause = 0.02
        while True:
            lease = self.try_acquire()
            if lease is not None:
                lease.waited_s = time.monotonic() - t0
                return lease
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(self._timeout_message(float(timeout_s or 0.0)))
            # Short pauses first (a slot is often freed within moments), then poll_s at most.
            pause = min(self.poll_s, pause * 2)
            time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - now)))

    def busy_slots(self, gpu: int) -> int:
        """How many of ``gpu``'s slots are held right now (by any process)."""
        busy = 0
        for s in range(self.slots_per_gpu.get(gpu, 0)):
            fd = self._try_slot(gpu, s)
            if fd is None:
                busy += 1
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        return busy

    def _timeout_message(self, timeout_s: float) -> str:
        need = self.need_mb()
        free = self._free_by_gpu()
        parts = []
        for g in self.gpus:
            mem = "free memory unknown" if free[g] is None else f"{free[g]:.0f} MiB free"
            parts.append(f"cuda:{g} ({self.busy_slots(g)}/{self.slots_per_gpu[g]} slots busy, {mem})")
        need_text = "unknown" if need is None else f"{need:.0f} MiB"
        return (
            f"no GPU slot free after {timeout_s:g} s: {'; '.join(parts)}; a trial needs {need_text}. "
            f"Lower --gpu-slots / --gpu-mem-per-trial, free GPU memory, or wait longer (locks in {self.lock_dir})"
        )


# ---------------------------------------------------------------------------------------------
# the objective wrapper
# ---------------------------------------------------------------------------------------------
class SlottedObjective:
    """Run an objective with a ``device`` on a leased GPU slot; other objectives run unchanged.

An objective without a ``device`` attribute (a function, a command), or one pinned to
``cpu``, is called as it is, without a slot.

    Per trial: lease a slot (waiting up to ``acquire_timeout_s``), run a shallow copy of
    ``inner`` with ``.device`` set to the lease's ``cuda:k``, and record the trial's peak CUDA
    memory (``torch.cuda.max_memory_allocated``, reset first) as
    ``outcome.extra["gpu_mem_peak_mb"]`` and in ``slots`` (the memory need of later trials).
    The peak is per process: with several trials in threads of one process it is an upper bound.

    A slot that does not come free in time makes the trial an ``error`` outcome (objectives
    never raise for a bad trial).

    Args:
        inner: the objective to run.
        slots: the machine's :class:`GpuSlots`.
        acquire_timeout_s: longest wait for a slot.
    """

    def __init__(self, inner: Objective, slots: GpuSlots, acquire_timeout_s: float | None = DEFAULT_ACQUIRE_TIMEOUT_S) -> None:
        self.inner = inner
        self.slots = slots
        self.acquire_timeout_s = acquire_timeout_s

    def __call__(self, config: dict[str, Any], reporter: Reporter, trial_dir: Path, seed: int) -> TrialOutcome:
        """Run one trial on a leased slot; see :class:`~speechtune.tuning.Objective`."""
        if not hasattr(self.inner, "device") or str(getattr(self.inner, "device")) == "cpu":
            return self.inner(config, reporter, trial_dir, seed)
        try:
            lease = self.slots.acquire(self.acquire_timeout_s)
        except (TimeoutError, RuntimeError) as exc:
            return TrialOutcome(ERROR, f"error: {exc}", extra={"output_dir": str(trial_dir)})
        with lease:
            clone = copy.copy(self.inner)
            clone.device = lease.device  # type: ignore[attr-defined]
            torch = _cuda_torch()
            measured = torch is not None and _reset_peak(torch, lease.device)
            try:
                outcome = clone(config, reporter, trial_dir, seed)
            finally:
                peak = None
                if measured:
                    peak = torch.cuda.max_memory_allocated(lease.device) / _MIB
                    # Give the cached blocks back: between trials a packed worker must not hold
                    # memory the next trial on this GPU (maybe another process's) needs.
                    torch.cuda.empty_cache()
            outcome.extra["gpu_slot"] = f"{lease.device}/slot{lease.slot}"
            outcome.extra["gpu_wait_s"] = round(lease.waited_s, 3)
            if peak is not None:
                outcome.extra["gpu_mem_peak_mb"] = round(peak, 1)
                self.slots.record_peak(peak)
        _write_gpu_record(Path(trial_dir), outcome.extra)
        return outcome


def _write_gpu_record(trial_dir: Path, extra: dict[str, Any]) -> None:
    """``gpu.json`` in the trial dir: slot, wait and peak memory, for benchmarks and post-mortems."""
    record = {k: extra[k] for k in ("gpu_slot", "gpu_wait_s", "gpu_mem_peak_mb") if k in extra}
    try:
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / "gpu.json").write_text(json.dumps(record))
    except OSError as exc:  # a convenience file; the trial's result matters more
        log.debug("could not write %s/gpu.json: %s", trial_dir, exc)


def _reset_peak(torch: Any, device: str) -> bool:
    """Reset the peak-memory counter of ``device``; False when statistics are unavailable.

    CUDA is initialised first: before the first allocation of a process the caching allocator
    has no per-device state and ``reset_peak_memory_stats`` fails with "Invalid device argument"
    (seen with torch 2.11 on an H200). Statistics are a convenience, never a reason to fail a trial.
    """
    try:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(torch.device(device))
        return True
    except (RuntimeError, AssertionError) as exc:
        log.debug("no peak-memory statistics on %s: %s", device, exc)
        return False


def _cuda_torch() -> Any | None:
    """torch when it has a usable CUDA device (peak-memory statistics), else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None
