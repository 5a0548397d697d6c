"""``speechtune nas``: search the encoder's blocks (DARTS or weight sharing) and derive a recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from speechtune.cli._common import add_run_arguments, run_options

HELP = "architecture search over the encoder's blocks; writes the derived recipe"
DESCRIPTION = (
    "Train a supernet whose encoder blocks mix candidate ops (DARTS) or share weights among "
    "sampled paths (weight sharing), derive one op per block, and write it as a recipe "
    "(RUN_DIR/derived.yaml) that `speechtune train --config` trains. See docs/nas.md."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``speechtune nas``."""
    p.add_argument("--config", required=True, help="NAS YAML, e.g. conf/nas_darts.yaml")
    p.add_argument(
        "--set",
        nargs="*",
        action="extend",
        metavar="KEY=VALUE",
        help="dotted overrides of the NAS file, e.g. search.epochs=2 overrides.train.epochs=4",
    )
    p.add_argument(
        "--retrain",
        action="store_true",
        help="retrain the derived recipe from scratch (as retrain.enabled: true)",
    )
    add_run_arguments(p, "runs/nas")


def run(args: argparse.Namespace) -> int:
    """Search, derive, optionally retrain; 0 when done."""
    import dataclasses

    from speechtune.nas import load_nas_config, run_nas

    cfg = load_nas_config(args.config, args.set or ())
    if args.retrain:
        cfg = dataclasses.replace(cfg, retrain=dataclasses.replace(cfg.retrain, enabled=True))
    opts = run_options(args)
    result = run_nas(cfg, args.run_dir, opts, progress=None if args.quiet else print)
    s = result.summary
    out = Path(args.run_dir)
    print(f"method: {result.method}  ({s.get('stop_reason', '')})")
    print(f"derived block_ops: {s['block_ops']}  ->  {out / 'derived.yaml'}")
    if "spearman_all_trained" in s:
        rho = s["spearman_all_trained"]["rho"]
        n = s["spearman_all_trained"]["n"]
        print(
            f"shared-weight vs stand-alone Spearman: {rho if rho is None else f'{rho:.2f}'} (n={n})"
        )
    if "retrain" in s:
        wer = s["retrain"]["wer"]
        se = "" if wer["se"] is None else f" +- {wer['se']:.4f}"
        print(
            f"retrained over {len(s['retrain']['runs'])} seed(s): dev WER {wer['mean']:.4f}{se}  "
            f"params {s['retrain']['num_parameters']:,}"
        )
    print(
        f"summary: {out / 'summary.json'}   train it: speechtune train --config {out / 'derived.yaml'}"
    )
    return 0
