"""The self-contained ``report.html`` (and PNGs) of a study.

plotly.js is embedded inline exactly once in ``<head>``; every figure is a ``<div>`` drawn with
that copy, so the report opens offline and stays one file. All user text (study name, reasons,
parameter names and values) is HTML-escaped; plotly escapes ``<`` in its figure JSON itself.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import plotly.offline
from optuna.trial import TrialState

from speechtune.reports import _figures, _png
from speechtune.reports._cost_report import cost_section
from speechtune.reports._fidelity_report import fidelity_section
from speechtune.reports._html_parts import esc, figure_div, table
from speechtune.reports._importance import Importance, param_importances
from speechtune.tuning.study import (
    is_multi_fidelity,
    objective_names,
    primary_seed_stats,
    ranked_trials,
    select_best,
    trial_config,
    trial_status,
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.9em; }
th { background: #f3f3f3; }
section { margin-bottom: 2em; }
.note { color: #666; font-style: italic; }
.warning { border: 2px solid #b00; background: #fff0f0; padding: 0.5em 1em; margin: 0.5em 0; }
"""


def _std_cell(trial: optuna.trial.FrozenTrial) -> Any:
    seeds, std = primary_seed_stats(trial)
    return std if len(seeds) > 1 and std is not None else ""


def _summary(study: optuna.Study) -> str:
    names = objective_names(study)
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    counts = [
        ["trials", len(trials)],
        ["complete", states[TrialState.COMPLETE]],
        ["pruned", states[TrialState.PRUNED]],
        ["failed", states[TrialState.FAIL]],
        ["running / waiting", states[TrialState.RUNNING] + states[TrialState.WAITING]],
    ]
    directions = ", ".join(f"{n} ({d.name.lower()})" for n, d in zip(names, study.directions))
    parts = [f"<p>Objectives: {esc(directions)}</p>"]
    choice = select_best(study)
    if choice is None:
        parts.append('<p class="note">No trial completed yet: no best trial.</p>')
    else:
        best = choice.trial
        values = ", ".join(f"{n} = {v:.6g}" for n, v in zip(names, best.values))
        parts.append(
            f'<p><b>Best trial #{best.number}</b>: {esc(values)} <span class="note">({esc(choice.note)})</span></p>'
        )
        config = trial_config(best)
        parts.append(table(["key", "value"], [[k, config[k]] for k in sorted(config)]))
    parts.append(table(["count", "trials"], counts))
    reasons = Counter((t.state.name, *trial_status(t)) for t in trials)
    rows = [[state, status, reason, n] for (state, status, reason), n in sorted(reasons.items())]
    parts.append(
        "<h3>Why trials ended</h3>" + table(["state", "status", "reason", "trials"], rows)
    )
    top = ranked_trials(study)[:10]
    if top:
        rows = [[t.number, *t.values, _std_cell(t)] for t in top]
        parts.append("<h3>Top trials</h3>" + table(["trial", *names, "std over seeds"], rows))
    return "\n".join(parts)


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def _plot_sections(study: optuna.Study, importance: Importance) -> list[str]:
    primary = objective_names(study)[0]
    builders: list[tuple[str, str, go.Figure | None, str]] = [
        (
            "history",
            "Optimisation history",
            _figures.history_figure(study),
            "no complete trial yet",
        ),
        (
            "importance",
            "Parameter importance",
            _figures.importance_figure(importance, primary),
            importance.note,
        ),
        (
            "parallel",
            "Parallel coordinates",
            _figures.parallel_figure(study),
            "needs two complete trials with parameters",
        ),
        (
            "learning-curves",
            "Learning curves",
            _figures.learning_curves_figure(study),
            "no trial reported per-epoch values",
        ),
        ("pareto", "Pareto front", _figures.pareto_figure(study), ""),
        ("group-wer", "WER per group of the best trials", _figures.group_wer_figure(study), ""),
        ("seeds", "Seeds: mean +/- std", _figures.seeds_figure(study), ""),
    ]
    sections = []
    for key, title, fig, why_missing in builders:
        if fig is not None:
            sections.append(_section(key, title, figure_div(fig, f"plot-{key}")))
        elif why_missing:
            sections.append(_section(key, title, f'<p class="note">{esc(why_missing)}</p>'))
    return sections


def _write_pngs(study: optuna.Study, importance: Importance, plots_dir: Path) -> list[Path]:
    plots_dir.mkdir(parents=True, exist_ok=True)
    primary = objective_names(study)[0]
    written = [
        _png.history_png(study, plots_dir / "history.png"),
        _png.importance_png(importance, primary, plots_dir / "importance.png"),
        _png.learning_curves_png(study, plots_dir / "learning_curves.png"),
        _png.pareto_png(study, plots_dir / "pareto.png"),
    ]
    return [p for p in written if p is not None]


def build_report(study: optuna.Study, out_dir: str | Path) -> Path:
    """Write ``out_dir/report.html`` (self-contained, works offline) and ``out_dir/plots/*.png``.

    A multi-fidelity study (``fidelity`` study attr) gets a "Multi-fidelity" section: rungs,
    brackets, compute saved, how faithfully each rung ranks configs (``plots/correlation.png``),
    and a warning when promotions relied on a rung that does not.

    Args:
        study: A loaded study following the tuning contract's trial records.
        out_dir: Directory to write into (created when missing).

    Returns:
        The path of ``report.html``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    importance = param_importances(study)
    _write_pngs(study, importance, out_dir / "plots")
    title = f"speechtune study {study.study_name}"
    sections = [_section("summary", "Summary", _summary(study))]
    # Imported here: that module renders with this one's helpers.

    cost = cost_section(study)
    if cost is not None:
        sections.append(_section("cost", "Cost and carbon", cost))
    if is_multi_fidelity(study):
        # Imported here: that module renders with this one's helpers.

        sections.append(
            _section(
                "multi-fidelity", "Multi-fidelity", fidelity_section(study, out_dir / "plots")
            )
        )
    body = "\n".join([*sections, *_plot_sections(study, importance)])
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{_STYLE}</style>\n"
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>\n'
        f"</head>\n<body>\n<h1>{esc(title)}</h1>\n{body}\n</body>\n</html>\n"
    )
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
