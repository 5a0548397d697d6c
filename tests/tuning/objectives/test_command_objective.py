"""CommandObjective runs real child processes: report-file and log-regex metrics, pruning that
kills the whole process group, exit codes, timeouts and override templating. Also the torch-free
``speechtune.report`` helper that such scripts call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from speechtune import _report_file
from speechtune.training import CallbackReporter, NullReporter
from speechtune.tuning.objectives import CommandObjective
from speechtune.tuning.objectives._command import render_argv
from speechtune.tuning.objectives._process_group import group_alive
from tests.helpers.paths import REPO, SCRIPTS


@dataclass
class Spec:
    """Stands in for the tuning spec's CommandSpec (any object with these attributes works)."""

    argv: list[str]
    overrides: str | None = None
    metric_regex: str | None = None
    timeout_s: float | None = None
    stop_grace_s: float = 0.0


class Recorder:
    """A reporter that records every call and asks to stop at ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []
        self.stop_at = stop_at

    def report(self, epoch: int, **metrics: float) -> bool:
        self.calls.append((epoch, metrics))
        return self.stop_at is not None and epoch >= self.stop_at


def objective(argv: list[str], base: dict | None = None, **spec_kw) -> CommandObjective:
    # PYTHONPATH makes `import speechtune` work in the child even without the editable install
    return CommandObjective(
        Spec(argv, **spec_kw), base, env={"PYTHONPATH": str(REPO)}, grace_s=2.0, poll_s=0.05
    )


BASE = {"optim": {"lr": 0.01, "name": "adam"}, "train": {"epochs": 3}}


def test_report_file_script_completes(tmp_path: Path) -> None:
    obj = objective([sys.executable, str(SCRIPTS / "report_epochs.py"), "{config}"], BASE)
    rec = Recorder()
    out = obj({"optim.lr": 0.02}, rec, tmp_path / "t0", seed=5)
    assert out.status == "complete", out.reason
    assert [e for e, _ in rec.calls] == [1, 2, 3]
    assert rec.calls[1][1] == pytest.approx({"wer": 0.1, "loss": 0.5})
    assert [row["epoch"] for row in out.history] == [1, 2, 3]
    # final row merged over the last epoch's row
    assert out.metrics == pytest.approx({"wer": 0.2 / 3, "loss": 1 / 3, "num_parameters": 1234.0})
    assert out.extra["exit_code"] == 0
    rendered = yaml.safe_load((tmp_path / "t0" / "config.yaml").read_text())
    assert rendered == {"optim": {"lr": 0.02, "name": "adam"}, "train": {"epochs": 3}}
    assert "finished epoch 3" in (tmp_path / "t0" / "stdout.log").read_text()


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="process checks read /proc")
def test_pruned_script_and_its_grandchild_are_killed(tmp_path: Path) -> None:
    base = {**BASE, "train": {"epochs": 50}, "delay": 0.3}
    obj = objective(
        [sys.executable, str(SCRIPTS / "report_epochs.py"), "{config}", "--spawn-sleeper"], base
    )
    rec = Recorder(stop_at=2)
    t0 = time.monotonic()
    out = obj({}, rec, tmp_path / "t1", seed=0)
    assert out.status == "stopped", out.reason
    assert "epoch 2" in out.reason
    assert [e for e, _ in rec.calls] == [1, 2]
    assert [row["epoch"] for row in out.history] == [1, 2]
    assert out.metrics["wer"] == pytest.approx(0.05)
    sleeper = int((tmp_path / "t1" / "sleeper.pid").read_text())
    pgid = out.extra["pgid"]
    assert not _pid_alive(sleeper), "the grandchild `sleep 60` survived the prune"
    assert not group_alive(pgid)
    assert time.monotonic() - t0 < 10  # SIGTERM ended it well before 50 epochs x 0.3 s


def test_metric_regex_on_output(tmp_path: Path) -> None:
    regex = r"epoch (?P<epoch>\d+) loss (?P<loss>[0-9.]+) wer (?P<wer>[0-9.]+)"
    obj = objective([sys.executable, str(SCRIPTS / "regex_log.py")], metric_regex=regex)
    rec = Recorder()
    out = obj({"optim.lr": 0.1}, rec, tmp_path / "t2", seed=0)
    assert out.status == "complete", out.reason
    assert [e for e, _ in rec.calls] == [1, 2, 3]
    assert out.metrics == pytest.approx({"wer": 0.0, "loss": 0.333})
    assert out.history[0] == pytest.approx({"epoch": 1, "loss": 1.0, "wer": 0.5})
    log = (tmp_path / "t2" / "stdout.log").read_text()
    assert "some unrelated line" in log  # stderr merged into the log


def test_bad_metric_regex_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="named groups"):
        objective(["true"], metric_regex=r"wer [0-9.]+")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        objective(["true"], metric_regex=r"wer (?P<wer>[0-9.]+")


def test_nonzero_exit_is_an_error_with_code_and_output(tmp_path: Path) -> None:
    obj = objective(
        [sys.executable, str(SCRIPTS / "report_epochs.py"), "{config}", "--exit-code", "3"], BASE
    )
    out = obj({}, NullReporter(), tmp_path / "t3", seed=0)
    assert out.status == "error"
    assert out.extra["exit_code"] == 3
    assert "exited with code 3" in out.reason
    assert "something went wrong" in out.reason
    assert len(out.history) == 3  # what it reported before failing is kept


def test_timeout_kills_the_command(tmp_path: Path) -> None:
    base = {**BASE, "train": {"epochs": 100}, "delay": 0.5}
    obj = objective(
        [sys.executable, str(SCRIPTS / "report_epochs.py"), "{config}"], base, timeout_s=1.0
    )
    t0 = time.monotonic()
    out = obj({}, NullReporter(), tmp_path / "t4", seed=0)
    assert out.status == "error"
    assert out.reason.startswith("error: timed out after 1 s")
    assert time.monotonic() - t0 < 5
    assert not group_alive(out.extra["pgid"])


def test_silent_success_and_missing_program_are_errors(tmp_path: Path) -> None:
    silent = objective([sys.executable, "-c", "print('done')"])(
        {}, NullReporter(), tmp_path / "t5", seed=0
    )
    assert silent.status == "error" and "reported no metrics" in silent.reason
    missing = objective(["/nonexistent/train-program"])(
        {}, NullReporter(), tmp_path / "t6", seed=0
    )
    assert missing.status == "error" and "does not exist" in missing.reason
    other_python = objective(["python3.99-not-here", "train.py"])(
        {}, NullReporter(), tmp_path / "t7", seed=0
    )
    assert "not found on PATH" in other_python.reason and "{python}" in other_python.reason


STOP_AWARE = """
import json, os, sys, time
report, stop = os.environ["SPEECHTUNE_REPORT_FILE"], os.environ["SPEECHTUNE_STOP_FILE"]
for epoch in range(1, 100):
    with open(report, "a") as fh:
        fh.write(json.dumps({"epoch": epoch, "wer": 1.0 / epoch}) + "\\n")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if os.path.exists(stop):
            open(os.path.join(os.environ["SPEECHTUNE_TRIAL_DIR"], "saved.txt"), "w").write(str(epoch))
            sys.exit(0)
        time.sleep(0.02)
