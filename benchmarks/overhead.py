"""Orchestration overhead per trial: sampling + storage (+ MLflow tracking) with a trivial objective.

Runs a study of N trials whose objective does nothing but report a few epochs, and reports the
wall time per trial at several trial counts (the per-trial cost grows with the study's size,
because TPE and the storage read the history). Usage:

    python benchmarks/overhead.py [--trials 200] [--storage sqlite] [--tracking]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import optuna

from speechtune.track import StudyTracker
from speechtune.tuning.backends import run_study
from speechtune.tuning.objectives import FunctionObjective
from speechtune.tuning.spec import build_spec

SPACE = {
    "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "model.num_layers": [2, 3, 4, 6],
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "optim.name": ["adamw", "sgd"],
    "optim.momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optim.name": "sgd"}},
}


def trivial(config: dict, reporter) -> dict:
    # A smooth function of the config, reported over 3 "epochs", so the pruner has work to do.
    x = math.log10(config["optim.lr"]) + 2.5
    wer = 0.2 + x * x * 0.05 + 0.01 * config["model.num_layers"] + config["model.dropout"] * 0.1
    for epoch in (1, 2, 3):
        if reporter.report(epoch, wer=wer + 0.1 / epoch):
            break
    return {"wer": wer}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--storage", default="sqlite", choices=["sqlite", "journal", "memory"])
    ap.add_argument(
        "--tracking", action="store_true", help="also log every trial to a local MLflow store"
    )
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        storage = {"sqlite": None, "journal": "journal", "memory": "memory"}[args.storage]
        spec = build_spec(
            SPACE, n_trials=args.trials, sampler="tpe", pruner="median", storage=storage
        )
        tracker = StudyTracker(None, "overhead", run_dir) if args.tracking else None
        t0 = time.perf_counter()
        study = run_study(
            spec, FunctionObjective(trivial), run_dir, tracker=tracker, progress=False
        )
        total = time.perf_counter() - t0
        trials = study.trials  # read before the temporary storage goes away
    # Growth with study size: mean gap between consecutive trial completions in each window.
    ends = sorted(t.datetime_complete for t in trials if t.datetime_complete is not None)
    windows = {}
    for lo in range(0, len(ends), 50):
        chunk = ends[lo : lo + 50]
        if len(chunk) >= 2:
            gap = (chunk[-1] - chunk[0]).total_seconds() / (len(chunk) - 1)
            windows[f"trials {lo + 1}-{lo + len(chunk)}"] = round(1000 * gap, 2)
    record = {
        "trials": len(trials),
        "storage": args.storage,
        "tracking": args.tracking,
        "ms_per_trial_overall": round(1000 * total / max(len(trials), 1), 2),
        "ms_per_trial_by_window": windows,
    }
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
