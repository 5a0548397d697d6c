"""The WER path of a workflow run, from the baseline to the golden set, and its bar chart.

Each point is measured on one data split: proxy dev (models trained on the proxy subset), full
dev (trained on all the training data) or golden. Values of different splits are not one
comparison, so the report labels and colours every point with its split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from speechtune.workflow._format import is_rate, mval, num
from speechtune.workflow._results import (
    BaselineResult,
    FullResult,
    GateResult,
    SearchResult,
    ValidateResult,
)
from speechtune.workflow._state import WorkflowRecord

NOT_RUN = "not run"
PROXY_DEV, FULL_DEV, GOLDEN = "proxy dev", "full dev", "golden"
#: The chart's colour of each split (its legend, in this order).
SPLIT_COLOURS = {PROXY_DEV: "#4c78a8", FULL_DEV: "#f58518", GOLDEN: "#54a24b"}


@dataclass(frozen=True)
class PathPoint:
    """One step of the WER path.

    Attributes:
        step: the row label (``Coarse best``); short: the chart's label (``coarse``).
        stage: the stage it comes from; split: the data split it was measured on.
        metric: ``wer``, or the tuned metric (gate: the gate metric).
        value: None when the stage has no value (see ``missing``).
        spread: the validation winner's std over seeds.
        detail: trial, seeds, champion, ...
        missing: what to say when value is None (``not run``, ``failed``, ...).
    """

    step: str
    short: str
    stage: str
    split: str
    metric: str
    value: float | None
    spread: float | None = None
    detail: str = ""
    missing: str = NOT_RUN


def wer_path(record: WorkflowRecord) -> list[PathPoint]:
    """The WER path from the baseline to the golden set: one point per step, with its data split."""
    metric = record.metric_name

    def missing(name: str) -> str:
        entry = record.stage(name)
        return NOT_RUN if entry is None else entry.status or "unknown"

    def search(name: str, label: str) -> PathPoint:
        result = record.result_of(name, SearchResult)
        if result is None:
            return PathPoint(label, name, name, PROXY_DEV, metric, None, missing=missing(name))
        best = result.best
        return PathPoint(
            label,
            name,
            name,
            PROXY_DEV,
            metric,
            num(best.value),
            detail=f"trial #{best.trial}",
            missing=missing(name),
        )

    baseline = record.result_of("baseline", BaselineResult)
    validate = record.result_of("validate", ValidateResult)
    winner = validate.winner_candidate() if validate is not None else None
    full = record.result_of("full", FullResult)
    gate = record.result_of("gate", GateResult)
    winner_detail = (
        f"{validate.winner}, {len(winner.values) if winner else 0} seeds" if validate else ""
    )
    points = [
        PathPoint(
            "Baseline",
            "baseline",
            "baseline",
            PROXY_DEV,
            metric,
            num(baseline.value) if baseline else None,
            missing=missing("baseline"),
        ),
        search("coarse", "Coarse best"),
        search("fine", "Fine best"),
        PathPoint(
            "Validation winner (mean ± std)",
            "validated",
            "validate",
            PROXY_DEV,
            metric,
            num(winner.mean) if winner else None,
            spread=num(winner.std) if winner else None,
            detail=winner_detail,
            missing=missing("validate"),
        ),
    ]
    # The tuned winner at full fidelity; when the baseline beat it there, "tuned" holds its record.
    tuned = full.tuned if full is not None else None
    value = tuned.value if tuned is not None else full.value if full is not None else None
    detail = (
        f"{tuned.candidate or ''}: worse than the baseline, not sent to the gate"
        if tuned is not None
        else ""
    )
    points.append(
        PathPoint(
            "Full-data training",
            "full",
            "full",
            FULL_DEV,
            metric,
            num(value),
            detail=detail,
            missing=missing("full"),
        )
    )
    if full is not None and full.baseline is not None:
        detail = "the recipe's defaults, trained like the winner" + (
            "; sent to the gate" if tuned is not None else ""
        )
        points.append(
            PathPoint(
                "Baseline, full-data training",
                "baseline (full)",
                "full",
                FULL_DEV,
                metric,
                num(full.baseline.value),
                detail=detail,
                missing=missing("full"),
            )
        )
    if gate is None:
        points.append(
            PathPoint(
                "Golden (challenger)", "gate", "gate", GOLDEN, "wer", None, missing=missing("gate")
            )
        )
        return points
    champion, gm = gate.champion, gate.gate_metric
    champ = (
        f"champion v{champion.version}: {mval(gm, champion.value(gm))}"
        if champion is not None
        else "no champion"
    )
    points.append(
        PathPoint(
            "Golden (challenger)",
            "gate",
            "gate",
            GOLDEN,
            gm,
            num(gate.challenger.value(gm)),
            detail=champ,
            missing=missing("gate"),
        )
    )
    return points


# -- the chart --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChartTick:
    """A horizontal grid line at a round value, with its label (coordinates as SVG attribute text)."""

    y: str
    label_y: str
    label: str


@dataclass(frozen=True)
class ChartBar:
    """A point's bar, its value label and (validation winner) its ± std whisker."""

    x: str
    y: str
    width: str
    height: str
    colour: str
    title: str
    label: str
    label_y: str
    whisker: tuple[str, str] | None


