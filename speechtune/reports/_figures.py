"""Plotly figures of a study. Each builder returns a figure, or None when it does not apply."""

from __future__ import annotations

import warnings
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

from speechtune.reports._importance import Importance
from speechtune.reports._ticks import integer_xaxis
from speechtune.tuning.study import (
    comparable_study,
    complete_trials,
    is_multi_objective,
    learning_curve,
    objective_names,
    pareto_knee,
    primary_seed_stats,
    ranked_trials,
    trial_status,
)

# How each state is drawn in learning curves: (dash, marker symbol at the last epoch).
_CURVE_STYLE = {
    TrialState.COMPLETE: ("solid", "circle"),
    TrialState.PRUNED: ("dash", "x"),
    TrialState.FAIL: ("dot", "triangle-down"),
    TrialState.RUNNING: ("solid", "circle-open"),
}
TOP_K = 5


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    # optuna.visualization warns about experimental arguments; not useful in a report build.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def history_figure(study: optuna.Study) -> go.Figure | None:
    """Optimisation history of the primary objective."""
    if not complete_trials(study):
        return None
    name = objective_names(study)[0]
    fig = _quiet(
        optuna.visualization.plot_optimization_history,
        comparable_study(study),
        target=lambda t: t.values[0],
        target_name=name,
    )
    fig.update_layout(title=f"Optimisation history ({name})", xaxis_title="trial")
    return integer_xaxis(fig)


def importance_figure(importance: Importance, target_name: str) -> go.Figure | None:
    """Horizontal bars of parameter importance, most important on top."""
    if not importance.values:
        return None
    items = sorted(importance.values.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h"))
    fig.update_layout(
        title=f"Parameter importance for {target_name} ({importance.method})",
        xaxis_title="importance (normalised)",
    )
    return fig


def learning_curves_figure(study: optuna.Study) -> go.Figure | None:
    """Intermediate values per epoch of every trial; pruned dashed, failed dotted."""
    name = objective_names(study)[0]
    fig = go.Figure()
    for trial in study.get_trials(deepcopy=False):
        if trial.state not in _CURVE_STYLE:
            continue
        steps, values = learning_curve(trial, name)
        if not steps:
            continue
        dash, symbol = _CURVE_STYLE[trial.state]
        status, reason = trial_status(trial)
        symbols = ["circle"] * (len(steps) - 1) + [symbol]
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=values,
                mode="lines+markers",
                name=f"#{trial.number} {trial.state.name.lower()}",
                line={"dash": dash},
                marker={"symbol": symbols, "size": [5] * (len(steps) - 1) + [10]},
                hovertext=f"trial {trial.number}: {status} ({reason})",
            )
        )
    if not fig.data:
        return None
    fig.update_layout(
        title=f"Learning curves ({name} per epoch; pruned dashed x, failed dotted triangle)",
        xaxis_title="epoch",
        yaxis_title=name,
    )
    return integer_xaxis(fig)


def pareto_figure(study: optuna.Study) -> go.Figure | None:
    """Pareto front of the first two (or three) objectives of a multi-objective study."""
    if not is_multi_objective(study) or not complete_trials(study):
        return None
    names = objective_names(study)
    if len(names) <= 3:
        fig = _quiet(optuna.visualization.plot_pareto_front, study, target_names=names)
    else:
        fig = _quiet(
            optuna.visualization.plot_pareto_front,
            study,
            targets=lambda t: (t.values[0], t.values[1]),
            target_names=names[:2],
        )
    knee = pareto_knee(study)
    if knee is not None:
        point = {"x": [knee.values[0]], "y": [knee.values[1]]}
        if len(names) == 3:
            point["z"] = [knee.values[2]]
        scatter = go.Scatter3d if len(names) == 3 else go.Scatter
        fig.add_trace(
            scatter(
                **point,
                mode="markers",
                marker={"symbol": "diamond", "size": 12, "color": "black"},
                name=f"knee (trial {knee.number})",
            )
        )
    fig.update_layout(title=f"Pareto front ({' vs '.join(names[:3])})")
    return fig


def group_wer_figure(study: optuna.Study, top_k: int = TOP_K) -> go.Figure | None:
    """Per-group WER of the ``top_k`` best complete trials (grouped bars)."""
    trials = [t for t in ranked_trials(study) if t.user_attrs.get("group_wer")][:top_k]
    if not trials:
        return None
    fig = go.Figure()
    for trial in trials:
        groups = trial.user_attrs["group_wer"]
        fig.add_trace(
            go.Bar(x=list(groups), y=list(groups.values()), name=f"trial {trial.number}")
        )
    fig.update_layout(
        title=f"WER per group of the {len(trials)} best trials",
        barmode="group",
        xaxis_title="group",
        yaxis_title="WER",
    )
    return fig


def seeds_figure(study: optuna.Study, top_k: int = 10) -> go.Figure | None:
    """Mean +/- std over seeds of the best trials run with more than one seed."""
    stats = [(t, *primary_seed_stats(t)) for t in ranked_trials(study)]
    stats = [s for s in stats if len(s[1]) > 1][:top_k]
    if not stats:
        return None
    name = objective_names(study)[0]
    means, stds, labels = [], [], []
    for trial, seeds, std in stats:
        mean = sum(seeds) / len(seeds)
        if std is None:
            std = (sum((v - mean) ** 2 for v in seeds) / len(seeds)) ** 0.5
        means.append(mean)
        stds.append(float(std))
        labels.append(f"trial {trial.number} ({len(seeds)} seeds)")
    fig = go.Figure(
        go.Scatter(x=labels, y=means, mode="markers", error_y={"type": "data", "array": stds})
    )
    fig.update_layout(title=f"{name} over seeds: mean +/- std", yaxis_title=name)
    return fig
