"""Search efficiency of multi-fidelity strategies: anytime normalised regret on benchmark problems.

Runs every strategy for S seeds at a total budget given in full-fidelity evaluations (40 = the
cost of 40 full trainings) on synthetic multi-fidelity functions (Hartmann 3/6, Branin with a
fidelity), recorded learning-curve tables of real AN4 training ("an4": 119 configs recorded on a
GPU, benchmarks/data/an4_curves_gpu.jsonl; "an4_cpu": 40 on a CPU; or any .jsonl path), and YAHPO
Gym surrogates ("yahpo": the six instances of YAHPO's single-objective suite; "yahpo:rbv2_rpart/14"
for one; read from --yahpo-dir).
Without --budget each problem gets its own: 40 for the synthetic problems, a sixth of a table's
configs (at least 10) for AN4, YAHPO's 20 + 40 sqrt(d) for YAHPO. Writes results.json, results.md
(the table, also printed) and regret_<problem>.png into --out. Usage:

    python benchmarks/search_efficiency.py --problems hartmann3,hartmann6,branin[,an4][,yahpo] \\
        --seeds 10 --out runs/bench_search

A run of speechtune's engine, Optuna or DEHB is deterministic for its (problem, strategy, seed),
so results do not depend on --workers; SMAC3 and Syne Tune runs are not bit-reproducible with a
fixed seed, so their rows move a little between runs. Every finished run is kept in OUT/runs/ and
reused, so an interrupted benchmark resumes where it stopped (--fresh runs everything again).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from speechtune.benchmarking import (
    STRATEGIES,
    SYNTHETIC_PROBLEMS,
    YAHPO_SUITE,
    TabularProblem,
    YahpoProblem,
    markdown_table,
    run_benchmark,
    update_docs,
    write_outputs,
)

# The AN4 tables: 119 configs recorded on an H200 (the default), 40 on one CPU thread.
AN4_TABLES = {
    "an4": Path(__file__).resolve().parent / "data" / "an4_curves_gpu.jsonl",
    "an4_cpu": Path(__file__).resolve().parent / "data" / "an4_curves.jsonl",
}
YAHPO_DIR = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "yahpo"


def make_problems(name: str, max_budget: int, yahpo_dir: Path) -> list[Any]:
    """The problems a name stands for: a synthetic one, ``an4`` (the recorded AN4 table), a path to
    a .jsonl table, ``yahpo`` (YAHPO's suite) or ``yahpo:<scenario>/<instance>``."""
    if name == "yahpo":
        return [YahpoProblem(s, i, yahpo_dir, max_budget=max_budget) for s, i in YAHPO_SUITE]
    if name.startswith("yahpo:"):
        scenario, _, instance = name[len("yahpo:") :].partition("/")
        return [YahpoProblem(scenario, instance, yahpo_dir, max_budget=max_budget)]
    return [make_problem(name, max_budget)]


def make_problem(name: str, max_budget: int) -> Any:
    """A problem by name: a synthetic one, ``an4`` (the recorded AN4 table) or a path to a .jsonl table."""
    if name in SYNTHETIC_PROBLEMS:
        return SYNTHETIC_PROBLEMS[name](max_budget=max_budget)
    if name in AN4_TABLES:
        table = AN4_TABLES[name]
        if not table.exists():
            raise SystemExit(f"--problems {name}: {table} does not exist (record it first)")
        return TabularProblem.load(table, name=name)
    if name.endswith(".jsonl"):
        return TabularProblem.load(name)
    valid = ", ".join(
        [*SYNTHETIC_PROBLEMS, *AN4_TABLES, "<path>.jsonl", "yahpo", "yahpo:<scenario>/<instance>"]
    )
    raise SystemExit(f"--problems: unknown problem {name!r}; valid: {valid}")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--problems",
        default="hartmann3,hartmann6,branin",
        help="comma-separated (default: %(default)s)",
    )
    ap.add_argument(
        "--strategies", default=",".join(STRATEGIES), help="comma-separated (default: all)"
    )
    ap.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default: %(default)s)")
    ap.add_argument(
        "--seed-start",
        type=int,
        default=0,
        help="first seed: runs seeds S..S+N-1, e.g. 10 to confirm on seeds unseen while "
        "tuning (default: %(default)s)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="total budget in full-fidelity evaluations (default: each problem's own: 40, or 20 + 40 sqrt(d))",
    )
    ap.add_argument(
        "--yahpo-dir",
        type=Path,
        default=YAHPO_DIR,
        help="the YAHPO data folder (default: %(default)s)",
    )
    ap.add_argument(
        "--max-budget",
        type=int,
        default=27,
        help="epochs of a full evaluation, synthetic problems (default: %(default)s)",
    )
    ap.add_argument(
        "--workers", type=int, default=2, help="worker processes (default: %(default)s)"
    )
    ap.add_argument(
        "--out", default="runs/bench_search", help="output folder (default: %(default)s)"
    )
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ap.add_argument(
        "--fresh", action="store_true", help="ignore the runs kept in OUT/runs/ and rerun all"
    )
    ap.add_argument(
        "--docs",
        type=Path,
        default=None,
        help="also write the tables and plots into this page's generated section "
        "(docs/benchmarks.md)",
    )
    args = ap.parse_args()

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        ap.error(f"--strategies: unknown {unknown}; valid: {', '.join(STRATEGIES)}")
    if args.seed_start < 0:
        ap.error("--seed-start must be >= 0")
    if args.seeds < 1 or (args.budget is not None and args.budget <= 0):
        ap.error("--seeds must be >= 1 and --budget > 0")
    try:
        problems = [
            p
            for n in args.problems.split(",")
            if n.strip()
            for p in make_problems(n.strip(), args.max_budget, args.yahpo_dir)
        ]
    except (OSError, ValueError) as exc:
        ap.error(f"--problems: {exc}")

    t0 = time.perf_counter()
    result = run_benchmark(
        problems,
        strategies,
        seeds=range(args.seed_start, args.seed_start + args.seeds),
        budget=args.budget,
        workers=args.workers,
        cache_dir=None if args.fresh else Path(args.out) / "runs",
    )
    elapsed = time.perf_counter() - t0
    paths = write_outputs(result, args.out, plots=not args.no_plots)
    print(markdown_table(result))
    print(f"({elapsed:.0f} s; wrote {', '.join(str(p) for p in paths.values())})")
    if args.docs is not None:
        command = "python benchmarks/search_efficiency.py " + " ".join(
            shlex.quote(a) for a in sys.argv[1:]
        )
        # The runs' own times, summed: unlike the elapsed time, it holds also for a resumed
        # benchmark whose earlier runs came from OUT/runs/.
        run_s = sum(
            float(t.info.get("wall_s", 0.0))
            for pr in result.problems.values()
            for traces in pr.traces.values()
            for t in traces
        )
        machine = (
            f"{os.cpu_count()} CPU cores, {args.workers} worker processes, "
            f"{run_s / 3600:.1f} h of runs in all"
        )
        # A resumed benchmark's elapsed time misses its kept runs: estimate from the runs' times.
        wall_s = max(elapsed, run_s / max(1, args.workers))
        update_docs(result, args.docs, paths, command=command, wall_s=wall_s, machine=machine)
        print(f"updated {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
