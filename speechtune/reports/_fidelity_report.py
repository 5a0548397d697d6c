"""The "Multi-fidelity" section of ``report.html``: rungs, brackets, compute saved, rung trust.

Read from the trial records of the issue-4 contract (``rung``, ``config_id``, ``bracket``,
``job_cost`` user attrs and the study's ``fidelity`` attr). Compute is in full-training units:
a job's ``job_cost`` divided by the top rung's cost.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState
from plotly.subplots import make_subplots

from speechtune.reports._correlate import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_THRESHOLD,
    MIN_PAIRS,
    CorrelationReport,
    RungCorrelation,
    correlate_study,
    correlation_png,
)
from speechtune.reports._html_parts import esc, figure_div, table
from speechtune.tuning.study import (
    duration_s,
    fidelity_record,
    primary_value,
    trial_rung,
)

WARN_SPEARMAN = 0.5  # below this, promotions on a rung are close to a coin toss

__all__ = [
    "RungSummary",
    "Savings",
    "WARN_SPEARMAN",
    "bracket_rows",
    "compute_savings",
    "correlation_figure",
    "fidelity_section",
    "rung_summaries",
    "rung_warnings",
]


@dataclass(frozen=True)
class RungSummary:
    """What happened at one rung of a multi-fidelity study."""

    rung: int
    name: str
    cost: float  # nominal cost relative to the top rung
    trials: int
    configs: int  # distinct config_ids run at this rung
    promoted: int  # of those, configs that were later run at a higher rung
    pruned_failed: int  # trials pruned, failed, or complete without a value
    compute: float  # sum of job_cost, in full-training units
    wall_s: float  # sum of the trials' wall time


@dataclass(frozen=True)
class Savings:
    """Compute spent against running every started config at full fidelity."""

    configs: int
    spent: float
    full: float
    saved: float

    @property
    def percent(self) -> float:
        return 100.0 * self.saved / self.full if self.full > 0 else 0.0


def _started(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    # Waiting trials were enqueued but never ran: they spent nothing.
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING and trial_rung(t) is not None
    ]


def _costs(study: optuna.Study) -> tuple[list[str], list[float], float]:
    rungs = fidelity_record(study)["rungs"]  # type: ignore[index]
    top_cost = float(rungs[-1].get("cost") or 1.0)
    return (
        [str(r["name"]) for r in rungs],
        [float(r.get("cost") or 0.0) / top_cost for r in rungs],
        top_cost,
    )


def _job_cost(trial: optuna.trial.FrozenTrial, nominal: list[float], top_cost: float) -> float:
    cost = trial.user_attrs.get("job_cost")
    if isinstance(cost, (int, float)) and not isinstance(cost, bool) and math.isfinite(cost):
        return float(cost) / top_cost
    return nominal[trial_rung(trial)]  # type: ignore[index]  # an older record: the rung's full cost


def _bad(trial: optuna.trial.FrozenTrial) -> bool:
    if trial.state in (TrialState.PRUNED, TrialState.FAIL):
        return True
    value = primary_value(trial)
    return trial.state == TrialState.COMPLETE and (value is None or not math.isfinite(value))


def rung_summaries(study: optuna.Study) -> list[RungSummary]:
    """One :class:`RungSummary` per rung of a multi-fidelity study, cheapest first."""
    names, nominal, top_cost = _costs(study)
    trials = [t for t in _started(study) if trial_rung(t) < len(names)]  # type: ignore[operator]
    configs: dict[int, set[int]] = defaultdict(set)
    for t in trials:
        if isinstance(t.user_attrs.get("config_id"), int):
            configs[trial_rung(t)].add(t.user_attrs["config_id"])  # type: ignore[index]
    out = []
    for rung, name in enumerate(names):
        at = [t for t in trials if trial_rung(t) == rung]
        higher = set().union(*(configs[r] for r in range(rung + 1, len(names))))
        out.append(
            RungSummary(
                rung=rung,
                name=name,
                cost=nominal[rung],
                trials=len(at),
                configs=len(configs[rung]),
                promoted=len(configs[rung] & higher),
                pruned_failed=sum(_bad(t) for t in at),
                compute=sum(_job_cost(t, nominal, top_cost) for t in at),
                wall_s=sum(duration_s(t) or 0.0 for t in at),
            )
        )
    return out


def bracket_rows(study: optuna.Study) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the bracket table: per bracket, configs / budget at each rung."""
    names, nominal, top_cost = _costs(study)
    configs: dict[tuple[int, int], set[int]] = defaultdict(set)
    budget: dict[tuple[int, int], float] = defaultdict(float)
    brackets: set[int] = set()
    for t in _started(study):
        bracket, rung = t.user_attrs.get("bracket"), trial_rung(t)
        if not isinstance(bracket, int) or rung is None or rung >= len(names):
            continue
        brackets.add(bracket)
        if isinstance(t.user_attrs.get("config_id"), int):
            configs[bracket, rung].add(t.user_attrs["config_id"])
        budget[bracket, rung] += _job_cost(t, nominal, top_cost)
    header = ["bracket", *(f"{n}: configs / budget" for n in names), "total budget"]
    rows = []
    for b in sorted(brackets):
        cells = [
            f"{len(configs[b, r])} / {budget[b, r]:.3g}" if (b, r) in budget else "-"
            for r in range(len(names))
        ]
        rows.append([str(b), *cells, f"{sum(budget[b, r] for r in range(len(names))):.3g}"])
    return header, rows


