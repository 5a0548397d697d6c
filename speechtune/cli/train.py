"""``speechtune train``: train the ASR recipe from a config."""

from __future__ import annotations

import argparse
from pathlib import Path

from speechtune.cli._common import add_run_arguments, run_options

HELP = "train the ASR recipe from a config"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``speechtune train``."""
    p.add_argument("--config", default=None, help="recipe YAML (default: built-in defaults)")
    p.add_argument(
        "--set",
        nargs="*",
        action="extend",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. model.num_layers=6",
    )
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    add_run_arguments(p, "runs/train")


def run(args: argparse.Namespace) -> int:
    """Train; 0 when the run completed, 2 otherwise (diverged, flatline, oom)."""
    from speechtune.config import load_config
    from speechtune.training import train

    cfg = load_config(args.config, args.set or ())
    result = train(cfg, run_options(args))
    m = result.metrics
    print(f"status: {result.status} ({result.reason})")
    if m:
        print(
            f"dev WER {m['wer']:.4f}  CER {m['cer']:.4f}  worst-group WER {m['worst_group_wer']:.4f} "
            f"({m['worst_group']})  params {m['num_parameters']:,}  "
            f"latency {m['latency_ms_per_audio_s']:.1f} ms per audio second"
        )
        sparsity = f"  sparsity {m['sparsity']:.3f}" if "sparsity" in m else ""
        print(
            f"size {m['model_size_mb']:.2f} MB ({cfg.edge.quantize})  1-thread CPU latency "
            f"{m['cpu_latency_ms_per_audio_s']:.1f} ms per audio second{sparsity}"
        )
        out = Path(args.run_dir)
        print(
            f"model: {out / 'model.pt'}   metrics: {out / 'metrics.json'}   log: {out / 'train.log'}"
        )
    return 0 if result.ok else 2
