"""``speechtune tune`` killed with SIGKILL mid-trial, twice, then resumed to the end; and two
drivers on one run directory.

Each study runs a tiny ``objective.kind: python`` function in a real ``speechtune tune``
subprocess. A trial whose number is at least the one in ``$RESUME_TEST_DIR/hang`` blocks after
its first epoch (and its "checkpoint" file) while that file exists (at most 120 s), so the test can kill the process while
that trial is RUNNING. Every wait polls the storage with a bound; every process is killed
(its process group) at the end, also on failure.
"""

from __future__ import annotations

import csv
import re
import textwrap
from pathlib import Path

import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState

from tests.helpers.workers import Procs, speechtune_argv, trials, wait_for

pytestmark = pytest.mark.faults

FUNCTION = textwrap.dedent(
    """
    import os
    import time
    from pathlib import Path

    def objective(config, reporter, trial_dir):
        hang = Path(os.environ["RESUME_TEST_DIR"]) / "hang"
        x = float(config["x"])
        reporter.report(1, wer=x + 0.1)
        Path(trial_dir).mkdir(parents=True, exist_ok=True)
        (Path(trial_dir) / "epoch1.ckpt").write_text(repr(x))  # what a retry continues from
        if hang.exists() and int(Path(trial_dir).name) >= int(hang.read_text()):
            deadline = time.monotonic() + 120
            while hang.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        reporter.report(2, wer=x)
        return {"wer": x}
    """
)

#: Bounds of the subprocesses (python startup + Optuna import take a few seconds on 2 cores).
TIMEOUT_S = 120

N_TRIALS = 6


def _spec(tmp_path: Path, **study: object) -> Path:
    (tmp_path / "resume_objective.py").write_text(FUNCTION)
    spec = {
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        # The random sampler with a seed: restarted with that seed, it proposes its first
        # configs again (what a resumed study must not do).
        "study": {
            "name": "rf",
            "sampler": "random",
            "pruner": "none",
            "n_trials": N_TRIALS,
            "seed": 3,
            **study,
        },
        "objective": {
            "kind": "python",
            "metric": "wer",
            "seeds": [0],
            "function": "resume_objective:objective",
        },
    }
    path = tmp_path / "tuning.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _tune(procs: Procs, name: str, tmp_path: Path, *extra: str):
    argv = speechtune_argv(
        "tune", "--config", str(tmp_path / "tuning.yaml"), "--run-dir", str(tmp_path / "run"),
        "--no-tracking", "--quiet", *extra,
    )  # fmt: skip
    return procs.start(name, argv, env={"RESUME_TEST_DIR": str(tmp_path)})


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'run' / 'study.db'}"


def _hung_trial(tmp_path: Path, number: int) -> FrozenTrial | None:
    """Trial ``number`` once it is RUNNING, past its first epoch, with its process recorded."""
    if not (tmp_path / "run" / "trials" / f"{number:04d}" / "epoch1.ckpt").exists():
        return None  # not yet: and reading a storage being created would race its schema set-up
    try:
        by_number = {t.number: t for t in trials(_url(tmp_path), "rf")}
    except Exception:  # the database or its tables may not exist yet
        return None
    t = by_number.get(number)
    if t is None or t.state != TrialState.RUNNING:
        return None
    return t if 1 in t.intermediate_values and "worker" in t.user_attrs else None


def _kill_mid_trial(procs: Procs, proc, tmp_path: Path, number: int) -> FrozenTrial:
    def hung() -> FrozenTrial | None:
        if proc.poll() is not None:
            raise AssertionError(f"tune exited with {proc.returncode}:\n{procs.log(proc)[-3000:]}")
        return _hung_trial(tmp_path, number)

    running = wait_for(hung, TIMEOUT_S, f"trial {number} to be running", 0.1)
    assert running.user_attrs["worker"].endswith(f":{proc.pid}")
    procs.kill(proc)  # SIGKILL to its process group: no handler runs, the trial stays RUNNING
    procs.wait(proc, 10)
    return running


def _params_key(t: FrozenTrial) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in t.params.items()))


