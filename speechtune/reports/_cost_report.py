"""The "Cost and carbon" section of ``report.html``: what the study's compute cost, per state and per trial.

Read from each trial's ``cost`` user attribute (:class:`speechtune.metrics.EnergyMeter`), so a
team can weigh a WER gain against the GPU-hours, energy, CO2e and money it took. Pruned and
failed trials are shown too: their compute was spent.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import optuna
import plotly.graph_objects as go

from speechtune.metrics import CostRecord, format_cost, summarize_costs
from speechtune.reports._html_parts import esc, figure_div, table
from speechtune.reports._ticks import integer_xaxis

_STATE_COLOURS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "FAIL": "#d62728"}


def cost_section(study: optuna.Study) -> str | None:
    """The section's HTML, or None when no trial of ``study`` has a cost record (an older study)."""
    trials = study.get_trials(deepcopy=False)
    measured = [t for t in trials if isinstance(t.user_attrs.get("cost"), dict)]
    if not measured:
        return None
    # Summed afresh rather than read from the cost_total attr: a report may be rebuilt after a resume.
    summary = summarize_costs(trials)
    total = CostRecord.from_dict(summary["total"])
    parts = [f"<p><b>Total compute</b>: {esc(format_cost(total))}</p>"]
    parts.append(f'<p class="note">{esc(_basis_note(study, total, summary["unmeasured"]))}</p>')
    counts = Counter(t.state.name.lower() for t in measured)
    rows: list[list[Any]] = []
    for state, rec in summary["by_state"].items():
        r = CostRecord.from_dict(rec)
        rows.append(
            [state, counts[state], r.gpu_hours, r.cpu_core_hours, r.energy_kwh, r.co2e_g, r.money]
        )
    rows.append(
        [
            "all",
            len(measured),
            total.gpu_hours,
            total.cpu_core_hours,
            total.energy_kwh,
            total.co2e_g,
            total.money,
        ]
    )
    header = [
        "state",
        "trials",
        "GPU-h",
        "CPU core-h",
        "kWh",
        "g CO2e",
        f"money ({total.currency})",
    ]
    parts.append(table(header, rows))
    parts.append(figure_div(_per_trial_figure(measured), "plot-cost"))
    return "\n".join(parts)


def _basis_note(study: optuna.Study, total: CostRecord, unmeasured: int) -> str:
    model = ((study.user_attrs.get("spec") or {}).get("cost")) or {}
    grid = model.get("grid_g_per_kwh") if isinstance(model, dict) else None
    how = {
        "nvml": "GPU energy measured by NVML; CPU energy estimated from its TDP per core",
        "tdp-estimate": "energy estimated from TDPs (no NVML reading)",
        "mixed": "GPU energy measured by NVML for some trials, estimated from TDPs for others",
    }.get(total.energy_source, total.energy_source)
    grid_text = (
        f"grid {grid:g} g CO2e/kWh (cost.grid_g_per_kwh)"
        if isinstance(grid, (int, float))
        else "the default grid intensity (cost.grid_g_per_kwh)"
    )
    note = f"{how}; CO2e at {grid_text}; memory, storage and data-centre overhead not counted."
    if unmeasured:
        note += f" {unmeasured} trial(s) without a cost record are not included."
    return note


def _per_trial_figure(trials: list[optuna.trial.FrozenTrial]) -> go.Figure:
    """CO2e per trial, coloured by how the trial ended (hover: energy, device-hours, wall time)."""
    fig = go.Figure()
    for state in sorted({t.state.name for t in trials}):
        group = [t for t in trials if t.state.name == state]
        recs = [CostRecord.from_dict(t.user_attrs["cost"]) for t in group]
        fig.add_trace(
            go.Bar(
                x=[t.number for t in group],
                y=[r.co2e_g for r in recs],
                name=state.lower(),
                marker_color=_STATE_COLOURS.get(state),
                hovertext=[
                    f"{r.energy_kwh:.3g} kWh ({r.energy_source}), {r.gpu_hours:.3g} GPU-h, "
                    f"{r.cpu_core_hours:.3g} CPU core-h, {r.wall_s:.1f} s"
                    for r in recs
                ],
            )
        )
    fig.update_layout(
        xaxis_title="trial",
        yaxis_title="g CO2e",
        barmode="stack",
        height=320,
        margin={"t": 20, "b": 40},
    )
    return integer_xaxis(fig)
