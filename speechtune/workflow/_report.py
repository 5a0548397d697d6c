"""The workflow report: ``report.md`` and ``report.html`` rendered from a run's ``state.json``.

Both files are built from one list of blocks (headings, paragraphs, fact lists, tables), so the
Markdown and the HTML always carry the same facts; only the HTML adds a small inline SVG chart of
the WER path (its numbers are in the table just above it). The HTML is one self-contained page:
inline CSS, no JavaScript, nothing fetched, every piece of text from the state HTML-escaped.

The report reads whatever the state holds: stages not started are shown as "not run", a failed
stage shows its error, and a malformed stage result is reported in its own section instead of
failing the whole report (the report is rewritten after every stage; it must not be what breaks).
"""

from __future__ import annotations

import html
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Union

from .._urls import mask_url
from ..metrics import CURRENCY_SYMBOLS, CostRecord, sum_costs
from ._config import STAGES

log = logging.getLogger(__name__)

__all__ = ["render_html", "render_markdown", "write_workflow_report"]

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

NOT_RUN = "not run"
_DASH = "—"
# Split labels of the WER path: the values are measured on different data, so never compare
# a "golden" figure with a "proxy dev" one as if it were the same test.
PROXY_DEV, FULL_DEV, GOLDEN = "proxy dev", "full dev", "golden"
_SPLIT_COLOURS = {PROXY_DEV: "#4c78a8", FULL_DEV: "#f58518", GOLDEN: "#54a24b"}


# =============================================================================================
# The document model: what both renderers draw
# =============================================================================================
@dataclass(frozen=True)
class _Span:
    """A run of text; ``style`` is "" (plain), "b" (bold) or "code"."""

    text: str
    style: str = ""


_Inline = tuple[_Span, ...]
_Cell = Union[str, _Span, _Inline]


@dataclass(frozen=True)
class _Heading:
    level: int
    text: str


@dataclass(frozen=True)
class _Para:
    content: _Inline
    #: "" plain, "note" (small print), "ok" / "alert" (a boxed call-out), "error".
    kind: str = ""


@dataclass(frozen=True)
class _Facts:
    """A list of ``label: value`` lines."""

    items: tuple[tuple[str, _Inline], ...]


@dataclass(frozen=True)
class _Table:
    header: tuple[str, ...]
    rows: tuple[tuple[_Inline, ...], ...]
    #: Indices of right-aligned (numeric) columns.
    numeric: frozenset[int] = frozenset()


@dataclass(frozen=True)
class _Pre:
    """Verbatim text (an error message with its traceback lines)."""

    text: str


@dataclass(frozen=True)
class _PathPoint:
    step: str
    short: str
    stage: str
    split: str
    metric: str
    value: float | None
    spread: float | None = None  # the validation winner's std over seeds
    detail: str = ""
    missing: str = NOT_RUN  # what to say when value is None


@dataclass(frozen=True)
class _Chart:
    points: tuple[_PathPoint, ...]


_Block = Union[_Heading, _Para, _Facts, _Table, _Pre, _Chart]


def _inline(*parts: _Cell) -> _Inline:
    out: list[_Span] = []
    for part in parts:
        if isinstance(part, str):
            if part:
                out.append(_Span(part))
        elif isinstance(part, _Span):
            out.append(part)
        else:
            out.extend(part)
    return tuple(out)


def _b(text: Any) -> _Span:
    return _Span(str(text), "b")


def _code(text: Any) -> _Span:
    return _Span(str(text), "code")


def _table(header: Sequence[str], rows: Sequence[Sequence[_Cell]], numeric: Sequence[int] = ()) -> _Table:
    return _Table(tuple(header), tuple(tuple(_inline(c) for c in row) for row in rows), frozenset(numeric))


def _facts(*items: tuple[str, _Cell] | None) -> _Facts:
    """Fact lines; a None item (a fact the state does not have) is left out."""
    return _Facts(tuple((item[0], _inline(item[1])) for item in items if item is not None))


# =============================================================================================
# Numbers
# =============================================================================================
def _num(x: Any) -> float | None:
    """``x`` as a finite float, or None (missing, null, NaN, a string, a bool)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _small(v: float, digits: int = 2) -> str:
    # Fixed-point with ``digits`` significant figures: 0.000012, never 1.2e-05.
    if v == 0:
        return "0"
    decimals = max(digits - 1 - math.floor(math.log10(abs(v))), 0)
    return f"{v:.{decimals}f}"


def _pct(x: Any) -> str:
    v = _num(x)
    return _DASH if v is None else f"{100 * v:.2f}%"


def _pp(x: Any, signed: bool = False) -> str:
    """A WER difference or spread in percentage points."""
    v = _num(x)
    if v is None:
        return _DASH
    return f"{100 * v:+.2f} pp" if signed else f"{100 * v:.2f} pp"


def _is_rate(metric: str) -> bool:
    return str(metric).lower().endswith(("wer", "cer"))


def _metric_label(metric: Any) -> str:
    return {"wer": "WER", "cer": "CER", "worst_group_wer": "worst-group WER", "worst_group_cer": "worst-group CER"}.get(
        str(metric), str(metric)
    )


def _mval(metric: str, x: Any) -> str:
    """A value of ``metric``: a percentage for error rates, else 4 significant digits."""
    v = _num(x)
    if v is None:
        return _DASH
    return _pct(v) if _is_rate(metric) else f"{v:.4g}"


def _mdiff(metric: str, x: Any, signed: bool = False) -> str:
    v = _num(x)
    if v is None:
        return _DASH
    if _is_rate(metric):
        return _pp(v, signed)
    return f"{v:+.3g}" if signed else f"{v:.3g}"


def _hours(x: Any) -> str:
    """Device-hours / kWh: two decimals, two significant digits below 0.01."""
    v = _num(x)
    if v is None:
        return _DASH
    return _small(v) if abs(v) < 0.01 else f"{v:,.2f}"


def _co2(x: Any) -> str:
    v = _num(x)
    if v is None:
        return _DASH
    if abs(v) >= 1000:
        return f"{v / 1000:,.2f} kg"
    if abs(v) >= 10:
        return f"{v:.0f} g"
    if abs(v) >= 1:
        return f"{v:.1f} g"
    return f"{_small(v)} g"


def _money(x: Any, currency: str) -> str:
    v = _num(x)
    if v is None:
        return _DASH
    amount = _small(v) if 0 < abs(v) < 0.01 else f"{v:,.2f}"
    symbol = CURRENCY_SYMBOLS.get(currency.upper())
    return f"{symbol}{amount}" if symbol else f"{amount} {currency}"


def _duration(x: Any) -> str:
    v = _num(x)
    if v is None:
        return _DASH
    if v < 10:
        return f"{v:.1f} s"
    s = int(round(v))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _size(x: Any) -> str:
    v = _num(x)
    if v is None:
        return _DASH
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= scale:
            return f"{v / scale:.1f} {unit} ({int(v):,} bytes)"
    return f"{int(v)} bytes"


def _int(x: Any) -> str:
    v = _num(x)
    return _DASH if v is None else f"{int(v):,}"


def _share(part: float, whole: float) -> str:
    if whole <= 0:
        return _DASH
    pct = 100 * part / whole
    return "<1%" if 0 < pct < 0.5 else f"{pct:.0f}%"


def _cost_line(c: CostRecord) -> str:
    """One line in this report's number style (like ``format_cost``, with kg and no 1e-05)."""
    return (
        f"{_hours(c.gpu_hours)} GPU-h, {_hours(c.cpu_core_hours)} CPU core-h, {_hours(c.energy_kwh)} kWh ({c.energy_source}), "
        f"{_co2(c.co2e_g)} CO2e, {_money(c.money, c.currency)}, {_duration(c.wall_s)} wall"
    )


