"""PNG versions of the main plots, drawn with matplotlib's Agg canvas.

The object-oriented API (``Figure`` + ``FigureCanvasAgg``) is used instead of pyplot so that a
report never touches the global backend or pyplot's figure registry (safe in threads and inside
a user's notebook).
"""

from __future__ import annotations

from pathlib import Path

import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import TrialState

from speechtune.reports._importance import Importance
from speechtune.tuning.study import (
    complete_trials,
    is_multi_objective,
    learning_curve,
    minimises,
    objective_names,
    pareto_front,
    pareto_knee,
)

_LINESTYLE = {TrialState.COMPLETE: "-", TrialState.PRUNED: "--", TrialState.FAIL: ":"}
_END_MARKER = {TrialState.COMPLETE: "o", TrialState.PRUNED: "x", TrialState.FAIL: "v"}


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def history_png(study: optuna.Study, path: Path) -> Path | None:
    trials = sorted(complete_trials(study), key=lambda t: t.number)
    if not trials:
        return None
    name = objective_names(study)[0]
    best_fn = min if minimises(study) else max
    xs = [t.number for t in trials]
    ys = [t.values[0] for t in trials]
    running = [best_fn(ys[: i + 1]) for i in range(len(ys))]
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.scatter(xs, ys, s=18, label=name)
    ax.step(xs, running, where="post", color="tab:red", label="best so far")
    ax.set(title=f"Optimisation history ({name})", xlabel="trial", ylabel=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "trial 2.5"
    ax.legend()
    return _save(fig, path)


def importance_png(importance: Importance, target_name: str, path: Path) -> Path | None:
    if not importance.values:
        return None
    items = sorted(importance.values.items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(7, 0.5 * len(items) + 1.5))
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set(
        title=f"Parameter importance for {target_name} ({importance.method})", xlabel="importance"
    )
    return _save(fig, path)


def learning_curves_png(study: optuna.Study, path: Path) -> Path | None:
    name = objective_names(study)[0]
    curves = [
        (t, *learning_curve(t, name))
        for t in study.get_trials(deepcopy=False)
        if t.state in _LINESTYLE
    ]
    curves = [c for c in curves if c[1]]
    if not curves:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for trial, steps, values in curves:
        (line,) = ax.plot(steps, values, _LINESTYLE[trial.state], linewidth=1, alpha=0.8)
        ax.plot(steps[-1:], values[-1:], _END_MARKER[trial.state], color=line.get_color())
    ax.set(title=f"Learning curves ({name}; pruned --x, failed :v)", xlabel="epoch", ylabel=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 1.5"
    return _save(fig, path)


def pareto_png(study: optuna.Study, path: Path) -> Path | None:
    if not is_multi_objective(study):
        return None
    trials = complete_trials(study)
    if not trials:
        return None
    names = objective_names(study)
    front = {t.number for t in pareto_front(study)}
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    others = [t for t in trials if t.number not in front]
    best = sorted((t for t in trials if t.number in front), key=lambda t: t.values[0])
    ax.scatter(
        [t.values[0] for t in others],
        [t.values[1] for t in others],
        c="lightgray",
        label="dominated",
    )
    ax.plot(
        [t.values[0] for t in best],
        [t.values[1] for t in best],
        "o-",
        color="tab:red",
        label="Pareto front",
    )
    knee = pareto_knee(study)
    if knee is not None:
        ax.scatter(
            [knee.values[0]],
            [knee.values[1]],
            marker="D",
            s=80,
            color="black",
            zorder=3,
            label=f"knee (trial {knee.number})",
        )
    ax.set(title="Pareto front", xlabel=names[0], ylabel=names[1])
    ax.legend()
    return _save(fig, path)