"""


def test_a_pruned_script_that_watches_the_stop_file_ends_by_itself(tmp_path: Path) -> None:
    script = tmp_path / "stop_aware.py"
    script.write_text(STOP_AWARE)
    obj = objective([sys.executable, str(script)], stop_grace_s=30.0)
    t0 = time.monotonic()
    out = obj({}, Recorder(stop_at=2), tmp_path / "t8", seed=0)
    assert out.status == "stopped"
    assert out.extra["exit_code"] == 0  # it stopped itself: no SIGTERM
    assert (tmp_path / "t8" / "saved.txt").read_text() == "2"
    assert time.monotonic() - t0 < 20


def test_base_file_overrides_and_python_placeholder(tmp_path: Path) -> None:
    obj = CommandObjective(
        Spec(["{python}", "-c", "print(1)", "{config}"], overrides="--{key}={value}"),
        {"model": {"layers": 2, "width": 8}},
        overrides={"model.width": 16},
        config_format="json",
    )
    argv = obj.prepare({"optim.lr": 0.5}, tmp_path, seed=1)
    assert argv[0] == sys.executable
    assert argv[3:] == [str(tmp_path / "config.json"), "--model.width=16", "--optim.lr=0.5"]
    assert json.loads((tmp_path / "config.json").read_text()) == {
        "model": {"layers": 2, "width": 16},
        "optim": {"lr": 0.5},
    }
    assert json.loads((tmp_path / "command.json").read_text())["argv"] == argv


def test_render_argv_placeholders_and_override_templates(tmp_path: Path) -> None:
    config = {
        "optim.lr": 0.001,
        "model.encoder": "lstm",
        "train.bucketed": True,
        "data.hours": None,
    }
    argv = render_argv(
        [
            "python",
            "train.py",
            "--config",
            "{config}",
            "--out={trial_dir}/x",
            "--seed",
            "{seed}",
            '{"k": 1}',
        ],
        config,
        "--{key}={value}",
        config_path=tmp_path / "config.yaml",
        trial_dir=tmp_path,
        seed=42,
    )
    assert argv == [
        "python",
        "train.py",
        "--config",
        str(tmp_path / "config.yaml"),
        f"--out={tmp_path}/x",
        "--seed",
        "42",
        '{"k": 1}',  # braces other than the three placeholders are left alone
        "--optim.lr=0.001",
        "--model.encoder=lstm",
        "--train.bucketed=true",
        "--data.hours=null",
    ]
    two = render_argv(
        ["run"],
        {"a.b": "x y"},
        "--{key} {value}",
        config_path=tmp_path,
        trial_dir=tmp_path,
        seed=0,
    )
    assert two == ["run", "--a.b", "x y"]


def test_overrides_reach_the_child(tmp_path: Path) -> None:
    obj = objective(
        [sys.executable, str(SCRIPTS / "echo_args.py"), "{seed}"], overrides="{key}={value}"
    )
    out = obj({"optim.lr": 0.25, "model.num_layers": 3}, NullReporter(), tmp_path / "t7", seed=9)
    assert out.status == "complete", out.reason
    assert json.loads((tmp_path / "t7" / "argv.json").read_text()) == [
        "9",
        "optim.lr=0.25",
        "model.num_layers=3",
    ]


def test_reporter_exception_still_kills_the_command(tmp_path: Path) -> None:
    def explode(epoch: int, metrics: dict) -> bool:
        raise RuntimeError("pruner broke")

    base = {**BASE, "train": {"epochs": 50}, "delay": 0.3}
    obj = objective([sys.executable, str(SCRIPTS / "report_epochs.py"), "{config}"], base)
    out = obj({}, CallbackReporter(explode), tmp_path / "t8", seed=0)
    assert out.status == "error" and "RuntimeError: pruner broke" in out.reason
    assert not group_alive(out.extra["pgid"])
    assert (tmp_path / "t8" / "error.log").is_file()


# ---------------------------------------------------------------------------------------------
# speechtune.report
# ---------------------------------------------------------------------------------------------
def test_report_helper_imports_nothing_heavy() -> None:
    code = (
        "import speechtune._report_file, speechtune, sys;"
        "assert speechtune.report is speechtune._report_file.report, 'speechtune must export report';"
        "assert 'torch' not in sys.modules and 'optuna' not in sys.modules and 'numpy' not in sys.modules, "
        "sorted(m for m in sys.modules if m in ('torch', 'optuna', 'numpy'))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr


def test_report_appends_json_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.jsonl"
    monkeypatch.setenv("SPEECHTUNE_REPORT_FILE", str(path))
    _report_file.report(1, wer=0.5, steps=10)
    _report_file.report(epoch=None, final=True, wer=0.4)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [
        {"epoch": 1, "wer": 0.5, "steps": 10},
        {"epoch": None, "wer": 0.4, "final": True},
    ]


def test_report_validates_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEECHTUNE_REPORT_FILE", str(tmp_path / "m.jsonl"))
    with pytest.raises(ValueError, match="'wer' must be finite"):
        _report_file.report(1, wer=float("nan"))
    with pytest.raises(TypeError, match="'wer' must be a number"):
        _report_file.report(1, wer="0.3")
    with pytest.raises(TypeError, match="'ok' must be a number"):
        _report_file.report(1, ok=True)
    with pytest.raises(TypeError, match="epoch must be an int"):
        _report_file.report(1.5, wer=0.3)
    assert not (tmp_path / "m.jsonl").exists()


def test_report_without_tuner_warns_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("SPEECHTUNE_REPORT_FILE", raising=False)
    monkeypatch.setattr(_report_file, "_warned", False)
    _report_file.report(1, wer=0.5)
    _report_file.report(2, wer=0.4)
    err = capsys.readouterr().err
    assert err.count("SPEECHTUNE_REPORT_FILE is not set") == 1


class CtrlC:
    """A reporter interrupted by the user (Ctrl-C arrives while the tuner handles an epoch)."""

    def report(self, epoch: int, **metrics: float) -> bool:
        raise KeyboardInterrupt


def test_ctrl_c_never_leaves_the_command_running(tmp_path: Path) -> None:
    script = tmp_path / "stop_aware.py"
    script.write_text(STOP_AWARE)  # would run for minutes if left alone
    obj = objective([sys.executable, str(script)])
    with pytest.raises(KeyboardInterrupt):
        obj({}, CtrlC(), tmp_path / "t9", seed=0)
    record = json.loads((tmp_path / "t9" / "command.json").read_text())  # written before the start
    assert record["argv"][1] == str(script)
    alive = [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(script) in _cmdline(p)]
    assert alive == []


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_espnet_style_overrides_and_yaml_safe_floats(tmp_path: Path) -> None:
    argv = render_argv(
        ["asr_train"],
        {"optim_conf.lr": 1e-05, "batch_size": 8},
        "--{key_head} {key_tail}={value}",
        config_path=tmp_path / "c.yaml",
        trial_dir=tmp_path,
        seed=0,
    )
    assert argv == ["asr_train", "--optim_conf", "lr=1.0e-05", "--batch_size", "batch_size=8"]
    # PyYAML (YAML 1.1, as ESPnet and hyperpyyaml parse values) reads it back as a float
    assert yaml.safe_load(argv[2].split("=")[1]) == pytest.approx(1e-05)