def _when(x: Any) -> str:
    """An ISO timestamp as ``2026-11-26 06:40:00 UTC`` (as given when it does not parse)."""
    if not x:
        return _DASH
    try:
        t = datetime.fromisoformat(str(x))
    except ValueError:
        return str(x)
    zone = "UTC" if t.utcoffset() is not None and t.utcoffset().total_seconds() == 0 else t.strftime("%z")
    return f"{t:%Y-%m-%d %H:%M:%S} {zone}".rstrip()


def _param(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _params_text(params: Any) -> str:
    if not isinstance(params, Mapping) or not params:
        return _DASH
    return ", ".join(f"{k}={_param(v)}" for k, v in sorted(params.items(), key=lambda kv: str(kv[0])))


def _yes_no(x: Any) -> str:
    return "yes" if x is True else "no" if x is False else _DASH


def _map(x: Any) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}


# =============================================================================================
# Reading the state
# =============================================================================================
def _stage_names(state: Mapping[str, Any]) -> list[str]:
    """The known stages in order, then any other stage in the state by its number."""
    extra = [k for k in _map(state.get("stages")) if k not in STAGE_TITLES]
    extra.sort(key=lambda k: (_num(_map(state["stages"][k]).get("number")) or 99, str(k)))
    return list(STAGES) + extra


