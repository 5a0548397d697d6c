"""What a training run ran on: ``environment.json`` beside its ``model.pt``.

A training run is deterministic on one machine (same config, seed and thread count give the
same weights bit for bit), but the same config and seed can train to a different WER elsewhere:
another CPU instruction set (AVX2 against AVX-512 kernels sum in another order), another
torch, another number of intra-op threads, or other input data under the same corpus name (a
stale feature cache). Each run therefore records those facts, and ``speechtune rerun`` compares
the rerun's record with the trial's, so that a rerun which does not reproduce says *what*
differed instead of leaving the user to guess.

The data part is a content hash: the utterances (ids, texts, durations, in id order) and the
bytes of every feature matrix the run trained and selected on (speed-perturbed copies
included). Paths are left out, so the same corpus imported into another checkout hashes the
same.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speechtune._version import __version__
from speechtune.config import flatten

if TYPE_CHECKING:  # reading and comparing records (`speechtune rerun`) needs no torch
    import torch

    from speechtune.data import Manifest

#: The file a training run writes into its output dir.
ENVIRONMENT_FILE = "environment.json"


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), or what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def manifest_digest(manifest: Manifest) -> str:
    """A hash of the utterances' ids, texts and durations (not paths), in id order."""
    h = hashlib.sha256()
    for u in sorted(manifest, key=lambda u: u.id):
        h.update(json.dumps([u.id, u.text, round(u.duration, 4)]).encode())
    return h.hexdigest()[:16]


def features_digest(feats: Mapping[str, torch.Tensor]) -> str:
    """A hash of the feature matrices' bytes, shapes and dtypes, in id order."""
    import torch

    h = hashlib.sha256()
    for key in sorted(feats):
        x = feats[key].detach().to("cpu").contiguous()
        h.update(f"{key}:{tuple(x.shape)}:{x.dtype}".encode())
        h.update(x.reshape(-1).view(torch.uint8).numpy().data)  # raw bytes, any dtype
    return h.hexdigest()[:16]


def run_environment(
    device: torch.device,
    train_set: Manifest,
    dev_set: Manifest,
    train_feats: Mapping[str, torch.Tensor],
    dev_feats: Mapping[str, torch.Tensor],
) -> dict[str, Any]:
    """The software, hardware and data a training run ran with (see the module docstring)."""
    import numpy as np
    import torch

    env: dict[str, Any] = {
        "speechtune": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "system": f"{platform.system()} {platform.machine()}",
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": device.type,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    env["data"] = {
        "train_utterances": len(train_set),
        "dev_utterances": len(dev_set),
        "train_manifest": manifest_digest(train_set),
        "dev_manifest": manifest_digest(dev_set),
        "train_features": features_digest(train_feats),
        "dev_features": features_digest(dev_feats),
    }
    return env


def write_environment(out_dir: Path, env: Mapping[str, Any]) -> None:
    """Write ``environment.json`` into ``out_dir``."""
    (Path(out_dir) / ENVIRONMENT_FILE).write_text(json.dumps(env, indent=2, sort_keys=True) + "\n")


def read_environment(run_dir: str | Path) -> dict[str, Any] | None:
    """A run's ``environment.json``; None when it has none (older runs, command objectives)."""
    path = Path(run_dir) / ENVIRONMENT_FILE
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def environment_differences(then: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """One line per fact that differs between two records: ``key: now (trial: then)``."""
    a, b = flatten(then), flatten(now)
    return [
        f"{key}: {b.get(key, '-')} (trial: {a.get(key, '-')})"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]
