"""``speechtune evaluate``: WER/CER/latency of a trained model on a manifest.

The only command that may read a test split.
"""

from __future__ import annotations

import argparse
import json

HELP = "WER/CER/latency of a trained model on a manifest"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``speechtune evaluate``."""
    p.add_argument("--checkpoint", required=True, help="model.pt written by `speechtune train`")
    p.add_argument("--data", required=True, help="JSONL/CSV/Kaldi dir/lhotse manifest")
    p.add_argument("--split", default="test", help="label of this data (default: %(default)s)")
    p.add_argument("--name", default=None, help="name of the result file eval_<name>.json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-bad", action="store_true", help="skip (and list) bad utterances")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the result as JSON; 0."""
    from speechtune.data import load_manifest
    from speechtune.inference import evaluate_model

    manifest = load_manifest(args.data, split=args.split)
    result = evaluate_model(
        args.checkpoint, manifest, device=args.device, name=args.name, skip_bad=args.skip_bad
    )
    print(json.dumps({k: v for k, v in result.items() if k != "skipped"}, indent=2))
    return 0
