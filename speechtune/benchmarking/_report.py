"""The benchmark's outputs: results.json, a markdown table and per-problem regret plots."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from speechtune.benchmarking._harness import (
    BASELINE_STRATEGIES,
    PRUNER_REFERENCE,
    TPE_REFERENCE,
    BenchmarkResult,
    fraction_to_reach,
)
from speechtune.benchmarking._peers import PEER_STRATEGIES

__all__ = [
    "PEERS",
    "TABLE_FRACTIONS",
    "TARGET_FRACTION",
    "SuiteSummary",
    "markdown_table",
    "plot_regret",
    "suite_checks",
    "suite_summary",
    "update_docs",
    "write_outputs",
]

#: What speechtune is measured against: Optuna's samplers and pruners, SMAC3, DEHB, Syne Tune.
PEERS = BASELINE_STRATEGIES + tuple(PEER_STRATEGIES)
#: Issue 13's targets: the default strategy without priors at or below the best peer at these
#: budget fractions, with a good prior at the best peer's final regret within this fraction,
#: with a misleading prior within this factor of no prior.
SUITE_FRACTIONS = (0.25, 0.5, 1.0)
PRIOR_FRACTION = 1 / 3
BAD_PRIOR_FACTOR = 1.1

TABLE_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
# Issue 4 target (a): speechtune reaches full-fidelity TPE's final regret within a third of the budget.
TARGET_FRACTION = 1 / 3
REGRET_FLOOR = 1e-6  # a log axis cannot show 0 (a strategy that found the optimum exactly)


def _index(fractions: np.ndarray, f: float) -> int:
    return int(np.argmin(np.abs(fractions - f)))


def _cell(mean: float, se: float) -> str:
    return f"{mean:.3g} ± {se:.2g}"


def _wall(traces: list[Any]) -> str:
    """Mean wall seconds per run (the optimiser's overhead on a surrogate or table)."""
    walls = [t.info["wall_s"] for t in traces if "wall_s" in t.info]
    return f"{np.mean(walls):.1f}" if walls else "–"


@dataclass
class SuiteSummary:
    """Mean regret over a suite's problems: per seed, the problems' regrets averaged first."""

    suite: str
    problems: list[str]
    mean: dict[str, np.ndarray] = field(default_factory=dict)
    se: dict[str, np.ndarray] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)


def suite_summary(result: BenchmarkResult, suite: str) -> SuiteSummary | None:
    """Average the problems of ``suite`` (None when it has fewer than two).

    Each seed's regret curve is averaged over the problems (same seeds on every problem), then
    mean and standard error are taken over seeds; only strategies run on every problem count.
    """
    names = [n for n, p in result.problems.items() if p.suite == suite]
    if len(names) < 2:
        return None
    strategies = [
        s
        for s in result.problems[names[0]].traces
        if all(s in result.problems[n].traces for n in names)
    ]
    summary = SuiteSummary(suite, names)
    for strategy in strategies:
        per_problem = []
        walls = []
        for n in names:
            p = result.problems[n]
            traces = p.traces[strategy]
            per_problem.append(
                [t.regret_at(result.budgets(n), p.optimum, p.reference) for t in traces]
            )
            walls += [t.info["wall_s"] for t in traces if "wall_s" in t.info]
        per_seed = np.mean(np.array(per_problem), axis=0)  # (seeds, grid)
        summary.mean[strategy] = per_seed.mean(axis=0)
        k = len(per_seed)
        summary.se[strategy] = (
            per_seed.std(axis=0, ddof=1) / math.sqrt(k) if k > 1 else np.zeros(per_seed.shape[1])
        )
        summary.wall[strategy] = float(np.mean(walls)) if walls else math.nan
    return summary


