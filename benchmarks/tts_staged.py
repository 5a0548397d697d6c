"""Staged against joint tuning of the TTS recipe (issue 18), at equal numbers of trials.

For each ``--seeds`` (the sampler's seed), from one staged-tuning YAML (``conf/tts_staged.yaml``,
made CPU-sized by ``--set`` overrides and ``--trials``):

* ``staged``: ``speechtune tts tune --mode staged``: stage 1 searches the acoustic keys with the
  vocoder frozen (the recipe's Griffin-Lim), stage 2 the vocoder keys with the stage-1 winner
  frozen (its trained acoustic model reused);
* ``joint``: ``speechtune tts tune --mode joint``: every key in one study, with as many trials as
  both stages together.

The objective is the mean MCD (dB) of the held-out utterances; with ``--asr-model`` every trial is
also transcribed by a speechtune ASR model (intelligibility: WER/CER of the winner). Both arms
select on the same held-out utterances they are scored on, so both winners' figures are
optimistic by the selection alike. Compute is the trials' CPU seconds (``time.process_time`` of
the trial, one torch thread) and the number of acoustic-model trainings.

Runs go through the CLI (argv lists, no shell), one at a time; a run directory whose record
(``stages.json`` with a ``final`` entry, or ``joint.json``) exists is not run again, and an
interrupted one resumes. The record (``--record``, JSON) holds every run and the summary; a
Markdown table (arm: MCD, WER, CER mean ± s.e. over seeds, trials, acoustic trainings, CPU
minutes) is printed.

    python benchmarks/tts_staged.py --config conf/tts_staged.yaml --asr-model runs/tts_asr \\
        --seeds 0 1 --trials 4 4 --threads 1 --out runs/tts_bench \\
        --record benchmarks/data/tts_staged.json \\
        --set data.synthetic.num_utterances=180 train.epochs=10 model.d_model=64 model.ff_dim=128
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def _derived_yaml(
    config: Path, overrides: list[str], trials: list[int], seed: int, out: Path
) -> Path:
    """The staged YAML with the overrides, the trials per stage and the sampler seed."""
    spec = yaml.safe_load(config.read_text())
    spec["recipe"] = str((config.parent / spec["recipe"]).resolve())
    extra = {}
    for item in overrides:
        key, _, value = item.partition("=")
        extra[key] = yaml.safe_load(value)
    spec["overrides"] = {**(spec.get("overrides") or {}), **extra}
    if len(trials) != len(spec["stages"]):
        raise SystemExit(f"--trials needs one count per stage ({len(spec['stages'])})")
    for stage, n in zip(spec["stages"], trials):
        stage["n_trials"] = n
    spec.setdefault("study", {})["seed"] = seed
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"staged_seed{seed}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run(argv: list[str], log: Path, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    with log.open("a") as fh:
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - start


def _summary(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def _arm_result(mode: str, run_dir: Path, wall: float) -> dict[str, Any]:
    if mode == "joint":
        rec = json.loads((run_dir / "joint.json").read_text())
        winner, trials = rec["winner"], rec["trials"]
        cpu, acoustic_trainings = rec["cpu_seconds"], rec["trials"]
        config = winner["config"]
    else:
        rec = json.loads((run_dir / "stages.json").read_text())
        final = rec["final"]
        winner = {"metrics": final["metrics"], "model": final["model"]}
        trials, cpu, config = final["trials"], final["cpu_seconds"], final["config"]
        acoustic_trainings = sum(
            s["trials"] for s in rec["stages"] if s["acoustic_model_from"] is None
        )
    m = winner["metrics"]
    return {
        "mode": mode,
        "run_dir": str(run_dir),
        "mcd": m["mcd"],
        "wer": m.get("wer"),
        "cer": m.get("cer"),
        "rtf": m["rtf"],
        "trials": trials,
        "acoustic_trainings": acoustic_trainings,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "config": config,
        "record": rec,
    }


#: The joint study cut where its trials' CPU time reaches the staged study's (same seed).
JOINT_AT_STAGED_CPU = "joint at the staged CPU"


def _joint_at_staged_cpu(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each joint study read in trial order up to the staged study's CPU seconds (at least one
    trial): the best it had found at equal compute. Its trials ran one after another, so this is
    what a joint study with that budget would have returned."""
    out = []
    for staged in [r for r in runs if r["mode"] == "staged"]:
        joint = next(r for r in runs if r["mode"] == "joint" and r["seed"] == staged["seed"])
        trial_dirs = sorted((Path(joint["run_dir"]) / "joint" / "trials").iterdir())
        spent, taken = 0.0, list[dict[str, Any]]()
        for d in trial_dirs:
            m = json.loads((d / "metrics.json").read_text())
            if taken and spent + m["cpu_seconds"] > staged["cpu_seconds"]:
                break
            spent += m["cpu_seconds"]
            taken.append(m)
        best = min(taken, key=lambda m: m["mcd"])
        out.append(
            {
                "mode": JOINT_AT_STAGED_CPU,
                "seed": staged["seed"],
                "run_dir": joint["run_dir"],
                "mcd": best["mcd"],
                "wer": best.get("wer"),
                "cer": best.get("cer"),
                "rtf": best["rtf"],
                "trials": len(taken),
                "acoustic_trainings": len(taken),
                "cpu_seconds": spent,
                "wall_seconds": 0.0,
            }
        )
    return out


