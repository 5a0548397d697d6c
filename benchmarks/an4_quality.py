"""AN4 quality: train the AN4 recipe on the AN4 training split (minus a speaker-disjoint dev
split) and report dev WER, epochs and wall time. The AN4 test split is never read.

    python benchmarks/an4_quality.py --root /path/to/an4 [--device cuda] [--set train.epochs=60]
"""

from __future__ import annotations

import argparse
import json
import logging
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
    ap.add_argument("--root", default="../shared/data/an4", help="local AN4 distribution")
    ap.add_argument("--config", default="conf/an4.yaml")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--out", default="runs/bench_an4")
    ap.add_argument("--cache-dir", default=".cache/speechtune")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    cfg = load_config(args.config, [f"data.root={args.root}", *args.set])
    device = resolve_device(args.device)
    opts = RunOptions(
        output_dir=args.out, device=str(device), cache_dir=args.cache_dir, num_threads=args.threads
    )
    t0 = time.perf_counter()
    result = train(cfg, opts)
    wall = time.perf_counter() - t0
    m = result.metrics
    record = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "status": result.status,
        "reason": result.reason,
        "epochs": len(result.history),
        "best_epoch": m.get("best_epoch"),
        "dev_wer": m.get("wer"),
        "dev_cer": m.get("cer"),
        "group_wer": m.get("group_wer"),
        "wall_seconds_total": wall,
        "train_seconds": sum(r["epoch_seconds"] for r in result.history),
        "audio_seconds_per_second": [
            round(r["audio_seconds_per_second"], 1) for r in result.history
        ][-3:],
        "wer_curve": [round(r["wer"], 4) for r in result.history],
        "num_parameters": m.get("num_parameters"),
        "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else None,
        "overrides": args.set,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "an4_quality.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
