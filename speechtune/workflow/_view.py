"""The workflow report's view model: what ``report.md`` and ``report.html`` show, built from a
:class:`~._state.WorkflowRecord`.

Both templates draw the same :class:`ReportView`, so the Markdown and the HTML always carry the
same facts; only the HTML adds the chart of the WER path (its numbers are in the table above it).
The view reads whatever the state holds: stages not started are "not run", a failed stage shows
its error, and a stage result that is no typed record is reported in its own section.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from speechtune.metrics import CostRecord, sum_costs
from speechtune.workflow._blocks import (
    Block,
    Cell,
    Facts,
    Para,
    Pre,
    Table,
    b,
    code,
    facts,
    inline,
    para,
    table,
)
from speechtune.workflow._config import STAGES
from speechtune.workflow._format import (
    DASH,
    co2,
    cost_line,
    duration,
    hours,
    mdiff,
    metric_label,
    money,
    mval,
    num,
    params_text,
    share,
    when,
)
from speechtune.workflow._record import RawResult
from speechtune.workflow._results import RESULT_TYPES, GateResult, StageResult
from speechtune.workflow._state import StageRecord, WorkflowRecord
from speechtune.workflow._view_stages import promotion, stage_body
from speechtune.workflow._wer_path import (
    NOT_RUN,
    PROXY_DEV,
    Chart,
    PathPoint,
    wer_chart,
    wer_path,
)

#: The section title of each stage (:data:`~speechtune.workflow._config.STAGES`).
STAGE_TITLES: dict[str, str] = {
    "proxy": "Proxy data",
    "baseline": "Baseline",
    "coarse": "Coarse search",
    "fine": "Fine search",
    "validate": "Seed validation",
    "full": "Full-data training",
    "gate": "Gating on the golden set",
    "export": "Export",
}

PATH_NOTE = (
    "The values are measured on different data and are not one comparison: proxy dev = models trained on the "
    "proxy subset, scored on the dev set; full dev = the model trained on all the training data, scored on the "
    "dev set; golden = the held-out golden set, read only by the gate. pp = percentage points."
)


@dataclass(frozen=True)
class StageView:
    """One stage's section: its status facts (None when it never ran), error, warnings and result."""

    heading: str
    facts: Facts | None
    error: str | None
    warnings: tuple[str, ...]
    body: tuple[Block, ...]


@dataclass(frozen=True)
class ReportView:
    """Everything the report shows, section by section (the templates lay it out)."""

    title: str
    header: Facts
    summary: tuple[Block, ...]
    overview: Table
    path: Table
    chart: Chart | None
    path_note: str
    stages: tuple[StageView, ...]
    cost: tuple[Block, ...]
    cost_model: tuple[Block, ...]


def build_view(record: WorkflowRecord) -> ReportView:
    """The view model of a workflow's state (any stage may be missing)."""
    names = _stage_names(record)
    total, note = _total(record, names)
    points = wer_path(record)
    return ReportView(
        title=f"Workflow report: {record.name or 'unnamed workflow'}",
        header=_header(record),
        summary=tuple(_summary(record, names, total, points)),
        overview=_overview(record, names, total),
        path=_path_table(points),
        chart=wer_chart(points),
        path_note=PATH_NOTE,
        stages=tuple(_stage_view(record, name) for name in names),
        cost=tuple(_cost_section(record, names, total, note)),
        cost_model=tuple(_cost_model(record, total)),
    )


# -- reading the record -----------------------------------------------------------------------
def _stage_names(record: WorkflowRecord) -> list[str]:
    """The known stages in order, then any other stage in the state by its number."""
    extra = [k for k in record.stages if k not in STAGE_TITLES]
    extra.sort(key=lambda k: (record.stages[k].number or 99, k))
    return list(STAGES) + extra


def _number(name: str, entry: StageRecord | None) -> str:
    if name in STAGE_TITLES:
        return str(STAGES.index(name) + 1)
    return str(entry.number) if entry is not None and entry.number is not None else "?"


