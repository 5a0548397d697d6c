"""GPU packing: slots shared by real processes, memory-aware leasing, the monitor, local workers.

This machine has no GPU: GPU indices are given explicitly and free memory comes from an
injected probe; NVML is either absent (the real no-driver path) or a small fake module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from speechtune.devices import GpuMonitor
from speechtune.reports import write_study_outputs
from speechtune.tuning.backends import (
    DEFAULT_SLOTS_PER_GPU,
    GpuSlots,
    PackedBackend,
    SlottedObjective,
    run_study,
)
from speechtune.tuning.backends import _packed as _local_workers
from speechtune.tuning.objectives import FunctionObjective, TrialOutcome
from tests.helpers.paths import REPO

ROOT = REPO


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
    }


def _wait_for(path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# slots shared by processes
# ---------------------------------------------------------------------------------------------
_HOLDER = textwrap.dedent(
    """
    import json, sys, time
    from speechtune.tuning.backends import GpuSlots
    lock_dir, out, start_at, hold_s, rounds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
    slots = GpuSlots(lock_dir, slots_per_gpu=2, gpus=[0], free_mb=lambda g: None, poll_s=0.02)
    while time.time() < start_at:  # every process starts contending at the same moment
        time.sleep(0.005)
    rows = []
    for _ in range(rounds):
        with slots.acquire(timeout_s=60) as lease:
            t0 = time.time()
            time.sleep(hold_s)
            rows.append([t0, time.time(), lease.slot])
    with open(out, "w") as fh:
        json.dump(rows, fh)
    """
)


def test_two_slots_four_processes_never_more_than_two_holders(tmp_path: Path) -> None:
    lock_dir = tmp_path / "locks"
    start_at = time.time() + 3.0  # after the four interpreters have imported speechtune
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _HOLDER,
                str(lock_dir),
                str(tmp_path / f"p{i}.json"),
                str(start_at),
                "0.25",
                "3",
            ],
            env=_env(),
        )
        for i in range(4)
    ]
    try:
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    assert codes == [0, 0, 0, 0]
    intervals = [
        tuple(row) for i in range(4) for row in json.loads((tmp_path / f"p{i}.json").read_text())
    ]
    assert len(intervals) == 12
    # Sweep over start/end events: the number of holders at any instant.
    events = sorted(
        [(t0, 1) for t0, _, _ in intervals] + [(t1, -1) for _, t1, _ in intervals],
        key=lambda e: (e[0], e[1]),
    )
    holders, most = 0, 0
    for _, delta in events:
        holders += delta
        most = max(most, holders)
    assert most == 2, f"at most 2 slot holders expected, saw {most}"
    # The same slot is never held by two processes at once.
    for slot in (0, 1):
        spans = sorted((t0, t1) for t0, t1, s in intervals if s == slot)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), (
            f"slot {slot} double-booked: {spans}"
        )
    # 12 holds of 0.25 s on 2 slots need >= 1.5 s; with packing well under the 3 s of one slot.
    span = max(t1 for _, t1, _ in intervals) - min(t0 for t0, _, _ in intervals)
    assert 1.4 < span < 2.9


@pytest.mark.faults
def test_sigkilled_holder_releases_its_slot(tmp_path: Path) -> None:
    lock_dir, marker = tmp_path / "locks", tmp_path / "held"
    holder = textwrap.dedent(
        """
        import sys, time, pathlib
        from speechtune.tuning.backends import GpuSlots
        lease = GpuSlots(sys.argv[1], slots_per_gpu=1, gpus=[0], free_mb=lambda g: None).acquire(timeout_s=10)
        pathlib.Path(sys.argv[2]).write_text(lease.device)
        time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder, str(lock_dir), str(marker)], env=_env())
    try:
        _wait_for(marker)
        slots = GpuSlots(lock_dir, slots_per_gpu=1, gpus=[0], free_mb=lambda g: None, poll_s=0.02)
        assert marker.read_text() == "cuda:0"
        assert slots.try_acquire() is None  # held by the other process
        assert slots.busy_slots(0) == 1
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        with slots.acquire(timeout_s=5) as lease:  # the kernel dropped the dead process's lock
            assert (lease.device, lease.gpu, lease.slot) == ("cuda:0", 0, 0)
            assert lease.held
        assert not lease.held
        assert slots.busy_slots(0) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_threads_of_one_process_contend_too(tmp_path: Path) -> None:
    slots = GpuSlots(tmp_path, slots_per_gpu=1, gpus=[0], free_mb=lambda g: None)
    with slots.acquire(timeout_s=1):
        assert slots.try_acquire() is None  # flock locks belong to an open file, not a process
    assert slots.try_acquire() is not None


