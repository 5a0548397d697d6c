"""The machine's accelerators: NVML discovery, free memory and a utilisation monitor (no torch needed)."""

from speechtune.devices._monitor import GpuMonitor
from speechtune.devices._nvml import (
    device_name,
    gpu_free_mb,
    gpus_for_device,
    load_nvml,
    nvml_handles,
    shutdown_nvml,
    visible_gpus,
    visible_nvml_ids,
)

__all__ = [
    "GpuMonitor",
    "device_name",
    "gpu_free_mb",
    "gpus_for_device",
    "load_nvml",
    "nvml_handles",
    "shutdown_nvml",
    "visible_gpus",
    "visible_nvml_ids",
]