def _status(entry: StageRecord | None) -> str:
    if entry is None:
        return NOT_RUN
    status = entry.status or "unknown"
    return f"{status} ({entry.attempts} attempts)" if entry.attempts > 1 else status


def _wall_s(entry: StageRecord | None) -> float | None:
    if entry is None:
        return None
    if entry.cost is not None:
        return entry.cost.wall_s
    try:  # no cost record (a stage still running): the time from its start, when known
        return (
            datetime.fromisoformat(str(entry.finished))
            - datetime.fromisoformat(str(entry.started))
        ).total_seconds()
    except (TypeError, ValueError):
        return None


def _currency(record: WorkflowRecord) -> str:
    if record.cost_model is not None:
        return record.cost_model.currency
    return (
        record.cost_total.currency
        if record.cost_total is not None and record.cost_total.currency
        else "USD"
    )


def _total(record: WorkflowRecord, names: Sequence[str]) -> tuple[CostRecord, str]:
    """The sum of the stages' costs (the per-stage table adds up to it), and a note when needed."""
    records = [
        c for c in (record.stages[n].cost for n in names if n in record.stages) if c is not None
    ]
    try:
        total = sum_costs(records, currency=_currency(record))
        note = ""
    except ValueError as exc:  # stages priced in different currencies: money cannot be added up
        total = sum_costs([replace(r, money=0.0, currency="?") for r in records])
        note = f"Money is not totalled: {exc}."
    stored = num(record.cost_total.co2e_g) if record.cost_total is not None else None
    if stored is not None and not math.isclose(stored, total.co2e_g, rel_tol=1e-6, abs_tol=1e-9):
        note += f" state.json's cost_total ({co2(stored)} CO2e) differs from the sum of the stages shown here."
    return total, note.strip()


def _total_money(total: CostRecord) -> str:
    return money(total.money, total.currency) if total.currency != "?" else DASH


# -- the sections -----------------------------------------------------------------------------
def _header(record: WorkflowRecord) -> Facts:
    cv = record.code_version
    version: list[Cell] = [f"speechtune {cv.package if cv is not None and cv.package else '?'}"]
    if cv is not None and cv.git_commit:
        version += [", git ", code(cv.git_commit[:12])]
        if cv.git_dirty is True:
            version.append(" with uncommitted changes")
    else:
        version.append(", git commit unknown")
    metric = record.metric_name
    return facts(
        ("workflow", b(record.name or DASH)),
        ("code version", inline(*version)),
        ("started", when(record.started)),
        ("updated", when(record.updated)),
        ("tuned metric", f"{metric_label(metric)} on the dev set ({metric})"),
        ("config hash", code(record.config_hash)) if record.config_hash else None,
        ("run directory", code(record.run_dir)) if record.run_dir else None,
    )


def _summary(
    record: WorkflowRecord, names: Sequence[str], total: CostRecord, points: list[PathPoint]
) -> list[Block]:
    blocks: list[Block] = []
    gate_entry = record.stage("gate")
    gate = record.result_of("gate", GateResult)
    if gate_entry is not None and gate_entry.status == "done" and gate is not None:
        blocks.append(promotion(gate))
        if gate.decision:
            blocks.append(para(b("Decision:"), " ", gate.decision))
    else:
        blocks.append(
            para(
                b("Not gated yet"),
                f" (stage 7, gate: {_status(gate_entry)}): no model was promoted.",
            )
        )
    for name in names:
        entry = record.stage(name)
        if entry is not None and entry.status == "failed":
            first = (entry.error or "no error message recorded").strip().splitlines() or [""]
            blocks.append(
                para(
                    b(f"Stage {_number(name, entry)} ({name}) failed:"),
                    " ",
                    first[0],
                    kind="error",
                )
            )
    done = sum(
        1 for n in names if record.stages.get(n) is not None and record.stages[n].status == "done"
    )
    path = [p for p in points if p.value is not None]
    latest = None
    if path:
        last = path[-1]
        latest = (
            "latest on the WER path",
            f"{last.step}: {mval(last.metric, last.value)} {metric_label(last.metric)} ({last.split})",
        )
    blocks.append(
        facts(
            ("stages done", f"{done} of {len(names)}"), latest, ("total compute", cost_line(total))
        )
    )
    return blocks


