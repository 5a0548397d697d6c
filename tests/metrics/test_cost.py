"""Cost and carbon: the energy meter (real CPU work, the real no-driver path, NVML arithmetic on a
fake NVML only), the cost model's arithmetic, the ``cost:`` YAML section, and a real study that
records ``cost`` per trial (failed and pruned ones too), ``cost_total``, trials.csv and report.html."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import speechtune
from speechtune.cli.tune import _print_summary
from speechtune.devices import gpus_for_device, load_nvml
from speechtune.metrics import (
    COST_FIELDS,
    CostModel,
    CostRecord,
    EnergyMeter,
    estimate_cost,
    format_cost,
    sum_costs,
    summarize_costs,
)
from speechtune.tuning.spec import build_spec, load_tuning, validate_tuning

optuna.logging.set_verbosity(optuna.logging.WARNING)

BURN_S = 0.3
CHILD_BURN = (
    "import time\n"
    "t = time.process_time()\n"
    f"while time.process_time() - t < {BURN_S}:\n"
    "    sum(range(1000))\n"
)


def burn_cpu(seconds: float) -> None:
    """Spin this thread until the process has used ``seconds`` more CPU time (load-independent)."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        sum(range(1000))


def _no_nvml() -> bool:
    nvml, _ = load_nvml()
    if nvml is not None:
        nvml.nvmlShutdown()
        return False
    return True


# ---------------------------------------------------------------------------------------------
# the meter on real work
# ---------------------------------------------------------------------------------------------
def test_meter_counts_cpu_burnt_in_process_and_consistent_with_wall_time() -> None:
    with EnergyMeter(CostModel(), gpus=[]) as meter:
        burn_cpu(BURN_S)
    rec = meter.record()
    cpu_s = rec.cpu_core_hours * 3600
    assert cpu_s >= BURN_S * 0.95  # what was burnt (clock granularity aside)
    # One spinning thread cannot use more CPU than wall time (small slack for idle helper threads).
    assert cpu_s <= rec.wall_s * 1.1 + 0.05
    assert rec.gpu_hours == 0.0 and rec.energy_source == "tdp-estimate"
    assert meter.nvml_reason == "a CPU trial"
    # Energy is the CPU's TDP share only: core-hours x 10 W / 1000.
    assert rec.energy_kwh == pytest.approx(rec.cpu_core_hours * 10.0 / 1000.0)
    assert rec.co2e_g == pytest.approx(rec.energy_kwh * 480.0)


def test_meter_counts_cpu_of_a_child_process() -> None:
    with EnergyMeter(gpus=[]) as meter:
        subprocess.run([sys.executable, "-c", CHILD_BURN], check=True)
    rec = meter.record()
    cpu_s = rec.cpu_core_hours * 3600
    assert cpu_s >= BURN_S * 0.95  # the child's CPU time, counted once it was waited for
    assert cpu_s <= rec.wall_s * 1.1 + 0.05  # parent and child ran one after the other


def test_meter_without_nvidia_driver_falls_back_to_tdp_estimate() -> None:
    if not _no_nvml():
        pytest.skip("an NVIDIA driver is present: this test covers machines without one")
    # gpus=None: "every GPU NVML shows": with no driver that is none, and nothing raises.
    with EnergyMeter(gpus=None) as meter:
        burn_cpu(0.05)
    rec = meter.record()
    assert rec.gpu_hours == 0.0 and rec.energy_source == "tdp-estimate"
    assert "NVML" in meter.nvml_reason or "pynvml" in meter.nvml_reason
    # A trial said to use a GPU (e.g. pynvml missing on a GPU box): its GPU-hours are TDP-priced.
    model = CostModel(gpu_tdp_w=200.0, cpu_tdp_w_per_core=0.0)
    with EnergyMeter(model, gpus=[0]) as meter:
        time.sleep(0.05)
    rec = meter.record()
    assert rec.gpu_hours == pytest.approx(rec.wall_s / 3600)
    assert rec.energy_source == "tdp-estimate"
    assert rec.energy_kwh == pytest.approx(rec.gpu_hours * 0.2)
    assert gpus_for_device("auto") == [] and gpus_for_device("cuda") == []


