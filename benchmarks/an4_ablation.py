"""AN4 recipe ablation: each recipe change trained on its own, same seed, same epochs, dev WER.

Trains ``conf/an4.yaml`` (AN4 training split minus the speaker-disjoint dev split; the test split
is never read) once per variant and appends one JSON line per variant to ``--record``. A variant
already in the record with the same epochs and seed is skipped, so an interrupted ablation
resumes. Checkpoint averaging costs no training of its own: every run keeps its 5 best epochs
(``train.average_best: 5``) and reports both the best single epoch's dev WER and the final
(averaged when no worse) model's.

    python benchmarks/an4_ablation.py --epochs 20 --threads 2 \\
        --variants base,rel_pos,speed_perturb --record benchmarks/data/an4_ablation_cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from speechtune.config import RunOptions, load_config
from speechtune.training import train
from speechtune.training._loop import resolve_device

#: Each variant's overrides on top of the recipe (and of --set).
VARIANTS: dict[str, list[str]] = {
    "base": [],
    "rel_pos": ["model.pos_enc=rel"],
    "speed_perturb": ["data.speed_perturb=[0.9,1.0,1.1]"],
    "rel_pos+speed_perturb": ["model.pos_enc=rel", "data.speed_perturb=[0.9,1.0,1.1]"],
    "interctc": ["model.interctc_weight=0.3"],
    "speed_perturb+interctc": ["data.speed_perturb=[0.9,1.0,1.1]", "model.interctc_weight=0.3"],
    "no_specaugment": ["specaugment.enabled=false"],
    "ctc_only": ["model.head=ctc"],
}


def _recorded(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_variant(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Train one variant and return its record."""
    overrides = [
        f"data.root={args.root}",
        f"train.epochs={args.epochs}",
        f"seed={args.seed}",
        "train.average_best=5",
        *args.set,
        *VARIANTS[name],
    ]
    cfg = load_config(args.config, overrides)
    opts = RunOptions(
        output_dir=str(Path(args.out) / name),
        device=str(device),
        cache_dir=args.cache_dir,
        num_threads=args.threads,
        progress=False,
    )
    t0 = time.perf_counter()
    result = train(cfg, opts)
    wall = time.perf_counter() - t0
    m = result.metrics
    best = min(result.history, key=lambda r: (r["wer"], r["dev_loss"]))
    return {
        "variant": name,
        "overrides": VARIANTS[name],
        "epochs": args.epochs,
        "seed": args.seed,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": args.threads,
        "status": result.status,
        "best_epoch": best["epoch"],
        "best_epoch_wer": best["wer"],
        "final_wer": m.get("wer"),
        "final_cer": m.get("cer"),
        "averaged_epochs": m.get("averaged_epochs"),
        "group_wer": m.get("group_wer"),
        "worst_group_wer": m.get("worst_group_wer"),
        "num_parameters": m.get("num_parameters"),
        "train_seconds": sum(r["epoch_seconds"] for r in result.history),
        "wall_seconds": wall,
        "wer_curve": [round(r["wer"], 4) for r in result.history],
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--root", default="../shared/data/an4", help="local AN4 distribution")
    ap.add_argument("--config", default="conf/an4.yaml")
    ap.add_argument("--variants", default="base,rel_pos,speed_perturb")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every variant")
    ap.add_argument("--out", default="runs/an4_ablation")
    ap.add_argument("--record", default="benchmarks/data/an4_ablation_cpu.jsonl")
    ap.add_argument("--cache-dir", default=".cache/speechtune")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    device = resolve_device(args.device)
    record = Path(args.record)
    done = {(r["variant"], r["epochs"], r["seed"], r.get("device")) for r in _recorded(record)}
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    for name in names:
        if (name, args.epochs, args.seed, dev_name) in done:
            print(f"{name}: already recorded in {record}")
            continue
        rec = run_variant(name, args, device)
        record.parent.mkdir(parents=True, exist_ok=True)
        with record.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(
            f"{name}: best epoch {rec['best_epoch']} WER {rec['best_epoch_wer']:.4f}, "
            f"final WER {rec['final_wer']:.4f} (averaged {rec['averaged_epochs']}), "
            f"{rec['wall_seconds'] / 60:.1f} min"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