def _overview(record: WorkflowRecord, names: Sequence[str], total: CostRecord) -> Table:
    rows: list[list[Cell]] = []
    for name in names:
        entry = record.stage(name)
        c = entry.cost if entry is not None else None
        cells: list[Cell] = [_number(name, entry), name, _status(entry), duration(_wall_s(entry))]
        if c is None:
            cells += [DASH] * 5
        else:
            energy = f"{hours(c.energy_kwh)} ({c.energy_source})"
            cells += [
                hours(c.gpu_hours),
                hours(c.cpu_core_hours),
                energy,
                co2(c.co2e_g),
                money(c.money, c.currency),
            ]
        rows.append(cells)
    energy = f"{hours(total.energy_kwh)} ({total.energy_source})"
    sums = [
        duration(total.wall_s),
        hours(total.gpu_hours),
        hours(total.cpu_core_hours),
        energy,
        co2(total.co2e_g),
    ]
    rows.append(["", b("total"), "", *(b(s) for s in sums), b(_total_money(total))])
    header = [
        "#",
        "stage",
        "status",
        "wall time",
        "GPU-h",
        "CPU core-h",
        "energy kWh (source)",
        "CO2e",
        f"money ({_currency(record)})",
    ]
    return table(header, rows, numeric=(0, 3, 4, 5, 6, 7, 8))


def _path_table(points: list[PathPoint]) -> Table:
    # Each split has its own baseline: the proxy-trained one, and (when trained) the full-data one.
    baselines = {PROXY_DEV: points[0]}
    baselines.update({p.split: p for p in points if p.short == "baseline (full)"})
    rows: list[list[Cell]] = []
    for p in points:
        value: Cell
        if p.value is None:
            value = p.missing
        elif p.spread is not None:
            value = b(f"{mval(p.metric, p.value)} ± {mdiff(p.metric, p.spread)}")
        else:
            value = b(mval(p.metric, p.value))
        ref = baselines.get(p.split)
        vs = ""
        if (
            ref is not None
            and ref is not p
            and ref.value is not None
            and p.value is not None
            and p.metric == ref.metric
        ):
            vs = mdiff(p.metric, p.value - ref.value, signed=True)
        rows.append([p.step, value, metric_label(p.metric), p.split, vs, p.detail])
    return table(
        ["step", "value", "metric", "data split", "vs baseline (same split)", "detail"],
        rows,
        numeric=(1, 4),
    )


def _stage_view(record: WorkflowRecord, name: str) -> StageView:
    entry = record.stage(name)
    heading = f"{_number(name, entry)}. {STAGE_TITLES.get(name, name)} ({name})"
    if entry is None:
        return StageView(heading, None, None, (), (para(NOT_RUN, kind="note"),))
    status = facts(
        ("status", b(_status(entry))),
        ("started", when(entry.started)),
        ("finished", when(entry.finished)),
        ("cost", cost_line(entry.cost) if entry.cost is not None else "not measured"),
    )
    error = (
        (entry.error or "no error message recorded")
        if entry.status == "failed" or entry.error
        else None
    )
    result = entry.result
    if isinstance(result, StageResult):
        return StageView(
            heading,
            status,
            error,
            result.stage_warnings(),
            tuple(stage_body(result, record.metric_name)),
        )
    body: list[Block] = []
    warnings: tuple[str, ...] = ()
    if (
        not isinstance(result, RawResult)
        or not isinstance(result.data, Mapping)
        or not result.data
    ):
        if entry.status == "done":
            body.append(para("No result recorded.", kind="note"))
    else:
        # A result this version cannot read: its warnings, then why (or, for a stage it does not know, the raw values).
        found = result.data.get("warnings")
        warnings = tuple(str(w) for w in found) if isinstance(found, list) else ()
        if name in RESULT_TYPES:
            body.append(
                para(
                    f"The result of this stage could not be read ({result.problem}).", kind="error"
                )
            )
        else:
            body.append(Pre(params_text(result.data)))
    return StageView(heading, status, error, warnings, tuple(body))


