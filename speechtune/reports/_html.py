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
from speechtune.reports._parallel import parallel_figure
from speechtune.tuning.study import (
    confirmation_rows,
    confirmed_choice,
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


def ran_several_seeds(study: optuna.Study) -> bool:
    """True when the study ran each config with more than one seed.

    Read from the spec (``objective.seeds`` with more than one entry) or, for a study without
    a spec (a ``command`` objective, an older study), from trials that hold per-seed values.
    """
    spec = study.user_attrs.get("spec")
    objective = spec.get("objective") if isinstance(spec, dict) else None
    seeds = objective.get("seeds") if isinstance(objective, dict) else None
    if isinstance(seeds, list) and len(seeds) > 1:
        return True
    return any(len(primary_seed_stats(t)[0]) > 1 for t in study.get_trials(deepcopy=False))


def _std_cell(trial: optuna.trial.FrozenTrial) -> Any:
    seeds, std = primary_seed_stats(trial)
    return std if len(seeds) > 1 and std is not None else ""


def top_trials_table(study: optuna.Study, top_k: int = 10) -> str:
    """The ``top_k`` best comparable trials; a "std over seeds" column only for a multi-seed study.

    A single-seed study has no spread to show, and an always-empty column reads like missing data.
    """
    names = objective_names(study)
    top = ranked_trials(study)[:top_k]
    if not top:
        return ""
    if ran_several_seeds(study):
        rows = [[t.number, *t.values, _std_cell(t)] for t in top]
        return table(["trial", *names, "std over seeds"], rows)
    return table(["trial", *names], [[t.number, *t.values] for t in top])


def _best_trial(study: optuna.Study) -> str:
    """The best trial first: its objective values, other metrics and full config."""
    names = objective_names(study)
    directions = ", ".join(f"{n} ({d.name.lower()})" for n, d in zip(names, study.directions))
    parts = [f"<p>Objectives: {esc(directions)}</p>"]
    choice = select_best(study)
    if choice is None:
        parts.append('<p class="note">No trial completed yet: no best trial.</p>')
        return "\n".join(parts)
    best = choice.trial
    values = ", ".join(f"{n} = {v:.6g}" for n, v in zip(names, best.values))
    seeds, std = primary_seed_stats(best)
    if len(seeds) > 1:
        spread = f", std {std:.3g}" if std is not None else ""
        values += f" (mean over {len(seeds)} seeds{spread})"
    parts.append(
        f'<p><b>Best trial #{best.number}</b>: {esc(values)} <span class="note">({esc(choice.note)})</span></p>'
    )
    metrics = best.user_attrs.get("metrics")
    if isinstance(metrics, dict):
        others = [
            f"{k} = {v:.6g}"
            for k, v in sorted(metrics.items())
            if k not in names and isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        if others:
            parts.append(f"<p>Also measured: {esc(', '.join(others))}</p>")
    ran_on = _environment_line(best)
    if ran_on:
        parts.append(f'<p class="note">Ran on: {esc(ran_on)}</p>')
    config = trial_config(best)
    # Searched parameters first: they are what the study found; fixed and derived keys follow.
    keys = sorted(config, key=lambda k: (k not in best.params, k))
    rows = [[k, config[k], "searched" if k in best.params else "fixed or derived"] for k in keys]
    parts.append(table(["parameter", "value", "source"], rows))
    return "\n".join(parts)


def _environment_line(trial: optuna.trial.FrozenTrial) -> str | None:
    """What a recipe trial ran on, from the ``environment.json`` its training wrote (in the
    trial dir, or its first seed's); None for other objectives and older runs."""
    attr = trial.user_attrs.get("trial_dir")
    if not attr:
        return None
    from speechtune.training import ENVIRONMENT_FILE, read_environment  # torch-free

    trial_dir = Path(str(attr))
    for run_dir in [
        trial_dir,
        *sorted(p.parent for p in trial_dir.glob(f"seed*/{ENVIRONMENT_FILE}")),
    ]:
        env = read_environment(run_dir)
        if env is None:
            continue
        if env.get("gpu"):
            device = f"{env['gpu']} (CUDA {env.get('cuda', '?')})"
        else:
            device = f"{env.get('cpu', '?')} ({env.get('cpu_capability', '?')})"
        return (
            f"{device}, {env.get('threads', '?')} threads, torch {env.get('torch', '?')}, "
            f"speechtune {env.get('speechtune', '?')} ({ENVIRONMENT_FILE} in {run_dir}; "
            "`speechtune rerun` compares a rerun with it)"
        )
    return None


def _confirmation(study: optuna.Study) -> str | None:
    """The confirmation on new seeds (``study.confirm_top``), one row per config; None without one."""
    rows = confirmation_rows(study)
    if not rows:
        return None
    name = objective_names(study)[0]
    seeds = sorted({s for r in rows for s in (*r.values, *r.failed)})
    body = []
    for r in sorted(rows, key=lambda r: (r.mean() is None, r.mean() or 0.0)):
        cells = [
            f"{r.values[s]:.4g}" if s in r.values else ("failed" if s in r.failed else "")
            for s in seeds
        ]
        mean, se = r.mean(), r.stderr()
        shown = "" if mean is None else f"{mean:.4g}" + (f" +- {se:.2g}" if se is not None else "")
        label = f"{r.trial} (defaults)" if r.baseline else r.trial
        body.append([label, f"{r.study_value:.4g}", *cells, shown])
    choice = confirmed_choice(study)
    picked = (
        f"<p>Picked: trial #{choice[0].number}, {esc(choice[1])}.</p>"
        if choice is not None
        else '<p class="note">No config has a value on every seed yet: the study\'s own best stands.</p>'
    )
    intro = (
        f'<p class="note">The best configs trained again on seeds the search never saw; '
        f"the pick is the best mean {esc(name)} there (the study's own value is what the search "
        "selected on, so it is left out).</p>"
    )
    header = ["trial", f"{name} (study)", *[f"seed {s}" for s in seeds], "mean +- s.e."]
    return intro + picked + table(header, body)


def _trials_overview(study: optuna.Study) -> str:
    """How many trials ended in which state and why, and the best ten."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    counts = [
        ["trials", len(trials)],
        ["complete", states[TrialState.COMPLETE]],
        ["pruned", states[TrialState.PRUNED]],
        ["failed", states[TrialState.FAIL]],
        ["running / waiting", states[TrialState.RUNNING] + states[TrialState.WAITING]],
    ]
    parts = [table(["count", "trials"], counts)]
    reasons = Counter((t.state.name, *trial_status(t)) for t in trials)
    rows = [[state, status, reason, n] for (state, status, reason), n in sorted(reasons.items())]
    parts.append(
        "<h3>Why trials ended</h3>" + table(["state", "status", "reason", "trials"], rows)
    )
    top = top_trials_table(study)
    if top:
        parts.append("<h3>Top trials</h3>" + top)
    return "\n".join(parts)


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def _confirmation_section(study: optuna.Study) -> str | None:
    body = _confirmation(study)
    return _section("confirmation", "Confirmation on new seeds", body) if body else None


def _figure_section(key: str, title: str, fig: go.Figure | None, why_missing: str) -> str | None:
    """A figure's section; when there is no figure, a sentence saying why (or nothing)."""
    if fig is not None:
        return _section(key, title, figure_div(fig, f"plot-{key}"))
    if why_missing:
        return _section(key, title, f'<p class="note">{esc(why_missing)}</p>')
    return None


def report_sections(
    study: optuna.Study, importance: Importance, plots_dir: Path | None
) -> list[str]:
    """The sections of ``report.html`` in reading order.

    Results first: the best trial, how the search got there (history), how the trials trained
    (learning curves). Then what explains the results (Pareto front, trial outcomes, importance,
    parallel coordinates, per-group WER, seeds, multi-fidelity), and last what it all cost: a
    reader's first question is what was found, not what it consumed.
    """
    primary = objective_names(study)[0]
    sections = [
        _section("best", "Best trial", _best_trial(study)),
        _confirmation_section(study),
        _figure_section(
            "history",
            "Optimisation history",
            _figures.history_figure(study),
            "no complete trial yet",
        ),
        _figure_section(
            "learning-curves",
            "Learning curves",
            _figures.learning_curves_figure(study),
            "no trial reported per-epoch values",
        ),
        _figure_section("pareto", "Pareto front", _figures.pareto_figure(study), ""),
        _section("trials", "Trials", _trials_overview(study)),
        _figure_section(
            "importance",
            "Parameter importance",
            _figures.importance_figure(importance, primary),
            importance.note,
        ),
        _figure_section(
            "parallel",
            "Parallel coordinates",
            parallel_figure(study, importance),
            "needs two complete trials whose parameters differ",
        ),
        _figure_section(
            "group-wer", "WER per group of the best trials", _figures.group_wer_figure(study), ""
        ),
        _figure_section("seeds", "Seeds: mean +/- std", _figures.seeds_figure(study), ""),
    ]
    if is_multi_fidelity(study):
        sections.append(
            _section("multi-fidelity", "Multi-fidelity", fidelity_section(study, plots_dir))
        )
    cost = cost_section(study)
    if cost is not None:
        sections.append(_section("cost", "Cost and carbon", cost))
    return [s for s in sections if s is not None]


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

    Sections, in order (:func:`report_sections`): best trial, optimisation history, learning
    curves, Pareto front, trial outcomes and top trials, parameter importance (or why it is not
    shown), parallel coordinates, per-group WER, seeds, multi-fidelity, cost and carbon.

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
    body = "\n".join(report_sections(study, importance, out_dir / "plots"))
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{_STYLE}</style>\n"
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>\n'
        f"</head>\n<body>\n<h1>{esc(title)}</h1>\n{body}\n</body>\n</html>\n"
    )
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