def _entry(state: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    entry = _map(state.get("stages")).get(name)
    return entry if isinstance(entry, Mapping) else None


def _result(state: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return _map((_entry(state, name) or {}).get("result"))


def _number(name: str, entry: Mapping[str, Any] | None) -> str:
    if name in STAGE_TITLES:
        return str(STAGES.index(name) + 1)
    n = _num((entry or {}).get("number"))
    return str(int(n)) if n is not None else "?"


def _status(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return NOT_RUN
    status = str(entry.get("status") or "unknown")
    attempts = _num(entry.get("attempts"))
    return f"{status} ({int(attempts)} attempts)" if attempts is not None and attempts > 1 else status


def _cost(entry: Mapping[str, Any] | None) -> CostRecord | None:
    cost = (entry or {}).get("cost")
    if not isinstance(cost, Mapping):
        return None
    try:
        return CostRecord.from_dict(cost)
    except TypeError:  # a key of the wrong kind: shown as unmeasured rather than failing the report
        return None


def _wall_s(entry: Mapping[str, Any] | None, cost: CostRecord | None) -> float | None:
    if cost is not None:
        return cost.wall_s
    try:  # no cost record (a stage still running): the time since it started, when known
        start, end = (datetime.fromisoformat(str((entry or {})[k])) for k in ("started", "finished"))
        return (end - start).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def _currency(state: Mapping[str, Any]) -> str:
    return str(_map(state.get("cost_model")).get("currency") or _map(state.get("cost_total")).get("currency") or "USD")


def _total(state: Mapping[str, Any], names: Sequence[str]) -> tuple[CostRecord, str]:
    """The sum of the stages' costs (the per-stage table adds up to it), and a note when needed."""
    records = [c for c in (_cost(_entry(state, n)) for n in names) if c is not None]
    try:
        total = sum_costs(records, currency=_currency(state))
        note = ""
    except ValueError as exc:  # stages priced in different currencies: money cannot be added up
        total = sum_costs([CostRecord(**{**r.as_dict(), "money": 0.0, "currency": "?"}) for r in records])
        note = f"Money is not totalled: {exc}."
    stored = _map(state.get("cost_total"))
    stored_co2 = _num(stored.get("co2e_g"))
    if stored_co2 is not None and not math.isclose(stored_co2, total.co2e_g, rel_tol=1e-6, abs_tol=1e-9):
        note += f" state.json's cost_total ({_co2(stored_co2)} CO2e) differs from the sum of the stages shown here."
    return total, note.strip()


# =============================================================================================
# The report's sections
# =============================================================================================
def _build(state: Mapping[str, Any]) -> list[_Block]:
    names = _stage_names(state)
    blocks: list[_Block] = [_Heading(1, f"Workflow report: {state.get('name') or 'unnamed workflow'}")]
    blocks += _header(state)
    blocks += _summary(state, names)
    blocks += _overview(state, names)
    blocks += _wer_path_section(state)
    for name in names:
        blocks += _stage_section(state, name)
    blocks += _cost_section(state, names)
    return blocks


def _code_version(state: Mapping[str, Any]) -> _Inline:
    cv = _map(state.get("code_version"))
    parts: list[_Cell] = [f"speechtune {cv.get('package') or '?'}"]
    commit = cv.get("git_commit")
    if commit:
        parts += [", git ", _code(str(commit)[:12])]
        if cv.get("git_dirty") is True:
            parts.append(" with uncommitted changes")
    else:
        parts.append(", git commit unknown")
    return _inline(*parts)


def _header(state: Mapping[str, Any]) -> list[_Block]:
    metric = str(state.get("metric") or "wer")
    return [
        _facts(
            ("workflow", _b(state.get("name") or _DASH)),
            ("code version", _code_version(state)),
            ("started", _when(state.get("started"))),
            ("updated", _when(state.get("updated"))),
            ("tuned metric", f"{_metric_label(metric)} on the dev set ({metric})"),
            ("config hash", _code(state["config_hash"])) if state.get("config_hash") else None,
            ("run directory", _code(state["run_dir"])) if state.get("run_dir") else None,
        )
    ]


def _promotion_callout(gate: Mapping[str, Any]) -> _Para:
    model, version = gate.get("model_name") or "the model", gate.get("registered_version")
    champion = _map(gate.get("champion"))
    reg = _inline("version ", _b(version), " of ", _code(model)) if version is not None else _inline(_code(model))
    if gate.get("promoted") is True:
        return _Para(_inline(_b("Promoted: YES."), " The challenger, ", reg, ", is the new champion."), "ok")
    stays = f" The champion (version {champion.get('version')}) stays." if champion.get("version") is not None else ""
    return _Para(_inline(_b("Promoted: NO."), " The challenger, ", reg, ", was registered but not promoted.", stays), "alert")


def _summary(state: Mapping[str, Any], names: Sequence[str]) -> list[_Block]:
    blocks: list[_Block] = [_Heading(2, "Summary")]
    gate_entry = _entry(state, "gate")
    gate = _result(state, "gate")
    if gate_entry is not None and gate_entry.get("status") == "done" and gate:
        blocks.append(_promotion_callout(gate))
        if gate.get("decision"):
            blocks.append(_Para(_inline(_b("Decision:"), " ", str(gate["decision"]))))
    else:
        blocks.append(_Para(_inline(_b("Not gated yet"), f" (stage 7, gate: {_status(gate_entry)}): no model was promoted.")))
    for name in names:
        entry = _entry(state, name)
        if entry is not None and entry.get("status") == "failed":
            first = str(entry.get("error") or "no error message recorded").strip().splitlines() or [""]
            blocks.append(_Para(_inline(_b(f"Stage {_number(name, entry)} ({name}) failed:"), " ", first[0]), "error"))
    done = sum(1 for n in names if (_entry(state, n) or {}).get("status") == "done")
    total, _ = _total(state, names)
    path = [p for p in wer_path(state) if p.value is not None]
    items: list[tuple[str, _Cell] | None] = [("stages done", f"{done} of {len(names)}")]
    if path:
        last = path[-1]
        items.append(("latest on the WER path", f"{last.step}: {_mval(last.metric, last.value)} {_metric_label(last.metric)} ({last.split})"))
    items.append(("total compute", _cost_line(total)))
    blocks.append(_facts(*items))
    return blocks


def _overview(state: Mapping[str, Any], names: Sequence[str]) -> list[_Block]:
    currency = _currency(state)
    rows: list[list[_Cell]] = []
    for name in names:
        entry = _entry(state, name)
        cost = _cost(entry)
        c = cost or CostRecord()
        cells: list[_Cell] = [_number(name, entry), name, _status(entry), _duration(_wall_s(entry, cost))]
        if cost is None:
            cells += [_DASH] * 5
        else:
            cells += [_hours(c.gpu_hours), _hours(c.cpu_core_hours), f"{_hours(c.energy_kwh)} ({c.energy_source})", _co2(c.co2e_g), _money(c.money, c.currency)]
        rows.append(cells)
    total, _ = _total(state, names)
    rows.append(
        [
            "",
            _b("total"),
            "",
            _b(_duration(total.wall_s)),
            _b(_hours(total.gpu_hours)),
            _b(_hours(total.cpu_core_hours)),
            _b(f"{_hours(total.energy_kwh)} ({total.energy_source})"),
            _b(_co2(total.co2e_g)),
            _b(_money(total.money, total.currency) if total.currency != "?" else _DASH),
        ]
    )
    header = ["#", "stage", "status", "wall time", "GPU-h", "CPU core-h", "energy kWh (source)", "CO2e", f"money ({currency})"]
    return [_Heading(2, "Stages"), _table(header, rows, numeric=(0, 3, 4, 5, 6, 7, 8))]


# -- the WER path -----------------------------------------------------------------------------
def wer_path(state: Mapping[str, Any]) -> list[_PathPoint]:
    """The WER path from the baseline to the golden set: one point per step, with its data split."""
    metric = str(state.get("metric") or "wer")

    def missing(name: str) -> str:
        entry = _entry(state, name)
        return NOT_RUN if entry is None else str(entry.get("status") or "unknown")

    def search(name: str, label: str) -> _PathPoint:
        best = _map(_result(state, name).get("best"))
        trial = f"trial #{best['trial']}" if best.get("trial") is not None else ""
        return _PathPoint(label, name, name, PROXY_DEV, metric, _num(best.get("value")), detail=trial, missing=missing(name))

    full = _result(state, "full")
    full_tuned = _map(full.get("tuned")) or full
    validate = _result(state, "validate")
    winner_name = validate.get("winner")
    winner = next((c for c in validate.get("candidates") or [] if isinstance(c, Mapping) and c.get("name") == winner_name), {})
    n_seeds = len(winner.get("values") or [])
    gate = _result(state, "gate")
    gate_metric = str(gate.get("gate_metric") or "wer")
    champion = _map(gate.get("champion"))
    champ = f"champion v{champion.get('version')}: {_mval(gate_metric, champion.get(gate_metric))}" if champion else "no champion"
    return [
        _PathPoint("Baseline", "baseline", "baseline", PROXY_DEV, metric, _num(_result(state, "baseline").get("value")), missing=missing("baseline")),
        search("coarse", "Coarse best"),
        search("fine", "Fine best"),
        _PathPoint(
            "Validation winner (mean ± std)", "validated", "validate", PROXY_DEV, metric, _num(winner.get("mean")),
            spread=_num(winner.get("std")), detail=f"{winner_name}, {n_seeds} seeds" if winner_name else "", missing=missing("validate"),
        ),
        # The tuned winner at full fidelity; when the baseline beat it there, "tuned" holds its record.
        _PathPoint(
            "Full-data training", "full", "full", FULL_DEV, metric, _num(full_tuned.get("value")),
            detail=f"{full_tuned.get('candidate', '')}: worse than the baseline, not sent to the gate" if "tuned" in full else "",
            missing=missing("full"),
        ),
        *(
            [_PathPoint("Baseline, full-data training", "baseline (full)", "full", FULL_DEV, metric, _num(full_base.get("value")),
                        detail="the recipe's defaults, trained like the winner" + ("; sent to the gate" if "tuned" in full else ""),
                        missing=missing("full"))]
            if (full_base := _map(full.get("baseline")))
            else []
        ),
        _PathPoint(
            "Golden (challenger)", "gate", "gate", GOLDEN, gate_metric, _num(_map(gate.get("challenger")).get(gate_metric)),
            detail=champ if gate else "", missing=missing("gate"),
        ),
    ]


def _wer_path_section(state: Mapping[str, Any]) -> list[_Block]:
    points = wer_path(state)
    # Each split has its own baseline: the proxy-trained one, and (when trained) the full-data one.
    baselines = {PROXY_DEV: points[0]}
    baselines.update({p.split: p for p in points if p.short == "baseline (full)"})
    rows: list[list[_Cell]] = []
    for p in points:
        if p.value is None:
            value: _Cell = p.missing
        elif p.spread is not None:
            value = f"{_mval(p.metric, p.value)} ± {_mdiff(p.metric, p.spread)}"
        else:
            value = _mval(p.metric, p.value)
        ref = baselines.get(p.split)
        same_split = ref is not None and ref is not p and ref.value is not None and p.value is not None and p.metric == ref.metric
        vs = _mdiff(p.metric, p.value - ref.value, signed=True) if same_split else ""  # type: ignore[operator,union-attr]
        rows.append([p.step, _b(value) if p.value is not None else value, _metric_label(p.metric), p.split, vs, p.detail])
    note = (
        "The values are measured on different data and are not one comparison: proxy dev = models trained on the "
        "proxy subset, scored on the dev set; full dev = the model trained on all the training data, scored on the "
        "dev set; golden = the held-out golden set, read only by the gate. pp = percentage points."
    )
    return [
        _Heading(2, "WER path: baseline to golden"),
        _table(["step", "value", "metric", "data split", "vs baseline (same split)", "detail"], rows, numeric=(1, 4)),
        _Chart(tuple(points)),
        _Para(_inline(note), "note"),
    ]


# -- the stage sections -----------------------------------------------------------------------
def _stage_section(state: Mapping[str, Any], name: str) -> list[_Block]:
    entry = _entry(state, name)
    title = f"{_number(name, entry)}. {STAGE_TITLES.get(name, name)} ({name})"
    blocks: list[_Block] = [_Heading(2, title)]
    if entry is None:
        return blocks + [_Para(_inline(NOT_RUN), "note")]
    cost = _cost(entry)
    blocks.append(
        _facts(
            ("status", _b(_status(entry))),
            ("started", _when(entry.get("started"))),
            ("finished", _when(entry.get("finished"))),
            ("cost", _cost_line(cost) if cost else "not measured"),
        )
    )
    if entry.get("status") == "failed" or entry.get("error"):
        blocks.append(_Para(_inline(_b("Error:")), "error"))
        blocks.append(_Pre(str(entry.get("error") or "no error message recorded")))
    result = entry.get("result")
    # Any stage may flag results that look unreliable (e.g. a proxy too weak to rank configs).
    for warning in (result.get("warnings") or []) if isinstance(result, Mapping) else []:
        blocks.append(_Para(_inline(_b("Warning:"), " ", str(warning)), "alert"))
    if not isinstance(result, Mapping) or not result:
        if entry.get("status") == "done":
            blocks.append(_Para(_inline("No result recorded."), "note"))
        return blocks
    render = _RESULT_RENDERERS.get(name)
    if render is None:
        return blocks + [_Pre(_params_text(result))]
    try:
        blocks += render(result, state)
    except Exception as exc:  # a malformed result: say so here, keep the rest of the report
        log.warning("workflow report: cannot render stage %s: %s: %s", name, type(exc).__name__, exc)
        blocks.append(_Para(_inline(f"The result of this stage could not be rendered ({type(exc).__name__}: {exc})."), "error"))
    return blocks


def _proxy(r: Mapping[str, Any], state: Mapping[str, Any]) -> list[_Block]:
    fraction, hours = _num(r.get("fraction")), _num(r.get("hours"))
    if hours is not None:
        selection = f"{hours:g} h of the training set"
    elif fraction is not None:
        selection = f"{100 * fraction:g}% of the training set's hours"
    else:
        selection = "the whole training set"
    rows: list[list[_Cell]] = []
    for key, label in (("train_full", "full training set"), ("proxy", "proxy training set"), ("dev", "dev set")):
        d = _map(r.get(key))
        if not d:
            continue
        groups = [str(g) for g in d.get("groups") or []]
        shown = ", ".join(groups[:8]) + (f", … (+{len(groups) - 8})" if len(groups) > 8 else "")
        hrs = _num(d.get("hours"))
        fp = d.get("fingerprint")
        rows.append(
            [
                label,
                _int(d.get("utterances")),
                _DASH if hrs is None else f"{hrs:.2f}",
                _int(d.get("speakers")),
                shown or _DASH,
                _code(str(fp)[:12]) if fp else _DASH,
            ]
        )
    manifests = _map(r.get("manifests"))
    return [
        _facts(("proxy subset", f"{selection}, stratified, seed {r.get('seed', _DASH)}")),
        _table(["set", "utterances", "hours", "speakers", "groups", "fingerprint"], rows, numeric=(1, 2, 3)),
        _facts(*((f"manifest {k}", _code(v)) for k, v in manifests.items())),
    ]


def _dev_metrics(dev: Mapping[str, Any], split: str, worst: Any = None) -> list[_Block]:
    """Overall WER/CER/worst-group WER and the per-group WER table of one evaluation."""
    groups = _map(dev.get("group_wer"))
    worst = worst or dev.get("worst_group")
    if worst is None and groups:
        scored = [(v, g) for g, v in groups.items() if _num(v) is not None]
        worst = max(scored)[1] if scored else None
    blocks: list[_Block] = [
        _table(
            ["split", "WER", "CER", "worst-group WER"],
            [[split, _b(_pct(dev.get("wer"))), _pct(dev.get("cer")), _pct(dev.get("worst_group_wer")) + (f" ({worst})" if worst is not None else "")]],
            numeric=(1, 2, 3),
        )
    ]
    if groups:
        rows = [[_b(f"{g} (worst)") if g == worst else str(g), _pct(v)] for g, v in sorted(groups.items(), key=lambda kv: str(kv[0]))]
        blocks.append(_table(["group", "WER"], rows, numeric=(1,)))
    return blocks


def _tuned_metric(r: Mapping[str, Any], metric: str, split: str) -> tuple[str, _Cell]:
    return ("tuned metric", _inline(_b(_mval(metric, r.get("value"))), f" {_metric_label(metric)} ({split})"))


def _baseline(r: Mapping[str, Any], state: Mapping[str, Any]) -> list[_Block]:
    metric = str(state.get("metric") or "wer")
    return [
        _facts(
            _tuned_metric(r, metric, PROXY_DEV),
            ("seed", str(r.get("seed", _DASH))),
            ("run directory", _code(r["run_dir"])) if r.get("run_dir") else None,
        )
    ] + _dev_metrics(_map(r.get("dev")), PROXY_DEV)


def _search(r: Mapping[str, Any], state: Mapping[str, Any]) -> list[_Block]:
    metric = str(state.get("metric") or "wer")
    best = _map(r.get("best"))
    counts = f"{_int(r.get('n_trials'))} trials: {_int(r.get('n_complete'))} complete, {_int(r.get('n_pruned'))} pruned, {_int(r.get('n_failed'))} failed"
    blocks: list[_Block] = [
        _facts(
            ("trials", counts),
            ("warm start", f"{_int(r.get('warm_started'))} coarse trials added as prior evidence") if "warm_started" in r else None,
            ("sampler / pruner", f"{r.get('sampler', _DASH)} / {r.get('pruner', _DASH)}"),
            ("study", _inline(_code(r.get("study", _DASH)), " in ", _code(mask_url(r.get("storage", _DASH))))),
            ("run directory", _code(r["run_dir"])) if r.get("run_dir") else None,
            ("best", _inline("trial #", str(best.get("trial", _DASH)), ", ", _b(_mval(metric, best.get("value"))), f" {_metric_label(metric)} ({PROXY_DEV})")),
        )
    ]
    params = _map(best.get("params"))
    if params:
        blocks.append(_table(["best parameter", "value"], [[_code(k), _param(v)] for k, v in sorted(params.items())]))
    narrowed = _map(r.get("narrowed"))
    if narrowed:
        rows = [[_code(k), str(_map(v).get("before", _DASH)), str(_map(v).get("after", _DASH))] for k, v in sorted(narrowed.items())]
        blocks += [_Para(_inline("Search space narrowed around the coarse search's top configurations:")), _table(["parameter", "before", "after"], rows)]
    top = [t for t in r.get("top") or [] if isinstance(t, Mapping)]
    if top:
        rows = [[str(i), f"#{t.get('trial', _DASH)}", _mval(metric, t.get("value")), _params_text(t.get("params"))] for i, t in enumerate(top, 1)]
        blocks += [_Para(_inline("Top configurations:")), _table(["rank", "trial", _metric_label(metric), "parameters"], rows, numeric=(0, 2))]
    return blocks


def _validate(r: Mapping[str, Any], state: Mapping[str, Any]) -> list[_Block]:
    metric = str(state.get("metric") or "wer")
    seeds = list(r.get("seeds") or [])
    candidates = [c for c in r.get("candidates") or [] if isinstance(c, Mapping)]
    width = max([len(seeds)] + [len(c.get("values") or []) for c in candidates])
    seed_cols = [f"seed {seeds[i]}" if i < len(seeds) else f"run {i + 1}" for i in range(width)]
    rows: list[list[_Cell]] = []
    for c in candidates:
        values = list(c.get("values") or [])
        is_winner = c.get("name") == r.get("winner")
        name: _Cell = _inline(_b(c.get("name", "?")), " (winner)") if is_winner else str(c.get("name", "?"))
        spread = f"{_mval(metric, c.get('mean'))} ± {_mdiff(metric, c.get('std'))}"
        per_seed = [_mval(metric, values[i]) if i < len(values) else _DASH for i in range(width)]
        rows.append([name, *per_seed, _b(spread) if is_winner else spread, _params_text(c.get("params"))])
    test = _map(r.get("test"))
    blocks: list[_Block] = [
        _facts(
            ("seeds", ", ".join(str(s) for s in seeds) or _DASH),
            ("alpha", str(r.get("alpha", test.get("alpha", _DASH)))),
            ("winner", _b(r.get("winner", _DASH))),
        ),
        _table(["candidate", *seed_cols, "mean ± std", "parameters"], rows, numeric=tuple(range(1, width + 2))),
    ]
    if test:
        stat, p = _num(test.get("statistic")), _num(test.get("p_value"))
        blocks.append(_Para(_inline(_b("Test:"), " ", str(test.get("statement") or "no statement recorded"))))
        blocks.append(
            _facts(
                ("method", str(test.get("method", _DASH))),
                ("statistic", _DASH if stat is None else f"{stat:.3g}"),
                ("p-value", _DASH if p is None else f"{p:.3g}"),
                ("significant", f"{_yes_no(test.get('significant'))} at alpha {test.get('alpha', r.get('alpha', _DASH))}"),
            )
        )
    return blocks


def _full(r: Mapping[str, Any], state: Mapping[str, Any]) -> list[_Block]:
    metric = str(state.get("metric") or "wer")
    return [
        _facts(
            _tuned_metric(r, metric, FULL_DEV),
            ("seed / epochs", f"{r.get('seed', _DASH)} / {r.get('epochs', _DASH)}"),
            ("parameters", _params_text(r.get("params"))),
            ("model", _code(r["model"])) if r.get("model") else None,
            ("run directory", _code(r["run_dir"])) if r.get("run_dir") else None,
        )
    ] + _dev_metrics(_map(r.get("dev")), FULL_DEV) + _full_baseline(
        _map(r.get("baseline")), metric, _map(r.get("tuned")).get("value", r.get("value"))
    )


def _full_baseline(base: Mapping[str, Any], metric: str, winner: Any) -> list[_Block]:
    if not base:
        return []
    value = _num(base.get("value"))
    if value is None:
        line = _inline(f"The baseline trained the same way did not finish ({base.get('status', 'unknown')}): {base.get('reason', '')}")
    else:
        diff = _num(winner) - value if _num(winner) is not None else None  # type: ignore[operator]
        line = _inline(
            "The recipe's defaults trained the same way (all data, same epochs and seed): ",
            _b(_mval(metric, value)),
            f" {_metric_label(metric)}" + (f"; the winner is {_mdiff(metric, diff, signed=True)} against it." if diff is not None else "."),
        )
    return [_Para(line)] + (_dev_metrics(_map(base.get("dev")), f"{FULL_DEV} (baseline)") if base.get("dev") else [])


def _gate(r: Mapping[str, Any], state: Mapping[str, Any]) -> list[_Block]:
    metric = str(r.get("gate_metric") or "wer")
    golden, ch, champ = _map(r.get("golden")), _map(r.get("challenger")), _map(r.get("champion"))
    blocks: list[_Block] = [_promotion_callout(r)]
    if r.get("decision"):
        blocks.append(_Para(_inline(_b("Decision:"), " ", str(r["decision"]))))
    hrs = _num(golden.get("hours"))
    blocks.append(
        _facts(
            (
                "golden set",
                _inline(
                    _code(golden.get("source", _DASH)),
                    f", {_int(golden.get('utterances'))} utterances, {_DASH if hrs is None else f'{hrs:.2f}'} h, fingerprint ",
                    _code(str(golden.get("fingerprint", _DASH))[:12]),
                ),
            ),
            (
                "rule",
                f"promote only if the challenger's golden {_metric_label(metric)} is lower than the champion's "
                f"by at least {_mdiff(metric, r.get('margin'))} (margin)",
            ),
            (
                "registered",
                _inline(
                    _code(r.get("model_name", _DASH)),
                    " version ",
                    _b(r.get("registered_version", _DASH)),
                    " at ",
                    _code(mask_url(r.get("tracking_uri", _DASH))),
                ),
            ),
            ("promoted", _b(_yes_no(r.get("promoted")))),
        )
    )
    champ_head = f"champion (v{champ.get('version')})" if champ else "champion"
    rows: list[list[_Cell]] = []
    for key in ("wer", "cer", "worst_group_wer"):
        a, b = ch.get(key), champ.get(key) if champ else None
        diff = _num(a) - _num(b) if _num(a) is not None and _num(b) is not None else None  # type: ignore[operator]
        label = _metric_label(key) + (" (gate metric)" if key == metric else "")
        ca, cb = _pct(a), _pct(b) if champ else "none"
        if key == "worst_group_wer":
            ca += f" ({ch.get('worst_group')})" if ch.get("worst_group") is not None else ""
            cb += f" ({champ.get('worst_group')})" if champ.get("worst_group") is not None else ""
        rows.append([_b(label) if key == metric else label, ca, cb, _pp(diff, signed=True)])
    blocks.append(_table(["golden", "challenger", champ_head, "challenger − champion"], rows, numeric=(1, 2, 3)))
    if not champ:
        blocks.append(_Para(_inline("There was no champion: this is the first model registered under this name."), "note"))
    groups_a, groups_b = _map(ch.get("group_wer")), _map(champ.get("group_wer"))
    groups = sorted(set(groups_a) | set(groups_b), key=str)
    if groups:
        rows = []
        for g in groups:
            a, b = _num(groups_a.get(g)), _num(groups_b.get(g))
            label: _Cell = _b(f"{g} (challenger's worst)") if g == ch.get("worst_group") else str(g)
            rows.append([label, _pct(a), _pct(b), _pp(a - b, signed=True) if a is not None and b is not None else _DASH])
        blocks.append(_table(["group", "challenger WER", f"{champ_head} WER", "challenger − champion"], rows, numeric=(1, 2, 3)))
    return blocks


def _export(r: Mapping[str, Any], state: Mapping[str, Any]) -> list[_Block]:
    if str(r.get("format")) == "none" or not r.get("path"):
        return [_Para(_inline(f"Nothing exported (format: {r.get('format', _DASH)})."), "note")]
    return [_facts(("format", str(r.get("format", _DASH))), ("path", _code(r["path"])), ("size", _size(r.get("bytes"))))]


_RESULT_RENDERERS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], list[_Block]]] = {
    "proxy": _proxy,
    "baseline": _baseline,
    "coarse": _search,
    "fine": _search,
    "validate": _validate,
    "full": _full,
    "gate": _gate,
    "export": _export,
}


