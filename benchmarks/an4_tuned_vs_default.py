"""Does tuning beat the defaults on real speech? A study's best AN4 config vs the recipe's defaults.

1. Runs the study of ``--study`` (a tuning YAML with a recipe objective, e.g.
   ``conf/tuning_an4_cpu.yaml``) in ``<out>/study`` with ``speechtune tune``, unless that run
   directory already holds its ``best.yaml`` (an interrupted study resumes).
2. Trains the study's base recipe (the recipe plus the study's fixed overrides: "the defaults")
   and ``best.yaml`` ("tuned") from scratch with each of ``--seeds`` (not the study's own seed),
   at the same epochs, ``--parallel`` runs at a time, and reads each run's ``metrics.json``.
3. Equal training time: when one arm's epochs take longer (the tuned config chose a smaller
   batch, a costlier layer), the cheaper arm is trained again for proportionally more epochs
   (``equal_time`` in the record), since a config that is better per epoch but slower per epoch
   need not be a better model for the same compute (``--time-tolerance``).
4. Writes every run and the summary (mean +- standard error of dev WER, relative change, per-group
   WER) to ``--record`` (JSON) and prints a Markdown table.

Every selection is on AN4 dev (speaker-disjoint, carved from the training split); the test
split is never read.

    python benchmarks/an4_tuned_vs_default.py --study conf/tuning_an4_cpu.yaml --seeds 1 2 3 \\
        --out runs/an4_tvd_cpu --record benchmarks/data/an4_tuned_vs_default_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # an uninstalled checkout (the GPU machine) works too

from benchmarks._runs import (  # noqa: E402
    Flags,
    mean_se,
    run_study,
    speechtune_argv,
    train_pool,
    where,
)
from speechtune.config import config_from_dict, config_to_dict  # noqa: E402
from speechtune.tuning.spec import load_tuning  # noqa: E402

#: Metrics copied from each run's metrics.json into the record.
KEPT = ("wer", "cer", "worst_group_wer", "worst_group", "group_wer", "num_parameters")


def _flags(args: argparse.Namespace) -> Flags:
    return Flags(args.device, args.threads, args.cache_dir)


def study_run(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Run (or resume) the study; returns its wall time and where best.yaml is."""
    # A multi-fidelity study runs in one driver: parallel trials are its threads.
    wall = run_study(_flags(args), Path(args.study), run_dir, args.parallel, args.study_set or ())
    best = where(run_dir / "best.yaml")
    return {"best_yaml": best, "wall_seconds": wall, "reused": wall is None}


