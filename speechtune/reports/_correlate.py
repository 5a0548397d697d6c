"""Proxy check: does a cheap rung (or an early epoch) rank configs the way full training does?

A multi-fidelity search promotes configs on values measured at cheap rungs; a pruner stops
trials on values measured at early epochs. Both are only as good as the rank agreement between
that cheap measurement and the full-fidelity value (see DESIGN.md, "Lessons measured": on
LCBench first-epoch scores ranked configs almost at random). This module measures it:

* multi-fidelity study (``fidelity`` study attr): each config (``config_id`` user attr) measured
  at a lower rung and at the top rung is one pair;
* any other study: each complete trial that reported per-epoch values is one pair per epoch
  (value at epoch ``e`` vs the trial's final value), so the "rungs" are epochs.

For each lower rung: Spearman and Kendall rank correlation with the top rung (scipy.stats) and
bootstrap 95% intervals over configs, the number of pairs, and the rung's cost. The recommended
rung is the cheapest whose Spearman lower bound reaches a threshold.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from speechtune.reports._rank import (
    CI_LEVEL,
    RankCorrelation,
    _finite,
    rank_correlation,
)
from speechtune.tuning.study import (
    complete_trials,
    fidelity_record,
    load_study,
    objective_names,
    primary_value,
    trial_rung,
)

MIN_PAIRS = 5  # below this a rank correlation (and its bootstrap) says next to nothing


DEFAULT_THRESHOLD = 0.7


DEFAULT_BOOTSTRAP = 1000


@dataclass(frozen=True)
class Pair:
    """One config measured at a lower rung and at the top rung."""

    key: int  # config_id (multi-fidelity) or trial number (epochs)
    lower: float
    top: float


@dataclass(frozen=True)
class RungCorrelation:
    """Rank agreement of one lower rung (or epoch) with the top rung (or the final value)."""

    rung: int  # rung index; the epoch number in epoch mode
    name: str
    cost: (
        float | None
    )  # nominal cost relative to full training (rung cost / top cost, or epoch / last epoch)
    mean_job_cost: float | None  # mean ``job_cost`` of the rung's trials (multi-fidelity only)
    pairs: tuple[Pair, ...]
    stats: RankCorrelation

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    @property
    def enough_pairs(self) -> bool:
        return self.n_pairs >= MIN_PAIRS

    def trustworthy(self, threshold: float) -> bool:
        """Enough pairs, and the Spearman 95% lower bound is at least ``threshold``."""
        ci = self.stats.spearman_ci
        return self.enough_pairs and ci is not None and ci[0] >= threshold


@dataclass(frozen=True)
class Recommendation:
    """What to use as a proxy: ``kind`` is ``rung``, ``collect_more`` or ``none``."""

    kind: str
    rung: int | None
    name: str | None
    text: str


@dataclass(frozen=True)
class CorrelationReport:
    """Everything ``speechtune correlate`` computes; ``to_dict`` is ``correlation.json``."""

    study: str
    mode: str  # "fidelity" or "epochs"
    metric: str
    top_name: str
    n_top: int  # configs with a value at the top rung (complete trials in epoch mode)
    threshold: float
    n_bootstrap: int
    seed: int
    rungs: tuple[RungCorrelation, ...]
    recommendation: Recommendation
    notes: tuple[str, ...] = field(default=())

    def rung(self, name: str) -> RungCorrelation:
        """The lower rung called ``name``."""
        for rc in self.rungs:
            if rc.name == name:
                return rc
        raise KeyError(f"no lower rung {name!r}; rungs: {[rc.name for rc in self.rungs]}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record (NaN-free: missing statistics are None)."""

        def ci(value: tuple[float, float] | None) -> list[float] | None:
            return list(value) if value is not None else None

        return {
            "study": self.study,
            "mode": self.mode,
            "metric": self.metric,
            "top": {"name": self.top_name, "configs": self.n_top},
            "threshold": self.threshold,
            "bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "ci_level": CI_LEVEL,
            "min_pairs": MIN_PAIRS,
            "rungs": [
                {
                    "rung": rc.rung,
                    "name": rc.name,
                    "n_pairs": rc.n_pairs,
                    "cost": rc.cost,
                    "mean_job_cost": rc.mean_job_cost,
                    "spearman": rc.stats.spearman,
                    "spearman_ci": ci(rc.stats.spearman_ci),
                    "kendall": rc.stats.kendall,
                    "kendall_ci": ci(rc.stats.kendall_ci),
                    "enough_pairs": rc.enough_pairs,
                    "trustworthy": rc.trustworthy(self.threshold),
                    "pairs": [{"key": p.key, "lower": p.lower, "top": p.top} for p in rc.pairs],
                }
                for rc in self.rungs
            ],
            "recommendation": {
                "kind": self.recommendation.kind,
                "rung": self.recommendation.rung,
                "name": self.recommendation.name,
                "text": self.recommendation.text,
            },
            "notes": list(self.notes),
        }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return _finite(float(value))