def test_gpus_for_device() -> None:
    assert gpus_for_device("cpu") == []
    assert gpus_for_device("cuda:3") == [3]
    assert gpus_for_device(None) is None


def test_meter_stop_is_idempotent_and_record_reads_while_running() -> None:
    meter = EnergyMeter(gpus=[])
    assert meter.record().wall_s == 0.0  # not started
    meter.start()
    time.sleep(0.01)
    assert meter.record().wall_s > 0
    meter.stop()
    first = meter.record()
    time.sleep(0.01)
    meter.stop()
    assert meter.record() == first


# ---------------------------------------------------------------------------------------------
# NVML arithmetic (a fake NVML: there is no GPU here)
# ---------------------------------------------------------------------------------------------
class FakeNvml:
    """Just the NVML calls the meter makes; energy in mJ, power in mW, like the real library."""

    def __init__(
        self, n: int = 1, energy_mj: list[float] | None = None, power_mw: float | None = None
    ) -> None:
        self.n = n
        self.energy = list(energy_mj or [])
        self.power_mw = power_mw
        self.calls = 0

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> float:
        if not self.energy:
            raise RuntimeError("NVMLError_NotSupported")
        return self.energy.pop(0)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> float:
        self.calls += 1
        return float(self.power_mw)  # type: ignore[arg-type]


def test_nvml_energy_counter_delta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # 3.6e6 mJ = 1 Wh = 0.001 kWh consumed between start and stop.
    fake = FakeNvml(energy_mj=[5_000.0, 5_000.0 + 3.6e6])
    model = CostModel(grid_g_per_kwh=400.0, gpu_price_per_hour=2.0, cpu_tdp_w_per_core=0.0)
    with EnergyMeter(model, gpus=[0], _nvml=fake) as meter:
        time.sleep(0.02)
    rec = meter.record()
    assert rec.energy_source == "nvml" and meter.nvml_reason == ""
    assert rec.gpu_energy_kwh == pytest.approx(0.001)
    assert rec.energy_kwh == pytest.approx(0.001)
    assert rec.co2e_g == pytest.approx(0.4)
    assert rec.gpu_hours == pytest.approx(rec.wall_s / 3600)
    assert rec.money == pytest.approx(rec.gpu_hours * 2.0)


def test_nvml_power_sampling_when_no_energy_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake = FakeNvml(n=2, power_mw=250_000.0)  # 250 W on each of two GPUs, no energy counter
    model = CostModel(cpu_tdp_w_per_core=0.0)
    with EnergyMeter(model, gpus=None, interval_s=0.01, _nvml=fake) as meter:
        time.sleep(0.05)
    rec = meter.record()
    assert fake.calls >= 4  # a start and an end reading per GPU, and samples between
    assert rec.energy_source == "nvml"
    assert rec.gpu_hours == pytest.approx(2 * rec.wall_s / 3600)  # gpus=None: both visible GPUs
    assert rec.gpu_energy_kwh == pytest.approx(2 * 250.0 * rec.wall_s / 3600 / 1000)


def test_nvml_failing_to_init_is_the_no_driver_path() -> None:
    class Broken(FakeNvml):
        def nvmlInit(self) -> None:
            raise RuntimeError("NVMLError_DriverNotLoaded")

    with EnergyMeter(gpus=None, _nvml=Broken()) as meter:
        pass
    assert (
        meter.record().energy_source == "tdp-estimate" and "DriverNotLoaded" in meter.nvml_reason
    )