# -- cost -------------------------------------------------------------------------------------
def _cost_section(state: Mapping[str, Any], names: Sequence[str]) -> list[_Block]:
    total, note = _total(state, names)
    rows: list[list[_Cell]] = []
    for name in names:
        c = _cost(_entry(state, name))
        if c is None:
            rows.append([name, _DASH, _DASH, _DASH, _DASH, _DASH, _DASH, _DASH, _DASH])
            continue
        share = _share(c.co2e_g, total.co2e_g)
        rows.append(
            [
                name,
                _hours(c.gpu_hours),
                _hours(c.cpu_core_hours),
                _hours(c.gpu_energy_kwh),
                _hours(c.cpu_energy_kwh),
                c.energy_source,
                _co2(c.co2e_g),
                share,
                _money(c.money, c.currency),
            ]
        )
    money = _money(total.money, total.currency) if total.currency != "?" else _DASH
    totals = [
        _hours(total.gpu_hours),
        _hours(total.cpu_core_hours),
        _hours(total.gpu_energy_kwh),
        _hours(total.cpu_energy_kwh),
        total.energy_source,
        _co2(total.co2e_g),
        "100%" if total.co2e_g > 0 else _DASH,
        money,
    ]
    rows.append([_b("total"), *(_b(t) for t in totals)])
    blocks: list[_Block] = [
        _Heading(2, "Cost and carbon"),
        _facts(
            ("device-hours", f"{_hours(total.gpu_hours)} GPU-h, {_hours(total.cpu_core_hours)} CPU core-h ({_duration(total.wall_s)} wall)"),
            ("energy", f"{_hours(total.energy_kwh)} kWh ({total.energy_source})"),
            ("CO2e", _b(_co2(total.co2e_g))),
            ("money", _b(money)),
        ),
        _table(["stage", "GPU-h", "CPU core-h", "GPU kWh", "CPU kWh", "energy source", "CO2e", "share of CO2e", "money"], rows, numeric=(1, 2, 3, 4, 6, 7, 8)),
    ]
    superseded = _map(state.get("cost_superseded"))
    if superseded:
        spent = _cost_line(CostRecord.from_dict(superseded))
        blocks.append(_Para(_inline(f"Not in the totals: {spent} spent on stage runs that were later reset and run again."), "note"))
    if note:
        blocks.append(_Para(_inline(note), "alert"))
    blocks += _cost_model(state, total)
    return blocks


