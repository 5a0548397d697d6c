"""GPU packing on one machine: slots shared by worker processes, memory-aware leasing.

Small proxy trials leave most of a modern GPU idle: one trial at a time is bounded by Python,
kernel launches and data movement, not by the GPU. Running several trials on one GPU at once
fills the gaps:

* :class:`GpuSlots`: ``slots_per_gpu`` lock files per GPU under a directory shared by every
  worker *process* on the machine. A trial holds one ``fcntl.flock`` lock while it runs; the
  kernel drops the lock when its process dies, even by SIGKILL, so a crashed worker never
  leaks a slot. A GPU whose free memory is below what a trial needs is skipped.
* :class:`SlottedObjective`: an :class:`~speechtune.tuning.objectives.Objective` that leases a
  slot, runs the wrapped objective on the leased ``cuda:k``, and records the trial's peak CUDA
  memory.

Utilisation is sampled by :class:`speechtune.devices.GpuMonitor`. Nothing here raises when
there is no NVIDIA driver.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speechtune.tuning.objectives import ERROR, TrialOutcome

if TYPE_CHECKING:
    from speechtune.training import Reporter
    from speechtune.tuning.objectives import Objective
from speechtune.devices import gpu_free_mb, visible_gpus

log = logging.getLogger(__name__)

_MIB = 2**20


#: Slots per GPU when neither ``slots_per_gpu`` nor the memory a trial needs is known.
DEFAULT_SLOTS_PER_GPU = 4


#: Upper bound on the slots derived from free memory (a tiny per-trial need would give thousands).
MAX_SLOTS_PER_GPU = 64


#: Safety factor on a measured peak before it is used as the memory a trial needs.
PEAK_MARGIN = 1.2


#: Default wait for a slot inside a study: trials queue behind each other for a long time.
DEFAULT_ACQUIRE_TIMEOUT_S = 6 * 3600.0


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
            raise ValueError(
                f"mem_per_trial_mb (--gpu-mem-per-trial) must be > 0 MiB, got {mem_per_trial_mb!r}"
            )
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
            free_mb = free[g]
            if need is not None and free_mb is not None and free_mb < need:
                continue
            for s in range(self.slots_per_gpu[g]):
                fd = self._try_slot(g, s)
                if fd is not None:
                    return Lease(
                        device=f"cuda:{g}", gpu=g, slot=s, path=self.lock_path(g, s), _fd=fd
                    )
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
            raise RuntimeError(
                "GpuSlots: no CUDA GPU is visible to this process; run on CPU (--device cpu) instead"
            )
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
            parts.append(
                f"cuda:{g} ({self.busy_slots(g)}/{self.slots_per_gpu[g]} slots busy, {mem})"
            )
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

    def __init__(
        self,
        inner: Objective,
        slots: GpuSlots,
        acquire_timeout_s: float | None = DEFAULT_ACQUIRE_TIMEOUT_S,
    ) -> None:
        self.inner = inner
        self.slots = slots
        self.acquire_timeout_s = acquire_timeout_s

    def __call__(
        self, config: dict[str, Any], reporter: Reporter, trial_dir: Path, seed: int
    ) -> TrialOutcome:
        """Run one trial on a leased slot; see :class:`~speechtune.tuning.Objective`."""
        if not hasattr(self.inner, "device") or str(self.inner.device) == "cpu":
            return self.inner(config, reporter, trial_dir, seed)
        try:
            lease = self.slots.acquire(self.acquire_timeout_s)
        except (TimeoutError, RuntimeError) as exc:
            return TrialOutcome(ERROR, f"error: {exc}", extra={"output_dir": str(trial_dir)})
        with lease:
            clone = copy.copy(self.inner)
            clone.device = lease.device
            torch = _cuda_torch()
            measured = torch is not None and _reset_peak(torch, lease.device)
            try:
                outcome = clone(config, reporter, trial_dir, seed)
            finally:
                peak = None
                if measured and torch is not None:
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
