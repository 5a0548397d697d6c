"""HTML building blocks shared by the sections of ``report.html`` (escaping, tables, figures)."""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go


def esc(value: Any) -> str:
    """``value`` as HTML-escaped text (floats to 6 significant digits)."""
    if isinstance(value, float):
        return html.escape(f"{value:.6g}")
    return html.escape(str(value))


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain HTML table; every cell escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure_div(fig: go.Figure, div_id: str) -> str:
    """A plotly figure as a ``<div>`` drawn by the one plotly.js copy in the page's head."""
    return fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False}
    )
