"""Parallel recipe trials: threads of one process against one child process per trial.

A study with ``n_jobs`` > 1 runs its trials concurrently. As threads of one interpreter they
take turns on the GIL wherever training runs Python (the loop, the loader, the optimiser); as
child processes (``RecipeObjective(isolate=True)``, what ``device_slots`` now gives parallel
trials) they do not. This runs the same ``--parallel`` trials (same config, seeds 1..N) both
ways, one way after the other, and reports the wall time of each batch, so the two are compared
on the same machine in the same run. It also trains each seed alone (the reference: what
``speechtune train`` gives for that config and seed) and records which way reproduces it:
threads share torch's process-wide random generator, so a trial's result depends on what the
other threads draw. Usage:

    python benchmarks/parallel_trials.py [--config conf/synthetic.yaml] [--parallel 2]
        [--threads 1] [--set train.epochs=3 ...] [--record benchmarks/data/parallel_trials_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # an uninstalled checkout works too

from speechtune.config import config_to_dict, load_config  # noqa: E402
from speechtune.training import NullReporter  # noqa: E402
from speechtune.tuning.objectives import RecipeObjective  # noqa: E402


def run_batch(objective: RecipeObjective, n: int, out: Path) -> dict[str, Any]:
    """``n`` trials at once (threads of this process; each one a child when ``isolate``)."""
    results: list[Any] = [None] * n

    def one(k: int) -> None:
        results[k] = objective({}, NullReporter(), out / f"trial{k}", k + 1)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    return {
        "wall_seconds": wall,
        "status": [r.status for r in results],
        "wer": [r.metrics.get("wer") for r in results],
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default="conf/synthetic.yaml")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", nargs="*", default=["train.epochs=3"])
    ap.add_argument("--cache-dir", default=".cache/speechtune")
    ap.add_argument("--record", default=None, help="write the figures to this JSON file")
    args = ap.parse_args()

    base = config_to_dict(load_config(args.config, args.set))
    record: dict[str, Any] = {
        "config": args.config,
        "overrides": args.set,
        "parallel": args.parallel,
        "threads_per_trial": args.threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }
    # Corpus and feature caches are filled once first, so neither way pays for them.
    warm = RecipeObjective(base, device=args.device, cache_dir=args.cache_dir, num_threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        warm({"train.epochs": 1}, NullReporter(), Path(tmp) / "warm", 0)
        for name, isolate in (("threads", False), ("processes", True)):
            obj = RecipeObjective(
                base,
                device=args.device,
                cache_dir=args.cache_dir,
                num_threads=args.threads,
                isolate=isolate,
            )
            record[name] = run_batch(obj, args.parallel, Path(tmp) / name)
            print(f"{name}: {record[name]['wall_seconds']:.1f} s, WER {record[name]['wer']}")
        alone = RecipeObjective(
            base, device=args.device, cache_dir=args.cache_dir, num_threads=args.threads
        )
        record["alone_wer"] = [
            alone({}, NullReporter(), Path(tmp) / f"alone{k}", k + 1).metrics.get("wer")
            for k in range(args.parallel)
        ]
    for name in ("threads", "processes"):
        record[name]["reproduces_alone"] = record[name]["wer"] == record["alone_wer"]
        print(f"{name} reproduce each trial run alone: {record[name]['reproduces_alone']}")
    record["speedup"] = record["threads"]["wall_seconds"] / record["processes"]["wall_seconds"]
    print(f"processes vs threads: {record['speedup']:.2f}x faster")
    if args.record:
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
        Path(args.record).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
