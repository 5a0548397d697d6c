"""Search-efficiency benchmarks: multi-fidelity problems (synthetic functions, a recorded AN4
learning-curve table, YAHPO Gym surrogates), a harness that runs search strategies side by side,
and the anytime-regret table and plots.

    from speechtune.benchmarking import Hartmann6, run_benchmark, markdown_table
    result = run_benchmark([Hartmann6()], ["tpe", "tpe_hyperband", "speechtune"], seeds=range(5), budget=40)
    print(markdown_table(result))

The script ``benchmarks/search_efficiency.py`` runs the full comparison.
"""

from speechtune.benchmarking._harness import (
    STRATEGIES,
    BenchmarkResult,
    ProblemResult,
    Trace,
    beats_everywhere,
    fraction_to_reach,
    normalised_regret,
    run_benchmark,
    run_strategy,
)
from speechtune.benchmarking._peers import PEER_STRATEGIES, available_peers
from speechtune.benchmarking._problems import (
    Branin,
    Hartmann3,
    Hartmann6,
    Problem,
    SyntheticProblem,
)
from speechtune.benchmarking._report import (
    PEERS,
    SuiteSummary,
    markdown_table,
    plot_regret,
    suite_checks,
    suite_summary,
    update_docs,
    write_outputs,
)
from speechtune.benchmarking._tabular import TabularProblem
from speechtune.benchmarking._yahpo import YAHPO_SUITE, YahpoProblem, yahpo_suite

SYNTHETIC_PROBLEMS = {"hartmann3": Hartmann3, "hartmann6": Hartmann6, "branin": Branin}

__all__ = [
    "PEERS",
    "PEER_STRATEGIES",
    "STRATEGIES",
    "SYNTHETIC_PROBLEMS",
    "SuiteSummary",
    "BenchmarkResult",
    "Branin",
    "Hartmann3",
    "Hartmann6",
    "Problem",
    "ProblemResult",
    "SyntheticProblem",
    "TabularProblem",
    "Trace",
    "YAHPO_SUITE",
    "YahpoProblem",
    "available_peers",
    "beats_everywhere",
    "fraction_to_reach",
    "markdown_table",
    "normalised_regret",
    "plot_regret",
    "run_benchmark",
    "run_strategy",
    "suite_checks",
    "suite_summary",
    "update_docs",
    "write_outputs",
    "yahpo_suite",
]