def _cost_model(state: Mapping[str, Any], total: CostRecord) -> list[_Block]:
    model = _map(state.get("cost_model"))
    currency = _currency(state)
    how = {
        "nvml": "GPU energy measured by NVML; CPU energy estimated from its TDP per core",
        "tdp-estimate": "energy estimated from TDPs (no NVML reading)",
        "mixed": "GPU energy measured by NVML for some stages or trials, estimated from TDPs for others",
    }.get(total.energy_source, total.energy_source)

    def num(key: str, unit: str) -> str:
        v = _num(model.get(key))
        return _DASH if v is None else f"{v:g} {unit}"

    gpu_price, cpu_price = _num(model.get("gpu_price_per_hour")), _num(model.get("cpu_price_per_hour"))
    blocks: list[_Block] = [
        _Heading(3, "Cost model"),
        _facts(
            ("grid intensity", num("grid_g_per_kwh", "g CO2e/kWh")),
            ("GPU price", _DASH if gpu_price is None else f"{_money(gpu_price, currency)} per GPU-hour"),
            ("CPU price", _DASH if cpu_price is None else f"{_money(cpu_price, currency)} per CPU core-hour"),
            ("GPU TDP", num("gpu_tdp_w", "W")) if "gpu_tdp_w" in model else None,
            ("CPU TDP", num("cpu_tdp_w_per_core", "W per core")) if "cpu_tdp_w_per_core" in model else None,
            ("energy", how),
        ),
    ]
    small_print = (
        "Not counted: memory, storage, networking and data-centre overhead (PUE). "
        "NVML counts a whole GPU, so trials sharing a GPU are each charged its full energy."
    )
    if not gpu_price and not cpu_price:
        small_print += " Money is 0 because no prices are set (cost.gpu_price_per_hour, cost.cpu_price_per_hour)."
    blocks.append(_Para(_inline(small_print), "note"))
    return blocks


