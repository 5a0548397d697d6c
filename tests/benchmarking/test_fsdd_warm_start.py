"""benchmarks/fsdd_warm_start.py: the three arms' tuning YAMLs (each one a valid study), the
anytime trace read from a study's trials.csv, and the summary (no training)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import yaml

from speechtune.tuning.spec import validate_tuning
from tests.helpers.paths import CONF, REPO
from tests.helpers.scripts import load_script

ws = load_script(REPO / "benchmarks" / "fsdd_warm_start.py", "fsdd_warm_start")

BASE = yaml.safe_load((CONF / "tuning_fsdd.yaml").read_text())


@pytest.mark.parametrize("arm", ["cold", "prior", "warm"])
def test_each_arm_is_a_valid_tuning_yaml(arm: str, tmp_path: Path) -> None:
    warm_from = tmp_path / "an4-study"
    warm_from.mkdir()
    spec = ws.arm_spec(BASE, CONF, arm, warm_from)
    fidelity = spec["fidelity"]
    priors = [e.get("prior") for e in spec["space"].values() if isinstance(e, dict)]
    if arm == "prior":
        assert spec["space"] == BASE["space"] and "baseline" not in fidelity
        assert all(p is not None for p in priors)
    else:
        # No recipe knowledge: no priors, no baseline, and no searched key also fixed.
        assert all(p is None for p in priors) and fidelity["baseline"] is False
        assert not set(spec["overrides"]) & set(spec["space"])
        assert spec["overrides"]["data.corpus"] == "fsdd"
    assert fidelity.get("priors", True) is (arm != "cold")
    assert (fidelity.get("warm_start") == str(warm_from)) is (arm == "warm")
    assert spec["study"]["name"] == f"fsdd-5min-{arm}"
    path = tmp_path / f"{arm}.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert validate_tuning(path) == []
    with pytest.raises(ValueError, match="arm must be one of"):
        ws.arm_spec(BASE, CONF, "hot", None)


def _trials_csv(path: Path, rows: list[tuple[int, str, int, float | None, float]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "rung", "wer", "job_cost", "cost.cpu_core_hours"])
        for number, state, rung, wer, cost in rows:
            w.writerow([number, state, rung, "" if wer is None else wer, cost, 0.01])
    return path


def test_trace_counts_compute_in_job_order_and_tracks_the_top_rung(tmp_path: Path) -> None:
    # Written out of order; rung 2 is the top; a failed job costs compute but sets nothing.
    path = _trials_csv(
        tmp_path / "trials.csv",
        [
            (1, "COMPLETE", 0, 0.2, 0.3),  # a cheap rung's value never counts as the incumbent
            (0, "COMPLETE", 2, 0.5, 1.0),
            (2, "FAIL", 2, None, 0.4),
            (3, "COMPLETE", 2, 0.4, 0.7),
        ],
    )
    t = ws.read_trace(path)
    assert t["costs"] == pytest.approx([1.0, 1.3, 1.7, 2.4])
    assert t["incumbents"] == [0.5, 0.5, 0.5, 0.4]
    assert t["jobs"] == 4 and t["top_rung_jobs"] == 3 and t["first_top_rung_wer"] == 0.5
    assert t["cpu_core_hours"] == pytest.approx(0.04)
    assert ws.best_at(t, 0.5) == math.inf and ws.best_at(t, 2.0) == 0.5
    assert ws.cost_to_reach(t, 0.45) == pytest.approx(2.4)
    assert ws.cost_to_reach(t, 0.1) == math.inf
    # Compared at a smaller budget: the jobs that fit in it.
    cut = ws.truncate(t, 1.7)
    assert cut["jobs"] == 3 and cut["incumbents"] == [0.5, 0.5, 0.5]


def test_summary_targets_the_cold_arms_final_best_and_counts_who_reaches_it() -> None:
    def trace(costs: list[float], incs: list[float]) -> dict[str, object]:
        return {"costs": costs, "incumbents": incs, "first_top_rung_wer": incs[0], "jobs": 3,
                "cpu_core_hours": 0.1}  # fmt: skip

    traces = {
        "cold": {0: trace([1, 2, 3], [0.6, 0.5, 0.5]), 1: trace([1, 2, 3], [0.7, 0.7, 0.3])},
        "warm": {0: trace([1, 2, 3], [0.35, 0.35, 0.3]), 1: trace([1, 2, 3], [0.5, 0.45, 0.45])},
    }
    s = ws.summarise(traces, [2.0])
    assert s["target_wer"] == pytest.approx(0.4)  # mean of cold's finals 0.5 and 0.3
    assert s["arms"]["cold"]["compute_to_target"] == [math.inf, 3]
    assert s["arms"]["warm"]["compute_to_target"] == [1, math.inf]
    assert s["arms"]["warm"]["reached"] == 1
    assert s["arms"]["warm"]["at"]["2.0"][0] == pytest.approx(0.4)  # (0.35 + 0.45) / 2
    table = ws.markdown(s, [2.0])
    assert "| warm |" in table and "never" in table and "(1/2)" in table
    # A seed without a top-rung result is shown as such, not averaged away.
    assert ws._fmt([0.4, math.inf]) == "0.400 / -" and ws._fmt([0.4, 0.6]) == "0.500 ± 0.100"