def same_recipe(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two recipe dicts resolve to the same training, seed aside (the study kept the
    defaults: training them again with the same seeds would only repeat those runs)."""
    ra, rb = config_to_dict(config_from_dict(a)), config_to_dict(config_from_dict(b))
    ra.pop("seed", None)
    rb.pop("seed", None)
    return ra == rb


#: A training job: (arm, seed, config file, run directory, extra dotted overrides).
Job = tuple[str, int, Path, Path, tuple[str, ...]]


def _read_run(run_dir: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    out = {k: metrics.get(k) for k in KEPT}
    out["best_epoch"] = metrics.get("best_epoch")
    out["train_seconds"] = sum(r.get("epoch_seconds", 0.0) for r in history)
    out["epochs_run"] = len(history)
    out["wer_curve"] = [round(r["wer"], 4) for r in history]
    return out


def train_all(jobs: list[Job], args: argparse.Namespace) -> None:
    """Train every job whose run directory has no metrics.json, ``--parallel`` at a time."""
    runs = [
        (
            speechtune_argv(
                "train", _flags(args), "--config", str(config), "--set", f"seed={seed}", *sets,
                "--run-dir", str(run_dir),
            ),
            run_dir,
        )
        for _, seed, config, run_dir, sets in jobs
    ]  # fmt: skip
    train_pool(runs, args.parallel)


def collect(jobs: list[Job]) -> list[dict[str, Any]]:
    """Each job's record: its arm, seed and metrics (or why it has none)."""
    runs = []
    for arm, seed, _, run_dir, _ in jobs:
        if (run_dir / "metrics.json").is_file():
            runs.append({"arm": arm, "seed": seed, **_read_run(run_dir)})
        else:
            runs.append({"arm": arm, "seed": seed, "wer": None, "error": "no metrics.json"})
    return runs


def equal_time_plan(
    runs: list[dict[str, Any]], epochs: dict[str, int], tolerance: float
) -> dict[str, Any] | None:
    """Which arm to train for how many epochs so that both arms take the same training time.

    ``runs`` are the finished runs of both arms (``train_seconds``, ``epochs_run``), ``epochs``
    each arm's configured epochs. Returns ``{"arm", "epochs", "time_ratio"}`` for the arm whose
    epochs are cheaper (``time_ratio``: the other arm's seconds per epoch over its own), or None
    when the two cost the same within ``tolerance`` (relative) or a run is missing.
    """
    per_epoch: dict[str, float] = {}
    for arm in epochs:
        rows = [r for r in runs if r["arm"] == arm and r.get("epochs_run")]
        if not rows or len(rows) != sum(r["arm"] == arm for r in runs):
            return None
        per_epoch[arm] = sum(r["train_seconds"] / r["epochs_run"] for r in rows) / len(rows)
    (a, sa), (b, sb) = sorted(per_epoch.items(), key=lambda kv: kv[1])  # a: the cheaper arm
    ratio = sb / sa if sa > 0 else 1.0
    if ratio <= 1.0 + tolerance:
        return None
    # The slower arm's training time, in the cheaper arm's epochs.
    return {"arm": a, "epochs": round(epochs[b] * ratio), "time_ratio": ratio}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean +- s.e. per arm of WER, CER and per-group WER, and the relative change in WER."""
    out: dict[str, Any] = {}
    for arm in ("default", "tuned", "equal_time"):
        rows = [r for r in runs if r["arm"] == arm and r.get("wer") is not None]
        if not rows:
            continue
        groups = sorted({g for r in rows for g in (r.get("group_wer") or {})})
        out[arm] = {
            "n": len(rows),
            "wer": mean_se([r["wer"] for r in rows]),
            "cer": mean_se([r["cer"] for r in rows]),
            "worst_group_wer": mean_se([r["worst_group_wer"] for r in rows]),
            "group_wer": {g: mean_se([r["group_wer"][g] for r in rows]) for g in groups},
            "train_seconds": mean_se([r["train_seconds"] or 0.0 for r in rows]),
        }
    if "default" in out and "tuned" in out:
        d, t = out["default"]["wer"][0], out["tuned"]["wer"][0]
        out["relative_wer_change"] = (t - d) / d if d else None
    return out


def summarise_equal_time(
    plan: dict[str, Any], runs: list[dict[str, Any]], main_runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """The equal-time comparison: the cheaper arm trained longer against the other arm as run."""
    other = "tuned" if plan["arm"] == "default" else "default"
    both = summarise(
        [{**r, "arm": "equal_time"} for r in runs] + [r for r in main_runs if r["arm"] == other]
    )
    eq, ot = both.get("equal_time"), both.get(other)
    if eq and ot:
        t, d = (ot, eq) if other == "tuned" else (eq, ot)
        both["relative_wer_change"] = (t["wer"][0] - d["wer"][0]) / d["wer"][0]
    return {**plan, "summary": both}


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (mean +- s.e. over seeds)."""

    def f(ms: tuple[float, float]) -> str:
        return f"{ms[0]:.3f} ± {ms[1]:.3f}"

    lines = [
        "| arm | seeds | dev WER | dev CER | per-group WER | worst group | train time |",
        "|---|---:|---|---|---|---|---:|",
    ]
    for arm in ("default", "tuned", "equal_time"):
        s = summary.get(arm)
        if s is None:
            continue
        groups = ", ".join(f"{g} {f(v)}" for g, v in s["group_wer"].items())
        lines.append(
            f"| {arm} | {s['n']} | {f(s['wer'])} | {f(s['cer'])} | {groups} | "
            f"{f(s['worst_group_wer'])} | {s['train_seconds'][0] / 60:.1f} min |"
        )
    rel = summary.get("relative_wer_change")
    if rel is not None:
        lines.append(f"\nrelative change in mean dev WER, tuned vs default: {100 * rel:+.1f} %")
    return "\n".join(lines)


def markdown_equal_time(eq: dict[str, Any]) -> str:
    """The equal-time comparison's line of the printed summary."""
    s = eq["summary"].get("equal_time")
    rel = eq["summary"].get("relative_wer_change")
    if s is None or rel is None:
        return f"equal time: {eq['arm']} for {eq['epochs']} epochs has no finished run"
    return (
        f"equal time: {eq['arm']} trained for {eq['epochs']} epochs ({eq['time_ratio']:.2f}x the "
        f"epochs' cost of the other arm): dev WER {s['wer'][0]:.3f} ± {s['wer'][1]:.3f}; "
        f"tuned vs default at equal time: {100 * rel:+.1f} %"
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--study", default="conf/tuning_an4_cpu.yaml", help="tuning YAML")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument(
        "--parallel", type=int, default=2, help="parallel study trials and parallel final runs"
    )
    ap.add_argument("--out", default="runs/an4_tvd_cpu")
    ap.add_argument("--record", default="benchmarks/data/an4_tuned_vs_default_cpu.json")
    ap.add_argument("--cache-dir", default=".cache/speechtune")
    ap.add_argument("--skip-study", action="store_true", help="use <out>/study/best.yaml as is")
    ap.add_argument(
        "--time-tolerance",
        type=float,
        default=0.05,
        help="train the cheaper arm longer when the arms' seconds per epoch differ by more",
    )
    ap.add_argument(
        "--study-set",
        nargs="*",
        default=[],
        help="dotted overrides of the tuning YAML (a smoke run: fidelity.budget=0.3 ...)",
    )
    args = ap.parse_args()
    out = Path(args.out).resolve()
    args.cache_dir = str(Path(args.cache_dir).resolve())

    spec = load_tuning(args.study, args.study_set)
    if spec.objective.seeds and set(spec.objective.seeds) & set(args.seeds):
        print(
            f"note: seeds {sorted(set(spec.objective.seeds) & set(args.seeds))} are also the "
            "study's own; the comparison is fairer with others",
            file=sys.stderr,
        )
    default_yaml = out / "default.yaml"
    out.mkdir(parents=True, exist_ok=True)
    default_yaml.write_text(yaml.safe_dump(spec.base_recipe, sort_keys=False))

    study: dict[str, Any] = (
        {"best_yaml": where(out / "study" / "best.yaml"), "wall_seconds": None, "reused": True}
        if args.skip_study
        else study_run(args, out / "study")
    )
    tuned_config = yaml.safe_load((ROOT / study["best_yaml"]).read_text())
    study["kept_defaults"] = same_recipe(spec.base_recipe, tuned_config)
    arms = {"default": default_yaml, "tuned": ROOT / study["best_yaml"]}
    if study["kept_defaults"]:
        print("the study's best config is the defaults: tuned = default", flush=True)
        del arms["tuned"]
    jobs: list[Job] = [
        (arm, seed, config, out / "final" / f"{arm}-seed{seed}", ())
        for seed in args.seeds
        for arm, config in arms.items()
    ]
    train_all(jobs, args)
    runs = collect(jobs)
    if study["kept_defaults"]:  # the same trainings: the tuned arm is the default arm's runs
        runs += [{**r, "arm": "tuned"} for r in runs if r["arm"] == "default"]
    summary = summarise(runs)
    epochs = {
        arm: int(config_from_dict(yaml.safe_load(path.read_text())).train.epochs)
        for arm, path in arms.items()
    }
    plan = None if study["kept_defaults"] else equal_time_plan(runs, epochs, args.time_tolerance)
    equal_time = None
    if plan is not None:
        arm, n = plan["arm"], plan["epochs"]
        eq_jobs: list[Job] = [
            (
                arm,
                seed,
                arms[arm],
                out / "final" / f"{arm}-{n}ep-seed{seed}",
                (f"train.epochs={n}",),
            )
            for seed in args.seeds
        ]
        print(f"equal time: training {arm} for {n} epochs ({plan['time_ratio']:.2f}x)", flush=True)
        train_all(eq_jobs, args)
        equal_time = summarise_equal_time(plan, collect(eq_jobs), runs)
    record = {
        "study_config": args.study,
        "study_set": args.study_set,
        "study": study,
        "tuned_config": tuned_config,
        "seeds": args.seeds,
        "threads_per_run": args.threads,
        "parallel": args.parallel,
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "summary": summary,
        "equal_time": equal_time,
    }
    Path(args.record).parent.mkdir(parents=True, exist_ok=True)
    Path(args.record).write_text(json.dumps(record, indent=1) + "\n")
    print(markdown(summary))
    if equal_time is not None:
        print(markdown_equal_time(equal_time))
    return 0


if __name__ == "__main__":
    sys.exit(main())
