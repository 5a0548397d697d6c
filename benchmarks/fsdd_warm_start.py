"""Warm-starting a study from another corpus (issue 17): FSDD studies cold, with recipe priors,
and warm-started from an AN4 study, at equal compute.

One tuning YAML (``--base``, default ``conf/tuning_fsdd.yaml``: FSDD digits from scratch, 5
minutes of training audio, the AN4 CPU study's space) becomes three arms, each run with every
``--seeds`` as ``study.seed``:

* ``cold``: the space without its priors (``fidelity.priors: false``, no baseline): a user who
  knows nothing about the recipe, the speechtune strategy's model-based search alone;
* ``prior``: the YAML as written: the recipe's values as priors, its defaults trained first;
* ``warm``: no recipe priors, but ``fidelity.warm_start`` from ``--warm-from`` (an AN4 study's run
  dir): its top configs first, their region as the prior.

Every arm has the same ``fidelity.budget`` (compute in full trainings). From each study's
``trials.csv``: the anytime best top-rung dev WER against cumulative compute, the best at the
end, and the compute each arm needs to reach ``--target`` (default: the cold arm's mean final
best): "trials to reach the same dev WER". All three select on the FSDD dev split they are
measured on.

    python benchmarks/fsdd_warm_start.py --warm-from runs/an4_tvd_scaled/study --seeds 0 1 \
        --out runs/fsdd_warm_start --record benchmarks/data/fsdd_warm_start.json
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # an uninstalled checkout works too

from benchmarks._runs import ROOT, Flags, mean_se, run_study, where

ARMS = ("cold", "prior", "warm")


def arm_spec(
    base: Mapping[str, Any], base_dir: Path, arm: str, warm_from: Path | None
) -> dict[str, Any]:
    """The tuning YAML of one arm, with every path absolute (it is written elsewhere)."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    spec = copy.deepcopy(dict(base))
    spec["recipe"] = str((base_dir / spec["recipe"]).resolve())
    fidelity = dict(spec.get("fidelity") or {})
    if arm in ("cold", "warm"):
        spec["space"] = {
            key: {k: v for k, v in entry.items() if k != "prior"}
            if isinstance(entry, dict)
            else entry
            for key, entry in spec["space"].items()
        }
        fidelity["baseline"] = False
        # Without a prior, a searched key may not also be fixed (the override only set the
        # baseline's value, and there is no baseline here).
        spec["overrides"] = {
            k: v for k, v in (spec.get("overrides") or {}).items() if k not in spec["space"]
        }
    if arm == "cold":
        fidelity["priors"] = False
    if arm == "warm":
        if warm_from is None:
            raise SystemExit("--warm-from: the warm arm needs an earlier study's run dir")
        fidelity["priors"] = True  # the warm start's region is the only prior
        fidelity["warm_start"] = str(warm_from.resolve())
    spec["fidelity"] = fidelity
    spec["study"] = {**spec.get("study", {}), "name": f"{spec['study']['name']}-{arm}"}
    return spec


def read_trace(trials_csv: Path) -> dict[str, Any]:
    """A study's jobs in order: cumulative compute (full trainings) and the top-rung incumbent."""
    with trials_csv.open(newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["number"]))
    top = max((int(r["rung"]) for r in rows if r.get("rung") not in (None, "")), default=0)
    costs: list[float] = []
    incumbents: list[float] = []
    cpu_hours = 0.0
    total, best = 0.0, math.inf
    for r in rows:
        total += float(r.get("job_cost") or 0.0)
        cpu_hours += float(r.get("cost.cpu_core_hours") or 0.0)
        if r["state"] == "COMPLETE" and int(r["rung"] or 0) == top and r.get("wer"):
            best = min(best, float(r["wer"]))
        costs.append(total)
        incumbents.append(best)
    return {
        "jobs": len(rows),
        "top_rung_jobs": sum(1 for r in rows if r.get("rung") and int(r["rung"]) == top),
        "costs": costs,
        "incumbents": incumbents,
        "cpu_core_hours": cpu_hours,
        "first_top_rung_wer": next((w for w in incumbents if math.isfinite(w)), math.inf),
    }


