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
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import yaml

from speechtune._report_file import REPORT_FILE_ENV, STOP_FILE_ENV, TRIAL_DIR_ENV
from speechtune.tuning.objectives._base import (
    COMPLETE,
    ERROR,
    STOPPED,
    StopTrackingReporter,
    TrialOutcome,
    error_outcome,
    merge_config,
)
from speechtune.tuning.objectives._command_output import (
    RegexParser,
    ReportFileReader,
    _pump_output,
    _Row,
)
from speechtune.tuning.objectives._process_group import kill_group

log = logging.getLogger(__name__)


#: Lines of output quoted in the reason of a failed command.
TAIL_LINES = 20

#: The file (in the trial dir, named by ``$SPEECHTUNE_STOP_FILE``) created when a trial is pruned.
STOP_FILE = "STOP"


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

    @property
    def stop_grace_s(self) -> float: ...


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
        text = repr(value)  # shortest round-trip form
        mantissa, e, exponent = text.partition("e")
        if e and "." not in mantissa:
            # YAML 1.1 (PyYAML, hyperpyyaml, ESPnet) reads 1e-05 as a string, 1.0e-05 as a float.
            text = f"{mantissa}.0e{exponent}"
        return text
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

    ``{config}``, ``{trial_dir}``, ``{seed}`` and ``{python}`` (the interpreter running
    speechtune, so that ``python`` never resolves to another environment's) are replaced in every
    item (other braces are left alone, so JSON arguments survive). ``{key_head}`` and
    ``{key_tail}`` split a key at its first dot, for ESPnet's ``--optim_conf lr=0.001`` (template
    ``"--{key_head} {key_tail}={value}"``). With an ``overrides`` template such as
    ``"--{key}={value}"`` or ``"{key}={value}"``, one argument per config key is appended; a
    template with a space (``"--{key} {value}"``) gives two arguments per key.
    """
    fields = {
        "{config}": str(config_path),
        "{trial_dir}": str(trial_dir),
        "{seed}": str(seed),
        "{python}": sys.executable,
    }
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
            head, _, tail = key.partition(".")
            out.extend(
                p.replace("{key}", key)
                .replace("{key_head}", head)
                .replace("{key_tail}", tail or key)
                .replace("{value}", format_value(value))
                for p in parts
            )
    return out


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

    Each trial directory gets the config the command reads (``config.yaml``, or ``config.json``
    when ``config_format`` is json), ``command.json`` (the exact argv and working directory, to
    rerun the trial by hand), ``stdout.log`` and ``metrics.jsonl``.

    Args:
        spec: the tuning spec's ``command`` section: ``argv`` (with ``{config}``, ``{trial_dir}``,
            ``{seed}``, ``{python}``), ``overrides`` (e.g. ``"--{key}={value}"``, or None),
            ``metric_regex`` (or None), ``timeout_s`` (or None) and ``stop_grace_s``.
        base_config: a nested config (the script's own ``command.config_file``) the fixed
            ``overrides`` and then the trial's flat config are merged into, to make ``{config}``.
        overrides: fixed flat values (the tuning YAML's top-level ``overrides:``): merged into
            ``{config}`` and passed on the command line with the sampled values.
        config_format: ``yaml`` or ``json``: how ``{config}`` is written.
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
        overrides: Mapping[str, Any] | None = None,
        config_format: str = "yaml",
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        grace_s: float = 5.0,
        poll_s: float = 0.2,
    ) -> None:
        if not spec.argv:
            raise ValueError(
                "command.argv must name a program to run, e.g. ['python', 'train.py', '--config', '{config}']"
            )
        if config_format not in ("yaml", "json"):
            raise ValueError(f"config_format must be yaml or json, got {config_format!r}")
        self.spec = spec
        self.overrides = dict(overrides or {})
        self.base_config = merge_config(base_config, self.overrides)
        self.config_format = config_format
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
        """Write the trial's config file and ``command.json``; return the trial's argv."""
        merged = merge_config(self.base_config, config)
        config_path = trial_dir / f"config.{self.config_format}"
        if self.config_format == "json":
            config_path.write_text(json.dumps(merged, indent=2) + "\n")
        else:
            config_path.write_text(yaml.safe_dump(merged, sort_keys=False))
        # A retried trial must not re-read an old attempt's rows or stop request.
        (trial_dir / "metrics.jsonl").unlink(missing_ok=True)
        (trial_dir / STOP_FILE).unlink(missing_ok=True)
        argv = render_argv(
            self.spec.argv,
            {**self.overrides, **config},
            self.spec.overrides,
            config_path=config_path,
            trial_dir=trial_dir,
            seed=seed,
        )
        cwd = str(Path(self.cwd).absolute()) if self.cwd is not None else os.getcwd()
        (trial_dir / "command.json").write_text(
            json.dumps({"argv": argv, "cwd": cwd, "config": str(config_path)}, indent=2) + "\n"
        )
        return argv

    def _environment(self, trial_dir: Path) -> dict[str, str]:
        env = {**os.environ, **self.env}
        env[REPORT_FILE_ENV] = str(trial_dir / "metrics.jsonl")
        env[TRIAL_DIR_ENV] = str(trial_dir)
        env[STOP_FILE_ENV] = str(trial_dir / STOP_FILE)
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
                return TrialOutcome(ERROR, _cannot_start(argv[0], self.cwd, exc), extra=extra)
            extra["pgid"] = proc.pid  # for the record: any process left in it would be a leak
            try:
                return self._supervise(proc, parser, tracker, trial_dir, log_file, extra)
            except KeyboardInterrupt:
                # Ctrl-C: the tuner records the trial as interrupted; the command must not
                # outlive it.
                kill_group(proc.pid, proc, self.grace_s)
                raise
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
        if ended is not None and ended[0] == STOPPED:
            self._ask_to_stop(proc, trial_dir)
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

    def _ask_to_stop(self, proc: subprocess.Popen[bytes], trial_dir: Path) -> None:
        """Create the stop file and give the command ``stop_grace_s`` to exit by itself: a
        script in a container, or one that saves a checkpoint first, is not killed mid-write."""
        (trial_dir / STOP_FILE).write_text("pruned\n")
        deadline = time.monotonic() + float(getattr(self.spec, "stop_grace_s", 0.0) or 0.0)
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(min(self.poll_s, 0.1))

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


def missing_program(program: str, cwd: str | Path | None) -> str | None:
    """Why ``command.argv[0]`` cannot start (not found, not a file), or None when it can.

    Checked before a study's first trial (every trial would fail the same way); a placeholder
    such as ``{python}`` is filled per trial and always passes.
    """
    if "{" in program:
        return None
    where = Path(cwd) if cwd is not None else Path.cwd()
    if os.sep in program:
        path = Path(program) if Path(program).is_absolute() else where / program
        if path.is_file():
            return None
        return f"command.argv[0] {program!r} does not exist (relative to {where})"
    if shutil.which(program) is not None:
        return None
    hint = (
        "; write {python} for the interpreter running speechtune"
        if program.startswith("python")
        else ""
    )
    return f"command.argv[0] {program!r} was not found on PATH{hint}"


def _cannot_start(program: str, cwd: str | Path | None, exc: OSError) -> str:
    """A one-line reason for a command that did not start, with the likely fix."""
    where = Path(cwd) if cwd is not None else Path.cwd()
    if isinstance(exc, FileNotFoundError):
        if os.sep in program:
            return f"error: command.argv[0] {program!r} does not exist (relative to {where})"
        hint = (
            "; write {python} for the interpreter running speechtune"
            if program.startswith("python")
            else ""
        )
        return f"error: command.argv[0] {program!r} was not found on PATH{hint}"
    if isinstance(exc, PermissionError):
        return f"error: command.argv[0] {program!r} is not executable ({exc.strerror})"
    found = shutil.which(program)
    return f"error: cannot start {program!r}{f' ({found})' if found else ''}: {exc}"
