"""Training throughput and peak memory of a recipe (default: the CPU-sized synthetic recipe).

Measures steady-state epochs only (the first epoch pays for feature caching and warm-up), and
writes a JSON record. Usage:

    python benchmarks/throughput.py [--config conf/synthetic.yaml] [--epochs 3] [--device auto]
        [--set key=value ...] [--out runs/bench_throughput]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from speechtune.config import RunOptions, load_config
from speechtune.training import train
from speechtune.training._loop import resolve_device


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default="conf/synthetic.yaml")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--out", default="runs/bench_throughput")
    args = ap.parse_args()

    cfg = load_config(
        args.config, [*args.set, f"train.epochs={args.epochs}", "train.flatline_patience=0"]
    )
    device = resolve_device(args.device)
    opts = RunOptions(
        output_dir=args.out, device=str(device), num_threads=args.threads, progress=False
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = train(cfg, opts)
    wall = time.perf_counter() - t0
    steady = result.history[1:] or result.history
    record = {
        "config": args.config,
        "overrides": args.set,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "epochs": len(result.history),
        "status": result.status,
        "audio_seconds_per_second": statistics.median(
            r["audio_seconds_per_second"] for r in steady
        ),
        "utterances_per_second": statistics.median(r["utterances_per_second"] for r in steady),
        "epoch_seconds": statistics.median(r["epoch_seconds"] for r in steady),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else None,
        "wall_seconds": wall,
        "dev_wer": result.metrics.get("wer"),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "throughput.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