def suite_checks(result: BenchmarkResult, summary: SuiteSummary) -> list[tuple[str, bool]]:
    """Issue 13's targets for the default strategy on a suite: ``(what was checked, passed)``.

    Empty when ``speechtune_noprior`` or every peer is missing from the run.
    """
    fr = result.fractions
    peers = [s for s in PEERS if s in summary.mean]
    if "speechtune_noprior" not in summary.mean or not peers:
        return []
    out: list[tuple[str, bool]] = []
    mine = summary.mean["speechtune_noprior"]
    for f in SUITE_FRACTIONS:
        i = _index(fr, f)
        best = min(peers, key=lambda s: summary.mean[s][i])
        ok = mine[i] <= summary.mean[best][i] + 1e-12
        out.append(
            (
                f"no prior at {int(f * 100)}%: {mine[i]:.4g} vs the best peer's {summary.mean[best][i]:.4g} ({best})",
                bool(ok),
            )
        )
    if "random" in summary.mean:
        worse = []
        for n in summary.problems:
            p = result.problems[n]
            for f in SUITE_FRACTIONS:
                i = _index(fr, f)
                if p.mean["speechtune_noprior"][i] > p.mean["random"][i] + 1e-12:
                    worse.append(f"{n} at {int(f * 100)}%")
        out.append(
            (
                "no prior never worse than random search on any problem (25/50/100%)"
                + (f": worse on {', '.join(worse)}" if worse else ""),
                not worse,
            )
        )
    best_final = min(summary.mean[s][-1] for s in peers)
    if "speechtune" in summary.mean:
        at = fraction_to_reach(fr, summary.mean["speechtune"], best_final)
        out.append(
            (
                f"good prior reaches the best peer's final regret ({best_final:.4g}) "
                + ("never" if at is None else f"at {at:.2f} of the budget")
                + f" (target <= {PRIOR_FRACTION:.2f})",
                at is not None and at <= PRIOR_FRACTION + 1e-9,
            )
        )
    if "speechtune_badprior" in summary.mean:
        bad, none = summary.mean["speechtune_badprior"][-1], mine[-1]
        limit = none + (BAD_PRIOR_FACTOR - 1) * abs(none)
        out.append(
            (
                f"misleading prior's final regret {bad:.4g} within {BAD_PRIOR_FACTOR}x of no prior's {none:.4g}",
                bool(bad <= limit + 1e-12),
            )
        )
    return out


def _suite_lines(result: BenchmarkResult, summary: SuiteSummary) -> list[str]:
    cols = [_index(result.fractions, f) for f in TABLE_FRACTIONS]
    lines = [
        "",
        f"## {summary.suite} suite: mean over {len(summary.problems)} problems "
        f"({', '.join(summary.problems)})",
        "",
        "| strategy | " + " | ".join(f"{int(f * 100)}%" for f in TABLE_FRACTIONS) + " | s/run |",
        "|---|" + "---:|" * (len(TABLE_FRACTIONS) + 1),
    ]
    for strategy, mean in summary.mean.items():
        cells = " | ".join(_cell(float(mean[i]), float(summary.se[strategy][i])) for i in cols)
        lines.append(f"| {strategy} | {cells} | {summary.wall[strategy]:.1f} |")
    checks = suite_checks(result, summary)
    if checks:
        lines += ["", "Targets for the default strategy (issue 13):", ""]
        lines += [f"- {'PASS' if ok else 'FAIL'}: {what}" for what, ok in checks]
    return lines


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
    for suite in dict.fromkeys(p.suite for p in result.problems.values()):
        summary = suite_summary(result, suite)
        if summary is not None:
            lines += _suite_lines(result, summary)
    for name, p in result.problems.items():
        lines += [
            "",
            f"## {name} (optimum {p.optimum:.6g}, reference {p.reference:.6g}, max budget {p.max_budget}, "
            f"budget {p.budget:g})",
            "",
            "| strategy | "
            + " | ".join(f"{int(f * 100)}%" for f in TABLE_FRACTIONS)
            + " | (a) reach TPE final | (b) beats tpe_hyperband | s/run |",
            "|---|" + "---:|" * len(TABLE_FRACTIONS) + "---:|---:|---:|",
        ]
        for strategy, mean in p.mean.items():
            se = p.se[strategy]
            checks = p.checks.get(strategy, {})
            a = checks.get("fraction_to_tpe_final")
            b = checks.get("beats_tpe_hyperband")
            a_txt = "never" if a is None else f"{a:.2f}"
            b_txt = "–" if b is None else ("yes" if b else "no")
            cells = " | ".join(_cell(float(mean[i]), float(se[i])) for i in cols)
            lines.append(
                f"| {strategy} | {cells} | {a_txt} | {b_txt} | {_wall(p.traces.get(strategy, []))} |"
            )
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