def test_killed_twice_then_resumed_no_duplicates_retries_with_reasons(
    procs: Procs, tmp_path: Path
) -> None:
    _spec(tmp_path)
    (tmp_path / "hang").write_text("2")  # trials 0 and 1 complete, trial 2 blocks

    first = _tune(procs, "first", tmp_path)
    killed = _kill_mid_trial(procs, first, tmp_path, 2)
    before = {t.number: t for t in trials(_url(tmp_path), "rf")}
    done_before = {n: t for n, t in before.items() if t.state == TrialState.COMPLETE}
    assert sorted(done_before) == [0, 1]

    # Resumed at once (no wait for a heartbeat to go stale): trial 2's process is gone, so it is
    # failed and its config re-queued; the retry (trial 3) blocks too and is killed as well.
    second = _tune(procs, "second", tmp_path, "--resume")
    retry = _kill_mid_trial(procs, second, tmp_path, 3)
    assert retry.params == killed.params
    assert retry.system_attrs["retry_history"] == [2]
    second_log = procs.log(second)
    assert f"taking over the lock of process {first.pid}" in second_log, second_log[-3000:]
    assert f"trial 2: killed while running (process {first.pid} gone); re-queued (retry 1/2)" in (
        second_log
    )

    (tmp_path / "hang").unlink()
    third = _tune(procs, "third", tmp_path, "--resume")
    assert procs.wait(third, TIMEOUT_S) == 0, procs.log(third)[-3000:]

    after = {t.number: t for t in trials(_url(tmp_path), "rf")}
    # Every trial completed before the kills is kept as it was.
    for number, old in done_before.items():
        assert after[number].state == TrialState.COMPLETE
        assert after[number].values == old.values and after[number].params == old.params
    # The killed trial and its killed retry: FAIL, each with the reason and the retry it got.
    assert after[2].state == TrialState.FAIL and after[3].state == TrialState.FAIL
    assert after[2].user_attrs["status"] == "killed"
    assert after[2].user_attrs["reason"] == (
        f"killed while running (process {first.pid} gone); retry 1/2"
    )
    assert after[3].user_attrs["reason"] == (
        f"killed while running (process {second.pid} gone); retry 2/2"
    )
    # The second retry ran the same config to the end, from the dead trial's files.
    final = after[4]
    assert final.state == TrialState.COMPLETE and final.params == killed.params
    assert final.system_attrs["retry_history"] == [2, 3]
    assert final.system_attrs["failed_trial"] == 2
    assert final.user_attrs["resumed_from_trial"] == 3
    assert Path(final.user_attrs["trial_dir"], "epoch1.ckpt").read_text() == repr(
        killed.params["x"]
    )
    assert final.user_attrs["retry"] == "2/2"
    # No config was proposed twice: a config appears again only as a retry of its own chain.
    chains: dict[tuple, set[int]] = {}
    for t in after.values():
        root = t.system_attrs.get("failed_trial", t.number)
        chains.setdefault(_params_key(t), set()).add(root)
    assert all(len(roots) == 1 for roots in chains.values()), chains
    complete = [t for t in after.values() if t.state == TrialState.COMPLETE]
    assert len(complete) == N_TRIALS
    assert not [t for t in after.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # trials.csv gives every FAIL row its reason.
    with open(tmp_path / "run" / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    fail_rows = [r for r in rows if r["state"] == "FAIL"]
    assert [r["number"] for r in fail_rows] == ["2", "3"]
    assert all(re.fullmatch(r"killed while running \(process \d+ gone\); retry \d/2", r["reason"])
               for r in fail_rows), fail_rows  # fmt: skip


def test_a_killed_config_is_given_up_after_max_retries_with_a_warning(
    procs: Procs, tmp_path: Path
) -> None:
    _spec(tmp_path, n_trials=2, max_retries=0)
    (tmp_path / "hang").write_text("1")  # trial 0 completes, trial 1 blocks

    first = _tune(procs, "first", tmp_path)
    killed = _kill_mid_trial(procs, first, tmp_path, 1)
    (tmp_path / "hang").unlink()
    resumed = _tune(procs, "resumed", tmp_path, "--resume")
    assert procs.wait(resumed, TIMEOUT_S) == 0, procs.log(resumed)[-3000:]

    after = {t.number: t for t in trials(_url(tmp_path), "rf")}
    assert after[1].state == TrialState.FAIL
    assert after[1].user_attrs["reason"] == (
        f"killed while running (process {first.pid} gone); given up after 0 retries "
        "(study.max_retries)"
    )
    assert not [t for t in after.values() if t.system_attrs.get("failed_trial") == 1]
    assert [t.params == killed.params for t in after.values()].count(True) == 1
    warnings = [line for line in procs.log(resumed).splitlines() if "giving up" in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0], procs.log(resumed)[-3000:]
    assert "trial 1: killed while running" in warnings[0] and "study.max_retries: 0" in warnings[0]
    assert len([t for t in after.values() if t.state == TrialState.COMPLETE]) == 2


def test_a_second_tune_on_a_busy_run_dir_is_refused(procs: Procs, tmp_path: Path) -> None:
    _spec(tmp_path)
    (tmp_path / "hang").write_text("0")  # the first trial blocks: the first driver stays busy

    holder = _tune(procs, "holder", tmp_path)
    wait_for(lambda: _hung_trial(tmp_path, 0), TIMEOUT_S, "the first driver's trial to run")
    n_before = len(trials(_url(tmp_path), "rf"))

    second = _tune(procs, "second", tmp_path, "--resume")
    assert procs.wait(second, TIMEOUT_S) == 2, procs.log(second)[-3000:]
    lines = procs.log(second).strip().splitlines()
    assert len(lines) == 1, lines  # one line, no traceback
    assert lines[0].startswith(f"error: run directory {tmp_path / 'run'} is in use"), lines
    assert f"pid {holder.pid} on " in lines[0], lines
    assert len(trials(_url(tmp_path), "rf")) == n_before  # it touched nothing
    assert holder.poll() is None  # and the holder runs on
