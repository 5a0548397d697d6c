"""Run a command study from the CLI as a user would, and read back its trials (integration tests)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from speechtune.tuning.study import TrialRecord, load_study
from tests.helpers.workers import speechtune_argv


def run_study(
    config: Path, run_dir: Path, *, timeout: float, env: Mapping[str, str] | None = None
) -> list[TrialRecord]:
    """``speechtune tune --config CONFIG --run-dir RUN_DIR --quiet --no-tracking``; its trials.

    Fails the test (with the tail of the output) when the command does not exit 0.
    """
    tune = subprocess.run(
        speechtune_argv(
            "tune", "--config", str(config), "--run-dir", str(run_dir), "--quiet", "--no-tracking"
        ),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else dict(env),
    )
    assert tune.returncode == 0, tune.stdout[-3000:] + tune.stderr[-3000:]
    return [TrialRecord.from_trial(t) for t in load_study(run_dir).trials]


def trial_detail(rec: TrialRecord) -> str:
    """A trial's reason and the tail of its output: what an assertion about it should show."""
    log = Path(rec.trial_dir or "") / "stdout.log"
    return f"trial {rec.number}: {rec.reason}\n" + (
        log.read_text()[-3000:] if log.exists() else ""
    )
