"""Continuing a finished run to more epochs (multi-fidelity promotion): the schedule horizon
``train.schedule_epochs``, the resume check that accepts only a larger ``train.epochs``, and the
recipe objective that continues a copied parent trial."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from speechtune.config import config_to_dict, dump_config, flatten
from speechtune.data import Manifest, PreparedData, proxy_subset
from speechtune.training import CallbackReporter, train
from speechtune.training._resume import check_resume_config
from speechtune.tuning.objectives import CONTINUE_MARKER, RecipeObjective
from speechtune.tuning.objectives._recipe import _proxy_data
from tests.helpers.recipes import run_options, tiny_config

COMPARED = ("train_loss", "dev_loss", "wer", "cer", "worst_group_wer", "grad_norm", "lr")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here (restored afterwards): for a model this small a second OpenMP thread
    only adds synchronisation; measured 0.7 s per run with one thread against 5-7 s with two on
    a busy two-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_data(synth_data: PreparedData) -> PreparedData:
    """A slice of the session corpus (both accent groups in dev), so that a run takes seconds."""
    dev = [
        u
        for g in synth_data.dev.groups
        for u in synth_data.dev.filter(lambda u, g=g: u.group == g)[:6]
    ]
    return PreparedData(
        train=synth_data.train[:64],
        dev=Manifest(dev, "dev", synth_data.dev.root),
        report=synth_data.report,
    )


@pytest.fixture(scope="module")
def straight(small_data: PreparedData, tmp_path_factory: pytest.TempPathFactory):
    """Three epochs in one run: what every continuation below must reproduce."""
    return train(
        _config(epochs=3, schedule_epochs=3),
        run_options(tmp_path_factory.mktemp("straight")),
        data=small_data,
    )


def _config(**train_keys: object):
    # Cosine decay (its shape depends on the horizon), dropout and SpecAugment (random streams
    # that a continuation must pick up where they were).
    return tiny_config(
        specaugment={"enabled": True, "time_mask_width": 8, "freq_mask_width": 4},
        model={"dropout": 0.1},
        schedule={"name": "warmup_cosine", "warmup_steps": 1},
        train={"batch_size": 16, **train_keys},
    )


def _assert_same_rows(a: list[dict], b: list[dict]) -> None:
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for x, y in zip(a, b):
        for key in COMPARED:
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9), (x["epoch"], key)


def test_one_epoch_then_continue_equals_three_straight(
    small_data: PreparedData, straight, tmp_path: Path
) -> None:
    assert straight.status == "complete", straight.reason
    first = train(
        _config(epochs=1, schedule_epochs=3), run_options(tmp_path, "cont"), data=small_data
    )
    assert first.status == "complete" and [r["epoch"] for r in first.history] == [1]
    seen: list[int] = []
    reporter = CallbackReporter(lambda epoch, metrics: bool(seen.append(epoch)))
    resumed = train(
        _config(epochs=3, schedule_epochs=3),
        run_options(tmp_path, "cont", resume=True),
        reporter,
        data=small_data,
    )
    assert resumed.status == "complete", resumed.reason
    assert seen == [2, 3]  # only the new epochs are reported
    _assert_same_rows(straight.history, resumed.history)
    for key in ("wer", "cer", "worst_group_wer", "dev_loss", "best_epoch", "epochs_run"):
        assert resumed.metrics[key] == pytest.approx(straight.metrics[key], rel=1e-6, abs=1e-9), (
            key
        )
    assert resumed.metrics["epochs_run"] == 3
    assert "epochs: 3" in (tmp_path / "cont" / "config.yaml").read_text()
    assert len(json.loads((tmp_path / "cont" / "history.json").read_text())) == 3
    # The horizon is what makes it exact: the 1-epoch run's lr followed the 3-epoch cosine,
    # still near its peak after epoch 1, not one decayed to the floor within that epoch.
    assert first.history[0]["lr"] == pytest.approx(straight.history[0]["lr"], rel=1e-9)
    assert first.history[0]["lr"] > 0.5 * 0.003


def test_a_changed_lr_still_refuses_to_resume(small_data: PreparedData, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    dump_config(_config(epochs=1, schedule_epochs=3), out / "config.yaml")
    changed = _config(epochs=3, schedule_epochs=3)
    changed.optim.lr = 0.01
    with pytest.raises(ValueError, match=r"optim\.lr: 0\.003 -> 0\.01"):
        train(changed, run_options(tmp_path, "run", resume=True), data=small_data)


@pytest.mark.parametrize(
    "saved,now,ok",
    [
        ({"epochs": 1, "schedule_epochs": 3}, {"epochs": 3, "schedule_epochs": 3}, True),
        (
            {"epochs": 1, "schedule_epochs": 3},
            {"epochs": 3},
            True,
        ),  # same horizon, spelt differently
        ({"epochs": 2}, {"epochs": 2, "schedule_epochs": 2}, True),
        ({"epochs": 1}, {"epochs": 3}, True),  # allowed, with a warning (the horizon moves)
        ({"epochs": 3}, {"epochs": 1}, False),  # fewer epochs is not a continuation
        ({"epochs": 2}, {"epochs": 2, "schedule_epochs": 5}, False),  # the horizon alone moves
        ({"epochs": 1}, {"epochs": 3, "batch_size": 8}, False),
    ],
)
def test_resume_check_accepts_only_more_epochs(
    tmp_path: Path, saved: dict, now: dict, ok: bool
) -> None:
    dump_config(tiny_config(train=saved), tmp_path / "config.yaml")
    cfg = tiny_config(train=now)
    if ok:
        check_resume_config(cfg, tmp_path / "config.yaml")
    else:
        with pytest.raises(ValueError, match="cannot resume") as info:
            check_resume_config(cfg, tmp_path / "config.yaml")
        changed = sorted(k for k in {**saved, **now} if saved.get(k) != now.get(k))
        assert any(f"train.{k}" in str(info.value) for k in changed)


def test_resume_check_warns_when_the_horizon_moves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dump_config(tiny_config(train={"epochs": 1}), tmp_path / "config.yaml")
    with caplog.at_level(logging.WARNING, logger="speechtune.training._loop"):
        check_resume_config(tiny_config(train={"epochs": 3}), tmp_path / "config.yaml")
    assert "horizon moved from 1 to 3 epochs" in caplog.text
    caplog.clear()
    dump_config(tiny_config(train={"epochs": 1, "schedule_epochs": 3}), tmp_path / "config.yaml")
    with caplog.at_level(logging.WARNING, logger="speechtune.training._loop"):
        check_resume_config(
            tiny_config(train={"epochs": 3, "schedule_epochs": 3}), tmp_path / "config.yaml"
        )
    assert caplog.text == ""


def test_recipe_objective_continues_from_the_marker(
    small_data: PreparedData, straight, tmp_path: Path
) -> None:
    # The base is the straight run's recipe and seed 1 its seed, so the trials below are that run.
    base = config_to_dict(_config(epochs=1))
    obj = RecipeObjective(
        base, device="cpu", cache_dir=tmp_path.parent / "shared_cache", data=small_data
    )
    low = {"train.epochs": 1, "train.schedule_epochs": 3}
    high = {"train.epochs": 3, "train.schedule_epochs": 3}
    parent = obj(low, CallbackReporter(lambda e, m: False), tmp_path / "t0", seed=1)
    assert parent.status == "complete", parent.reason
    # What the study runner does: copy the parent's files, then drop the marker.
    marker = {"parent_trial": 0, "parent_dir": str(tmp_path / "t0")}
    for trial, with_marker in (("t1", True), ("t2", False)):
        (tmp_path / trial).mkdir()
        for name in ("last.pt", "model.pt", "config.yaml", "metrics.json", "history.json"):
            shutil.copy2(tmp_path / "t0" / name, tmp_path / trial / name)
        if with_marker:
            (tmp_path / trial / CONTINUE_MARKER).write_text(json.dumps(marker))
    seen: list[int] = []
    child = obj(high, CallbackReporter(lambda e, m: bool(seen.append(e))), tmp_path / "t1", seed=1)
    assert child.status == "complete", child.reason
    assert seen == [2, 3]  # the new trial's pruner sees only its own epochs
    assert [r["epoch"] for r in child.history] == [1, 2, 3]  # the curve stays whole
    assert child.history[0]["train_loss"] == parent.history[0]["train_loss"]
    assert child.extra["continued_from"] == marker
    _assert_same_rows(straight.history, child.history)
    assert child.metrics["wer"] == pytest.approx(straight.metrics["wer"], abs=1e-9)
    assert child.metrics["dev_loss"] == pytest.approx(straight.metrics["dev_loss"], rel=1e-6)
    # Without the marker, a checkpoint left in the trial dir is not continued: it trains anew.
    seen.clear()
    fresh = obj(high, CallbackReporter(lambda e, m: bool(seen.append(e))), tmp_path / "t2", seed=1)
    assert seen == [1, 2, 3] and "continued_from" not in fresh.extra
    _assert_same_rows(straight.history, fresh.history)


def test_reused_data_gets_the_trials_proxy_subset(small_data: PreparedData) -> None:
    full = _config(epochs=1)
    assert _proxy_data(small_data, full.data) is small_data
    half = _config(epochs=1)
    half.data.proxy_fraction = 0.5
    sub = _proxy_data(small_data, half.data)
    expected = proxy_subset(small_data.train, fraction=0.5, seed=half.data.split_seed)
    assert [u.id for u in sub.train] == [u.id for u in expected]
    assert 0 < len(sub.train) < len(small_data.train)
    assert sub.dev is small_data.dev  # model selection keeps the whole dev set
    hours = _config(epochs=1)
    hours.data.proxy_hours = 0.01  # 36 s of audio
    assert sum(u.duration for u in _proxy_data(small_data, hours.data).train) <= 36.0 + 5.0
    assert flatten(config_to_dict(half))["data.proxy_fraction"] == 0.5
