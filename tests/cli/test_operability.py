"""Operability of ``speechtune tune``: plain progress lines, Ctrl-C, the weak-ranking warning,
one flag name per concept (old names still accepted), and journal URLs read alike everywhere.

Each study here runs a tiny ``objective.kind: python`` function in a real ``speechtune``
subprocess, so what is checked is what a user sees: exit codes, stdout/stderr, the study's
storage and the files of the run directory.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from speechtune.cli._main import build_parser
from speechtune.tuning.study import (
    INTERRUPTED_REASON,
    interruptible_trials,
    load_study,
    make_storage,
    weak_ranking_warnings,
)
from speechtune.tuning.study._storage import journal_file
from tests.helpers.paths import REPO
from tests.helpers.workers import speechtune_argv

#: The objective: each call claims ``started_<k>`` in $OP_TEST_DIR (k = 0, 1, ... in call
#: order, also across threads). Every call but the first then blocks, reporting an epoch every
#: 50 ms (where a parallel trial learns of Ctrl-C), until interrupted (at most 120 s), unless
#: $OP_TEST_FAST is set. The value is $OP_TEST_BASE + x / 100 (a base of 0.95: near chance).
FUNCTION = textwrap.dedent(
    """
    import os
    import time
    from pathlib import Path

    def objective(config, reporter):
        here = Path(os.environ["OP_TEST_DIR"])
        k = 0
        while True:
            try:
                with open(here / f"started_{k}", "x") as fh:
                    fh.write(repr(config["x"]))
                break
            except FileExistsError:
                k += 1
        value = float(os.environ.get("OP_TEST_BASE", "0.2")) + config["x"] / 100
        if k >= 1 and not os.environ.get("OP_TEST_FAST"):
            deadline = time.monotonic() + 120
            epoch = 0
            while time.monotonic() < deadline:
                epoch += 1
                reporter.report(epoch, wer=value + 1.0)
                time.sleep(0.05)
            return {"wer": value}
        for epoch in (1, 2):
            reporter.report(epoch, wer=value + 0.1 / epoch)
        return {"wer": value}
    """
)

#: Bounds of the subprocesses (python startup + Optuna import take a few seconds on 2 cores).
RUN_TIMEOUT_S = 120


def _spec(tmp_path: Path, n_trials: int = 3) -> Path:
    (tmp_path / "op_objective.py").write_text(FUNCTION)
    spec = {
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "study": {
            "name": "op",
            "sampler": "random",
            "pruner": "none",
            "n_trials": n_trials,
            "seed": 3,
        },
        "objective": {
            "kind": "python",
            "metric": "wer",
            "seeds": [0],
            "function": "op_objective:objective",
        },
    }
    path = tmp_path / "tuning.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OP_TEST_")}
    return {**env, "OP_TEST_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1", **extra}


def _tune(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        speechtune_argv("tune", "--config", str(tmp_path / "tuning.yaml"), "--no-tracking", *args),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=REPO,
        env=_env(tmp_path, **env),
    )


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll for ``path`` (bounded); fail early if ``proc`` ended first."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the study ended (rc {proc.returncode}) before {path} appeared")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_ctrl_c_records_the_running_trials_as_interrupted_and_resume_reruns_them(
    tmp_path: Path, n_jobs: int
) -> None:
    # n_jobs 1: the trial runs in the main thread, where Ctrl-C lands. n_jobs 2: trials run in
    # Optuna's worker threads, and each must stop too rather than run to its end.
    _spec(tmp_path, n_trials=3)
    run_dir = tmp_path / "run"
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    argv = speechtune_argv(
        "tune", "--config", str(tmp_path / "tuning.yaml"), "--run-dir", str(run_dir),
        "--no-tracking", "--quiet", "--n-jobs", str(n_jobs),
    )  # fmt: skip
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(
            argv, stdout=fo, stderr=fe, cwd=REPO, env=_env(tmp_path), start_new_session=True
        )
    try:
        # Trial 0 finishes at once; the next trial(s) block: interrupt them while they run.
        _wait_for(tmp_path / f"started_{n_jobs}", proc, RUN_TIMEOUT_S)
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends (to this process only)
        rc = proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    stderr = err.read_text()
    assert rc == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "Traceback" not in out.read_text()
    study = load_study(run_dir)
    by_number = {t.number: t for t in study.trials}
    # With 2 threads either of the first two trials may be the quick one: ask the storage.
    (done,) = study.get_trials(states=(TrialState.COMPLETE,))
    blocked = sorted(n for n in by_number if n != done.number)
    assert len(blocked) == n_jobs  # no trial started after Ctrl-C
    assert f"interrupted trials: {', '.join(map(str, blocked))}" in stderr
    assert f"best trial {done.number}" in out.read_text()  # the summary of what finished
    for number in blocked:
        interrupted = by_number[number]
        assert interrupted.state == TrialState.FAIL
        assert interrupted.user_attrs["reason"] == INTERRUPTED_REASON
        assert interrupted.user_attrs["status"] == "interrupted"
        assert interrupted.user_attrs["interrupted"] is True
    # Outputs of the finished trial are written; the interrupted ones are listed with the reason.
    assert yaml.safe_load((run_dir / "best.yaml").read_text())
    with open(run_dir / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(INTERRUPTED_REASON in " ".join(map(str, r.values())) for r in rows) == len(blocked)

    # --resume re-runs each interrupted trial first (same params, marked as its retry) ...
    resumed = _tune(tmp_path, "--run-dir", str(run_dir), "--quiet", "--resume", OP_TEST_FAST="1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = load_study(run_dir)
    reruns = {t.system_attrs.get("failed_trial"): t for t in study.trials[1 + len(blocked) :]}
    assert sorted(n for n in reruns if n is not None) == blocked
    for number in blocked:
        rerun = reruns[number]
        assert rerun.state == TrialState.COMPLETE
        assert rerun.params == by_number[number].params
        assert "interrupted" not in rerun.user_attrs and rerun.user_attrs["status"] == "complete"
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    # ... once: resuming a finished study queues nothing again.
    again = _tune(tmp_path, "--run-dir", str(run_dir), "--quiet", "--resume", OP_TEST_FAST="1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(load_study(run_dir).trials) == len(study.trials)


def test_interruptible_trials_restores_the_sigint_handler() -> None:
    before = signal.getsignal(signal.SIGINT)
    with interruptible_trials():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before


# ---------------------------------------------------------------------------------------------
# progress lines, --threads, the weak-ranking warning
# ---------------------------------------------------------------------------------------------
def test_piped_output_has_a_line_per_trial_and_per_epoch_with_verbose(tmp_path: Path) -> None:
    _spec(tmp_path, n_trials=2)
    run = _tune(
        tmp_path, "--run-dir", str(tmp_path / "run"), "-v", "--threads", "1", OP_TEST_FAST="1"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stderr.splitlines()
    trial_lines = [line for line in lines if "speechtune.tuning: trial " in line]
    assert len(trial_lines) == 2
    # number, state, value, params (short) and duration, then the study's counts
    assert all(" complete value 0." in line and "[x=0." in line for line in trial_lines)
    assert all(" 0:00:0" in line and "done (" in line for line in trial_lines)
    epochs = [line for line in lines if "speechtune.tuning.epochs: trial " in line]
    assert len(epochs) == 4 and "trial 0 epoch 1: wer 0." in epochs[0]
    assert "warning:" not in run.stderr  # values spread and far from chance

    quiet = _tune(tmp_path, "--run-dir", str(tmp_path / "run2"), OP_TEST_FAST="1")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "speechtune.tuning: trial 1 complete" in quiet.stderr
    assert "epoch" not in quiet.stderr  # per-epoch lines only with -v


def test_tune_warns_at_the_end_when_every_trial_is_near_chance(tmp_path: Path) -> None:
    _spec(tmp_path, n_trials=3)
    run = _tune(
        tmp_path, "--run-dir", str(tmp_path / "run"), OP_TEST_FAST="1", OP_TEST_BASE="0.95"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("warning: every trial scored 0.95")
    assert "too weak to rank configs" in last


def test_weak_ranking_warnings_cover_near_chance_and_ties() -> None:
    assert weak_ranking_warnings([0.3, 0.5, 0.7]) == []
    assert "too weak" in weak_ranking_warnings([0.91, 0.99])[0]
    assert weak_ranking_warnings([0.95, 0.97], metric="loss") == []  # not an error rate
    tie = weak_ranking_warnings([0.41, 0.4101, 0.4105], metric="loss")
    assert tie and tie[0].startswith("all 3 trials scored within 0.001")
    assert weak_ranking_warnings([0.41, 0.4101]) == []  # two trials are not a pattern


def test_tune_threads_must_be_positive(tmp_path: Path) -> None:
    _spec(tmp_path)
    run = _tune(tmp_path, "--run-dir", str(tmp_path / "run"), "--threads", "0")
    assert run.returncode == 1
    assert (
        run.stderr.strip().splitlines()[-1] == "error: ValueError: --threads must be >= 1, got 0"
    )


# ---------------------------------------------------------------------------------------------
# one flag name per concept; old names still work
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "dest", "value"),
    [
        (["train", "--run-dir", "runs/a"], "run_dir", "runs/a"),
        (["train", "--out", "runs/a"], "run_dir", "runs/a"),
        (["train"], "run_dir", "runs/train"),
        (["worker", "--study-name", "s", "--storage", "journal"], "study", "s"),
        (["worker", "--study", "s", "--storage", "journal"], "study", "s"),
        (["correlate", "runs/x", "--study-name", "s"], "study", "s"),
        (["correlate", "runs/x", "--study", "s"], "study", "s"),
        (["tune", "--config", "t.yaml", "--threads", "2"], "threads", 2),
        (["worker", "--study-name", "s", "--storage", "journal", "--threads", "2"], "threads", 2),
    ],
)
def test_new_and_deprecated_flag_names_fill_the_same_option(
    argv: list[str], dest: str, value: object, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    if "--out" in argv or "--study" in argv:
        assert "is deprecated; use --" in err
    else:
        assert err == ""


@pytest.mark.parametrize(
    ("command", "shown", "hidden"),
    [
        ("train", "--run-dir", "--out"),
        ("worker", "--study-name", "--study "),
        ("correlate", "--study-name", "--study "),
    ],
)
def test_deprecated_names_are_hidden_from_help(
    command: str, shown: str, hidden: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    assert shown in text and hidden not in text


def test_worker_joins_with_old_and_new_flags_and_journal_in_its_run_dir(tmp_path: Path) -> None:
    # `tune --storage journal` keeps the study in RUN_DIR/journal.log; a worker given the same
    # run dir and `--storage journal` joins that file (with --study-name, or the old --study).
    _spec(tmp_path, n_trials=1)
    run_dir = tmp_path / "run"
    first = _tune(tmp_path, "--run-dir", str(run_dir), "--storage", "journal", OP_TEST_FAST="1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (run_dir / "journal.log").is_file()
    for flag, target in (("--study-name", "2"), ("--study", "3")):
        worker = subprocess.run(
            speechtune_argv(
                "worker", flag, "op", "--storage", "journal", "--run-dir", str(run_dir),
                "--n-trials", target, "--quiet", "--no-tracking", "--no-report",
            ),
            capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=tmp_path,
            env=_env(tmp_path, OP_TEST_FAST="1"),
        )  # fmt: skip
        assert worker.returncode == 0, worker.stderr[-3000:]
        assert ("deprecated" in worker.stderr) == (flag == "--study")
    assert len(load_study(run_dir).get_trials(states=(TrialState.COMPLETE,))) == 3


# ---------------------------------------------------------------------------------------------
# journal URLs: one URL names one file, whoever reads it
# ---------------------------------------------------------------------------------------------
def test_journal_urls_name_the_same_file_for_writers_and_readers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel").mkdir()
    assert journal_file("journal:///rel/a.log") == "rel/a.log"  # relative, as in SQLite URLs
    assert journal_file(f"journal:///{tmp_path}/b.log") == f"{tmp_path}/b.log"  # 4 slashes
    # Three slashes before a directory that exists only from the root: the absolute path.
    assert journal_file(f"journal://{tmp_path}/c.log") == f"{tmp_path}/c.log"
    with pytest.raises(ValueError, match="journal:///relative/path.log"):
        journal_file("journal://host/x.log")
    for url in ("journal:///rel/a.log", f"journal://{tmp_path}/c.log"):
        optuna.create_study(storage=make_storage(url, tmp_path / "unused"), study_name="j")
        assert load_study(url).study_name == "j"  # the reader of report/dashboard
    assert (tmp_path / "rel" / "a.log").is_file() and (tmp_path / "c.log").is_file()