# ---------------------------------------------------------------------------------------------
# arithmetic, sums, formatting
# ---------------------------------------------------------------------------------------------
def test_tdp_estimate_co2_and_money_arithmetic() -> None:
    model = CostModel(
        grid_g_per_kwh=500.0,
        gpu_price_per_hour=2.0,
        cpu_price_per_hour=0.05,
        gpu_tdp_w=400.0,
        cpu_tdp_w_per_core=5.0,
        currency="EUR",
    )
    rec = estimate_cost(model, wall_s=7200.0, cpu_core_hours=4.0, gpu_hours=2.0)
    assert rec.cpu_energy_kwh == pytest.approx(0.02)  # 4 core-h x 5 W
    assert rec.gpu_energy_kwh == pytest.approx(0.8)  # 2 GPU-h x 400 W
    assert rec.energy_kwh == pytest.approx(0.82)
    assert rec.co2e_g == pytest.approx(410.0)
    assert rec.money == pytest.approx(4.2)  # 2 x 2.0 + 4 x 0.05
    assert (rec.energy_source, rec.currency) == ("tdp-estimate", "EUR")
    measured = estimate_cost(
        model, wall_s=7200.0, cpu_core_hours=4.0, gpu_hours=2.0, gpu_energy_kwh=0.5
    )
    assert measured.energy_source == "nvml" and measured.energy_kwh == pytest.approx(0.52)
    assert (
        format_cost(rec)
        == "2.00 GPU-h, 4.00 CPU core-h, 0.82 kWh (tdp-estimate), 410 g CO2e, €4.20"
    )


def test_defaults_are_the_documented_ones() -> None:
    model = CostModel()
    assert (model.grid_g_per_kwh, model.gpu_price_per_hour, model.cpu_price_per_hour) == (
        480.0,
        0.0,
        0.0,
    )
    assert (model.gpu_tdp_w, model.cpu_tdp_w_per_core, model.currency) == (300.0, 10.0, "USD")
    with pytest.raises(ValueError, match="grid_g_per_kwh"):
        CostModel(grid_g_per_kwh=-1)
    with pytest.raises(ValueError, match="gpu_tdp_w"):
        CostModel(gpu_tdp_w=math.inf)
    with pytest.raises(ValueError, match="currency"):
        CostModel(currency=" ")


def test_sum_and_summarize() -> None:
    model = CostModel(cpu_price_per_hour=1.0)
    a = estimate_cost(model, wall_s=10, cpu_core_hours=0.5, gpu_hours=0.0)
    b = estimate_cost(model, wall_s=20, cpu_core_hours=1.5, gpu_hours=1.0, gpu_energy_kwh=0.2)
    total = sum_costs([a, b.as_dict()])
    assert total.wall_s == 30 and total.cpu_core_hours == 2.0 and total.money == pytest.approx(2.0)
    assert total.energy_kwh == pytest.approx(a.energy_kwh + b.energy_kwh)
    assert total.energy_source == "mixed"
    assert sum_costs([a, a]).energy_source == "tdp-estimate"
    assert sum_costs([]) == CostRecord()
    with pytest.raises(ValueError, match="EUR, USD"):
        sum_costs(
            [a, estimate_cost(CostModel(currency="EUR"), wall_s=1, cpu_core_hours=0, gpu_hours=0)]
        )

    class T:  # the two attributes summarize_costs reads of a FrozenTrial
        def __init__(self, state: TrialState, cost: Any) -> None:
            self.state, self.user_attrs = state, ({"cost": cost} if cost is not None else {})

    summary = summarize_costs(
        [
            T(TrialState.COMPLETE, a.as_dict()),
            T(TrialState.FAIL, b.as_dict()),
            T(TrialState.COMPLETE, None),
        ]
    )
    assert summary["trials"] == 2 and summary["unmeasured"] == 1
    assert set(summary["by_state"]) == {"complete", "fail"}
    assert summary["by_state"]["fail"]["money"] == pytest.approx(1.5)
    assert summary["total"]["wall_s"] == 30


def test_format_small_values_and_unknown_currency() -> None:
    rec = CostRecord(cpu_core_hours=0.0004, energy_kwh=0.000004, co2e_g=0.0019, currency="CHF")
    assert (
        format_cost(rec)
        == "0.00 GPU-h, 0.0004 CPU core-h, 4e-06 kWh (tdp-estimate), 0.0019 g CO2e, 0.00 CHF"
    )


