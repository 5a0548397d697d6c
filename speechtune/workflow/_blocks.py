"""The pieces of the report's view model that both templates draw: text runs, paragraphs, fact
lists, tables and verbatim text. They hold plain text only; each template escapes it for its format."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Span:
    """A run of text; ``style`` is "" (plain), "b" (bold) or "code"."""

    text: str
    style: str = ""


Inline = tuple[Span, ...]
#: What a cell or a fact's value may be given as (plain text, one span, or several).
Cell = str | Span | Inline


@dataclass(frozen=True)
class Para:
    """A paragraph; ``kind`` is "" (plain), "note" (small print), "ok" / "alert" (a boxed call-out) or "error"."""

    content: Inline
    kind: str = ""


@dataclass(frozen=True)
class Facts:
    """A list of ``label: value`` lines."""

    items: tuple[tuple[str, Inline], ...]


@dataclass(frozen=True)
class Table:
    """A table of inline cells; ``numeric`` holds the indices of right-aligned columns."""

    header: tuple[str, ...]
    rows: tuple[tuple[Inline, ...], ...]
    numeric: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Pre:
    """Verbatim text (an error message with its traceback lines)."""

    text: str


Block = Para | Facts | Table | Pre


def inline(*parts: Cell) -> Inline:
    """Spans from text, spans and span tuples (empty text dropped)."""
    out: list[Span] = []
    for part in parts:
        if isinstance(part, str):
            if part:
                out.append(Span(part))
        elif isinstance(part, Span):
            out.append(part)
        else:
            out.extend(part)
    return tuple(out)


def b(text: Any) -> Span:
    """Bold text."""
    return Span(str(text), "b")


def code(text: Any) -> Span:
    """Code (paths, names, URIs, hashes)."""
    return Span(str(text), "code")


def para(*parts: Cell, kind: str = "") -> Para:
    """A paragraph of ``parts``."""
    return Para(inline(*parts), kind)


def table(
    header: Sequence[str], rows: Sequence[Sequence[Cell]], numeric: Sequence[int] = ()
) -> Table:
    """A table; ``numeric`` columns are right-aligned."""
    return Table(
        tuple(header), tuple(tuple(inline(c) for c in row) for row in rows), frozenset(numeric)
    )


def facts(*items: tuple[str, Cell] | None) -> Facts:
    """Fact lines; a None item (a fact the state does not have) is left out."""
    return Facts(tuple((item[0], inline(item[1])) for item in items if item is not None))