def _trial_value(trial: FrozenTrial, metric: str, primary: str) -> float | None:
    # The objective is the trial value; any other metric comes from the final `metrics` record.
    if metric == primary:
        return _number(primary_value(trial))
    return _number((trial.user_attrs.get("metrics") or {}).get(metric))


@dataclass
class _Measurements:
    ids: list[int]  # rung index, or epoch number (the top's id is unused)
    names: list[str]  # lower rungs and top, cheapest first (top last)
    costs: Sequence[float | None]
    values: list[dict[int, list[float]]]  # per rung: key -> measured values
    job_costs: list[list[float]]


def _fidelity_measurements(
    study: optuna.Study, record: dict[str, Any], metric: str, primary: str
) -> _Measurements:
    rungs = record["rungs"]
    top_cost = _number(rungs[-1].get("cost")) or 1.0
    names = [str(r["name"]) for r in rungs]
    costs = [(_number(r.get("cost")) or 0.0) / top_cost for r in rungs]
    values: list[dict[int, list[float]]] = [defaultdict(list) for _ in rungs]
    job_costs: list[list[float]] = [[] for _ in rungs]
    for trial in study.get_trials(deepcopy=False):
        rung = trial_rung(trial)
        if rung is None or not 0 <= rung < len(rungs):
            continue
        job_cost = _number(trial.user_attrs.get("job_cost"))
        if job_cost is not None:
            job_costs[rung].append(job_cost / top_cost)
        config_id = trial.user_attrs.get("config_id")
        if trial.state != optuna.trial.TrialState.COMPLETE or not isinstance(config_id, int):
            continue
        value = _trial_value(trial, metric, primary)
        if value is not None:
            values[rung][config_id].append(value)
    return _Measurements(list(range(len(rungs))), names, costs, values, job_costs)


def _curve(trial: FrozenTrial, metric: str, primary: str) -> dict[int, float]:
    """Per-epoch values: Optuna intermediate values for the objective, else the history attr."""
    if metric == primary and trial.intermediate_values:
        points = {int(step): _number(v) for step, v in trial.intermediate_values.items()}
    else:
        points = {}
        for row in trial.user_attrs.get("history") or []:
            if isinstance(row, dict) and isinstance(row.get("epoch"), int):
                points[row["epoch"]] = _number(row.get(metric))
    return {step: v for step, v in points.items() if v is not None}


def _final_value(
    trial: FrozenTrial, curve: dict[int, float], metric: str, primary: str
) -> float | None:
    value = _trial_value(trial, metric, primary)
    if value is None and metric != primary and curve:
        value = curve[max(curve)]  # a history-only metric: its value after the last epoch
    return value


