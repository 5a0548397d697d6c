"""Tune an external training command (ESPnet, SpeechBrain, NeMo, icefall, your own script).

Per trial the command gets its config as a YAML file and reports metrics either

* through the report file: ``speechtune.report(epoch=3, wer=0.21)`` appends a JSON line to
  ``$SPEECHTUNE_REPORT_FILE`` (``speechtune/_report_file.py`` imports nothing heavy), and
  ``speechtune.report(final=True, wer=0.19)`` gives the run's final figures; or
* through its log: ``metric_regex`` with named groups (``epoch`` and metric names) is matched
  against every line of its stdout/stderr.

Each new epoch goes to the trial's reporter; when the reporter says stop (pruned), the whole
process group of the command (its workers and their children too) is terminated: SIGTERM, then
SIGKILL after a grace period. The command runs as an argv list, never through a shell.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import yaml

from speechtune._report_file import REPORT_FILE_ENV, TRIAL_DIR_ENV
from speechtune.tuning.objectives._base import (
    COMPLETE,
    ERROR,
    STOPPED,
    StopTrackingReporter,
    TrialOutcome,
    error_outcome,
    merge_config,
)

log = logging.getLogger(__name__)


#: Lines of output quoted in the reason of a failed command.
TAIL_LINES = 20


class CommandSpecLike(Protocol):
    """What :class:`CommandObjective` reads from a tuning spec's ``command`` section."""

    @property
    def argv(self) -> Sequence[str]: ...

    @property
    def overrides(self) -> str | None: ...

    @property
    def metric_regex(self) -> str | None: ...

    @property
    def timeout_s(self) -> float | None: ...


# ---------------------------------------------------------------------------------------------
# building the command line
# ---------------------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    """A config value as a command-line string: YAML-style scalars (true, null, 0.001), JSON lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def render_argv(
    argv: Sequence[str],
    config: Mapping[str, Any],
    overrides: str | None,
    *,
    config_path: Path,
    trial_dir: Path,
    seed: int,
) -> list[str]:
    """The argv of one trial.

    ``{config}``, ``{trial_dir}`` and ``{seed}`` are replaced in every item (other braces are
    left alone, so JSON arguments survive). With an ``overrides`` template such as
    ``"--{key}={value}"`` or ``"{key}={value}"``, one argument per config key is appended; a
    template with a space (``"--{key} {value}"``) gives two arguments per key.
    """
    fields = {"{config}": str(config_path), "{trial_dir}": str(trial_dir), "{seed}": str(seed)}
    out = []
    for item in argv:
        item = str(item)
        for placeholder, value in fields.items():
            item = item.replace(placeholder, value)
        out.append(item)
    if overrides:
        # split before substituting, so a value with a space stays one argument
        parts = overrides.split()
        for key, value in config.items():
            out.extend(
                p.replace("{key}", key).replace("{value}", format_value(value)) for p in parts
            )
    return out


