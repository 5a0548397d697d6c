"""NVML (nvidia-ml-py) access shared by the cost meter, the utilisation monitor and GPU packing.

Everything imports pynvml (and torch, as a fallback) lazily and nothing raises when there is no
NVIDIA driver: callers get None, ``[]`` or a reason instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

__all__ = [
    "device_name",
    "gpu_free_mb",
    "gpus_for_device",
    "load_nvml",
    "nvml_handles",
    "shutdown_nvml",
    "visible_gpus",
    "visible_nvml_ids",
]

_MIB = 2**20


def load_nvml() -> tuple[Any | None, str]:
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


def visible_nvml_ids(n_nvml: int) -> list[str | int]:
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


def nvml_handles(nvml: Any, gpus: Sequence[int] | None) -> dict[int, Any]:
    """NVML handles by CUDA index (of the devices this process sees)."""
    ids = visible_nvml_ids(int(nvml.nvmlDeviceGetCount()))
    wanted = range(len(ids)) if gpus is None else gpus
    handles: dict[int, Any] = {}
    for k in wanted:
        if k < 0 or k >= len(ids):
            raise ValueError(
                f"gpus: CUDA device {k} does not exist (this process sees {len(ids)} GPUs)"
            )
        ident = ids[k]
        handles[k] = (
            nvml.nvmlDeviceGetHandleByIndex(ident)
            if isinstance(ident, int)
            else nvml.nvmlDeviceGetHandleByUUID(ident)
        )
    return handles


def device_name(nvml: Any, handle: Any) -> str:
    """The GPU's name as NVML reports it (``?`` when it cannot be read)."""
    try:
        name = nvml.nvmlDeviceGetName(handle)
    except Exception:  # a name is decoration
        return "?"
    return name.decode() if isinstance(name, bytes) else str(name)


def shutdown_nvml(nvml: Any) -> None:
    """``nvmlShutdown``, best effort (shutting down a half-initialised NVML may fail)."""
    try:
        nvml.nvmlShutdown()
    except Exception:  # best effort
        pass


def gpu_free_mb(gpu: int) -> float | None:
    """Free memory of CUDA device ``gpu`` in MiB (NVML, else torch), None when unknown.

    NVML is asked first because it creates no CUDA context; ``torch.cuda.mem_get_info`` does
    (a few hundred MiB on the GPU), which is only acceptable in a process that trains anyway.
    """
    nvml, _ = load_nvml()
    if nvml is not None:
        try:
            handle = nvml_handles(nvml, [gpu])[gpu]
            return float(nvml.nvmlDeviceGetMemoryInfo(handle).free) / _MIB
        except Exception:
            pass
        finally:
            shutdown_nvml(nvml)
    try:
        import torch

        if torch.cuda.is_available():
            return float(torch.cuda.mem_get_info(gpu)[0]) / _MIB
    except Exception:  # no CUDA build / no device: the need cannot be checked
        pass
    return None


def visible_gpus() -> list[int]:
    """CUDA indices of the GPUs this process sees (NVML, else torch); [] without any."""
    nvml, _ = load_nvml()
    if nvml is not None:
        try:
            return list(range(len(visible_nvml_ids(int(nvml.nvmlDeviceGetCount())))))
        except Exception:
            pass
        finally:
            shutdown_nvml(nvml)
    try:
        import torch

        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    except ImportError:
        return []


# ---------------------------------------------------------------------------------------------


def gpus_for_device(device: str | None) -> list[int] | None:
    """The CUDA indices a trial on ``device`` uses.

    ``cpu`` (or any non-CUDA device) -> ``[]``; ``cuda:k`` -> ``[k]``; ``cuda``/``auto`` ->
    ``[0]`` when a GPU is visible (torch's default device), else ``[]``; None (an objective that
    does not say, e.g. an external command) -> None: every GPU NVML shows this process.
    """
    if device is None:
        return None
    device = str(device)
    if device.startswith("cuda:"):
        try:
            return [int(device.split(":", 1)[1])]
        except ValueError:
            return None
    if device in ("cuda", "auto"):
        return [0] if visible_gpus() else []
    return []