# =============================================================================================
# Markdown
# =============================================================================================
def _md_text(text: str) -> str:
    # Backslash-escape what would turn user text into markup (emphasis, code, raw HTML, an inline
    # link, a cell break) and nothing more, so that it stays readable in a terminal: a range
    # "[0.1, 0.5]" is no link without "](", an underscore inside a word (worst_group_wer) is never
    # emphasis in GFM, and line starts are always ours ("- ", "| ", "> "), so # and > are safe.
    text = re.sub(r"([\\`*|])", r"\\\1", re.sub(r"\s+", " ", str(text))).replace("](", "]\\(")
    text = re.sub(r"<(?=[A-Za-z/!?])", r"\\<", text)  # only a "<" that could open a tag ("p < 0.05" stays)
    return re.sub(r"(?<!\w)_|_(?!\w)", r"\\_", text)


def _md_inline(content: _Inline, in_table: bool = False) -> str:
    out = []
    for span in content:
        if span.style == "code":
            text = " ".join(span.text.split())
            if in_table:
                text = text.replace("|", "\\|")  # GFM splits cells on | even inside code spans
            fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
            pad = " " if text.startswith("`") or text.endswith("`") else ""
            out.append(f"{fence}{pad}{text}{pad}{fence}")
        elif span.style == "b":
            out.append(f"**{_md_text(span.text)}**")
        else:
            out.append(_md_text(span.text))
    return "".join(out)


