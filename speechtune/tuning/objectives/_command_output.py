"""What a running command reports: rows of the report file, regex matches in its output."""

from __future__ import annotations

import json
import logging
import math
import queue
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


@dataclass
class _Row:
    epoch: int | None
    metrics: dict[str, float]
    final: bool = False


class ReportFileReader:
    """Reads complete new JSON lines appended to a report file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.bad_lines: list[str] = []

    def read_new(self) -> list[_Row]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:  # a line still being written: wait for its newline
            return []
        self._offset += end + 1
        rows = []
        for raw in chunk[: end + 1].decode("utf-8", errors="replace").splitlines():
            if raw.strip():
                row = self._parse(raw)
                if row is not None:
                    rows.append(row)
        return rows

    def _parse(self, raw: str) -> _Row | None:
        try:
            data = json.loads(raw)
            epoch = data.pop("epoch", None)
            final = bool(data.pop("final", False))
            if epoch is not None and (
                isinstance(epoch, bool) or not isinstance(epoch, (int, float))
            ):
                raise ValueError(f"epoch must be a number, got {epoch!r}")
            metrics = {k: float(v) for k, v in data.items() if _is_number(v)}
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring a bad line in %s: %r (%s)", self.path, raw, exc)
            self.bad_lines.append(raw)
            return None
        return _Row(None if epoch is None else int(epoch), metrics, final)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class RegexParser:
    """Turns output lines into metric rows with a regex of named groups.

    The ``epoch`` group (optional) gives the epoch; every other named group is a metric. A
    regex without an ``epoch`` group numbers its matches 1, 2, 3, ...
    """

    def __init__(self, pattern: str) -> None:
        try:
            self.regex = re.compile(pattern)
        except re.error as exc:
            raise ValueError(
                f"command.metric_regex is not a valid regular expression: {exc} ({pattern!r})"
            ) from exc
        if not self.regex.groupindex:
            raise ValueError(
                f"command.metric_regex needs named groups, e.g. (?P<epoch>\\d+) and (?P<wer>[0-9.]+); got {pattern!r}"
            )
        self._count = 0

    def parse(self, line: str) -> _Row | None:
        match = self.regex.search(line)
        if match is None:
            return None
        metrics: dict[str, float] = {}
        epoch: int | None = None
        for name, text in match.groupdict().items():
            if text is None:
                continue
            try:
                number = float(text)
            except ValueError:
                log.warning("metric_regex group %r matched %r, which is not a number", name, text)
                continue
            if name == "epoch":
                epoch = int(number)
            elif math.isfinite(number):
                metrics[name] = number
        if not metrics:
            return None
        self._count += 1
        return _Row(epoch if epoch is not None else self._count, metrics)


def _pump_output(
    stream: IO[bytes], log_file: IO[str], lines: queue.Queue[str | None], tail: deque[str]
) -> None:
    """Copy the child's merged stdout/stderr to its log file and hand each line on for parsing."""
    try:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            try:
                log_file.write(line)
                log_file.flush()
            except ValueError:  # the log was closed: a straggler outside the group still writes
                pass
            text = line.rstrip("\r\n")
            tail.append(text)
            lines.put(text)
    finally:
        lines.put(None)