# ---------------------------------------------------------------------------------------------
# the cost: section of a tuning YAML
# ---------------------------------------------------------------------------------------------
def _tuning(tmp_path: Path, cost: Any) -> Path:
    data = {
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "study": {"name": "c", "n_trials": 2},
        "objective": {"kind": "python", "function": "mod:fn"},
        "cost": cost,
    }
    path = tmp_path / "tuning.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_cost_section_loads_with_defaults(tmp_path: Path) -> None:
    spec = load_tuning(
        _tuning(tmp_path, {"grid_g_per_kwh": 120, "gpu_price_per_hour": 2.5, "currency": "EUR"})
    )
    assert spec.cost == CostModel(grid_g_per_kwh=120.0, gpu_price_per_hour=2.5, currency="EUR")
    assert isinstance(spec.cost.grid_g_per_kwh, float)
    (tmp_path / "b").mkdir()
    assert load_tuning(_tuning(tmp_path / "b", None)).cost == CostModel()


def test_cost_section_errors_name_the_key(tmp_path: Path) -> None:
    problems = validate_tuning(
        _tuning(
            tmp_path,
            {
                "grid_g_per_kwh": -5,
                "gpu_price": 1.0,
                "gpu_tdp_w": 0,
                "cpu_tdp_w_per_core": "ten",
                "currency": "",
            },
        )
    )
    by_key = {p.key: p for p in problems}
    assert set(by_key) == {
        "cost.grid_g_per_kwh",
        "cost.gpu_price",
        "cost.gpu_tdp_w",
        "cost.cpu_tdp_w_per_core",
        "cost.currency",
    }
    assert "did you mean: gpu_price_per_hour" in by_key["cost.gpu_price"].rule
    assert (
        ">= 0" in by_key["cost.grid_g_per_kwh"].rule and by_key["cost.grid_g_per_kwh"].value == -5
    )
    assert (
        validate_tuning(_tuning(tmp_path, {"grid_g_per_kwh": float("inf")}))[0].key
        == "cost.grid_g_per_kwh"
    )
    assert validate_tuning(_tuning(tmp_path, [1, 2]))[0].key == "cost"
    (tmp_path / "c").mkdir()
    path = _tuning(tmp_path / "c", None)
    data = yaml.safe_load(path.read_text())
    data["costs"] = data.pop("cost")
    path.write_text(yaml.safe_dump(data))
    assert "did you mean: cost" in validate_tuning(path)[0].rule


# ---------------------------------------------------------------------------------------------
# a real study
# ---------------------------------------------------------------------------------------------
GOOD = [0.5, 0.4, 0.3, 0.2]
BAD = [0.9, 0.95, 0.97, 0.99]


def _scripted() -> Any:
    """Three good curves, a crash, a bad curve (pruned by the median pruner), a good one."""
    plan = ["good", "good", "good", "raise", "bad", "good"]

    def fn(config: dict, reporter: Any) -> dict | None:
        what = plan.pop(0)
        burn_cpu(0.02)
        if what == "raise":
            raise RuntimeError("boom")
        curve = GOOD if what == "good" else BAD
        for epoch, wer in enumerate(curve):
            if reporter.report(epoch, wer=wer):
                return None
        return {"wer": curve[-1]}

    return fn