# ---------------------------------------------------------------------------------------------
# memory awareness
# ---------------------------------------------------------------------------------------------
def test_gpu_below_the_memory_need_is_skipped(tmp_path: Path) -> None:
    free = {0: 500.0, 1: 4000.0}
    slots = GpuSlots(
        tmp_path,
        slots_per_gpu=2,
        mem_per_trial_mb=1000,
        gpus=[0, 1],
        free_mb=free.get,
        poll_s=0.02,
    )
    a, b = slots.acquire(timeout_s=1), slots.acquire(timeout_s=1)
    assert [(a.device, a.slot), (b.device, b.slot)] == [("cuda:1", 0), ("cuda:1", 1)]
    with pytest.raises(TimeoutError) as err:
        slots.acquire(timeout_s=0.3)
    msg = str(err.value)
    assert "no GPU slot free after 0.3 s" in msg
    assert "cuda:0 (0/2 slots busy, 500 MiB free)" in msg
    assert "cuda:1 (2/2 slots busy, 4000 MiB free)" in msg
    assert "a trial needs 1000 MiB" in msg
    a.release()
    free[0] = 2000.0  # memory came free on GPU 0: most free memory first is still GPU 1
    c = slots.acquire(timeout_s=1)
    assert (c.device, c.slot) == ("cuda:1", 0)
    d = slots.acquire(timeout_s=1)
    assert d.device == "cuda:0"
    for lease in (b, c, d):
        lease.release()


def test_measured_peak_sets_the_need(tmp_path: Path) -> None:
    free = {0: 1100.0, 1: 1300.0}
    slots = GpuSlots(tmp_path, slots_per_gpu=1, gpus=[0, 1], free_mb=free.get, poll_s=0.02)
    assert slots.need_mb() is None
    slots.record_peak(800.0)
    slots.record_peak(1000.0)
    slots.record_peak(float("nan"))  # ignored
    assert slots.need_mb() == pytest.approx(1200.0)  # largest peak x 1.2
    with slots.acquire(timeout_s=1) as lease:
        assert lease.device == "cuda:1"
        with pytest.raises(
            TimeoutError, match=r"cuda:0 \(0/1 slots busy, 1100 MiB free\).*needs 1200 MiB"
        ):
            slots.acquire(timeout_s=0.2)


def test_default_slot_counts(tmp_path: Path) -> None:
    free = {0: 4500.0, 1: None, 2: 100.0}
    by_memory = GpuSlots(tmp_path, mem_per_trial_mb=1000, gpus=[0, 1, 2], free_mb=free.get)
    assert by_memory.slots_per_gpu == {0: 4, 1: DEFAULT_SLOTS_PER_GPU, 2: 1}
    assert GpuSlots(tmp_path, gpus=[0], free_mb=free.get).slots_per_gpu == {
        0: DEFAULT_SLOTS_PER_GPU
    }
    assert GpuSlots(tmp_path, slots_per_gpu=3, gpus=[0], free_mb=free.get).slots_per_gpu == {0: 3}


