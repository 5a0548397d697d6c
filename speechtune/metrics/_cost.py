"""Compute cost and carbon of trials: device-hours, energy (NVML or a TDP estimate), CO2e, money.

A team weighing a WER gain needs to know what it cost. Per trial, :class:`EnergyMeter` measures

* wall time and the CPU time of this process and its (waited-for) children, as CPU core-hours;
* GPU-hours: wall time x the GPUs the trial used (0 for a trial on the CPU);
* energy: the GPUs' own energy counters through NVML when a driver is there
  (``nvmlDeviceGetTotalEnergyConsumption`` deltas, else the mean of ``nvmlDeviceGetPowerUsage``
  samples x time), plus the CPU's share estimated from its TDP; without NVML everything is
  estimated from TDPs (``energy_source`` says which);
* CO2e from a grid intensity, money from prices per device-hour (:class:`CostModel`).

Records are plain dicts (:meth:`CostRecord.as_dict`), stored as the ``cost`` user attribute of
each trial; :func:`sum_costs` and :func:`summarize_costs` add them up per stage and per study.

Known limits (stated so that nobody over-reads the figures):

* NVML counts a whole GPU: trials sharing one GPU at the same time (packed workers) are each
  charged the GPU's full energy for their wall time.
* CPU time is per process: parallel trials in threads of one process (``n_jobs > 1``) each see
  the CPU time of all of them.
* Memory, storage, networking and data-centre overhead (PUE) are not counted.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import Any

from speechtune.devices import load_nvml, nvml_handles

log = logging.getLogger(__name__)

__all__ = [
    "COST_FIELDS",
    "CURRENCY_SYMBOLS",
    "CostModel",
    "CostRecord",
    "EnergyMeter",
    "estimate_cost",
    "format_cost",
    "process_cpu_seconds",
    "sum_costs",
    "summarize_costs",
]

#: World-average carbon intensity of electricity generation, g CO2e per kWh: Ember, "Global
#: Electricity Review 2024" (2023 data, life-cycle emissions, https://ember-climate.org/insights/
#: research/global-electricity-review-2024/). Ember's 2023 review gave 436 g/kWh for 2022 on a
#: combustion-only basis; set ``cost.grid_g_per_kwh`` to the grid you actually run on.
DEFAULT_GRID_G_PER_KWH = 480.0
#: Board power of a typical training GPU when NVML cannot measure it: NVIDIA's data sheets give
#: 300 W for the V100 (SXM2) and the A100 80GB PCIe (an H100 SXM is 700 W, a T4 70 W).
DEFAULT_GPU_TDP_W = 300.0
#: CPU TDP per core, the Green Algorithms method (Lannelongue, Grealey & Inouye, Adv. Sci. 2021,
#: doi:10.1002/advs.202100707). Server parts sit at 4-8 W/core (Xeon Gold 6138: 125 W / 20 cores
#: = 6.25 W), desktop parts at 10-16 W/core (i9-9900K: 95 W / 8 cores): 10 W is a round middle.
DEFAULT_CPU_TDP_W_PER_CORE = 10.0

_MJ_PER_KWH = 3.6e9  # NVML's energy counter is in millijoules
#: Currency codes written as a symbol before the amount (others follow it as a code: 1.20 CHF).
CURRENCY_SYMBOLS: Mapping[str, str] = MappingProxyType(
    {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}
)


@dataclass(frozen=True)
class CostModel:
    """What turns device-hours and energy into CO2e and money (the tuning YAML's ``cost:`` section).

    Attributes:
        grid_g_per_kwh: carbon intensity of the electricity, g CO2e per kWh (default: the world
            average, :data:`DEFAULT_GRID_G_PER_KWH`).
        gpu_price_per_hour: price of one GPU-hour. Default 0: prices differ by a factor of ten
            between clouds, regions and commitments (AWS's on-demand p3.2xlarge, one V100, was
            listed at $3.06/h), so a made-up default would mislead.
        cpu_price_per_hour: price of one CPU core-hour (default 0, as above).
        gpu_tdp_w: watts per GPU when NVML cannot measure (default :data:`DEFAULT_GPU_TDP_W`).
        cpu_tdp_w_per_core: watts per busy CPU core (default :data:`DEFAULT_CPU_TDP_W_PER_CORE`).
        currency: the currency of the prices (a label, e.g. ``USD``).
    """

    grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH
    gpu_price_per_hour: float = 0.0
    cpu_price_per_hour: float = 0.0
    gpu_tdp_w: float = DEFAULT_GPU_TDP_W
    cpu_tdp_w_per_core: float = DEFAULT_CPU_TDP_W_PER_CORE
    currency: str = "USD"

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "currency":
                continue
            value = getattr(self, f.name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"CostModel.{f.name} must be a finite number >= 0, got {value!r}")
            object.__setattr__(
                self, f.name, float(value)
            )  # YAML ints become floats: one type downstream
        if not isinstance(self.currency, str) or not self.currency.strip():
            raise ValueError(
                f"CostModel.currency must be a non-empty string, got {self.currency!r}"
            )


@dataclass(frozen=True)
class CostRecord:
    """The measured cost of one trial (or a sum of them). ``as_dict`` is the stored form."""

    wall_s: float = 0.0
    cpu_core_hours: float = 0.0
    gpu_hours: float = 0.0
    energy_kwh: float = 0.0
    #: ``nvml`` (GPU energy measured; the CPU share is still a TDP estimate), ``tdp-estimate``,
    #: or for a sum of records from both, ``mixed``.
    energy_source: str = "tdp-estimate"
    co2e_g: float = 0.0
    money: float = 0.0
    currency: str = "USD"
    #: The GPU and CPU shares of ``energy_kwh`` (kept apart: only the GPU share can be measured).
    gpu_energy_kwh: float = 0.0
    cpu_energy_kwh: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (the trial's ``cost`` user attribute)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostRecord:
        """A record from its stored dict; unknown keys are ignored, missing ones default."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and v is not None})


#: The fields of a record in display order (trials.csv columns ``cost.<field>``).
COST_FIELDS = (
    "wall_s",
    "cpu_core_hours",
    "gpu_hours",
    "energy_kwh",
    "energy_source",
    "co2e_g",
    "money",
    "currency",
)


def estimate_cost(
    model: CostModel,
    *,
    wall_s: float,
    cpu_core_hours: float,
    gpu_hours: float,
    gpu_energy_kwh: float | None = None,
) -> CostRecord:
    """Turn measured device time (and, when NVML measured it, GPU energy) into a record.

    Args:
        model: grid intensity, prices and TDPs.
        wall_s: wall-clock seconds.
        cpu_core_hours: CPU time in core-hours.
        gpu_hours: GPU-hours (wall time x GPUs used).
        gpu_energy_kwh: the GPUs' measured energy; None: ``gpu_hours x gpu_tdp_w``.

    Returns:
        The record; ``energy_source`` is ``nvml`` when ``gpu_energy_kwh`` was given.
    """
    cpu_kwh = cpu_core_hours * model.cpu_tdp_w_per_core / 1000.0
    measured = gpu_energy_kwh is not None
    gpu_kwh = float(gpu_energy_kwh) if measured else gpu_hours * model.gpu_tdp_w / 1000.0  # type: ignore[arg-type]
    energy = cpu_kwh + gpu_kwh
    return CostRecord(
        wall_s=float(wall_s),
        cpu_core_hours=float(cpu_core_hours),
        gpu_hours=float(gpu_hours),
        energy_kwh=energy,
        energy_source="nvml" if measured else "tdp-estimate",
        co2e_g=energy * model.grid_g_per_kwh,
        money=gpu_hours * model.gpu_price_per_hour + cpu_core_hours * model.cpu_price_per_hour,
        currency=model.currency,
        gpu_energy_kwh=gpu_kwh,
        cpu_energy_kwh=cpu_kwh,
    )


def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have been waited for.

    ``resource.getrusage`` counts every thread of the process (torch's intra-op threads too) and,
    through ``RUSAGE_CHILDREN``, finished subprocesses such as an external training command.
    """
    try:
        import resource
    except ImportError:  # not on Unix: this process only (children are not counted)
        return time.process_time()
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class EnergyMeter:
    """Measure the cost of one trial while a ``with`` block (or ``start()``..``stop()``) runs.

    Never raises for a missing GPU or driver: without NVML the GPU energy is a TDP estimate
    (``energy_source = "tdp-estimate"``) and, when ``gpus`` is None, no GPU is counted.

    Args:
        model: the :class:`CostModel` (default: its defaults).
        gpus: CUDA indices the trial uses; ``[]`` for a CPU trial; None: every GPU NVML shows
            this process (none without NVML).
        interval_s: seconds between power samples, used only on GPUs without an energy counter.

    Example:
        >>> with EnergyMeter(CostModel(grid_g_per_kwh=250), gpus=[]) as meter:
        ...     train()
        >>> meter.record().co2e_g
    """

    def __init__(
        self,
        model: CostModel | None = None,
        gpus: Sequence[int] | None = None,
        *,
        interval_s: float = 1.0,
        _nvml: Any = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"EnergyMeter interval_s must be > 0, got {interval_s!r}")
        self.model = model or CostModel()
        self.gpus = None if gpus is None else list(gpus)
        self.interval_s = float(interval_s)
        self._nvml_given = _nvml  # tests inject a fake NVML module: there is no GPU in CI
        self._nvml: Any = None
        self._handles: dict[int, Any] = {}
        self._energy0: dict[int, float] = {}
        self._power_mw: dict[int, list[float]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._t0 = self._t1 = 0.0
        self._cpu0 = self._cpu1 = 0.0
        self._gpu_kwh: float | None = None
        self._n_gpus = 0
        self.started = self.stopped = False
        #: Why NVML is not used ("" when it is).
        self.nvml_reason = "not started"

    def __enter__(self) -> EnergyMeter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start / stop ---------------------------------------------------------------------------
    def start(self) -> None:
        """Take the starting readings (and start power sampling where there is no energy counter)."""
        self.started, self.stopped = True, False
        self._t0 = time.perf_counter()
        self._cpu0 = process_cpu_seconds()
        self._n_gpus = len(self.gpus) if self.gpus is not None else 0
        if self.gpus == []:
            self.nvml_reason = "a CPU trial"
            return
        nvml = self._open_nvml()
        if nvml is None:
            return
        try:
            self._handles = nvml_handles(nvml, self.gpus)
        except Exception as exc:  # an index this process cannot see, a GPU fallen off the bus
            self.nvml_reason = f"NVML could not open the GPUs: {type(exc).__name__}: {exc}"
            self._close_nvml(nvml)
            return
        if self.gpus is None:
            self._n_gpus = len(self._handles)
        if not self._handles:
            self.nvml_reason = "no GPU visible to this process"
            self._close_nvml(nvml)
            return
        self._nvml, self.nvml_reason = nvml, ""
        try:
            self._energy0 = {
                k: float(nvml.nvmlDeviceGetTotalEnergyConsumption(h))
                for k, h in self._handles.items()
            }
        except Exception:  # pre-Volta GPUs have no energy counter: sample the power draw instead
            self._energy0 = {}
            self._power_mw = {k: [] for k in self._handles}
            self._sample_power()
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="speechtune-energy-meter", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Take the final readings; idempotent."""
        if not self.started or self.stopped:
            return
        self.stopped = True
        self._t1 = time.perf_counter()
        self._cpu1 = process_cpu_seconds()
        nvml = self._nvml
        if nvml is None:
            return
        try:
            if self._energy0:
                total_mj = sum(
                    float(nvml.nvmlDeviceGetTotalEnergyConsumption(h)) - self._energy0[k]
                    for k, h in self._handles.items()
                )
                self._gpu_kwh = max(total_mj, 0.0) / _MJ_PER_KWH
            else:
                self._stop.set()
                if self._thread is not None:
                    self._thread.join(timeout=5 * self.interval_s)
                self._sample_power()
                hours = (self._t1 - self._t0) / 3600.0
                # Mean power per GPU x time, summed over GPUs (watts from milliwatts).
                self._gpu_kwh = (
                    sum(_mean(s) / 1000.0 for s in self._power_mw.values() if s) * hours / 1000.0
                )
                if not any(self._power_mw.values()):
                    self._gpu_kwh, self.nvml_reason = None, "NVML gave no power reading"
        except Exception as exc:  # a reading failing at the end: fall back to the estimate
            self._gpu_kwh = None
            self.nvml_reason = f"NVML reading failed: {type(exc).__name__}: {exc}"
        finally:
            self._close_nvml(nvml)
            self._nvml = None

    # -- the result -----------------------------------------------------------------------------
    @property
    def wall_s(self) -> float:
        """Seconds measured so far (to ``stop()``, or to now while running)."""
        end = self._t1 if self.stopped else time.perf_counter()
        return max(end - self._t0, 0.0) if self.started else 0.0

    def record(self) -> CostRecord:
        """The trial's :class:`CostRecord` (readings so far when the meter still runs)."""
        wall = self.wall_s
        cpu1 = self._cpu1 if self.stopped else process_cpu_seconds()
        cpu_core_hours = max(cpu1 - self._cpu0, 0.0) / 3600.0 if self.started else 0.0
        gpu_hours = wall * self._n_gpus / 3600.0
        return estimate_cost(
            self.model,
            wall_s=wall,
            cpu_core_hours=cpu_core_hours,
            gpu_hours=gpu_hours,
            gpu_energy_kwh=self._gpu_kwh if self.stopped else None,
        )

    # -- NVML -----------------------------------------------------------------------------------
    def _open_nvml(self) -> Any | None:
        if self._nvml_given is not None:
            try:
                self._nvml_given.nvmlInit()
            except Exception as exc:
                self.nvml_reason = f"NVML unavailable: {type(exc).__name__}: {exc}"
                return None
            return self._nvml_given
        nvml, reason = load_nvml()
        if nvml is None:
            self.nvml_reason = reason
        return nvml

    @staticmethod
    def _close_nvml(nvml: Any) -> None:
        try:
            nvml.nvmlShutdown()
        except Exception:  # shutting down is best effort
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample_power()

    def _sample_power(self) -> None:
        nvml = self._nvml
        if nvml is None:
            return
        for k, h in self._handles.items():
            try:
                self._power_mw[k].append(float(nvml.nvmlDeviceGetPowerUsage(h)))
            except Exception:  # one failed sample must not end the measurement
                continue


def _mean(values: Sequence[float]) -> float:
    """The mean of a non-empty sequence."""
    return sum(values) / len(values)


# ---------------------------------------------------------------------------------------------
# sums
# ---------------------------------------------------------------------------------------------
_SUMMED = (
    "wall_s",
    "cpu_core_hours",
    "gpu_hours",
    "energy_kwh",
    "co2e_g",
    "money",
    "gpu_energy_kwh",
    "cpu_energy_kwh",
)


def sum_costs(
    records: Iterable[CostRecord | Mapping[str, Any]], currency: str | None = None
) -> CostRecord:
    """Add records up (the trials of a study, the studies of a workflow stage, the stages of a run).

    ``energy_source`` of the sum is the records' common source, or ``mixed``.

    Raises:
        ValueError: when the records are priced in different currencies.
    """
    totals = dict.fromkeys(_SUMMED, 0.0)
    sources: set[str] = set()
    currencies: set[str] = set()
    for rec in records:
        data = rec.as_dict() if isinstance(rec, CostRecord) else dict(rec)
        for key in _SUMMED:
            value = data.get(key)
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                totals[key] += float(value)
        if data.get("energy_source"):
            sources.add(str(data["energy_source"]))
        if data.get("currency"):
            currencies.add(str(data["currency"]))
    if len(currencies) > 1:
        raise ValueError(
            f"cannot add costs in different currencies: {', '.join(sorted(currencies))}"
        )
    source = next(iter(sources)) if len(sources) == 1 else ("mixed" if sources else "tdp-estimate")
    return CostRecord(
        **totals, energy_source=source, currency=next(iter(currencies), currency or "USD")
    )


def summarize_costs(trials: Iterable[Any]) -> dict[str, Any]:
    """The cost of a study's trials (Optuna ``FrozenTrial``\\ s or anything with ``state`` and ``user_attrs``).

    Returns:
        ``{"total": <record dict>, "by_state": {"complete"|"pruned"|"fail"|...: <record dict>},
        "trials": <trials with a cost record>, "unmeasured": <trials without one>}``. Pruned and
        failed trials count: their compute was spent.
    """
    by_state: dict[str, list[Mapping[str, Any]]] = {}
    unmeasured = 0
    for trial in trials:
        cost = (getattr(trial, "user_attrs", None) or {}).get("cost")
        if not isinstance(cost, Mapping):
            unmeasured += 1
            continue
        state = getattr(getattr(trial, "state", None), "name", "unknown").lower()
        by_state.setdefault(state, []).append(cost)
    measured = [c for recs in by_state.values() for c in recs]
    return {
        "total": sum_costs(measured).as_dict(),
        "by_state": {state: sum_costs(recs).as_dict() for state, recs in sorted(by_state.items())},
        "trials": len(measured),
        "unmeasured": unmeasured,
    }


def _amount(x: float) -> str:
    # Two decimals for sizeable figures; two significant digits for tiny ones (0.00041 kWh).
    return f"{x:.2f}" if x == 0 or abs(x) >= 0.01 else f"{x:.2g}"


def format_cost(record: CostRecord | Mapping[str, Any]) -> str:
    """One line: ``0.12 GPU-h, 0.50 CPU core-h, 0.04 kWh (tdp-estimate), 19 g CO2e, $0.00``."""
    rec = record if isinstance(record, CostRecord) else CostRecord.from_dict(record)
    co2 = f"{rec.co2e_g:.0f}" if rec.co2e_g >= 1 or rec.co2e_g == 0 else f"{rec.co2e_g:.2g}"
    symbol = CURRENCY_SYMBOLS.get(rec.currency.upper())
    money = f"{symbol}{rec.money:.2f}" if symbol else f"{rec.money:.2f} {rec.currency}"
    return (
        f"{_amount(rec.gpu_hours)} GPU-h, {_amount(rec.cpu_core_hours)} CPU core-h, "
        f"{_amount(rec.energy_kwh)} kWh ({rec.energy_source}), {co2} g CO2e, {money}"
    )