def compute_savings(study: optuna.Study) -> Savings:
    """Spent compute against ``distinct configs x top cost`` (every started config at full fidelity)."""
    names, nominal, top_cost = _costs(study)
    trials = [t for t in _started(study) if trial_rung(t) < len(names)]  # type: ignore[operator]
    ids = {
        t.user_attrs["config_id"] for t in trials if isinstance(t.user_attrs.get("config_id"), int)
    }
    spent = sum(_job_cost(t, nominal, top_cost) for t in trials)
    full = float(len(ids))  # the top rung is one full-training unit
    return Savings(len(ids), spent, full, full - spent)


def rung_warnings(summaries: list[RungSummary], report: CorrelationReport) -> list[str]:
    """Warnings for lower rungs that promotions relied on but that rank configs unlike the top rung.

    A rung is flagged when it promoted at least one config, has at least ``MIN_PAIRS`` pairs,
    and its Spearman is below :data:`WARN_SPEARMAN` or its 95% interval includes 0.
    """
    promoted = {s.rung: s.promoted for s in summaries}
    warnings_: list[str] = []
    for rc in report.rungs:
        rho, ci = rc.stats.spearman, rc.stats.spearman_ci
        if not promoted.get(rc.rung) or not rc.enough_pairs or rho is None:
            continue
        spans_zero = ci is not None and ci[0] <= 0.0 <= ci[1]
        if rho >= WARN_SPEARMAN and not spans_zero:
            continue
        interval = f", 95% CI [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci is not None else ""
        warnings_.append(
            f"Promotions from rung {rc.name!r} ({promoted[rc.rung]} configs promoted) relied on a ranking that does "
            f"not agree with the top rung {report.top_name!r}: Spearman {rho:+.2f}{interval}, n = {rc.n_pairs}. "
            f"Configs it dropped may have been good ones. Recommendation: {report.recommendation.text}."
        )
    return warnings_


def correlation_figure(report: CorrelationReport) -> go.Figure | None:
    """Plotly scatter of lower-rung vs top-rung values, one panel per rung with pairs."""
    panels = [rc for rc in report.rungs if rc.pairs]
    if not panels:
        return None
    fig = make_subplots(
        rows=1, cols=len(panels), subplot_titles=[_panel_title(rc) for rc in panels]
    )
    for k, rc in enumerate(panels, start=1):
        fig.add_trace(
            go.Scatter(
                x=[p.lower for p in rc.pairs],
                y=[p.top for p in rc.pairs],
                mode="markers",
                name=rc.name,
                hovertext=[f"config {p.key}" for p in rc.pairs],
            ),
            row=1,
            col=k,
        )
        fig.update_xaxes(title_text=f"{report.metric} at {rc.name}", row=1, col=k)
    fig.update_yaxes(title_text=f"{report.metric} at {report.top_name}", row=1, col=1)
    fig.update_layout(
        title=f"Rank agreement of each rung with {report.top_name}", showlegend=False
    )
    return fig


def _panel_title(rc: RungCorrelation) -> str:
    rho = "n/a" if rc.stats.spearman is None else f"{rc.stats.spearman:.2f}"
    return f"{rc.name} (n={rc.n_pairs}, Spearman {rho})"