# ---------------------------------------------------------------------------------------------
# reading metrics while the command runs
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# process groups
# ---------------------------------------------------------------------------------------------
def group_alive(pgid: int) -> bool:
    """Is any live (non-zombie) process left in process group ``pgid``?

    Zombies are ignored: an orphaned child that already exited may wait for a reaper that never
    comes (PID 1 in a container), but it holds no resources worth waiting for.
    """
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name (field 2) may contain spaces and parentheses: split after the last ')'
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def kill_group(pgid: int, proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the whole process group, then SIGKILL whatever is left after ``grace_s`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so that it does not count as alive
        if not group_alive(pgid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait()
    deadline = time.monotonic() + 2.0
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# the objective
# ---------------------------------------------------------------------------------------------
@dataclass
class _Progress:
    """Metric rows seen so far, merged by epoch, and the final row if any."""

    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    last_reported: int | None = None


class CommandObjective:
    """Run an external training command per trial.

    Args:
        spec: the tuning spec's ``command`` section: ``argv`` (with ``{config}``, ``{trial_dir}``,
            ``{seed}``), ``overrides`` (e.g. ``"--{key}={value}"``, or None), ``metric_regex``
            (or None) and ``timeout_s`` (or None).
        base_config: a nested config the trial's flat config is merged into before it is written
            to ``<trial_dir>/config.yaml``.
        cwd: working directory of the command; None keeps the tuner's.
        env: extra environment variables for the command.
        grace_s: seconds between SIGTERM and SIGKILL when a trial is stopped or times out.
        poll_s: how often the report file is read.
    """

    def __init__(
        self,
        spec: CommandSpecLike,
        base_config: Mapping[str, Any] | None = None,
        *,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        grace_s: float = 5.0,
        poll_s: float = 0.2,
    ) -> None:
        if not spec.argv:
            raise ValueError(
                "command.argv must name a program to run, e.g. ['python', 'train.py', '--config', '{config}']"
            )
        self.spec = spec
        self.base_config = dict(base_config or {})
        self.cwd = cwd
        self.env = dict(env or {})
        self.grace_s = grace_s
        self.poll_s = poll_s
        # a bad regex is reported when the study is built, not once per trial
        if spec.metric_regex:
            RegexParser(spec.metric_regex)

    def __call__(
        self, config: dict[str, Any], reporter: Any, trial_dir: Path, seed: int
    ) -> TrialOutcome:
        """Run one trial; see :class:`~speechtune.tuning.Objective`."""
        trial_dir = Path(trial_dir).absolute()
        trial_dir.mkdir(parents=True, exist_ok=True)
        try:
            argv = self.prepare(config, trial_dir, seed)
            parser = RegexParser(self.spec.metric_regex) if self.spec.metric_regex else None
        except (ValueError, OSError, yaml.YAMLError) as exc:
            return TrialOutcome(ERROR, f"error: {exc}", extra={"output_dir": str(trial_dir)})
        return self._run(argv, parser, StopTrackingReporter(reporter), trial_dir)

    def prepare(self, config: Mapping[str, Any], trial_dir: Path, seed: int) -> list[str]:
        """Write ``<trial_dir>/config.yaml`` and return the trial's argv."""
        config_path = trial_dir / "config.yaml"
        config_path.write_text(
            yaml.safe_dump(merge_config(self.base_config, config), sort_keys=False)
        )
        report_file = trial_dir / "metrics.jsonl"
        report_file.unlink(
            missing_ok=True
        )  # a retried trial must not re-read an old attempt's rows
        return render_argv(
            self.spec.argv,
            config,
            self.spec.overrides,
            config_path=config_path,
            trial_dir=trial_dir,
            seed=seed,
        )

    def _environment(self, trial_dir: Path) -> dict[str, str]:
        env = {**os.environ, **self.env}
        env[REPORT_FILE_ENV] = str(trial_dir / "metrics.jsonl")
        env[TRIAL_DIR_ENV] = str(trial_dir)
        env.setdefault(
            "PYTHONUNBUFFERED", "1"
        )  # a Python script's prints reach the regex as they happen
        return env

    def _run(
        self,
        argv: list[str],
        parser: RegexParser | None,
        tracker: StopTrackingReporter,
        trial_dir: Path,
    ) -> TrialOutcome:
        extra: dict[str, Any] = {
            "argv": argv,
            "output_dir": str(trial_dir),
            "log": str(trial_dir / "stdout.log"),
        }
        with open(trial_dir / "stdout.log", "w", encoding="utf-8") as log_file:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    cwd=self.cwd,
                    env=self._environment(trial_dir),
                    start_new_session=True,  # its own process group: pruning kills its workers too
                )
            except OSError as exc:
                return TrialOutcome(ERROR, f"error: cannot start {argv[0]!r}: {exc}", extra=extra)
            extra["pgid"] = proc.pid  # for the record: any process left in it would be a leak
            try:
                return self._supervise(proc, parser, tracker, trial_dir, log_file, extra)
            except (
                Exception
            ) as exc:  # e.g. a reporter that raised: never leave the command running
                log.exception("supervising %s failed", argv)
                kill_group(proc.pid, proc, self.grace_s)
                extra["exit_code"] = proc.poll()
                return error_outcome(exc, trial_dir, **extra)

    def _supervise(
        self,
        proc: subprocess.Popen[bytes],
        parser: RegexParser | None,
        tracker: StopTrackingReporter,
        trial_dir: Path,
        log_file: IO[str],
        extra: dict[str, Any],
    ) -> TrialOutcome:
        pgid = proc.pid  # start_new_session makes the child the leader of a new group
        lines: queue.Queue[str | None] = queue.Queue()
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        assert proc.stdout is not None  # we asked for a pipe
        pump = threading.Thread(
            target=_pump_output, args=(proc.stdout, log_file, lines, tail), daemon=True
        )
        pump.start()
        reader = ReportFileReader(trial_dir / "metrics.jsonl")
        progress = _Progress()
        timeout = self.spec.timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        ended: tuple[str, str] | None = None
        while ended is None:
            exited = proc.poll() is not None
            if self._consume(reader.read_new(), _drain(lines, parser), progress, tracker):
                ended = (STOPPED, f"stopped by the reporter after epoch {tracker.stopped_at}")
            elif exited:
                break
            elif deadline is not None and time.monotonic() >= deadline:
                ended = (ERROR, f"error: timed out after {timeout:g} s")
            else:
                time.sleep(self.poll_s)
        # Whatever is still running in the group (the command, or workers it left behind) goes.
        kill_group(pgid, proc, self.grace_s)
        proc.wait()
        pump.join(timeout=5.0)
        if ended is None and self._consume(
            reader.read_new(), _drain(lines, parser), progress, tracker
        ):
            # the last epoch, written just before the command exited, was pruned: as in the recipe,
            # a stop request on the last epoch still makes the trial "stopped"
            ended = (STOPPED, f"stopped by the reporter after epoch {tracker.stopped_at}")
        extra["exit_code"] = proc.returncode
        if reader.bad_lines:
            extra["bad_report_lines"] = reader.bad_lines[:10]
        return self._outcome(ended, proc.returncode, progress, tracker, list(tail), extra)

    @staticmethod
    def _consume(
        file_rows: list[_Row],
        log_rows: list[_Row],
        progress: _Progress,
        tracker: StopTrackingReporter,
    ) -> bool:
        """Record new rows; report each new epoch. True when the reporter asked to stop."""
        for row in file_rows + log_rows:
            if row.final or row.epoch is None:
                progress.final.update(row.metrics)
                continue
            if progress.history and progress.history[-1]["epoch"] == row.epoch:
                # more metrics of the epoch just reported (e.g. a second log line): keep, don't re-report
                progress.history[-1].update(row.metrics)
                continue
            if progress.last_reported is not None and row.epoch <= progress.last_reported:
                log.warning(
                    "ignoring metrics of epoch %d, reported after epoch %d",
                    row.epoch,
                    progress.last_reported,
                )
                continue
            progress.history.append({"epoch": row.epoch, **row.metrics})
            progress.last_reported = row.epoch
            if tracker.report(row.epoch, **row.metrics):
                return True
        return False

    @staticmethod
    def _outcome(
        ended: tuple[str, str] | None,
        exit_code: int,
        progress: _Progress,
        tracker: StopTrackingReporter,
        tail: list[str],
        extra: dict[str, Any],
    ) -> TrialOutcome:
        last = (
            {k: v for k, v in progress.history[-1].items() if k != "epoch"}
            if progress.history
            else {}
        )
        metrics = {**last, **progress.final}
        history = [dict(r) for r in progress.history]
        if ended is not None:
            status, reason = ended
            if status == ERROR:
                reason += _quote_tail(tail)
            return TrialOutcome(status, reason, metrics, history, extra)
        if exit_code != 0:
            how = (
                f"was killed by signal {-exit_code}"
                if exit_code < 0
                else f"exited with code {exit_code}"
            )
            return TrialOutcome(
                ERROR, f"error: the command {how}" + _quote_tail(tail), metrics, history, extra
            )
        if not metrics:
            return TrialOutcome(
                ERROR,
                "error: the command exited with code 0 but reported no metrics (call speechtune.report(...) "
                "or set command.metric_regex)" + _quote_tail(tail),
                metrics,
                history,
                extra,
            )
        return TrialOutcome(
            COMPLETE,
            f"command completed after {len(history)} reported epoch(s)",
            metrics,
            history,
            extra,
        )


def _drain(lines: queue.Queue[str | None], parser: RegexParser | None) -> list[_Row]:
    rows: list[_Row] = []
    while True:
        try:
            line = lines.get_nowait()
        except queue.Empty:
            return rows
        if line is not None and parser is not None:
            row = parser.parse(line)
            if row is not None:
                rows.append(row)


def _quote_tail(tail: list[str]) -> str:
    if not tail:
        return ""
    return f"; last {len(tail)} line(s) of output:\n" + "\n".join(tail)