def _fmt(row: dict[str, Any], key: str, digits: int = 3, scale: float = 1.0) -> str:
    """``mean ± s.e.`` of a summary cell (the mean alone for one seed)."""
    v = row[key]
    if v is None:
        return "n/a"
    if len(row["seeds"]) < 2:
        return f"{v[0] / scale:.{digits}f}"
    return f"{v[0] / scale:.{digits}f} ± {v[1] / scale:.{digits}f}"


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="conf/tts_staged.yaml")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides")
    p.add_argument("--trials", nargs="+", type=int, default=[4, 4], help="trials per stage")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--asr-model", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", default=".cache/speechtune")
    p.add_argument("--out", default="runs/tts_bench")
    p.add_argument("--record", default=None)
    args = p.parse_args()
    out = Path(args.out)
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        conf = _derived_yaml(Path(args.config), args.set, args.trials, seed, out)
        for mode in ("staged", "joint"):
            run_dir = out / f"{mode}_seed{seed}"
            done = run_dir / ("joint.json" if mode == "joint" else "stages.json")
            finished = done.is_file() and (
                mode == "joint" or "final" in json.loads(done.read_text())
            )
            wall = 0.0
            if not finished:
                argv = [
                    sys.executable, "-m", "speechtune.cli", "tts", "tune", "--config", str(conf),
                    "--mode", mode, "--run-dir", str(run_dir), "--cache-dir", args.cache_dir,
                    "--threads", str(args.threads),
                ]  # fmt: skip
                if args.asr_model:
                    argv += ["--asr-model", args.asr_model]
                print(f"seed {seed} {mode}: {' '.join(argv[2:])}", flush=True)
                wall = _run(argv, out / f"{mode}_seed{seed}.log", args.threads)
            result = _arm_result(mode, run_dir, wall)
            result["seed"] = seed
            runs.append(result)
            print(
                f"seed {seed} {mode}: MCD {result['mcd']:.3f} dB  WER {result['wer']}  "
                f"CPU {result['cpu_seconds'] / 60:.1f} min",
                flush=True,
            )
    runs += _joint_at_staged_cpu(runs)
    if args.record and Path(args.record).is_file():
        # A resumed benchmark keeps the wall times its first pass measured.
        before = json.loads(Path(args.record).read_text()).get("runs", [])
        walls = {(r["mode"], r["seed"]): r.get("wall_seconds", 0.0) for r in before}
        for r in runs:
            if not r["wall_seconds"]:
                r["wall_seconds"] = walls.get((r["mode"], r["seed"]), 0.0)
    summary = {}
    lines = [
        "| arm | MCD (dB) | WER | CER | trials | acoustic trainings | CPU min (trials) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode in ("staged", "joint", JOINT_AT_STAGED_CPU):
        arm = [r for r in runs if r["mode"] == mode]
        row: dict[str, Any] = {"seeds": [r["seed"] for r in arm]}
        for key in ("mcd", "wer", "cer", "cpu_seconds", "trials", "acoustic_trainings"):
            vals = [float(r[key]) for r in arm if r[key] is not None]
            row[key] = _summary(vals) if vals else None
        summary[mode] = row

        lines.append(
            f"| {mode} | {_fmt(row, 'mcd', 2)} | {_fmt(row, 'wer')} | {_fmt(row, 'cer')} | {row['trials'][0]:.3g} | "
            f"{row['acoustic_trainings'][0]:.3g} | {_fmt(row, 'cpu_seconds', 1, 60.0)} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.record:
        record = {
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "config": args.config,
            "overrides": args.set,
            "trials_per_stage": args.trials,
            "seeds": args.seeds,
            "asr_model": args.asr_model,
            "threads": args.threads,
            "runs": runs,
            "summary": summary,
            "table": table,
        }
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
        Path(args.record).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
