"""What the AN4/FSDD benchmark scripts share: ``speechtune`` argv lists, a pool of training
processes, a study run that resumes, and mean ± standard error.

Every run goes through the CLI (argv lists, no shell), from the checkout's root, with its output
in a log file beside its run directory; a run or study that finished is never run again, so an
interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Flags:
    """The device, thread and cache flags every ``speechtune`` run of a benchmark shares."""

    device: str = "cpu"
    threads: int = 1
    cache_dir: str = ".cache/speechtune"


def speechtune_argv(
    command: str, flags: Flags, *rest: str, threads: int | None = None
) -> list[str]:
    """``python -m speechtune.cli COMMAND REST...`` with ``flags`` (``threads`` overrides theirs)."""
    return [
        sys.executable, "-m", "speechtune.cli", command, *rest, "--device", flags.device,
        "--threads", str(threads or flags.threads), "--cache-dir", flags.cache_dir, "--quiet",
    ]  # fmt: skip


def where(path: Path) -> str:
    """``path`` relative to the checkout when inside it (records carry no machine paths)."""
    path = path.resolve()
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def mean_se(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (nan for one value)."""
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def train_pool(runs: Sequence[tuple[list[str], Path]], parallel: int) -> None:
    """Run each ``(argv, run_dir)`` whose run dir has no ``metrics.json``, ``parallel`` at a time.

    A run's output goes to ``<run_dir>.log``; a failed run is reported, not raised, so that the
    others finish (the caller sees its missing metrics.json).
    """
    pending = [r for r in runs if not (r[1] / "metrics.json").is_file()]
    running: list[tuple[subprocess.Popen[bytes], Path]] = []
    while pending or running:
        while pending and len(running) < parallel:
            argv, run_dir = pending.pop(0)
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            with (run_dir.parent / f"{run_dir.name}.log").open("wb") as log:
                running.append((subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=log), run_dir))
        for proc, run_dir in list(running):
            if proc.poll() is not None:
                running.remove((proc, run_dir))
                print(f"{where(run_dir)}: exit {proc.returncode}", flush=True)
        if running:
            try:
                running[0][0].wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass


def run_study(
    flags: Flags, tuning_yaml: Path, run_dir: Path, n_jobs: int, sets: Sequence[str] = ()
) -> float | None:
    """Run (or resume) a ``speechtune tune`` study into ``run_dir`` until it has ``best.yaml``.

    Returns its wall seconds, or ``None`` when it had finished before (nothing was run). Output
    goes to ``<run_dir>.log``.
    """
    best = run_dir / "best.yaml"
    if best.is_file():
        return None
    argv = speechtune_argv(
        "tune", flags, "--config", str(tuning_yaml), "--run-dir", str(run_dir),
        "--n-jobs", str(n_jobs), "--no-tracking",
    )  # fmt: skip
    if sets:
        argv += ["--set", *sets]
    if (run_dir / "study.db").exists() or (run_dir / "journal.log").exists():
        argv.append("--resume")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with (run_dir.parent / f"{run_dir.name}.log").open("ab") as log:
        subprocess.run(argv, cwd=ROOT, check=True, stdout=log, stderr=log)
    if not best.is_file():
        raise SystemExit(f"{run_dir}: the study ended without a best.yaml")
    return time.perf_counter() - t0