def truncate(trace: Mapping[str, Any], max_compute: float) -> dict[str, Any]:
    """``trace`` up to the last job that fits in ``max_compute`` full trainings (studies run
    with a larger budget are compared at the smaller one)."""
    n = sum(1 for c in trace["costs"] if c <= max_compute + 1e-9)
    return {**trace, "jobs": n, "costs": trace["costs"][:n], "incumbents": trace["incumbents"][:n]}


def best_at(trace: Mapping[str, Any], cost: float) -> float:
    """The incumbent after the jobs that fit in ``cost`` full trainings (inf before any)."""
    best = math.inf
    for c, w in zip(trace["costs"], trace["incumbents"]):
        if c > cost + 1e-9:
            break
        best = w
    return best


def cost_to_reach(trace: Mapping[str, Any], target: float) -> float:
    """Compute (full trainings) at which the incumbent first reaches ``target``; inf if never."""
    for c, w in zip(trace["costs"], trace["incumbents"]):
        if w <= target + 1e-12:
            return float(c)
    return math.inf


def summarise(
    traces: Mapping[str, Mapping[int, Mapping[str, Any]]],
    checkpoints: Sequence[float],
    target: float | None = None,
) -> dict[str, Any]:
    """Per arm: the anytime best at each checkpoint, the final best, and compute to ``target``."""
    finals = {
        arm: [t["incumbents"][-1] for t in by_seed.values()] for arm, by_seed in traces.items()
    }
    if target is None:
        reached = [w for w in finals.get("cold", []) if math.isfinite(w)] or [
            w for v in finals.values() for w in v if math.isfinite(w)
        ]
        target = mean_se(reached)[0] if reached else math.inf
    out: dict[str, Any] = {"target_wer": target, "arms": {}}
    for arm, by_seed in traces.items():
        ts = list(by_seed.values())
        reach = [cost_to_reach(t, target) for t in ts]
        out["arms"][arm] = {
            "n": len(ts),
            "final_wer": mean_se(finals[arm]),
            "final_wer_seeds": finals[arm],
            "at": {str(c): mean_se([best_at(t, c) for t in ts]) for c in checkpoints},
            "at_seeds": {str(c): [best_at(t, c) for t in ts] for c in checkpoints},
            "first_top_rung_wer": mean_se([t["first_top_rung_wer"] for t in ts]),
            "compute_to_target": reach,
            "reached": sum(math.isfinite(r) for r in reach),
            "jobs": mean_se([t["jobs"] for t in ts]),
            "cpu_core_hours": mean_se([t["cpu_core_hours"] for t in ts]),
        }
    return out


def _fmt(values: Sequence[float]) -> str:
    """Mean ± s.e. over seeds; each seed's value (``-``: no top-rung result) if one has none."""
    if not all(math.isfinite(v) for v in values):
        return " / ".join(f"{v:.3f}" if math.isfinite(v) else "-" for v in values)
    m, se = mean_se(values)
    return f"{m:.3f}" if not math.isfinite(se) else f"{m:.3f} ± {se:.3f}"