def _cost_section(
    record: WorkflowRecord, names: Sequence[str], total: CostRecord, note: str
) -> list[Block]:
    rows: list[list[Cell]] = []
    for name in names:
        entry = record.stage(name)
        c = entry.cost if entry is not None else None
        if c is None:
            rows.append([name, *[DASH] * 8])
            continue
        rows.append(
            [
                name,
                hours(c.gpu_hours),
                hours(c.cpu_core_hours),
                hours(c.gpu_energy_kwh),
                hours(c.cpu_energy_kwh),
                c.energy_source,
                co2(c.co2e_g),
                share(c.co2e_g, total.co2e_g),
                money(c.money, c.currency),
            ]
        )
    totals = [
        hours(total.gpu_hours),
        hours(total.cpu_core_hours),
        hours(total.gpu_energy_kwh),
        hours(total.cpu_energy_kwh),
        total.energy_source,
        co2(total.co2e_g),
        "100%" if total.co2e_g > 0 else DASH,
        _total_money(total),
    ]
    rows.append([b("total"), *(b(t) for t in totals)])
    device_hours = (
        f"{hours(total.gpu_hours)} GPU-h, {hours(total.cpu_core_hours)} CPU core-h "
        f"({duration(total.wall_s)} wall)"
    )
    header = [
        "stage",
        "GPU-h",
        "CPU core-h",
        "GPU kWh",
        "CPU kWh",
        "energy source",
        "CO2e",
        "share of CO2e",
        "money",
    ]
    blocks: list[Block] = [
        facts(
            ("device-hours", device_hours),
            ("energy", f"{hours(total.energy_kwh)} kWh ({total.energy_source})"),
            ("CO2e", b(co2(total.co2e_g))),
            ("money", b(_total_money(total))),
        ),
        table(header, rows, numeric=(1, 2, 3, 4, 6, 7, 8)),
    ]
    if record.cost_superseded is not None:
        spent = cost_line(record.cost_superseded)
        blocks.append(
            para(
                f"Not in the totals: {spent} spent on stage runs that were later reset and run again.",
                kind="note",
            )
        )
    if note:
        blocks.append(para(note, kind="alert"))
    return blocks


def _cost_model(record: WorkflowRecord, total: CostRecord) -> list[Block]:
    model = record.cost_model
    currency = _currency(record)
    how = {
        "nvml": "GPU energy measured by NVML; CPU energy estimated from its TDP per core",
        "tdp-estimate": "energy estimated from TDPs (no NVML reading)",
        "mixed": "GPU energy measured by NVML for some stages or trials, estimated from TDPs for others",
    }.get(total.energy_source, total.energy_source)
    if model is None:
        items: list[tuple[str, Cell]] = [
            ("grid intensity", DASH),
            ("GPU price", DASH),
            ("CPU price", DASH),
        ]
    else:
        items = [
            ("grid intensity", f"{model.grid_g_per_kwh:g} g CO2e/kWh"),
            ("GPU price", f"{money(model.gpu_price_per_hour, currency)} per GPU-hour"),
            ("CPU price", f"{money(model.cpu_price_per_hour, currency)} per CPU core-hour"),
            ("GPU TDP", f"{model.gpu_tdp_w:g} W"),
            ("CPU TDP", f"{model.cpu_tdp_w_per_core:g} W per core"),
        ]
    small_print = (
        "Not counted: memory, storage, networking and data-centre overhead (PUE). "
        "NVML counts a whole GPU, so trials sharing a GPU are each charged its full energy."
    )
    if model is None or (not model.gpu_price_per_hour and not model.cpu_price_per_hour):
        small_print += " Money is 0 because no prices are set (cost.gpu_price_per_hour, cost.cpu_price_per_hour)."
    return [facts(*items, ("energy", how)), Para(inline(small_print), "note")]
