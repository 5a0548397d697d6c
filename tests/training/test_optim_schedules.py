"""Optimisers, lr scaling, schedules and the plateau tracker."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from speechtune.config import OptimConfig, ScheduleConfig
from speechtune.config._schema import OPTIMIZERS, SCHEDULES
from speechtune.training import (
    OPTIMIZER_PARAMS,
    PlateauTracker,
    build_optimizer,
    effective_batch,
    lr_at,
    scale_lr,
)

# ---------------------------------------------------------------- optimisers


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_and_reduces_a_quadratic(name: str) -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 4))
    opt = build_optimizer([w], OptimConfig(name=name, weight_decay=0.0), lr=0.05)
    assert opt.param_groups[0]["lr"] == 0.05
    start = float((w.detach() ** 2).sum())
    for _ in range(20):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert float((w.detach() ** 2).sum()) < start


def test_optimizer_classes_and_fields() -> None:
    p = [torch.nn.Parameter(torch.zeros(2, 2))]
    cfg = OptimConfig(name="adam", beta1=0.8, beta2=0.95, eps=1e-7, weight_decay=0.01)
    adam = build_optimizer(p, cfg, lr=1e-3)
    assert type(adam) is torch.optim.Adam
    assert adam.param_groups[0]["betas"] == (0.8, 0.95)
    assert adam.param_groups[0]["eps"] == 1e-7
    assert adam.param_groups[0]["weight_decay"] == 0.01
    adamw = build_optimizer(p, dataclasses.replace(cfg, name="adamw"), 1e-3)
    assert type(adamw) is torch.optim.AdamW
    sgd = build_optimizer(
        p, OptimConfig(name="sgd", momentum=0.7, nesterov=True, weight_decay=0.1), 0.1
    )
    assert type(sgd) is torch.optim.SGD
    assert (sgd.param_groups[0]["momentum"], sgd.param_groups[0]["nesterov"]) == (0.7, True)
    ada = build_optimizer(p, OptimConfig(name="adafactor", weight_decay=0.02), 0.01)
    assert type(ada) is torch.optim.Adafactor
    assert ada.param_groups[0]["weight_decay"] == 0.02


def test_sgd_nesterov_without_momentum_is_a_clear_error() -> None:
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="nesterov.*momentum"):
        build_optimizer(p, OptimConfig(name="sgd", momentum=0.0, nesterov=True), 0.1)


def test_unknown_optimizer_lists_valid_names() -> None:
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="adafactor.*'lion'"):
        build_optimizer(p, OptimConfig(name="lion"), 0.1)


def test_optimizer_params_cover_every_optimizer_with_real_fields() -> None:
    fields = {f.name for f in dataclasses.fields(OptimConfig)}
    assert set(OPTIMIZER_PARAMS) == set(OPTIMIZERS)
    for used in OPTIMIZER_PARAMS.values():
        assert set(used) <= fields
    assert "beta1" not in OPTIMIZER_PARAMS["sgd"]
    assert "momentum" in OPTIMIZER_PARAMS["sgd"]
    assert OPTIMIZER_PARAMS["adafactor"] == ("weight_decay",)


def test_effective_batch_and_lr_scaling() -> None:
    assert effective_batch(16, 4, 2) == 128
    with pytest.raises(ValueError, match="grad_accum"):
        effective_batch(16, 0, 1)
    assert scale_lr(1e-3, 64, 16, "none") == 1e-3
    assert scale_lr(1e-3, 64, 16, "linear") == pytest.approx(4e-3)
    assert scale_lr(1e-3, 64, 16, "sqrt") == pytest.approx(2e-3)
    assert scale_lr(1e-3, 8, 16, "sqrt") == pytest.approx(1e-3 / math.sqrt(2))
    with pytest.raises(ValueError, match="linear"):
        scale_lr(1e-3, 64, 16, "cubic")


# ---------------------------------------------------------------- schedules


def _lr(
    name: str, step: int, total: int = 14, d_model: int = 256, red: int = 0, **kw: object
) -> float:
    cfg = ScheduleConfig(name=name, **{"warmup_steps": 4, "min_lr_ratio": 0.1, **kw})
    return lr_at(step, cfg, 1.0, total, d_model, red)


@pytest.mark.parametrize(
    ("name", "step", "expected", "kw"),
    [
        # linear warmup (step + 1) / (warmup + 1), peak at step == warmup
        ("constant", 0, 0.2, {}),
        ("constant", 3, 0.8, {}),
        ("constant", 4, 1.0, {}),
        ("constant", 1000, 1.0, {}),
        # noam: s = step + 1; sqrt(4) * min(s^-0.5, s / 8)
        ("noam", 0, 0.25, {}),
        ("noam", 3, 1.0, {}),
        ("noam", 15, 0.5, {}),
        ("noam", 63, 0.25, {}),
        # cosine over steps 4..14 from 1.0 to 0.1
        ("warmup_cosine", 2, 0.6, {}),
        ("warmup_cosine", 4, 1.0, {}),
        ("warmup_cosine", 9, 0.55, {}),
        ("warmup_cosine", 14, 0.1, {}),
        ("warmup_cosine", 40, 0.1, {}),
        # 0.5 ** (step - 4), floored at 0.1
        ("warmup_exponential", 4, 1.0, {"gamma": 0.5}),
        ("warmup_exponential", 5, 0.5, {"gamma": 0.5}),
        ("warmup_exponential", 7, 0.125, {"gamma": 0.5}),
        ("warmup_exponential", 8, 0.1, {"gamma": 0.5}),
        # triangle of period 10 after warmup: 1.0 -> 0.1 (step 9) -> 1.0 (step 14)
        ("cyclic", 4, 1.0, {"cycle_steps": 10}),
        ("cyclic", 6, 0.64, {"cycle_steps": 10}),
        ("cyclic", 9, 0.1, {"cycle_steps": 10}),
        ("cyclic", 11, 0.46, {"cycle_steps": 10}),
        ("cyclic", 14, 1.0, {"cycle_steps": 10}),
        ("cyclic", 1, 0.4, {"cycle_steps": 10}),
        ("plateau", 10, 1.0, {}),
    ],
)
def test_known_values(name: str, step: int, expected: float, kw: dict) -> None:
    assert _lr(name, step, **kw) == pytest.approx(expected, abs=1e-12)


def test_plateau_applies_reductions() -> None:
    assert _lr("plateau", 10, red=2, plateau_factor=0.5) == pytest.approx(0.25)
    assert _lr("plateau", 0, red=2, plateau_factor=0.5) == pytest.approx(0.05)


@pytest.mark.parametrize("name", SCHEDULES)
def test_peak_equals_peak_lr_and_warmup_rises(name: str) -> None:
    cfg = ScheduleConfig(name=name, warmup_steps=50, cycle_steps=40, gamma=0.99)
    lrs = [lr_at(s, cfg, 3e-4, 500, 144) for s in range(500)]
    assert max(lrs) == pytest.approx(3e-4, rel=1e-12)
    assert all(a < b for a, b in zip(lrs[:49], lrs[1:50]))  # strictly rising warmup
    assert min(lrs) > 0


@pytest.mark.parametrize("name", SCHEDULES)
def test_warmup_zero_starts_at_peak(name: str) -> None:
    cfg = ScheduleConfig(name=name, warmup_steps=0)
    assert lr_at(0, cfg, 1e-3, 100, 144) == pytest.approx(1e-3)
    assert lr_at(5, cfg, 1e-3, 100, 144) > 0


def test_decay_pieces_are_monotonic() -> None:
    # From the peak on: step warmup - 1 for noam (s = warmup), step warmup for the others.
    for name, peak_step in (("noam", 3), ("warmup_cosine", 4), ("warmup_exponential", 4)):
        lrs = [_lr(name, s, total=200, gamma=0.97) for s in range(peak_step, 300)]
        assert lrs[0] == pytest.approx(1.0)
        assert all(b <= a for a, b in zip(lrs, lrs[1:])), name


def test_noam_equals_vaswani_formula_with_peak_factor() -> None:
    warmup, peak = 4000, 2e-3
    cfg = ScheduleConfig(name="noam", warmup_steps=warmup)
    for d_model in (144, 512):
        factor = peak * math.sqrt(d_model * warmup)
        for step in (0, 100, 3999, 10_000):
            s = step + 1
            classic = factor * d_model**-0.5 * min(s**-0.5, s * warmup**-1.5)
            assert lr_at(step, cfg, peak, 20_000, d_model) == pytest.approx(classic, rel=1e-12)


def test_lr_at_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="schedule.name.*'step_decay'"):
        lr_at(0, ScheduleConfig(name="step_decay"), 1e-3, 10, 8)
    with pytest.raises(ValueError, match="step must be >= 0.*total_steps must be >= 1"):
        lr_at(-1, ScheduleConfig(), 1e-3, 0, 8)


# ---------------------------------------------------------------- plateau tracker

LOSSES = [3.0, 2.0, 2.5, 2.4, 1.0, 1.5, 1.6, 1.7, 1.8, float("nan"), 0.5]


def test_plateau_tracker_sequence() -> None:
    tracker = PlateauTracker(patience=1)
    assert [tracker.update(x) for x in LOSSES] == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert tracker.best == 0.5


def test_plateau_tracker_matches_torch_reduce_on_plateau() -> None:
    for patience in (0, 1, 2):
        w = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([w], lr=1.0)
        ref = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=0.5, patience=patience, threshold=0.0
        )
        tracker = PlateauTracker(patience=patience)
        cfg = ScheduleConfig(name="plateau", warmup_steps=0, plateau_factor=0.5)
        for loss in LOSSES[:9]:  # torch's scheduler has no NaN semantics worth comparing
            ref.step(loss)
            reductions = tracker.update(loss)
            assert lr_at(0, cfg, 1.0, 1, 8, reductions) == pytest.approx(opt.param_groups[0]["lr"])


def test_plateau_tracker_state_roundtrip() -> None:
    a = PlateauTracker(patience=2)
    for x in LOSSES[:6]:
        a.update(x)
    b = PlateauTracker(patience=2)
    b.load_state_dict(dict(a.state_dict()))
    assert [a.update(x) for x in LOSSES[6:]] == [b.update(x) for x in LOSSES[6:]]
    assert a.state_dict() == b.state_dict()
    assert PlateauTracker().state_dict() == {"best": None, "bad_epochs": 0, "reductions": 0}
    with pytest.raises(ValueError, match="reductions"):
        b.load_state_dict({"best": 1.0, "bad_epochs": 0})
