"""A real 2-node Ray cluster on this machine (`ray start --head` + `ray start --address`): kill the
worker node (its raylet and everything under it) mid-trial; the trial resumes from its last
checkpoint on the head node and the study finishes with every trial complete.

Skipped when Ray is not importable, except with SPEECHTUNE_REQUIRE_SERVICES=1 (CI), where it fails.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from speechtune.tuning.objectives import CONTINUE_MARKER, FunctionObjective
from speechtune.tuning.spec import RaySpec, build_spec
from tests.helpers.services import require_ray_tune

require_ray_tune()
import psutil  # noqa: E402
import ray  # noqa: E402

from tests.helpers.paths import REPO  # noqa: E402

pytestmark = [pytest.mark.services, pytest.mark.faults]

RAY = str(Path(sys.executable).with_name("ray"))
EPOCHS = 8


def slow_epochs(config: dict, reporter, trial_dir: Path) -> dict:
    """EPOCHS epochs of 0.5 s; continues after the epoch saved in trial_dir when marked to continue.

    Appends (pid, parent pids, first epoch) of each attempt to ``attempts/<trial>.jsonl``, so the
    test can tell on which node (under which raylet) each attempt ran and where it started.
    """
    state = trial_dir / "state.json"
    start = (
        json.loads(state.read_text())["epoch"] + 1 if (trial_dir / CONTINUE_MARKER).exists() else 1
    )
    attempts = trial_dir.parent.parent / "attempts" / f"{trial_dir.name}.jsonl"
    attempts.parent.mkdir(parents=True, exist_ok=True)
    with attempts.open("a") as fh:
        ancestors = [
            p.pid for p in psutil.Process().parents()
        ]  # a worker process runs under its node's raylet
        fh.write(json.dumps({"pid": os.getpid(), "ancestors": ancestors, "start": start}) + "\n")
    for epoch in range(start, EPOCHS + 1):
        time.sleep(0.5)
        state.write_text(json.dumps({"epoch": epoch}))
        reporter.report(epoch, wer=config["x"] + 1.0 / epoch)
    return {"wer": config["x"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _cluster_processes(temp_dir: str) -> list[psutil.Process]:
    """Every process of the cluster this test started: those whose command line names its ``temp_dir``."""
    out = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            continue
        if temp_dir in cmd:
            out.append(proc)
    return out


def _raylets(temp_dir: str) -> list[psutil.Process]:
    """The raylet processes of the cluster using ``temp_dir`` (one per node)."""
    return [p for p in _cluster_processes(temp_dir) if "raylet" in (p.info["name"] or "")]


def _kill_tree(proc: psutil.Process) -> None:
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:  # gone already (a parent's kill took it)
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch):
    """Head (1 CPU) + worker node (1 CPU) on 127.0.0.1 with a private temp dir; always stopped."""
    temp_dir = tempfile.mkdtemp(
        prefix="st-ray-", dir="/tmp"
    )  # short: Ray's socket paths have a length limit
    port = _free_port()
    # Ray's token authentication with a token of this test (not ~/.ray/auth_token): nodes and driver share it.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    for key, value in auth.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    try:
        head = _ray(
            "start",
            "--head",
            "--port",
            str(port),
            "--num-cpus",
            "1",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--node-ip-address",
            "127.0.0.1",
            "--temp-dir",
            temp_dir,
            env=env,
        )
        assert head.returncode == 0, head.stdout + head.stderr
        head_raylets = {p.pid for p in _raylets(temp_dir)}
        worker = _ray(
            "start",
            "--address",
            f"127.0.0.1:{port}",
            "--num-cpus",
            "1",
            "--node-ip-address",
            "127.0.0.1",
            "--disable-usage-stats",
            env=env,
        )
        assert worker.returncode == 0, worker.stdout + worker.stderr
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_raylets(temp_dir)) < 2:
            time.sleep(0.2)
        worker_raylets = [p for p in _raylets(temp_dir) if p.pid not in head_raylets]
        assert len(worker_raylets) == 1, "the worker node's raylet did not start"
        yield {
            "address": f"127.0.0.1:{port}",
            "worker_raylet": worker_raylets[0],
            "temp_dir": temp_dir,
        }
    finally:
        if ray.is_initialized():
            ray.shutdown()
        # Only this cluster's processes: Ray's own forced stop would end every Ray cluster on the machine.
        for p in _cluster_processes(temp_dir):
            _kill_tree(p)


def _spec():
    spec = build_spec(
        {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        study_name="cluster",
        n_trials=2,
        sampler="random",
        pruner="none",
        seed=0,
    )
    return dataclasses.replace(
        spec, ray=RaySpec(max_t=EPOCHS, max_failures=3, max_concurrent_trials=2)
    )


def test_worker_node_dies_and_its_trial_resumes_on_the_head(cluster: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    raylet = cluster["worker_raylet"]
    # The driver is a process of its own: Ray reads its authentication settings once per process.
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.tuning.backends.test_ray_cluster",
            str(run_dir),
            cluster["address"],
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed = None
    try:
        deadline = time.monotonic() + 120
        attempts = run_dir / "attempts"
        while killed is None and time.monotonic() < deadline:
            assert driver.poll() is None, driver.stdout.read()
            for f in sorted(attempts.glob("*.jsonl")) if attempts.is_dir() else []:
                rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
                state = run_dir / "trials" / f.stem / "state.json"
                if (
                    rows
                    and raylet.pid in rows[0]["ancestors"]
                    and state.exists()
                    and json.loads(state.read_text())["epoch"] >= 2
                ):
                    killed = f.stem
                    _kill_tree(
                        raylet
                    )  # the worker node dies: its raylet and every process under it
                    break
            time.sleep(0.1)
        assert killed, "no trial ran on the worker node within 120 s"
        out, _ = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
    assert driver.returncode == 0, out
    study = optuna.load_study(study_name="cluster", storage=f"sqlite:///{run_dir / 'study.db'}")
    trials = study.trials
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials), [
        t.user_attrs["reason"] for t in trials
    ]
    victim = next(t for t in trials if t.user_attrs["ray_trial_id"] == killed)
    assert victim.user_attrs["ray_failures"] >= 1
    rows = [
        json.loads(line)
        for line in (run_dir / "attempts" / f"{killed}.jsonl").read_text().splitlines()
    ]
    assert rows[0]["start"] == 1 and raylet.pid in rows[0]["ancestors"]
    assert raylet.pid not in rows[-1]["ancestors"]  # resumed on the other (head) node...
    assert rows[-1]["start"] > 1  # ...from its checkpoint, not from scratch
    assert [r["epoch"] for r in victim.user_attrs["history"]] == list(range(1, EPOCHS + 1))


if __name__ == "__main__":  # the driver of the test above
    from speechtune.tuning.backends import run_study
    from speechtune.tuning.backends.ray import RayBackend

    run_study(
        _spec(),
        FunctionObjective(slow_epochs),
        Path(sys.argv[1]),
        backend=RayBackend(address=sys.argv[2]),
        progress=False,
    )