def _style(strategy: str) -> dict[str, Any]:
    """speechtune solid (the default without priors thickest), Optuna dashed, other peers dash-dot."""
    if strategy.startswith("speechtune"):
        return {"ls": "-", "lw": 2.4 if strategy == "speechtune_noprior" else 1.6}
    if strategy in BASELINE_STRATEGIES:
        return {"ls": "--", "lw": 1.2}
    return {"ls": "-." if strategy in PEER_STRATEGIES else ":", "lw": 1.2}


def _plot(
    path: Path,
    title: str,
    x: np.ndarray,
    mean: dict[str, np.ndarray],
    se: dict[str, np.ndarray],
    xlabel: str = "budget (full-fidelity evaluations)",
) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = [plt.get_cmap("tab20")(i) for i in range(20)]
    negative = any(float(np.min(m)) < 0 for m in mean.values())
    floor = -np.inf if negative else REGRET_FLOOR
    for k, (strategy, m) in enumerate(mean.items()):
        colour = "black" if strategy == "speechtune_noprior" else colours[k % len(colours)]
        (line,) = ax.plot(
            x, np.maximum(m, floor), color=colour, label=strategy, **_style(strategy)
        )
        ax.fill_between(
            x,
            np.maximum(m - se[strategy], floor),
            np.maximum(m + se[strategy], floor),
            color=line.get_color(),
            alpha=0.12,
        )
    # Regret below 0 (better than a published best) cannot sit on a log axis: symlog then.
    if negative:
        ax.set_yscale("symlog", linthresh=1e-3)
    else:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("normalised regret")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def plot_regret(result: BenchmarkResult, out_dir: str | Path) -> list[Path]:
    """One PNG per problem and per suite: mean normalised regret vs budget, shaded ± one s.e.

    Files: ``regret_<problem>.png`` (``/`` in a name becomes ``_``) and
    ``regret_<suite>_suite.png``; the axis is logarithmic, symlog when a regret is negative.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for suite in dict.fromkeys(p.suite for p in result.problems.values()):
        summary = suite_summary(result, suite)
        if summary is None:
            continue
        paths.append(
            _plot(
                out / f"regret_{_file_name(suite)}_suite.png",
                f"{suite} suite ({len(summary.problems)} problems): mean ± s.e. over "
                f"{len(result.seeds)} seeds",
                result.fractions,
                summary.mean,
                summary.se,
                xlabel="fraction of each problem's budget",
            )
        )
    for name, p in result.problems.items():
        paths.append(
            _plot(
                out / f"regret_{_file_name(name)}.png",
                f"{name}: mean ± s.e. over {len(result.seeds)} seeds",
                result.budgets(name),
                p.mean,
                p.se,
            )
        )
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


DOCS_BEGIN = "<!-- search-efficiency:begin (written by benchmarks/search_efficiency.py --docs) -->"
DOCS_END = "<!-- search-efficiency:end -->"


def update_docs(
    result: BenchmarkResult,
    docs: str | Path,
    plots: dict[str, Path],
    *,
    command: str,
    wall_s: float,
    machine: str,
) -> Path:
    """Replace the generated section of ``docs`` (between :data:`DOCS_BEGIN` and
    :data:`DOCS_END`) with this run: the command, wall time, machine, tables and plots.

    The plots are copied next to ``docs`` under ``img/search_efficiency/`` and linked relatively.
    Headings of the table are demoted two levels to sit under the page's own.

    Raises:
        ValueError: ``docs`` lacks the two markers (add them where the section belongs).
    """
    import shutil

    path = Path(docs)
    text = path.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise ValueError(
            f"{path}: no generated section; add the lines {DOCS_BEGIN} and {DOCS_END}"
        )
    img_dir = path.parent / "img" / "search_efficiency"
    img_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for src in plots.values():
        if src.suffix == ".png":
            shutil.copyfile(src, img_dir / src.name)
            images.append(f"![{src.stem}](img/search_efficiency/{src.name})")
    table = [
        ("##" + line if line.startswith("#") else line)
        for line in markdown_table(result).splitlines()
    ]
    body = [
        DOCS_BEGIN,
        "",
        "```bash",
        command,
        "```",
        "",
        f"About {wall_s / 60:.0f} min wall on {machine}; seeds {result.seeds[0]}-{result.seeds[-1]}.",
        "",
        *table,
        "",
        *[line for image in images for line in (image, "")],
        DOCS_END,
    ]
    head, rest = text.split(DOCS_BEGIN, 1)
    _, tail = rest.split(DOCS_END, 1)
    path.write_text(head + "\n".join(body) + tail)
    return path