def _ci_cell(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")


def _correlation_html(report: CorrelationReport, summaries: list[RungSummary]) -> str:
    promoted = {s.rung: s.promoted for s in summaries}
    rows = []
    for rc in report.rungs:
        verdict = (
            "yes"
            if rc.trustworthy(report.threshold)
            else ("too few pairs" if not rc.enough_pairs else "no")
        )
        rows.append(
            [
                rc.name,
                rc.n_pairs,
                _ci_cell(rc.stats.spearman, rc.stats.spearman_ci),
                _ci_cell(rc.stats.kendall, rc.stats.kendall_ci),
                "-" if rc.mean_job_cost is None else f"{rc.mean_job_cost:.3g}",
                verdict,
            ]
        )
    parts = [
        f"<h3>Does each rung rank configs like {esc(report.top_name)}?</h3>",
        table(
            [
                "rung",
                "pairs",
                "Spearman [95% CI]",
                "Kendall [95% CI]",
                "mean job cost",
                f"trustworthy (CI lower bound >= {report.threshold:g})",
            ],
            rows,
        ),
        f"<p><b>Recommendation</b>: {esc(report.recommendation.text)}</p>",
    ]
    thin = [rc.name for rc in report.rungs if promoted.get(rc.rung) and not rc.enough_pairs]
    if thin:
        parts.append(
            f'<p class="note">Promotions relied on {esc(", ".join(thin))}, but fewer than {MIN_PAIRS} of their '
            "configs reached the top rung: too few to check the ranking.</p>"
        )
    parts += [f'<p class="note">{esc(n)}</p>' for n in report.notes]
    fig = correlation_figure(report)
    if fig is not None:
        parts.append(figure_div(fig, "plot-rung-correlation"))
    return "\n".join(parts)


def fidelity_section(
    study: optuna.Study,
    plots_dir: Path | None = None,
    *,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
) -> str:
    """HTML body of the "Multi-fidelity" section (the caller wraps it in a ``<section>``).

    Args:
        study: A multi-fidelity study (``fidelity`` study attr).
        plots_dir: Where to write ``correlation.png``; None writes no PNG.
        n_bootstrap, seed, threshold: As in :func:`speechtune.reports.correlate_study`.
    """
    record = fidelity_record(study) or {}
    summaries = rung_summaries(study)
    parts = [
        f"<p>Strategy {esc(record.get('strategy', '?'))}, eta {esc(record.get('eta', '?'))}, "
        f"resume key {esc(record.get('resume_key') or 'none')}. Compute is in full-training units "
        "(one config trained at the top rung = 1).</p>",
        table(
            [
                "rung",
                "name",
                "cost",
                "trials",
                "configs run",
                "promoted",
                "pruned / failed",
                "compute spent",
                "wall time (s)",
            ],
            [
                [
                    s.rung,
                    s.name,
                    f"{s.cost:.3g}",
                    s.trials,
                    s.configs,
                    s.promoted,
                    s.pruned_failed,
                    f"{s.compute:.3g}",
                    f"{s.wall_s:.1f}",
                ]
                for s in summaries
            ],
        ),
    ]
    header, rows = bracket_rows(study)
    if rows:
        parts.append("<h3>Brackets</h3>" + table(header, rows))
    savings = compute_savings(study)
    against = "against training every config that was started at full fidelity"
    if savings.saved >= 0:
        parts.append(
            f"<p><b>Compute saved</b>: {savings.saved:.3g} of {savings.full:.3g} full-training units "
            f"({savings.percent:.1f}%): spent {savings.spent:.3g} on {savings.configs} configs, {against}.</p>"
        )
    else:  # e.g. every config was run at every rung without resuming
        parts.append(
            f"<p><b>Compute saved</b>: none: spent {savings.spent:.3g} full-training units "
            f"on {savings.configs} configs, "
            f"{-savings.saved:.3g} more than {savings.full:.3g}, {against}.</p>"
        )
    try:
        report = correlate_study(study, n_bootstrap=n_bootstrap, seed=seed, threshold=threshold)
    except ValueError as exc:
        parts.append(f'<p class="note">No rung correlations: {esc(exc)}</p>')
        return "\n".join(parts)
    warnings_ = rung_warnings(summaries, report)
    boxes = [f'<div class="warning"><b>WARNING</b>: {esc(w)}</div>' for w in warnings_]
    parts[:0] = boxes  # the first thing a reader sees in the section
    parts.append(_correlation_html(report, summaries))
    if plots_dir is not None:
        correlation_png(report, plots_dir / "correlation.png")
    return "\n".join(parts)