def _epoch_measurements(study: optuna.Study, metric: str, primary: str) -> _Measurements:
    trials = complete_trials(study)
    if not trials:
        raise ValueError(
            f"study {study.study_name!r} has no complete trial: no final values to compare early epochs with"
        )
    per_epoch: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    fractions: dict[int, list[float]] = defaultdict(list)
    finals: dict[int, list[float]] = {}
    with_curves = 0
    for trial in trials:
        curve = _curve(trial, metric, primary)
        final = _final_value(trial, curve, metric, primary)
        if not curve or final is None:
            continue
        with_curves += 1
        finals[trial.number] = [final]
        last = max(curve)
        # The last epoch costs as much as the full run: only earlier epochs are proxies.
        for epoch, value in curve.items():
            if epoch < last:
                per_epoch[epoch][trial.number].append(value)
                fractions[epoch].append(epoch / last if last > 0 else 1.0)
    if with_curves == 0:
        raise ValueError(
            f"study {study.study_name!r} is not a multi-fidelity study (no 'fidelity' study attr) and none of its "
            f"{len(trials)} complete trial(s) reported per-epoch values of {metric!r} (Optuna intermediate values "
            "or a 'history' user attr with 'epoch' and the metric) together with a final value: nothing to correlate"
        )
    epochs = sorted(per_epoch)
    return _Measurements(
        ids=[*epochs, -1],
        names=[f"epoch {e}" for e in epochs] + ["final"],
        costs=[float(np.mean(fractions[e])) for e in epochs] + [1.0],
        values=[per_epoch[e] for e in epochs] + [finals],
        job_costs=[[] for _ in range(len(epochs) + 1)],
    )


def recommend(
    rungs: tuple[RungCorrelation, ...],
    threshold: float,
    *,
    mode: str = "fidelity",
    top_name: str = "top",
) -> Recommendation:
    """The cheapest rung whose Spearman 95% lower bound is at least ``threshold``.

    Rungs are taken cheapest first. When none qualifies and some had fewer than
    :data:`MIN_PAIRS` pairs, the advice is to collect more full-fidelity results.
    """
    epochs = mode == "epochs"
    thin = [rc for rc in rungs if not rc.enough_pairs]
    for rc in rungs:
        if not rc.trustworthy(threshold):
            continue
        lo, hi = rc.stats.spearman_ci  # type: ignore[misc]
        evidence = (
            f"Spearman {rc.stats.spearman:.2f}, 95% CI [{lo:.2f}, {hi:.2f}], lower bound >= {threshold:g} "
            f"over {rc.n_pairs} configs"
        )
        cheaper_thin = [t.name for t in thin if t.rung < rc.rung]
        if epochs:
            text = (
                f"{rc.name} already ranks configs like the final value ({evidence}): "
                f"a pruner may act from {rc.name} on"
            )
        else:
            cost = f", cost {rc.cost:.3g} of full training" if rc.cost is not None else ""
            text = f"use rung {rc.name!r}{cost}, as the proxy for {top_name!r} ({evidence})"
        if cheaper_thin:
            text += f"; cheaper {', '.join(cheaper_thin)} had fewer than {MIN_PAIRS} pairs and could not be checked"
        return Recommendation("rung", rc.rung, rc.name, text)
    if thin:
        detail = ", ".join(f"{rc.name}: {rc.n_pairs}" for rc in thin)
        checked = [rc.name for rc in rungs if rc.enough_pairs]
        failed = (
            f"; {', '.join(checked)} had enough pairs but {'does' if len(checked) == 1 else 'do'} not reach a "
            f"Spearman 95% lower bound of {threshold:g}"
            if checked
            else ""
        )
        if epochs:
            text = (
                f"too few complete trials per epoch to judge ({detail} pairs; at least {MIN_PAIRS} needed): run more "
                f"trials to completion before trusting a pruner{failed}"
            )
        else:
            text = (
                f"too few configs measured at both a lower rung and the top rung {top_name!r} "
                f"({detail} pairs; at least {MIN_PAIRS} needed): collect more top-rung results "
                f"before trusting a cheap rung{failed}"
            )
        return Recommendation("collect_more", None, None, text)
    if not rungs:
        what = "no epoch before the last" if epochs else "no lower rung"
        return Recommendation(
            "none", None, None, f"{what} has values to compare: nothing to recommend"
        )
    if epochs:
        text = (
            f"no early epoch ranks configs like the final value (Spearman 95% lower bound >= {threshold:g}): "
            "do not prune on these epochs"
        )
    else:
        text = (
            f"no lower rung ranks configs like the top rung {top_name!r} (Spearman 95% lower bound >= {threshold:g}): "
            "compare configs at the top rung, or add a costlier rung below it"
        )
    return Recommendation("none", None, None, text)


