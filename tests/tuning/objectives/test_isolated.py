"""Trials in a child process (parallel trials without a shared GIL): the same result as in this
process, reports and pruning relayed, and a child that dies is a failed trial, not a dead study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speechtune.data import PreparedData
from speechtune.training import CallbackReporter, NullReporter
from speechtune.tuning.objectives import RecipeObjective, TrialOutcome
from speechtune.tuning.objectives._isolated import run_isolated
from speechtune.tuning.study._trial import device_slots
from tests.tuning.objectives.test_objectives import recipe_objective, small_data  # noqa: F401


class _Dies:
    """Kills its own process after one report (a child the OOM killer took)."""

    def __call__(self, config: dict, reporter, trial_dir: Path, seed: int) -> TrialOutcome:
        reporter.report(1, wer=0.5)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


class _Raises:
    def __call__(self, config: dict, reporter, trial_dir: Path, seed: int) -> TrialOutcome:
        raise RuntimeError(f"bad value {config['x']}")


class _Counts:
    """Reports epochs until told to stop; returns what it saw."""

    def __call__(self, config: dict, reporter, trial_dir: Path, seed: int) -> TrialOutcome:
        history = []
        for epoch in range(1, config["epochs"] + 1):
            history.append({"epoch": epoch, "wer": 1.0 / epoch})
            if reporter.report(epoch, wer=1.0 / epoch):
                return TrialOutcome("stopped", "told to stop", history=history)
        return TrialOutcome("complete", "done", metrics={"wer": 1.0 / epoch}, history=history)


def test_an_isolated_recipe_trial_equals_the_in_process_one(
    small_data: PreparedData,  # noqa: F811
    tmp_path: Path,
) -> None:
    config = {"model.d_model": 48, "optim.lr": 0.004, "train.epochs": 2}
    here = recipe_objective(small_data, tmp_path)
    there = recipe_objective(small_data, tmp_path)
    there.isolate = True
    seen: list[int] = []
    a = here(config, NullReporter(), tmp_path / "here", seed=3)
    b = there(config, CallbackReporter(lambda e, m: seen.append(e)), tmp_path / "there", seed=3)
    assert a.status == b.status == "complete", (a.reason, b.reason)
    assert seen == [1, 2]
    assert b.metrics["wer"] == pytest.approx(a.metrics["wer"])
    assert b.metrics["dev_loss"] == pytest.approx(a.metrics["dev_loss"], rel=1e-5)
    assert (tmp_path / "there" / "last.pt").is_file()


def test_reports_and_stop_answers_cross_the_process_boundary(tmp_path: Path) -> None:
    seen: list[tuple[int, float]] = []

    def stop_at_three(epoch: int, metrics: dict) -> bool:
        seen.append((epoch, metrics["wer"]))
        return epoch >= 3

    out = run_isolated(_Counts(), {"epochs": 9}, CallbackReporter(stop_at_three), tmp_path, 0)
    assert out.status == "stopped"
    assert seen == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert [r["epoch"] for r in out.history] == [1, 2, 3]


def test_a_child_that_dies_or_raises_is_a_failed_trial(tmp_path: Path) -> None:
    died = run_isolated(_Dies(), {}, NullReporter(), tmp_path, 0)
    assert died.status == "error" and "signal 9" in died.reason
    raised = run_isolated(_Raises(), {"x": 7}, NullReporter(), tmp_path, 0)
    assert raised.status == "error" and "RuntimeError: bad value 7" in raised.reason


def test_an_exception_of_the_parents_reporter_stops_the_child_and_propagates(
    tmp_path: Path,
) -> None:
    def interrupted(epoch: int, metrics: dict) -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_isolated(_Counts(), {"epochs": 1000}, CallbackReporter(interrupted), tmp_path, 0)


def test_parallel_recipe_trials_are_isolated_and_single_ones_are_not() -> None:
    obj = RecipeObjective({}, device="cpu")
    assert device_slots(obj, 1) is None
    slots = device_slots(obj, 2)
    assert slots is not None and slots(0).isolate and slots(1).num_threads >= 1
    assert not obj.isolate  # the caller's objective is left as it was


def test_a_child_that_cannot_start_is_a_failed_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """E.g. speechtune replaced on disk under a running study: the child exits at once."""
    import speechtune.tuning.objectives._isolated as isolated

    monkeypatch.setattr(isolated, "_CHILD_CODE", "import sys; sys.exit(3)")
    out = run_isolated(_Counts(), {"epochs": 2}, NullReporter(), tmp_path, 0)
    assert out.status == "error" and "exit code 3" in out.reason


class _WritesPidAndHangs:
    """Writes its process id next to the trial, then trains "forever" (until killed)."""

    def __call__(self, config: dict, reporter, trial_dir: Path, seed: int) -> TrialOutcome:
        (trial_dir / "child.pid").write_text(str(os.getpid()))
        time.sleep(600)
        raise AssertionError("not reached: the test kills its parent first")


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaped counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _poll(until, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until():
            return True
        time.sleep(0.1)
    return until()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_child_dies_with_its_killed_parent(tmp_path: Path) -> None:
    """A study driver killed by SIGKILL (no cleanup runs) leaves no trial training on, orphaned."""
    code = (
        "from pathlib import Path; from speechtune.training import NullReporter; "
        "from speechtune.tuning.objectives._isolated import run_isolated; "
        "from tests.tuning.objectives.test_isolated import _WritesPidAndHangs; "
        f"run_isolated(_WritesPidAndHangs(), {{}}, NullReporter(), Path({str(tmp_path)!r}), 0)"
    )
    root = Path(__file__).resolve().parents[3]
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=root)
    pid_file = tmp_path / "child.pid"
    child = 0
    try:
        assert _poll(pid_file.is_file, 60), "the child never started its trial"
        child = int(pid_file.read_text())
        assert not _gone(child)
        parent.kill()
        parent.wait(10)
        assert _poll(lambda: _gone(child), 15), f"child {child} outlived its parent"
    finally:  # only the processes this test started, by pid
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if child and not _gone(child):
            os.kill(child, signal.SIGKILL)