def test_study_records_cost_per_trial_total_csv_report_and_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = CostModel(grid_g_per_kwh=1000.0, cpu_price_per_hour=36.0, currency="USD")
    study = speechtune.tune(
        _scripted(),
        {"x": {"type": "float", "low": 0, "high": 1}},
        n_trials=5,
        pruner="median",
        run_dir=tmp_path,
        cost=model,
    )
    states = [t.state for t in study.trials]
    C, P, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL
    assert states == [C, C, C, F, P, C]
    for trial in study.trials:
        cost = trial.user_attrs["cost"]
        assert set(COST_FIELDS) <= set(cost)
        assert (
            cost["cpu_core_hours"] * 3600 >= 0.02 * 0.9
        )  # every trial burnt 20 ms, the failed one too
        assert cost["gpu_hours"] == 0.0 and cost["energy_source"] == "tdp-estimate"
        assert cost["co2e_g"] == pytest.approx(cost["energy_kwh"] * 1000.0)
        assert cost["money"] == pytest.approx(cost["cpu_core_hours"] * 36.0)
        assert 0 < cost["wall_s"]
    total = study.user_attrs["cost_total"]
    assert total["trials"] == 6 and total["unmeasured"] == 0
    assert set(total["by_state"]) == {"complete", "pruned", "fail"}
    assert total["total"]["cpu_core_hours"] == pytest.approx(
        sum(t.user_attrs["cost"]["cpu_core_hours"] for t in study.trials)
    )
    assert total["by_state"]["fail"]["wall_s"] == pytest.approx(
        study.trials[3].user_attrs["cost"]["wall_s"]
    )
    assert study.user_attrs["spec"]["cost"]["grid_g_per_kwh"] == 1000.0

    with (tmp_path / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    assert all(
        float(r["cost.co2e_g"]) > 0 and r["cost.energy_source"] == "tdp-estimate" for r in rows
    )
    assert rows[3]["state"] == "FAIL" and float(rows[3]["cost.cpu_core_hours"]) > 0

    html = (tmp_path / "report.html").read_text()
    assert 'id="cost"' in html and "Cost and carbon" in html and 'id="plot-cost"' in html
    assert "tdp-estimate" in html and "grid 1000 g CO2e/kWh" in html

    capsys.readouterr()
    assert _print_summary(study, tmp_path) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("compute: "))
    assert line == "compute: " + format_cost(total["total"])
    assert (
        "GPU-h" in line
        and "CPU core-h" in line
        and "(tdp-estimate)" in line
        and "g CO2e, $" in line
    )


def test_multi_fidelity_study_records_cost(tmp_path: Path) -> None:
    def fn(config: dict, reporter: Any) -> dict:
        burn_cpu(0.01)
        for epoch in range(config["epochs"]):
            reporter.report(epoch, wer=config["x"] + 1.0 / (epoch + 1))
        return {"wer": config["x"] + 1.0 / config["epochs"]}

    study = speechtune.tune(
        fn,
        {"x": {"type": "float", "low": 0, "high": 1}},
        fidelity={"epochs": [1, 3]},
        budget=2.0,
        pruner="none",
        run_dir=tmp_path,
    )
    assert study.trials and all("cost" in t.user_attrs for t in study.trials)
    assert study.user_attrs["cost_total"]["trials"] == len(study.trials)
    assert "cost.cpu_core_hours" in (tmp_path / "trials.csv").read_text().splitlines()[0]


def test_ray_sink_estimates_cost_of_a_trial_ended_without_its_report(tmp_path: Path) -> None:
    """Ray's scheduler may end a trial before its measured cost comes back: wall time x resources."""
    from speechtune.tuning.backends.ray._sink import _Sink
    from speechtune.tuning.spec import RaySpec

    spec = build_spec(
        {"x": {"type": "float", "low": 0, "high": 1}}, cost=CostModel(cpu_tdp_w_per_core=5.0)
    )
    study = optuna.create_study()
    sink = _Sink(study, spec, tmp_path, "asha", None, None)
    sink.finish("t1", {"x": 0.5}, {"time_total_s": 7200.0, "epoch": 1}, None)
    cost = study.trials[0].user_attrs["cost"]
    cpus = RaySpec().resources_per_trial.cpu
    assert cost["basis"] == "ray-wall-time" and cost["wall_s"] == 7200.0
    assert cost["cpu_core_hours"] == pytest.approx(2.0 * cpus)
    assert cost["energy_kwh"] == pytest.approx(2.0 * cpus * 5.0 / 1000)