def correlate_study(
    study: optuna.Study,
    *,
    metric: str | None = None,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
) -> CorrelationReport:
    """Rank correlation of every lower rung (or early epoch) with the top rung (or final value).

    Args:
        study: A multi-fidelity study (``fidelity`` study attr) or a study whose complete trials
            reported per-epoch values.
        metric: What to compare; default the primary objective (the trial value). Another name
            is read from each trial's ``metrics`` record (epoch mode: its ``history`` rows).
        n_bootstrap: Bootstrap resamples for the 95% intervals.
        seed: Seeds the bootstrap; rung ``r`` uses ``numpy.random.default_rng([seed, r])`` so
            that one rung's interval does not depend on the others.
        threshold: Spearman lower bound a rung must reach to be recommended.

    Raises:
        ValueError: Bad arguments; a multi-fidelity study without a complete top-rung trial; a
            study that is neither multi-fidelity nor reports per-epoch values.
    """
    if not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise ValueError(f"bootstrap: expected an int >= 0 resamples (got {n_bootstrap!r})")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0 (got {seed!r})")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(
            f"threshold: expected a Spearman correlation in [-1, 1] (got {threshold!r})"
        )
    primary = objective_names(study)[0]
    metric = metric or primary
    record = fidelity_record(study)
    notes: list[str] = []
    if record is not None:
        mode = "fidelity"
        m = _fidelity_measurements(study, record, metric, primary)
        notes.append(
            "pairs are configs that reached the top rung; promoted configs are the best of their rung, so the "
            "range is narrowed and correlations tend to read lower than over all configs"
        )
        if not m.values[-1]:
            raise ValueError(
                f"multi-fidelity study {study.study_name!r} has no complete trial with a {metric!r} value at its top "
                f"rung {m.names[-1]!r}: nothing to compare the lower rungs with"
            )
    else:
        mode = "epochs"
        m = _epoch_measurements(study, metric, primary)
        notes.append(
            "pairs are complete trials only: trials pruned early have no final value, which narrows the range"
        )
    top_values = {key: float(np.mean(v)) for key, v in m.values[-1].items()}
    results = []
    for index in range(len(m.names) - 1):
        lower_values = {key: float(np.mean(v)) for key, v in m.values[index].items()}
        keys = sorted(set(lower_values) & set(top_values))
        pairs = tuple(Pair(k, lower_values[k], top_values[k]) for k in keys)
        rung_id = m.ids[index]
        rng = np.random.default_rng([seed, rung_id])
        stats = rank_correlation(
            np.array([p.lower for p in pairs]),
            np.array([p.top for p in pairs]),
            n_bootstrap=n_bootstrap,
            rng=rng,
        )
        jobs = m.job_costs[index]
        results.append(
            RungCorrelation(
                rung_id,
                m.names[index],
                m.costs[index],
                float(np.mean(jobs)) if jobs else None,
                pairs,
                stats,
            )
        )
    rungs = tuple(results)
    return CorrelationReport(
        study=study.study_name,
        mode=mode,
        metric=metric,
        top_name=m.names[-1],
        n_top=len(top_values),
        threshold=float(threshold),
        n_bootstrap=n_bootstrap,
        seed=seed,
        rungs=rungs,
        recommendation=recommend(rungs, threshold, mode=mode, top_name=m.names[-1]),
        notes=tuple(notes),
    )


