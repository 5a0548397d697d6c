"""The workflow report: ``report.md`` and ``report.html``, Jinja2 templates drawing one view model.

:func:`~._view.build_view` turns the run's :class:`~._state.WorkflowRecord` into a
:class:`~._view.ReportView`; ``templates/report.md.j2`` and ``templates/report.html.j2`` lay it out.
The HTML is one self-contained page: inline CSS and SVG, no JavaScript, nothing fetched.

Both templates escape by default, so no piece of text from the state can become markup: the HTML
environment autoescapes (with the stdlib's entities, ``&quot;`` and ``&#x27;``), and the Markdown
environment uses the same mechanism with a Markdown escaper. Filters that build markup themselves
(inline runs, tables, verbatim blocks) escape every piece of text they put in it.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from speechtune.workflow._blocks import Facts, Inline, Para, Pre, Table
from speechtune.workflow._config import STAGES
from speechtune.workflow._state import WorkflowRecord
from speechtune.workflow._view import build_view
from speechtune.workflow._wer_path import PathPoint
from speechtune.workflow._wer_path import wer_path as _record_wer_path

__all__ = [
    "STAGES",
    "PathPoint",
    "render_html",
    "render_markdown",
    "wer_path",
    "write_workflow_report",
]


def _as_record(state: WorkflowRecord | Mapping[str, Any]) -> WorkflowRecord:
    return state if isinstance(state, WorkflowRecord) else WorkflowRecord.from_json(state)


def wer_path(state: WorkflowRecord | Mapping[str, Any]) -> list[PathPoint]:
    """The WER path from the baseline to the golden set: one point per step, with its data split.

    Args:
        state: the workflow's record, or its ``state.json`` as a dict.
    """
    return _record_wer_path(_as_record(state))


def render_markdown(state: WorkflowRecord | Mapping[str, Any]) -> str:
    """The workflow report as GitHub-flavoured Markdown (readable in a terminal as it is).

    Args:
        state: the workflow's record, or its ``state.json`` as a dict (any stage may be missing).

    Returns:
        The Markdown text; the same facts as :func:`render_html`, without the chart.

    Raises:
        RecordError: the state has a field of the wrong type (a malformed stage result does not raise).
    """
    text = _template("report.md.j2").render(view=build_view(_as_record(state)))
    return text.rstrip("\n") + "\n"


def render_html(state: WorkflowRecord | Mapping[str, Any]) -> str:
    """The workflow report as one self-contained HTML page (inline CSS and SVG, no JavaScript).

    Args:
        state: the workflow's record, or its ``state.json`` as a dict (any stage may be missing).

    Returns:
        The page; every piece of text from the state is HTML-escaped.

    Raises:
        RecordError: the state has a field of the wrong type (a malformed stage result does not raise).
    """
    return _template("report.html.j2").render(view=build_view(_as_record(state)))


def write_workflow_report(
    state: WorkflowRecord | Mapping[str, Any], out_dir: Path
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for a workflow state into ``out_dir``.

    Args:
        state: the workflow's record, or its ``state.json`` as a dict.
        out_dir: the directory to write to (created when missing).

    Returns:
        ``(html_path, md_path)``.
    """
    record = _as_record(state)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    _write_atomic(md_path, render_markdown(record))
    _write_atomic(html_path, render_html(record))
    return html_path, md_path


def _write_atomic(path: Path, text: str) -> None:
    # The report is rewritten after every stage: a reader never sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# =============================================================================================
# Markdown
# =============================================================================================
def _md_text(text: Any) -> str:
    """Plain text escaped for Markdown (one line: runs of whitespace become one space)."""
    # Backslash-escape what would turn user text into markup (emphasis, code, raw HTML, an inline
    # link, a cell break) and nothing more, so that it stays readable in a terminal: a range
    # "[0.1, 0.5]" is no link without "](", an underscore inside a word (worst_group_wer) is never
    # emphasis in GFM, and line starts are always ours ("- ", "| ", "> "), so # and > are safe.
    text = re.sub(r"([\\`*|])", r"\\\1", re.sub(r"\s+", " ", str(text))).replace("](", "]\\(")
    text = re.sub(
        r"<(?=[A-Za-z/!?])", r"\\<", text
    )  # only a "<" that could open a tag ("p < 0.05" stays)
    return re.sub(r"(?<!\w)_|_(?!\w)", r"\\_", text)


def _md_inline(content: Inline, in_table: bool = False) -> str:
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


def _md_table(t: Table) -> Markup:
    cells = [[_md_text(h) for h in t.header]] + [
        [_md_inline(c, True) for c in row] for row in t.rows
    ]
    n = len(t.header)
    cells = [(row + [""] * n)[:n] for row in cells]
    widths = [max(3, *(len(row[i]) for row in cells)) for i in range(n)]

    def line(row: list[str]) -> str:
        padded = (
            c.rjust(w) if i in t.numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        return "| " + " | ".join(padded) + " |"

    rule = (
        "| "
        + " | ".join(
            ("-" * (w - 1) + ":") if i in t.numeric else "-" * w for i, w in enumerate(widths)
        )
        + " |"
    )
    return Markup("\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]]))


def _md_pre(text: str) -> Markup:
    # The fence outgrows any run of backticks in the text, so the text cannot close it.
    fence = "`" * max(3, max((len(m) + 1 for m in re.findall(r"`+", text)), default=0))
    return Markup(f"{fence}text\n{text.rstrip(chr(10))}\n{fence}")


# =============================================================================================
# The templates
# =============================================================================================
def _escaping(escape: Callable[[str], str]) -> Callable[[Any], Any]:
    """A ``finalize`` that escapes every plain value a template prints (Markup is already safe)."""

    def finalize(value: Any) -> Any:
        return value if isinstance(value, Markup) else Markup(escape(str(value)))

    return finalize


def _environment(escape: Callable[[str], str]) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("speechtune.workflow", "templates"),
        # Autoescaping makes macro output Markup; ``finalize`` does the escaping itself, in the
        # format's own way, before Jinja's HTML escape (which then leaves the Markup alone).
        autoescape=True,
        finalize=_escaping(escape),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.tests.update(
        para=lambda x: isinstance(x, Para),
        facts=lambda x: isinstance(x, Facts),
        table=lambda x: isinstance(x, Table),
        pre=lambda x: isinstance(x, Pre),
    )
    return env


_HTML_ENV = _environment(lambda text: html.escape(text, quote=True))
_MD_ENV = _environment(_md_text)
_MD_ENV.filters.update(
    md_inline=lambda c: Markup(_md_inline(c)), md_table=_md_table, md_pre=_md_pre
)


def _template(name: str) -> jinja2.Template:
    return (_MD_ENV if name.endswith(".md.j2") else _HTML_ENV).get_template(name)
