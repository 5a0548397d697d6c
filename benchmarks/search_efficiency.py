"""Search efficiency of multi-fidelity strategies: anytime normalised regret on benchmark problems.

Runs every strategy for S seeds at a total budget given in full-fidelity evaluations (40 = the
cost of 40 full trainings) on synthetic multi-fidelity functions (Hartmann 3/6, Branin with a
fidelity), a recorded learning-curve table of real AN4 training ("an4", replayed from
benchmarks/data/an4_curves.jsonl, or any .jsonl path), and YAHPO Gym surrogates ("yahpo": the six
instances of YAHPO's single-objective suite; "yahpo:rbv2_rpart/14" for one; read from --yahpo-dir).
Without --budget each problem gets its own: 40 for the synthetic and AN4 problems, YAHPO's
20 + 40 sqrt(d) for YAHPO. Writes results.json, results.md (the table, also printed) and
regret_<problem>.png into --out. Usage:

    python benchmarks/search_efficiency.py --problems hartmann3,hartmann6,branin[,an4][,yahpo] \\
        --seeds 10 --out runs/bench_search

Each (problem, strategy, seed) run is deterministic, so results do not depend on --workers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from speechtune.benchmarking import (
    STRATEGIES,
    SYNTHETIC_PROBLEMS,
    YAHPO_SUITE,
    TabularProblem,
    YahpoProblem,
    markdown_table,
    run_benchmark,
    write_outputs,
)

AN4_TABLE = Path(__file__).resolve().parent / "data" / "an4_curves.jsonl"
YAHPO_DIR = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "yahpo"


def make_problems(name: str, max_budget: int, yahpo_dir: Path) -> list[object]:
    """The problems a name stands for: a synthetic one, ``an4`` (the recorded AN4 table), a path to
    a .jsonl table, ``yahpo`` (YAHPO's suite) or ``yahpo:<scenario>/<instance>``."""
    if name == "yahpo":
        return [YahpoProblem(s, i, yahpo_dir, max_budget=max_budget) for s, i in YAHPO_SUITE]
    if name.startswith("yahpo:"):
        scenario, _, instance = name[len("yahpo:") :].partition("/")
        return [YahpoProblem(scenario, instance, yahpo_dir, max_budget=max_budget)]
    return [make_problem(name, max_budget)]


def make_problem(name: str, max_budget: int) -> object:
    """A problem by name: a synthetic one, ``an4`` (the recorded AN4 table) or a path to a .jsonl table."""
    if name in SYNTHETIC_PROBLEMS:
        return SYNTHETIC_PROBLEMS[name](max_budget=max_budget)
    if name == "an4":
        if not AN4_TABLE.exists():
            raise SystemExit(f"--problems an4: {AN4_TABLE} does not exist (record it first)")
        return TabularProblem.load(AN4_TABLE, name="an4")
    if name.endswith(".jsonl"):
        return TabularProblem.load(name)
    valid = ", ".join(
        [*SYNTHETIC_PROBLEMS, "an4", "<path>.jsonl", "yahpo", "yahpo:<scenario>/<instance>"]
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
    args = ap.parse_args()

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        ap.error(f"--strategies: unknown {unknown}; valid: {', '.join(STRATEGIES)}")
    if args.seeds < 1 or (args.budget is not None and args.budget <= 0):
        ap.error("--seeds must be >= 1 and --budget > 0")
    problems = [
        p
        for n in args.problems.split(",")
        if n.strip()
        for p in make_problems(n.strip(), args.max_budget, args.yahpo_dir)
    ]

    t0 = time.perf_counter()
    result = run_benchmark(
        problems, strategies, seeds=range(args.seeds), budget=args.budget, workers=args.workers
    )
    elapsed = time.perf_counter() - t0
    paths = write_outputs(result, args.out, plots=not args.no_plots)
    print(markdown_table(result))
    print(f"({elapsed:.0f} s; wrote {', '.join(str(p) for p in paths.values())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