def _md_table(t: _Table) -> list[str]:
    cells = [[_md_text(h) for h in t.header]] + [[_md_inline(c, True) for c in row] for row in t.rows]
    n = len(t.header)
    cells = [(row + [""] * n)[:n] for row in cells]
    widths = [max(3, *(len(row[i]) for row in cells)) for i in range(n)]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in t.numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if i in t.numeric else "-" * w for i, w in enumerate(widths)) + " |"
    return [line(cells[0]), rule] + [line(r) for r in cells[1:]]


def render_markdown(state: Mapping[str, Any]) -> str:
    """The workflow report as GitHub-flavoured Markdown (readable in a terminal as it is).

    Args:
        state: the workflow's ``state.json`` as a dict (any stage may be missing).

    Returns:
        The Markdown text; the same facts as :func:`render_html`, without the chart.
    """
    lines: list[str] = []
    for block in _build(state):
        if isinstance(block, _Heading):
            lines += ["#" * block.level + " " + _md_text(block.text), ""]
        elif isinstance(block, _Para):
            text = _md_inline(block.content)
            if block.kind in ("ok", "alert", "error"):
                text = "> " + text  # call-outs stand out as block quotes
            lines += [text, ""]
        elif isinstance(block, _Facts):
            lines += [f"- **{_md_text(label)}**: {_md_inline(value)}" for label, value in block.items] + [""]
        elif isinstance(block, _Table):
            lines += _md_table(block) + [""]
        elif isinstance(block, _Pre):
            fence = "`" * max(3, max((len(m) + 1 for m in re.findall(r"`+", block.text)), default=0))
            lines += [fence + "text", block.text.rstrip("\n"), fence, ""]
        # _Chart: HTML only (its numbers are in the WER path table).
    return "\n".join(lines).rstrip("\n") + "\n"


