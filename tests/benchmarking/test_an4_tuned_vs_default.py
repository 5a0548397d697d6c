"""benchmarks/an4_tuned_vs_default.py: which arm trains longer for a comparison at equal time."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.paths import REPO
from tests.helpers.scripts import load_script

tvd = load_script(REPO / "benchmarks" / "an4_tuned_vs_default.py", "an4_tuned_vs_default")


def _run(arm: str, seed: int, wer: float, s_per_epoch: float, epochs: int = 15) -> dict[str, Any]:
    return {
        "arm": arm,
        "seed": seed,
        "wer": wer,
        "cer": wer / 2,
        "worst_group_wer": wer * 1.2,
        "group_wer": {"female": wer * 1.2, "male": wer * 0.8},
        "train_seconds": s_per_epoch * epochs,
        "epochs_run": epochs,
    }


def test_a_tuned_config_with_costlier_epochs_gets_defaults_trained_for_its_time() -> None:
    """The first AN4 CPU study: tuned epochs cost 1.2x, so the defaults train 18 epochs, not 15."""
    runs = [_run("default", s, 0.43, 25.0) for s in (1, 2, 3)]
    runs += [_run("tuned", s, 0.375, 30.0) for s in (1, 2, 3)]
    plan = tvd.equal_time_plan(runs, {"default": 15, "tuned": 15}, 0.05)
    assert plan == {"arm": "default", "epochs": 18, "time_ratio": pytest.approx(1.2)}
    longer = [_run("default", s, w, 25.0, 18) for s, w in ((1, 0.348), (2, 0.367), (3, 0.358))]
    eq = tvd.summarise_equal_time(plan, longer, runs)
    assert eq["summary"]["equal_time"]["wer"][0] == pytest.approx(0.3577, abs=1e-4)
    # At equal time the tuned config (0.375) loses: a positive change in WER.
    assert eq["summary"]["relative_wer_change"] == pytest.approx(0.375 / 0.35767 - 1, rel=1e-3)
    assert "equal time: default trained for 18 epochs" in tvd.markdown_equal_time(eq)


def test_a_cheaper_tuned_config_is_the_arm_trained_longer() -> None:
    runs = [_run("default", 1, 0.44, 30.0), _run("tuned", 1, 0.40, 20.0, 10)]
    plan = tvd.equal_time_plan(runs, {"default": 15, "tuned": 10}, 0.05)
    assert plan is not None and plan["arm"] == "tuned"
    assert plan["epochs"] == 22  # the defaults' 15 epochs at 30 s are 22.5 of the tuned 20 s
    eq = tvd.summarise_equal_time(plan, [_run("tuned", 1, 0.33, 20.0, 22)], runs)
    assert eq["summary"]["relative_wer_change"] == pytest.approx(0.33 / 0.44 - 1)


def test_equal_costs_or_missing_runs_need_no_equal_time_arm() -> None:
    same = [_run("default", 1, 0.44, 25.0), _run("tuned", 1, 0.38, 25.9)]
    assert tvd.equal_time_plan(same, {"default": 15, "tuned": 15}, 0.05) is None
    failed = [_run("default", 1, 0.44, 25.0), {"arm": "tuned", "seed": 1, "wer": None}]
    assert tvd.equal_time_plan(failed, {"default": 15, "tuned": 15}, 0.05) is None
