"""How good each branch of a YAHPO instance's conditional space can be, and how hard it is to find.

For each choice of a categorical param (default: ``booster`` of rbv2_xgboost): the best normalised
regret among uniform draws at full fidelity, and the regret a hill climb on the surrogate reaches
from that best draw (moves of every param at once, ``sample_near`` at scales 0.2/0.1/0.05/0.02 in
turn, kept when better and in the same branch). A branch whose uniform best is poor but whose
climb is good is a narrow region: uniform exploration does not find it, a local search can.
This is a diagnostic of the benchmark problem, not a search strategy (it spends thousands of
evaluations). Usage:

    python benchmarks/yahpo_branches.py [--instance 1501] [--draws 6000] [--steps 3000]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from speechtune.benchmarking import YahpoProblem
from speechtune.tuning.space import sample_near, sample_uniform

YAHPO_DIR = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "yahpo"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="rbv2_xgboost")
    ap.add_argument("--instance", default="1501")
    ap.add_argument(
        "--param", default="booster", help="the categorical param whose branches to compare"
    )
    ap.add_argument("--draws", type=int, default=6000, help="uniform draws (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=3000, help="hill-climb steps per branch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--yahpo-dir", type=Path, default=YAHPO_DIR)
    args = ap.parse_args()

    problem = YahpoProblem(args.scenario, args.instance, args.yahpo_dir, max_budget=27)
    if args.param not in problem.space.params:
        raise SystemExit(f"--param {args.param!r}: not a param of {problem.name}")
    top = problem.max_budget

    def regret(value: float) -> float:
        return (value - problem.optimum) / (problem.reference - problem.optimum)

    rng = np.random.default_rng(args.seed)
    best: dict[Any, tuple[float, dict[str, Any], dict[str, Any]]] = {}
    counts: dict[Any, int] = {}
    for _ in range(args.draws):
        params, config = sample_uniform(problem.space, rng)
        branch = config[args.param]
        counts[branch] = counts.get(branch, 0) + 1
        value = problem.evaluate(config, top)
        if branch not in best or value < best[branch][0]:
            best[branch] = (value, params, config)

    print(
        f"{problem.name}: {args.draws} uniform draws, then {args.steps} hill-climb steps per branch"
    )
    print(f"| {args.param} | uniform draws | best uniform regret | after the climb |")
    print("|---|---:|---:|---:|")
    for branch, (value, params, _) in sorted(best.items(), key=lambda kv: kv[1][0]):
        start = value
        for step in range(args.steps):
            scale = (0.2, 0.1, 0.05, 0.02)[step % 4]
            moved, config = sample_near(problem.space, params, rng, scale)
            if config[args.param] != branch:
                continue
            new = problem.evaluate(config, top)
            if new < value:
                value, params = new, moved
        print(f"| {branch} | {counts[branch]} | {regret(start):.4f} | {regret(value):.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