# =============================================================================================
# HTML
# =============================================================================================
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.9em; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
ul.facts { list-style: none; padding-left: 0; }
ul.facts li { margin: 0.15em 0; }
code { background: #f6f6f6; padding: 0 0.2em; }
pre { background: #fff4f4; border: 1px solid #e0b4b4; padding: 0.6em; white-space: pre-wrap; }
.note { color: #666; font-style: italic; }
.ok, .alert, .error { padding: 0.6em 1em; margin: 0.6em 0; font-size: 1.1em; }
.ok { border: 2px solid #2a7d2a; background: #eefaee; }
.alert { border: 2px solid #b36b00; background: #fff7e6; }
.error { border: 2px solid #b00; background: #fff0f0; }
svg text { font-family: system-ui, sans-serif; font-size: 11px; fill: #333; }
"""


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_inline(content: _Inline) -> str:
    tags = {"b": "b", "code": "code"}
    return "".join(f"<{tags[s.style]}>{_esc(s.text)}</{tags[s.style]}>" if s.style in tags else _esc(s.text) for s in content)


def _html_table(t: _Table) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in t.header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_html_inline(c)}</td>' if i in t.numeric else f"<td>{_html_inline(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in t.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _nice_step(raw: float) -> float:
    """The round number (1, 2, 2.5 or 5 x 10^k) at or above ``raw``: grid lines at 5%, 10%, ..."""
    if raw <= 0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(raw))
    return next(m * scale for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * scale >= raw * (1 - 1e-9))


def _svg_chart(points: Sequence[_PathPoint]) -> str:
    """A bar chart of the WER path, coloured by data split; a gap labelled with the status where a stage has no value."""
    values = [p.value + (p.spread or 0.0) for p in points if p.value is not None]
    if not values:
        return ""
    width, height, left, top, bottom = 680, 250, 56, 16, 64
    plot_h = height - top - bottom
    slot = (width - left - 10) / len(points)
    step = _nice_step(max(values) * 1.1 / 4)
    n_ticks = max(math.ceil(max(values) * 1.1 / step), 1)
    top_value = step * n_ticks

    def y(v: float) -> float:
        return top + plot_h * (1 - max(v, 0.0) / top_value)

    metric = points[0].metric
    parts = [f'<svg role="img" aria-label="WER path" viewBox="0 0 {width} {height}" width="{width}" height="{height}">']
    for i in range(n_ticks + 1):  # horizontal grid lines at round values
        v = step * i
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{_esc(f"{100 * v:.4g}%" if _is_rate(metric) else f"{v:.4g}")}</text>')
    for i, p in enumerate(points):
        cx = left + slot * (i + 0.5)
        if p.value is None:
            colour = "#b00" if p.missing == "failed" else "#999"
            parts.append(f'<text x="{cx:.1f}" y="{top + plot_h - 6}" text-anchor="middle" fill="{colour}">{_esc(p.missing)}</text>')
        else:
            bw = slot * 0.55
            label = _mval(p.metric, p.value)
            parts.append(
                f'<rect x="{cx - bw / 2:.1f}" y="{y(p.value):.1f}" width="{bw:.1f}" height="{top + plot_h - y(p.value):.1f}" '
                f'fill="{_SPLIT_COLOURS.get(p.split, "#888")}"><title>{_esc(f"{p.step}: {label} ({p.split})")}</title></rect>'
            )
            if p.spread is not None:  # the validation winner's std over seeds
                lo, hi = y(p.value - p.spread), y(p.value + p.spread)
                parts.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{lo:.1f}" y2="{hi:.1f}" stroke="#222"/>')
            parts.append(f'<text x="{cx:.1f}" y="{min(y(p.value), y(p.value + (p.spread or 0))) - 4:.1f}" text-anchor="middle">{_esc(label)}</text>')
        parts.append(f'<text x="{cx:.1f}" y="{height - bottom + 16}" text-anchor="middle">{_esc(p.short)}</text>')
        parts.append(f'<text x="{cx:.1f}" y="{height - bottom + 30}" text-anchor="middle" fill="#777">{_esc(p.split)}</text>')
    x = left
    for split, colour in _SPLIT_COLOURS.items():  # legend
        parts.append(f'<rect x="{x}" y="{height - 16}" width="10" height="10" fill="{colour}"/><text x="{x + 14}" y="{height - 7}">{_esc(split)}</text>')
        x += 110
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(state: Mapping[str, Any]) -> str:
    """The workflow report as one self-contained HTML page (inline CSS and SVG, no JavaScript).

    Args:
        state: the workflow's ``state.json`` as a dict (any stage may be missing).

    Returns:
        The page; every piece of text from the state is HTML-escaped.
    """
    body: list[str] = []
    title = ""
    for block in _build(state):
        if isinstance(block, _Heading):
            title = title or block.text
            body.append(f"<h{block.level}>{_esc(block.text)}</h{block.level}>")
        elif isinstance(block, _Para):
            cls = f' class="{block.kind}"' if block.kind else ""
            body.append(f"<p{cls}>{_html_inline(block.content)}</p>")
        elif isinstance(block, _Facts):
            items = "".join(f"<li><b>{_esc(label)}</b>: {_html_inline(value)}</li>" for label, value in block.items)
            body.append(f'<ul class="facts">{items}</ul>')
        elif isinstance(block, _Table):
            body.append(_html_table(block))
        elif isinstance(block, _Pre):
            body.append(f"<pre>{_esc(block.text)}</pre>")
        elif isinstance(block, _Chart):
            body.append(_svg_chart(block.points))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(b for b in body if b)
        + "\n</body>\n</html>\n"
    )


# =============================================================================================
# Files
# =============================================================================================
def _write_atomic(path: Path, text: str) -> None:
    # The report is rewritten after every stage: a reader never sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_workflow_report(state: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for a workflow state into ``out_dir``.

    Args:
        state: the workflow's ``state.json`` as a dict.
        out_dir: the directory to write to (created when missing).

    Returns:
        ``(html_path, md_path)``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    _write_atomic(md_path, render_markdown(state))
    _write_atomic(html_path, render_html(state))
    return html_path, md_path