def test_bad_arguments_and_no_gpu(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--gpu-slots"):
        GpuSlots(tmp_path, slots_per_gpu=0, gpus=[0])
    with pytest.raises(ValueError, match="--gpu-mem-per-trial"):
        GpuSlots(tmp_path, mem_per_trial_mb=-5, gpus=[0])
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        GpuSlots(tmp_path, gpus=[]).acquire(timeout_s=0.1)


# ---------------------------------------------------------------------------------------------
# the monitor
# ---------------------------------------------------------------------------------------------
def test_monitor_without_a_driver_is_a_no_op() -> None:
    pytest.importorskip("pynvml")
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver is present")
    except pynvml.NVMLError:
        pass
    with GpuMonitor(interval_s=0.05) as mon:
        time.sleep(0.1)
    s = mon.summary()
    assert s["available"] is False
    assert "NVML" in s["reason"]
    assert (s["samples"], s["gpu_busy_fraction"], s["gpu_mem_peak_mb"], s["per_gpu"]) == (
        0,
        None,
        None,
        {},
    )


class _FakeNvml:
    """The NVML calls GpuMonitor makes, for two GPUs with scripted utilisation."""

    def __init__(self) -> None:
        self.util = {0: [40, 60], 1: [100]}
        self.calls = {0: 0, 1: 0}
        self.shutdowns = 0

    def nvmlInit(self) -> None: ...

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        return {"GPU-b": 1}[uuid]

    def nvmlDeviceGetName(self, h: int) -> str:
        return f"Fake {h}"

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        values = self.util[h]
        self.calls[h] += 1
        return SimpleNamespace(gpu=values[(self.calls[h] - 1) % len(values)])

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(
            used=(1000 + 100 * self.calls[h]) * 2**20, total=80000 * 2**20, free=1 * 2**20
        )


def test_monitor_summarises_samples_from_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake = _FakeNvml()
    mon = GpuMonitor(interval_s=10, _nvml=fake)  # long interval: the test drives the samples
    with mon:
        deadline = time.monotonic() + 5
        while mon.summary()["samples"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(3):
            mon.sample()
    s = mon.summary()
    assert s["available"] is True and s["samples"] == 4
    assert s["per_gpu"]["0"]["busy_fraction"] == pytest.approx(0.5)  # 40, 60, 40, 60
    assert s["per_gpu"]["1"]["busy_fraction"] == pytest.approx(1.0)
    assert s["gpu_busy_fraction"] == pytest.approx(0.75)
    assert s["gpu_mem_peak_mb"] == pytest.approx(1400.0)
    assert s["per_gpu"]["1"]["name"] == "Fake 1" and s["per_gpu"]["1"]["mem_total_mb"] == 80000
    assert fake.shutdowns == 1
    times = [t for t, _ in mon.timeline()]
    assert [u for _, u in mon.timeline()] == [70.0, 80.0, 70.0, 80.0]  # mean over the two GPUs
    assert mon.busy_fraction_between(times[1], times[2]) == pytest.approx(0.75)
    assert mon.busy_fraction_between(times[3] + 1, times[3] + 2) is None


def test_monitor_maps_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-b")
    mon = GpuMonitor(interval_s=10, _nvml=_FakeNvml())
    with mon:
        pass
    s = mon.summary()
    assert (
        list(s["per_gpu"]) == ["0"] and s["per_gpu"]["0"]["name"] == "Fake 1"
    )  # cuda:0 is NVML device 1
    bad = GpuMonitor(_nvml=_FakeNvml(), gpus=[3])
    with bad:  # the monitor never raises; it says why it is off
        pass
    assert bad.summary()["available"] is False
    assert "CUDA device 3 does not exist (this process sees 1 GPUs)" in bad.summary()["reason"]


# ---------------------------------------------------------------------------------------------
# the objective wrapper
# ---------------------------------------------------------------------------------------------
class _DeviceObjective:
    def __init__(self, device: str = "auto") -> None:
        self.device = device
        self.seen: list[str] = []

    def __call__(
        self, config: dict[str, Any], reporter: Any, trial_dir: Path, seed: int
    ) -> TrialOutcome:
        self.seen.append(self.device)
        return TrialOutcome("complete", "ok", metrics={"wer": float(config["x"])})


class _Reporter:
    def report(self, epoch: int, **metrics: float) -> bool:
        return False


def test_slotted_objective_leaves_a_device_less_objective_alone(tmp_path: Path) -> None:
    no_gpu = GpuSlots(tmp_path / "locks", gpus=[])  # acquiring would raise: it must not be asked
    fn = FunctionObjective(lambda config, reporter: {"wer": config["x"] * 2})
    out = SlottedObjective(fn, no_gpu)({"x": 0.25}, _Reporter(), tmp_path / "t0", 0)
    assert (out.status, out.metrics, out.extra) == ("complete", {"wer": 0.5}, {})
    pinned = _DeviceObjective("cpu")
    out = SlottedObjective(pinned, no_gpu)({"x": 0.5}, _Reporter(), tmp_path / "t1", 0)
    assert out.status == "complete" and pinned.seen == ["cpu"] and "gpu_slot" not in out.extra


def test_slotted_objective_runs_a_copy_on_the_leased_device(tmp_path: Path) -> None:
    slots = GpuSlots(
        tmp_path / "locks", slots_per_gpu=1, gpus=[0, 1], free_mb={0: 10.0, 1: 20.0}.get
    )
    inner = _DeviceObjective("auto")
    wrapped = SlottedObjective(inner, slots, acquire_timeout_s=1)
    out = wrapped({"x": 0.3}, _Reporter(), tmp_path / "t", 0)
    assert out.status == "complete" and out.metrics == {"wer": 0.3}
    assert inner.device == "auto"  # the wrapped objective itself is untouched
    assert inner.seen == ["cuda:1"]  # a shallow copy shares `seen`; most free memory first
    assert out.extra["gpu_slot"] == "cuda:1/slot0" and out.extra["gpu_wait_s"] >= 0
    assert "gpu_mem_peak_mb" not in out.extra  # no CUDA here: nothing measured
    assert json.loads((tmp_path / "t" / "gpu.json").read_text())["gpu_slot"] == "cuda:1/slot0"
    assert slots.busy_slots(1) == 0  # released


def test_slotted_objective_timeout_is_an_error_outcome(tmp_path: Path) -> None:
    slots = GpuSlots(
        tmp_path / "locks", slots_per_gpu=1, gpus=[0], free_mb=lambda g: None, poll_s=0.02
    )
    with slots.acquire(timeout_s=1):
        out = SlottedObjective(_DeviceObjective(), slots, acquire_timeout_s=0.2)(
            {"x": 1}, _Reporter(), tmp_path, 0
        )
    assert out.status == "error" and "no GPU slot free after 0.2 s" in out.reason


# ---------------------------------------------------------------------------------------------
# local worker processes
# ---------------------------------------------------------------------------------------------
def test_worker_argv_matches_the_worker_contract(tmp_path: Path) -> None:
    argv = _local_workers.worker_argv(
        "s",
        tmp_path,
        config="t.yaml",
        device="cuda",
        n_trials=8,
        extra_argv=["--gpu-slots", 4],
    )
    assert argv[:4] == [sys.executable, "-m", "speechtune.cli", "worker"]
    assert argv[4:] == [
        "--study-name", "s", "--run-dir", str(tmp_path), "--device", "cuda",
        "--config", "t.yaml", "--n-trials", "8", "--gpu-slots", "4",
    ]  # fmt: skip


def test_launch_local_workers_passes_the_storage_in_the_environment_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand-in workers record what `ps` would show (their /proc cmdline) and their environment.
    url = "postgresql+psycopg://tuner:Sup3r-Secret#pw@db.example:5432/st"
    script = (
        "import json, os, sys; "
        "argv = open('/proc/self/cmdline', 'rb').read().decode(); "
        "open(os.path.join(sys.argv[1], os.environ['SPEECHTUNE_WORKER_INDEX']), 'w')"
        ".write(json.dumps([argv, os.environ.get('SPEECHTUNE_STORAGE')]))"
    )
    real_argv = _local_workers.worker_argv
    monkeypatch.setattr(
        _local_workers,
        "worker_argv",
        lambda *a, **k: [sys.executable, "-c", script, str(tmp_path)],
    )
    assert _local_workers.launch_local_workers(url, "s", tmp_path, 2, timeout_s=60) == [0, 0]
    for i in range(2):
        argv, storage = json.loads((tmp_path / str(i)).read_text())
        assert "Sup3r-Secret" not in argv and storage == url
    built = " ".join(real_argv("s", tmp_path, extra_argv=["--no-tracking"]))
    assert "--storage" not in built and "Sup3r-Secret" not in built


def test_launch_local_workers_stops_every_worker_at_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand-in workers that ignore SIGTERM's default? No: they sleep, spawn a grandchild, and log.
    script = textwrap.dedent(
        """
        import os, subprocess, sys, time
        print("worker", os.environ["SPEECHTUNE_WORKER_INDEX"], flush=True)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open(os.path.join(sys.argv[1], f"child-{os.environ['SPEECHTUNE_WORKER_INDEX']}"), "w").write(str(child.pid))
        time.sleep(60)
        """
    )
    monkeypatch.setattr(
        _local_workers,
        "worker_argv",
        lambda *a, **k: [sys.executable, "-c", script, str(tmp_path)],
    )
    t0 = time.monotonic()
    codes = _local_workers.launch_local_workers("journal:////x", "s", tmp_path, 3, timeout_s=2.0)
    assert time.monotonic() - t0 < 2.0 + _local_workers.TERMINATE_GRACE_S
    assert codes == [-signal.SIGTERM] * 3
    for i in range(3):
        assert (tmp_path / "workers" / f"worker-{i}.log").read_text().startswith(f"worker {i}")
        grandchild = int((tmp_path / f"child-{i}").read_text())
        deadline = time.monotonic() + 5
        while _alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(grandchild), "the worker's own children must be stopped with it"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (reaped by init later) is dead for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_launch_local_workers_rejects_zero_workers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--workers"):
        _local_workers.launch_local_workers("journal:////x", "s", tmp_path, 0)


# ---------------------------------------------------------------------------------------------
# a packed study end to end: real `speechtune worker` processes on a journal storage
# ---------------------------------------------------------------------------------------------
def packed_objective(config: dict[str, Any], reporter: Any, trial_dir: Path) -> dict[str, float]:
    """A ``objective.kind: python`` trial that takes a moment and says which process ran it when."""
    t0 = time.time()
    time.sleep(0.4)
    wer = (float(config["x"]) - 0.3) ** 2 + 0.1
    reporter.report(1, wer=wer)
    Path(trial_dir).mkdir(parents=True, exist_ok=True)
    # The worker's command line as `ps` shows it, and whether it kept the storage URL in its
    # environment (the worker takes it out, so that trial processes do not inherit it).
    cmdline = Path("/proc/self/cmdline").read_bytes().decode(errors="replace").split("\0")
    (Path(trial_dir) / "span.json").write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "start": t0,
                "end": time.time(),
                "cmdline": cmdline,
                "storage_env": "SPEECHTUNE_STORAGE" in os.environ,
            }
        )
    )
    return {"wer": wer}


