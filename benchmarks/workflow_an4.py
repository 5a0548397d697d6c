"""The production workflow on real speech: CMU AN4, with a golden set of held-out speakers.

AN4's own test split is withheld here, so the golden set is carved from the training split by
speaker (``--golden-speakers``, half female, half male, seeded): no utterance and no speaker of
it is in the data the workflow trains, tunes or selects on. The workflow then runs every stage
(proxy subset, baseline, coarse random search, fine TPE search in the narrowed region,
multi-seed validation, full training, gating against the registry's champion, export) with
the AN4 recipe and search space of ``conf/tuning_an4.yaml``, at a budget set on the command line.

    python benchmarks/workflow_an4.py --an4-dir ../shared/data/an4 --device cuda --out runs/bench_workflow_an4
    python benchmarks/workflow_an4.py --an4-dir ../shared/data/an4 --device cpu --smoke   # a few minutes

Writes ``<out>/workflow_an4.json`` (the WER path, the validation test, the gating decision and
every stage's cost) and leaves the workflow's run directory (``report.html``, ``report.md``) in
``<out>/run``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # an uninstalled checkout (the GPU machine) works too


def carve_golden(
    an4_dir: Path, out: Path, cache: Path, n_speakers: int, seed: int
) -> tuple[Path, Path, dict[str, Any]]:
    """Write ``train.jsonl`` and ``held/set.jsonl`` (golden): whole speakers, balanced by group."""
    from speechtune.data import Manifest, import_an4

    train = import_an4(an4_dir, cache / "corpora" / "an4")["train"]
    rng = random.Random(seed)
    held: set[str] = set()
    groups = train.groups
    for i, group in enumerate(groups):
        speakers = sorted({u.speaker for u in train if u.group == group})
        k = n_speakers // len(groups) + (1 if i < n_speakers % len(groups) else 0)
        held.update(rng.sample(speakers, k))
    rest = train.filter(lambda u: u.speaker not in held)
    golden = Manifest([u for u in train if u.speaker in held], "all", train.root)
    paths = out / "data" / "train.jsonl", out / "held" / "set.jsonl"
    rest.to_jsonl(paths[0])
    golden.to_jsonl(paths[1])
    info = {
        "train_utterances": len(rest),
        "train_speakers": len(rest.speakers),
        "golden_utterances": len(golden),
        "golden_speakers": sorted(held),
        "golden_hours": round(golden.hours, 4),
    }
    return paths[0], paths[1], info


def write_configs(
    args: argparse.Namespace, train_manifest: Path, golden_manifest: Path, conf: Path
) -> Path:
    """A tuning YAML (conf/tuning_an4.yaml's space, on the carved training manifest) and the workflow YAML."""
    conf.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load((ROOT / "conf" / "tuning_an4.yaml").read_text())
    tuning = {
        "recipe": str(ROOT / "conf" / "an4.yaml"),
        "overrides": {
            **base.get("overrides", {}),
            "train.epochs": args.epochs,
            "data.corpus": "manifest",
            "data.manifest": str(train_manifest),
            "data.root": None,
        },
        "space": base["space"],
        "constraints": base.get("constraints", []),
        "study": {"name": "an4-workflow", "seed": 0},
        "objective": {"kind": "recipe", "metric": "wer", "seeds": [42]},
    }
    (conf / "tuning.yaml").write_text(yaml.safe_dump(tuning, sort_keys=False))
    workflow = {
        "name": "an4-workflow",
        "tuning": "tuning.yaml",
        "proxy": {"fraction": args.proxy},
        "coarse": {"n_trials": args.coarse, "sampler": "random", "pruner": "none", "top_k": 5},
        "fine": {"n_trials": args.fine, "sampler": "tpe", "pruner": "median"},
        "validation": {"top_k": args.top_k, "seeds": args.seeds},
        "full": {
            "overrides": {"train.epochs": args.full_epochs},
            "baseline": not args.no_full_baseline,
        },
        "golden": {"manifest": str(golden_manifest)},
        "gating": {
            "model_name": "an4-asr",
            "margin": 0.005,
            "registry_dir": str(args.out / "registry"),
        },
        "export": {"format": "torchscript"},
    }
    path = conf / "workflow.yaml"
    path.write_text(yaml.safe_dump(workflow, sort_keys=False))
    return path


def digest(state: dict[str, Any]) -> dict[str, Any]:
    """The figures worth keeping from a finished workflow's state."""
    st = state["stages"]

    def res(name: str) -> dict[str, Any]:
        return st.get(name, {}).get("result") or {}

    val = res("validate")
    winner = next((c for c in val.get("candidates", []) if c["name"] == val.get("winner")), {})
    return {
        "wer_path": {
            "baseline_proxy_dev": res("baseline").get("value"),
            "coarse_best_proxy_dev": (res("coarse").get("best") or {}).get("value"),
            "fine_best_proxy_dev": (res("fine").get("best") or {}).get("value"),
            "validation_winner_mean_proxy_dev": winner.get("mean"),
            "validation_winner_std": winner.get("std"),
            "full_dev": res("full").get("value"),
            "golden": (res("gate").get("challenger") or {}).get("wer"),
        },
        "validation": {
            "winner": val.get("winner"),
            "candidates": [
                {k: c[k] for k in ("name", "values", "mean", "std")}
                for c in val.get("candidates", [])
            ],
            "test": val.get("test"),
        },
        "gate": {k: res("gate").get(k) for k in ("promoted", "decision", "registered_version")},
        "narrowed": res("fine").get("narrowed"),
        "stages": {
            name: {"status": rec.get("status"), "cost": rec.get("cost")}
            for name, rec in st.items()
        },
        "cost_total": state.get("cost_total"),
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--an4-dir", type=Path, default=ROOT.parent / "shared" / "data" / "an4")
    p.add_argument("--out", type=Path, default=Path("runs/bench_workflow_an4"))
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", type=Path, default=None, help="default: <out>/cache")
    p.add_argument("--golden-speakers", type=int, default=8)
    p.add_argument("--proxy", type=float, default=0.3)
    p.add_argument("--coarse", type=int, default=12)
    p.add_argument("--fine", type=int, default=12)
    p.add_argument("--epochs", type=int, default=10, help="epochs of a search/validation trial")
    p.add_argument("--full-epochs", type=int, default=30)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--seed", type=int, default=0, help="picks the golden speakers")
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes for the searches (GPU packing)"
    )
    p.add_argument(
        "--no-full-baseline",
        action="store_true",
        help="skip training the defaults at full fidelity in stage 6",
    )
    p.add_argument("--smoke", action="store_true", help="tiny budget (CPU check of the script)")
    args = p.parse_args()
    if args.smoke:
        (
            args.coarse,
            args.fine,
            args.epochs,
            args.full_epochs,
            args.top_k,
            args.seeds,
            args.proxy,
        ) = 2, 2, 1, 1, 1, [1, 2], 0.1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from speechtune.workflow import load_workflow, run_workflow, summary

    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.cache_dir or args.out / "cache"
    train_manifest, golden_manifest, split_info = carve_golden(
        args.an4_dir, args.out, cache, args.golden_speakers, args.seed
    )
    config = write_configs(args, train_manifest, golden_manifest, args.out / "conf")
    t0 = time.perf_counter()
    state = run_workflow(
        load_workflow(config),
        args.out / "run",
        device=args.device,
        cache_dir=cache,
        workers=args.workers,
    )
    wall = time.perf_counter() - t0
    result = {
        "benchmark": "workflow_an4",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "device": args.device,
        "gpu": _gpu_name(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "split": split_info,
        "wall_s": round(wall, 1),
        **digest(state.data),
    }
    (args.out / "workflow_an4.json").write_text(json.dumps(result, indent=2, default=str))
    print(summary(state))
    print(f"wrote {args.out / 'workflow_an4.json'}")
    return 0


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # a benchmark record, not a requirement
        return None


if __name__ == "__main__":
    sys.exit(main())