@dataclass(frozen=True)
class ChartSlot:
    """One point of the path: a bar, or the stage's status where it has no value."""

    cx: str
    short: str
    split: str
    bar: ChartBar | None
    missing: str
    missing_colour: str


@dataclass(frozen=True)
class Chart:
    """An SVG bar chart of the WER path, laid out (every number as the attribute text to write)."""

    width: int
    height: int
    left: int
    right: int
    missing_y: int
    short_y: int
    split_y: int
    legend_y: int
    ticks: tuple[ChartTick, ...]
    slots: tuple[ChartSlot, ...]
    legend: tuple[tuple[int, str, str], ...]  # (x, colour, split)


def _nice_step(raw: float) -> float:
    """The round number (1, 2, 2.5 or 5 x 10^k) at or above ``raw``: grid lines at 5%, 10%, ..."""
    if raw <= 0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(raw))
    return next(m * scale for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * scale >= raw * (1 - 1e-9))


def wer_chart(points: Sequence[PathPoint]) -> Chart | None:
    """The chart of ``points``: a bar per value coloured by split, the status where there is none.

    Returns None when no point has a value.
    """
    values = [p.value + (p.spread or 0.0) for p in points if p.value is not None]
    if not values:
        return None
    width, height, left, top, bottom = 680, 250, 56, 16, 64
    plot_h = height - top - bottom
    slot = (width - left - 10) / len(points)
    step = _nice_step(max(values) * 1.1 / 4)
    n_ticks = max(math.ceil(max(values) * 1.1 / step), 1)
    top_value = step * n_ticks

    def y(v: float) -> float:
        return top + plot_h * (1 - max(v, 0.0) / top_value)

    metric = points[0].metric
    ticks = tuple(
        ChartTick(
            f"{y(v):.1f}", f"{y(v) + 4:.1f}", f"{100 * v:.4g}%" if is_rate(metric) else f"{v:.4g}"
        )
        for v in (step * i for i in range(n_ticks + 1))
    )
    slots = []
    for i, p in enumerate(points):
        cx = left + slot * (i + 0.5)
        bar = None
        if p.value is not None:
            bw = slot * 0.55
            label = mval(p.metric, p.value)
            whisker = None
            if p.spread is not None:  # the validation winner's std over seeds
                whisker = (f"{y(p.value - p.spread):.1f}", f"{y(p.value + p.spread):.1f}")
            bar = ChartBar(
                x=f"{cx - bw / 2:.1f}",
                y=f"{y(p.value):.1f}",
                width=f"{bw:.1f}",
                height=f"{top + plot_h - y(p.value):.1f}",
                colour=SPLIT_COLOURS.get(p.split, "#888"),
                title=f"{p.step}: {label} ({p.split})",
                label=label,
                label_y=f"{min(y(p.value), y(p.value + (p.spread or 0))) - 4:.1f}",
                whisker=whisker,
            )
        colour = "#b00" if p.missing == "failed" else "#999"
        slots.append(ChartSlot(f"{cx:.1f}", p.short, p.split, bar, p.missing, colour))
    legend = tuple(
        (left + 110 * i, colour, split) for i, (split, colour) in enumerate(SPLIT_COLOURS.items())
    )
    return Chart(
        width=width,
        height=height,
        left=left,
        right=width - 10,
        missing_y=top + plot_h - 6,
        short_y=height - bottom + 16,
        split_y=height - bottom + 30,
        legend_y=height - 16,
        ticks=ticks,
        slots=tuple(slots),
        legend=legend,
    )