def _python_spec(tmp_path: Path, name: str) -> Any:
    import yaml

    from speechtune.tuning.spec import load_tuning

    path = tmp_path / "tuning.yaml"
    path.write_text(yaml.safe_dump({
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "study": {"name": name, "sampler": "random", "pruner": "none", "n_trials": 6, "seed": 0},
        "objective": {"kind": "python", "metric": "wer", "seeds": [0]},
    }))  # fmt: skip
    return load_tuning(path)


def test_run_packed_study_with_three_worker_processes(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    spec = _python_spec(tmp_path, "packed")
    run_dir = tmp_path / "run"
    backend = PackedBackend(
        3,
        device="cpu",
        enqueue=[{"x": 0.1}, {"x": 0.5}, {"x": 0.9}],
        extra_argv=[
            "--function",
            "tests.tuning.backends.test_gpu_packing:packed_objective",
            "--no-tracking",
            "--no-report",
            "--quiet",
        ],
        timeout_s=120,
        env={"SPEECHTUNE_TEST_THREADS": "1"},
    )
    study = run_study(
        spec,
        None,
        run_dir,
        backend=backend,
        n_trials=6,
        outputs=write_study_outputs,
        progress=False,
    )
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert (
        6 <= len(done) <= 8
    )  # the target, plus at most workers - 1 trials that were already running
    assert len({t.number for t in trials}) == len(trials)
    by_number = {t.number: t.params["x"] for t in done}
    assert [by_number[n] for n in (0, 1, 2)] == [0.1, 0.5, 0.9]  # the enqueued configs ran first
    spans = [json.loads((Path(t.user_attrs["trial_dir"]) / "span.json").read_text()) for t in done]
    assert len({s["pid"] for s in spans}) >= 2  # several processes ran trials...
    overlaps = sum(
        a["start"] < b["end"] and b["start"] < a["end"]
        for i, a in enumerate(spans)
        for b in spans[i + 1 :]
    )
    assert overlaps >= 1  # ...at the same time
    for span in spans:  # the storage reached the workers through the environment, not argv
        assert "--storage" not in span["cmdline"] and not span["storage_env"]
        assert not any("journal" in arg for arg in span["cmdline"]), span["cmdline"]
    # The default SQLite storage was swapped for a journal file; results and attrs are in it.
    assert (run_dir / "journal.log").is_file() and not (run_dir / "study.db").exists()
    attrs = study.user_attrs
    assert (
        attrs["n_workers"] == 3 and attrs["worker_exit_codes"] == [0, 0, 0] and attrs["wall_s"] > 0
    )
    gpu = attrs["gpu_utilization"]
    # Recorded either way: measured where an NVIDIA driver is present, else a reason why not.
    assert (gpu["available"] and gpu["samples"] > 0) or (
        gpu["available"] is False and gpu["reason"]
    )
    assert (run_dir / "trials.csv").is_file() and (run_dir / "best.yaml").is_file()
    assert sorted(p.name for p in (run_dir / "workers").iterdir()) == [
        "worker-0.log",
        "worker-1.log",
        "worker-2.log",
    ]


def test_run_packed_study_reports_failed_workers(tmp_path: Path) -> None:
    spec = _python_spec(tmp_path, "broken")
    with pytest.raises(
        RuntimeError,
        match=r"2 of 2 workers exited with an error \(codes \[2, 2\]\); see .*worker-0.log",
    ):
        backend = PackedBackend(
            2,
            device="cpu",
            extra_argv=["--function", "no_such_module:fn", "--quiet"],
            timeout_s=60,
        )
        run_study(spec, None, tmp_path / "run", backend=backend, progress=False)
    assert "no_such_module" in (tmp_path / "run" / "workers" / "worker-1.log").read_text()


def test_corpus_manifest_rewritten_by_another_process_is_never_read_half_written(
    tmp_path: Path,
) -> None:
    # Packed trials re-import the corpus into one shared cache (import_an4 rewrites train.jsonl
    # on every trial): a concurrent reader must see the old or the new file, never a torn one.
    from speechtune.data import load_manifest

    target = tmp_path / "corpus" / "train.jsonl"
    writer = textwrap.dedent(
        """
        import sys, time
        from speechtune.data._manifest import Manifest, Utterance
        utts = [Utterance(f"u{i:05d}", f"/audio/u{i}.flac", 1.5, "HELLO WORLD " * 8, f"s{i % 7}", "g") for i in range(3000)]
        m = Manifest(utts, "train")
        m.to_jsonl(sys.argv[1])
        end = time.time() + float(sys.argv[2])
        while time.time() < end:
            m.to_jsonl(sys.argv[1])
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer, str(target), "2.0"], env=_env())
    try:
        _wait_for(target)
        reads = 0
        while proc.poll() is None:
            assert len(load_manifest(target, split="train")) == 3000
            reads += 1
        assert proc.wait(timeout=30) == 0 and reads >= 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert sorted(p.name for p in target.parent.iterdir()) == [
        "train.jsonl"
    ]  # no temporary files left
