"""``speechtune rerun``: run a finished study's best (or any) trial again, exactly as it ran.

The study's recorded spec (``spec.yaml`` in the run directory) rebuilds the objective: a
command study renders the same argv from the same config file, overrides and sampled values
(in the working directory the trial used, from its ``command.json``); a recipe study trains
the same recipe. The run goes to ``RUN_DIR/reruns/trial-NNNN-K/``, and the metrics it reports
are printed beside the ones the study recorded, so a result can be checked before it is
trusted.

A recipe trial records what it ran on (``environment.json``: torch, CPU instruction set,
threads, GPU, hashes of its data and features). The rerun uses the trial's thread count unless
``--threads`` says otherwise, and lists every recorded fact that differs, since a training run
reproduces bit for bit only where those are the same.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from speechtune.cli._common import (
    add_threads_argument,
    apply_threads,
    check_threads,
    load_run_spec,
)

HELP = "run a study's best (or a given) trial again and compare its metrics"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``speechtune rerun``."""
    p.add_argument("run_dir", help="the study's run directory (holds spec.yaml)")
    p.add_argument("--trial", type=int, default=None, help="trial number (default: the best)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the study's first)")
    p.add_argument(
        "--device", default="auto", help="device of a recipe study (auto, cpu, cuda:1...)"
    )
    p.add_argument(
        "--cache-dir", default=".cache/speechtune", help="corpus and feature cache of a recipe"
    )
    add_threads_argument(p)
    p.epilog = "--threads defaults to the thread count the trial ran with, where it recorded one."


class _Printer:
    """A reporter that prints each epoch and never stops the run."""

    def report(self, epoch: int, **metrics: float) -> bool:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
        print(f"  epoch {epoch}: {shown}", flush=True)
        return False


def _next_dir(root: Path, trial: int) -> Path:
    k = 1
    while (root / f"trial-{trial:04d}-{k}").exists():
        k += 1
    return root / f"trial-{trial:04d}-{k}"


def run(args: argparse.Namespace) -> int:
    """Rerun the trial; 0 when it completed, 1 otherwise."""
    from speechtune.training import read_environment
    from speechtune.tuning.objectives import build_objective
    from speechtune.tuning.study import load_study, select_best

    check_threads(args)
    run_dir = Path(args.run_dir)
    spec = load_run_spec(run_dir, "rerun")
    study = load_study(run_dir)
    if args.trial is None:
        choice = select_best(study)
        if choice is None:
            raise ValueError(f"study {study.study_name!r} has no complete trial to rerun")
        trial = choice.trial
    else:
        found = [t for t in study.get_trials(deepcopy=False) if t.number == args.trial]
        if not found:
            raise ValueError(f"--trial {args.trial}: study {study.study_name!r} has no such trial")
        trial = found[0]
    config: dict[str, Any] = dict(trial.user_attrs.get("config") or {})
    cwd = None
    attr = trial.user_attrs.get("trial_dir")
    trial_dir = Path(str(attr)) if attr else None
    if trial_dir is not None and (trial_dir / "command.json").is_file():
        cwd = json.loads((trial_dir / "command.json").read_text()).get("cwd")
    objective = build_objective(spec, device=args.device, cwd=cwd, cache_dir=args.cache_dir)
    seeds = [int(s) for s in (spec.objective.seeds or [0])]
    seed = args.seed if args.seed is not None else seeds[0]
    env_then = _trial_environment(trial_dir, seeds, seed)
    threads = args.threads
    if threads is None and env_then is not None and isinstance(env_then.get("threads"), int):
        threads = env_then["threads"]
    if threads is not None:
        apply_threads(objective, int(threads))
    out = _next_dir(run_dir.resolve() / "reruns", trial.number)
    shown = f", {threads} threads" if threads is not None else ""
    print(f"rerunning trial {trial.number} (seed {seed}{shown}) in {out}", flush=True)
    outcome = objective(config, _Printer(), out, seed)
    recorded_metrics = trial.user_attrs.get("metrics") or {}
    print(f"status: {outcome.status} ({outcome.reason.splitlines()[0] if outcome.reason else ''})")
    for name in sorted(set(outcome.metrics) | set(recorded_metrics)):
        now, then = outcome.metrics.get(name), recorded_metrics.get(name)
        fmt = lambda v: "-" if not isinstance(v, (int, float)) else f"{v:.6g}"  # noqa: E731
        print(f"  {name}: {fmt(now)} (study: {fmt(then)})")
    _print_environment(env_then, read_environment(out))
    return 0 if outcome.ok else 1


def _trial_environment(
    trial_dir: Path | None, seeds: list[int], seed: int
) -> dict[str, Any] | None:
    """The trial's recorded environment: its run of ``seed``, else of its first seed."""
    from speechtune.training import read_environment

    if trial_dir is None:
        return None
    if len(seeds) == 1:
        return read_environment(trial_dir)
    return read_environment(trial_dir / f"seed{seed}") or read_environment(
        trial_dir / f"seed{seeds[0]}"
    )


def _print_environment(then: dict[str, Any] | None, now: dict[str, Any] | None) -> None:
    """What differs between the trial's recorded environment and the rerun's."""
    from speechtune.training import environment_differences

    if then is None or now is None:
        which = "the trial" if then is None else "the rerun"
        print(f"environment: not compared ({which} recorded none)")
        return
    diffs = environment_differences(then, now)
    if not diffs:
        print("environment: the same as the trial's (software, CPU, threads, data, features)")
        return
    print(
        "environment: differs from the trial's (a training reproduces bit for bit only where these agree)"
    )
    for line in diffs:
        print(f"  {line}")
