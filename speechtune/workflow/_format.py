"""How the workflow report writes numbers, times and configs (one style for Markdown and HTML).

Every function takes what a record may hold (a number, None, or a stray value of the wrong kind)
and never raises: what it cannot show becomes :data:`DASH`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from speechtune.metrics import CURRENCY_SYMBOLS, CostRecord

#: What the report shows for a value it does not have.
DASH = "—"


def num(x: Any) -> float | None:
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


def pct(x: Any) -> str:
    """A rate as a percentage with two decimals (``0.2105`` -> ``21.05%``)."""
    v = num(x)
    return DASH if v is None else f"{100 * v:.2f}%"


def pp(x: Any, signed: bool = False) -> str:
    """A WER difference or spread in percentage points."""
    v = num(x)
    if v is None:
        return DASH
    return f"{100 * v:+.2f} pp" if signed else f"{100 * v:.2f} pp"


def is_rate(metric: str) -> bool:
    """Whether ``metric`` is an error rate (shown as a percentage)."""
    return str(metric).lower().endswith(("wer", "cer"))


def metric_label(metric: Any) -> str:
    """A metric's name for readers (``worst_group_wer`` -> ``worst-group WER``)."""
    labels = {
        "wer": "WER",
        "cer": "CER",
        "worst_group_wer": "worst-group WER",
        "worst_group_cer": "worst-group CER",
    }
    return labels.get(str(metric), str(metric))


def mval(metric: str, x: Any) -> str:
    """A value of ``metric``: a percentage for error rates, else 4 significant digits."""
    v = num(x)
    if v is None:
        return DASH
    return pct(v) if is_rate(metric) else f"{v:.4g}"


def mdiff(metric: str, x: Any, signed: bool = False) -> str:
    """A difference (or spread) of ``metric``: percentage points for error rates."""
    v = num(x)
    if v is None:
        return DASH
    if is_rate(metric):
        return pp(v, signed)
    return f"{v:+.3g}" if signed else f"{v:.3g}"


def hours(x: Any) -> str:
    """Device-hours / kWh: two decimals, two significant digits below 0.01."""
    v = num(x)
    if v is None:
        return DASH
    return _small(v) if abs(v) < 0.01 else f"{v:,.2f}"


def co2(x: Any) -> str:
    """Grams of CO2e, in kg from 1000 g."""
    v = num(x)
    if v is None:
        return DASH
    if abs(v) >= 1000:
        return f"{v / 1000:,.2f} kg"
    if abs(v) >= 10:
        return f"{v:.0f} g"
    if abs(v) >= 1:
        return f"{v:.1f} g"
    return f"{_small(v)} g"


def money(x: Any, currency: str) -> str:
    """An amount with its currency's symbol (``$2.50``) or code (``2.50 CHF``)."""
    v = num(x)
    if v is None:
        return DASH
    amount = _small(v) if 0 < abs(v) < 0.01 else f"{v:,.2f}"
    symbol = CURRENCY_SYMBOLS.get(currency.upper())
    return f"{symbol}{amount}" if symbol else f"{amount} {currency}"


def duration(x: Any) -> str:
    """Seconds as ``5.0 s``, ``40 s``, ``5 min 00 s`` or ``1 h 30 min``."""
    v = num(x)
    if v is None:
        return DASH
    if v < 10:
        return f"{v:.1f} s"
    s = round(v)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def size(x: Any) -> str:
    """A file size: ``4.8 MB (4,812,345 bytes)``."""
    v = num(x)
    if v is None:
        return DASH
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= scale:
            return f"{v / scale:.1f} {unit} ({int(v):,} bytes)"
    return f"{int(v)} bytes"


def integer(x: Any) -> str:
    """A count with thousands separators."""
    v = num(x)
    return DASH if v is None else f"{int(v):,}"


def share(part: float, whole: float) -> str:
    """``part`` as a whole percentage of ``whole`` (``<1%`` for a sliver)."""
    if whole <= 0:
        return DASH
    percent = 100 * part / whole
    return "<1%" if 0 < percent < 0.5 else f"{percent:.0f}%"


def cost_line(c: CostRecord) -> str:
    """One line in this report's number style (like ``format_cost``, with kg and no 1e-05)."""
    return (
        f"{hours(c.gpu_hours)} GPU-h, {hours(c.cpu_core_hours)} CPU core-h, {hours(c.energy_kwh)} kWh "
        f"({c.energy_source}), {co2(c.co2e_g)} CO2e, {money(c.money, c.currency)}, {duration(c.wall_s)} wall"
    )


def when(x: Any) -> str:
    """An ISO timestamp as ``2026-11-26 06:40:00 UTC`` (as given when it does not parse)."""
    if not x:
        return DASH
    try:
        t = datetime.fromisoformat(str(x))
    except ValueError:
        return str(x)
    offset = t.utcoffset()
    zone = "UTC" if offset is not None and offset.total_seconds() == 0 else t.strftime("%z")
    return f"{t:%Y-%m-%d %H:%M:%S} {zone}".rstrip()


def param(v: Any) -> str:
    """A config value (floats to 4 significant digits)."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def params_text(params: Any) -> str:
    """A config as ``key=value, ...`` sorted by key (a dash for none)."""
    if not isinstance(params, Mapping) or not params:
        return DASH
    return ", ".join(
        f"{k}={param(v)}" for k, v in sorted(params.items(), key=lambda kv: str(kv[0]))
    )


def yes_no(x: Any) -> str:
    """``yes`` / ``no`` for a bool, a dash otherwise."""
    return "yes" if x is True else "no" if x is False else DASH