def markdown(summary: Mapping[str, Any], checkpoints: Sequence[float]) -> str:
    """The arms side by side: anytime best dev WER, compute to reach the target, jobs."""
    head = ["arm", *[f"best after {c:g}" for c in checkpoints], "final best",
            f"compute to WER <= {summary['target_wer']:.3f}", "jobs", "CPU h"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, s in summary["arms"].items():
        reach = ", ".join(
            "never" if not math.isfinite(r) else f"{r:.2f}" for r in s["compute_to_target"]
        )
        lines.append(
            "| " + " | ".join([
                arm, *[_fmt(s["at_seeds"][str(c)]) for c in checkpoints], _fmt(s["final_wer_seeds"]),
                f"{reach} ({s['reached']}/{s['n']})", f"{s['jobs'][0]:.1f}",
                f"{s['cpu_core_hours'][0]:.2f}",
            ]) + " |"
        )  # fmt: skip
    return "\n".join(lines)


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float as None (strict JSON: no Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base", default="conf/tuning_fsdd.yaml", help="the tuning YAML of every arm")
    ap.add_argument("--warm-from", default=None, help="an earlier study's run dir (the warm arm)")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="study.seed of each run")
    ap.add_argument(
        "--set", dest="sets", nargs="*", default=[], help="tuning-YAML overrides of every arm"
    )
    ap.add_argument(
        "--target", type=float, default=None, help="dev WER to reach (default: cold's final)"
    )
    ap.add_argument(
        "--checkpoints", nargs="+", type=float, default=[2.0, 4.0], help="compute points"
    )
    ap.add_argument(
        "--max-compute", type=float, default=None, help="compare traces up to this compute"
    )
    ap.add_argument("--n-jobs", type=int, default=2, help="parallel trials of each study")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=".cache/speechtune")
    ap.add_argument("--out", default="runs/fsdd_warm_start")
    ap.add_argument("--record", default="benchmarks/data/fsdd_warm_start.json")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    base_path = (
        (ROOT / args.base).resolve() if not Path(args.base).is_absolute() else Path(args.base)
    )
    base = yaml.safe_load(base_path.read_text())
    warm_from = None
    if args.warm_from:
        warm_from = Path(args.warm_from).resolve()
        if not (warm_from / "study.db").is_file() and not (warm_from / "journal.log").is_file():
            raise SystemExit(f"--warm-from {args.warm_from}: no study.db or journal.log there")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    flags = Flags(args.device, args.threads, args.cache_dir)
    t0 = time.perf_counter()
    traces: dict[str, dict[int, dict[str, Any]]] = {}
    walls: dict[str, dict[int, float | None]] = {}
    ends: dict[str, dict[int, dict[str, Any]]] = {}  # each study at its end (not truncated)
    for arm in args.arms:
        spec_path = out / f"{arm}.yaml"
        spec_path.write_text(
            yaml.safe_dump(arm_spec(base, base_path.parent, arm, warm_from), sort_keys=False)
        )
        for seed in args.seeds:
            run_dir = out / f"{arm}-seed{seed}"
            print(f"{arm} seed {seed}: {where(run_dir)}", flush=True)
            sets = [f"study.seed={seed}", *args.sets]
            walls.setdefault(arm, {})[seed] = run_study(
                flags, spec_path, run_dir, args.n_jobs, sets
            )
            trace = read_trace(run_dir / "trials.csv")
            ends.setdefault(arm, {})[seed] = {
                "best_wer": trace["incumbents"][-1],
                "compute": trace["costs"][-1],
                "jobs": trace["jobs"],
            }
            if args.max_compute is not None:
                trace = truncate(trace, args.max_compute)
            traces.setdefault(arm, {})[seed] = trace
    summary = summarise(traces, args.checkpoints, args.target)
    record = {
        "base": where(base_path),
        "warm_from": where(warm_from) if warm_from else None,
        "seeds": args.seeds,
        "sets": args.sets,
        "n_jobs": args.n_jobs,
        "max_compute": args.max_compute,
        "threads": args.threads,
        "wall_seconds": time.perf_counter() - t0,
        "study_wall_seconds": walls,
        "traces": traces,
        "study_ends": ends,
        "summary": summary,
    }
    Path(args.record).parent.mkdir(parents=True, exist_ok=True)
    Path(args.record).write_text(json.dumps(_finite(record), indent=1) + "\n")
    print(markdown(summary, args.checkpoints))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
