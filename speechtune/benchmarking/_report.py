"""The benchmark's outputs: results.json, a markdown table and per-problem regret plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from speechtune.benchmarking._harness import (
    PRUNER_REFERENCE,
    TPE_REFERENCE,
    BenchmarkResult,
)

__all__ = ["TABLE_FRACTIONS", "TARGET_FRACTION", "markdown_table", "plot_regret", "write_outputs"]

TABLE_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
# Issue 4 target (a): speechtune reaches full-fidelity TPE's final regret within a third of the budget.
TARGET_FRACTION = 1 / 3
REGRET_FLOOR = 1e-6  # a log axis cannot show 0 (a strategy that found the optimum exactly)


def _index(fractions: np.ndarray, f: float) -> int:
    return int(np.argmin(np.abs(fractions - f)))


def _cell(mean: float, se: float) -> str:
    return f"{mean:.3g} ± {se:.2g}"


def markdown_table(result: BenchmarkResult) -> str:
    """Per problem: mean ± standard error of normalised regret at 10/25/50/100% of the budget,
    and the two target checks of issue 4, as markdown."""
    fr = result.fractions
    cols = [_index(fr, f) for f in TABLE_FRACTIONS]
    lines = [
        f"# Search efficiency: normalised regret (mean ± s.e. over {len(result.seeds)} seeds), "
        + (
            f"budget {result.budget:g} full-fidelity evaluations"
            if result.budget is not None
            else "budget per problem (in its heading)"
        ),
        "",
        "Regret = (best value found - optimum) / (reference - optimum), 1.0 before any counted evaluation. "
        "Synthetic and AN4 problems: the reference is the mean of random configs and only full-budget values "
        "count. YAHPO problems (their protocol): the reference is the published worst, the optimum the "
        "published best, and a value at any budget counts.",
        f"(a) = budget fraction at which the mean regret first reaches {TPE_REFERENCE}'s final mean regret "
        f"(target for speechtune: <= {TARGET_FRACTION:.2f}); (b) = mean regret below {PRUNER_REFERENCE}'s at every "
        "grid budget past 10%.",
    ]
    for name, p in result.problems.items():
        lines += [
            "",
            f"## {name} (optimum {p.optimum:.6g}, reference {p.reference:.6g}, max budget {p.max_budget}, "
            f"budget {p.budget:g})",
            "",
            "| strategy | "
            + " | ".join(f"{int(f * 100)}%" for f in TABLE_FRACTIONS)
            + " | (a) reach TPE final | (b) beats tpe_hyperband |",
            "|---|" + "---:|" * len(TABLE_FRACTIONS) + "---:|---:|",
        ]
        for strategy, mean in p.mean.items():
            se = p.se[strategy]
            checks = p.checks.get(strategy, {})
            a = checks.get("fraction_to_tpe_final")
            b = checks.get("beats_tpe_hyperband")
            a_txt = "never" if a is None else f"{a:.2f}"
            b_txt = "–" if b is None else ("yes" if b else "no")
            cells = " | ".join(_cell(float(mean[i]), float(se[i])) for i in cols)
            lines.append(f"| {strategy} | {cells} | {a_txt} | {b_txt} |")
        if "speechtune" in p.checks:
            a = p.checks["speechtune"].get("fraction_to_tpe_final")
            ok_a = a is not None and a <= TARGET_FRACTION + 1e-9
            ok_b = p.checks["speechtune"].get("beats_tpe_hyperband")
            reached = "never reached" if a is None else f"reached at {a:.2f} of the budget"
            lines += [
                "",
                f"Targets for speechtune: (a) {'PASS' if ok_a else 'FAIL'}: TPE's final regret {reached} "
                f"(target <= {TARGET_FRACTION:.2f}); (b) {'PASS' if ok_b else 'FAIL'}: "
                f"{'below' if ok_b else 'not below'} tpe_hyperband at every budget past 10%.",
            ]
    return "\n".join(lines) + "\n"


def plot_regret(result: BenchmarkResult, out_dir: str | Path) -> list[Path]:
    """One PNG per problem: mean normalised regret vs budget (log axis), shaded ± one standard error."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, p in result.problems.items():
        x = result.budgets(name)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for strategy, mean in p.mean.items():
            se = p.se[strategy]
            style = (
                "-"
                if strategy.startswith("speechtune")
                else ("--" if strategy.startswith("tpe") or strategy == "random" else "-.")
            )
            width = 2.2 if strategy == "speechtune" else 1.3
            color = "black" if strategy == "speechtune" else None
            (line,) = ax.plot(
                x, np.maximum(mean, REGRET_FLOOR), style, lw=width, color=color, label=strategy
            )
            ax.fill_between(
                x,
                np.maximum(mean - se, REGRET_FLOOR),
                np.maximum(mean + se, REGRET_FLOOR),
                color=line.get_color(),
                alpha=0.15,
            )
        ax.set_yscale("log")
        ax.set_xlabel("budget (full-fidelity evaluations)")
        ax.set_ylabel("normalised regret")
        ax.set_title(f"{name}: mean ± s.e. over {len(result.seeds)} seeds")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        path = out / f"regret_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_outputs(
    result: BenchmarkResult, out_dir: str | Path, plots: bool = True
) -> dict[str, Path]:
    """Write into ``out_dir``: results.json (grid, mean/s.e. regret per strategy, checks),
    traces.jsonl (one anytime trace per run), results.md (the table) and, with ``plots``,
    regret_<problem>.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "results.json",
        "traces": out / "traces.jsonl",
        "table": out / "results.md",
    }
    record = _jsonable(result.as_dict())
    with paths["traces"].open("w") as fh:
        for problem in record["problems"].values():
            for traces in problem.pop("traces").values():
                for trace in traces:
                    fh.write(json.dumps(trace, separators=(",", ":")) + "\n")
    paths["json"].write_text(json.dumps(record, indent=1) + "\n")
    paths["table"].write_text(markdown_table(result))
    if plots:
        for p in plot_regret(result, out):
            paths[p.stem] = p
    return paths