def _fmt(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:+.2f}"
    return text + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci is not None else "")


def format_correlation_table(report: CorrelationReport) -> str:
    """The plain-text table and recommendation that ``speechtune correlate`` prints."""
    what = "multi-fidelity" if report.mode == "fidelity" else "per-epoch values"
    top = "rung " + repr(report.top_name) if report.mode == "fidelity" else "the final value"
    lines = [
        f"study {report.study!r} ({what}, {report.metric}): rank correlation with {top} "
        f"({report.n_top} configs; {CI_LEVEL:.0%} bootstrap CI over {report.n_bootstrap} resamples)",
    ]
    width = max([4, *(len(rc.name) for rc in report.rungs)])
    header = (
        f"{'rung':<{width}}  {'n':>4}  {'cost':>6}  {'mean job':>8}  "
        f"{'Spearman [95% CI]':<24}  {'Kendall [95% CI]':<24}  ok"
    )
    lines += [header, "-" * len(header)]
    for rc in report.rungs:
        cost = f"{rc.cost:.3g}" if rc.cost is not None else "-"
        job = f"{rc.mean_job_cost:.3g}" if rc.mean_job_cost is not None else "-"
        ok = (
            "yes" if rc.trustworthy(report.threshold) else ("few" if not rc.enough_pairs else "no")
        )
        lines.append(
            f"{rc.name:<{width}}  {rc.n_pairs:>4}  {cost:>6}  {job:>8}  "
            f"{_fmt(rc.stats.spearman, rc.stats.spearman_ci):<24}  "
            f"{_fmt(rc.stats.kendall, rc.stats.kendall_ci):<24}  {ok}"
        )
    if not report.rungs:
        lines.append("(no lower rung)")
    lines.append(f"recommendation: {report.recommendation.text}")
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def write_correlation_json(report: CorrelationReport, path: str | Path) -> Path:
    """Write :meth:`CorrelationReport.to_dict` as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    return path


def correlation_png(report: CorrelationReport, path: str | Path) -> Path | None:
    """Scatter of lower-rung value against top-rung value, one panel per rung with pairs.

    Returns None (and writes nothing) when no rung has a pair.
    """
    panels = [rc for rc in report.rungs if rc.pairs]
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    # matplotlib is the `report` extra: imported here, so the rest of the check works without it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * cols, 3.8 * rows))
    FigureCanvasAgg(fig)
    top_label = f"{report.metric} at {report.top_name}"
    for k, rc in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        color = "tab:green" if rc.trustworthy(report.threshold) else "tab:red"
        ax.scatter([p.lower for p in rc.pairs], [p.top for p in rc.pairs], s=16, color=color)
        rho = "n/a" if rc.stats.spearman is None else f"{rc.stats.spearman:.2f}"
        ax.set(
            title=f"{rc.name} (n={rc.n_pairs}, Spearman {rho})",
            xlabel=f"{report.metric} at {rc.name}",
            ylabel=top_label,
        )
    fig.suptitle(f"{report.study}: rank agreement with {report.top_name}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def correlate_command(
    run_dir: str | Path,
    *,
    study_name: str | None = None,
    metric: str | None = None,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
) -> tuple[CorrelationReport, dict[str, Path]]:
    """``speechtune correlate``: compute the report and write ``correlation.json`` / ``.png``.

    Args:
        run_dir: The study's run directory (its storage is found as by ``speechtune report``).
        study_name: Which study, when the storage holds several.
        metric, n_bootstrap, seed, threshold: As in :func:`correlate_study`.

    Returns:
        The report and the paths written (``json``, and ``png`` when some rung has pairs).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    study = load_study(run_dir, study_name)
    report = correlate_study(
        study, metric=metric, n_bootstrap=n_bootstrap, seed=seed, threshold=threshold
    )
    written = {"json": write_correlation_json(report, run_dir / "correlation.json")}
    png = correlation_png(report, run_dir / "correlation.png")
    if png is not None:
        written["png"] = png
    return report, written
