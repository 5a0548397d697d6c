"""Narrowing a search space around the top coarse configs, and warm-starting the fine study."""

from __future__ import annotations

import math
import warnings

import optuna
import pytest
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from speechtune.tuning.space import (
    CategoricalParam,
    DerivedParam,
    FixedParam,
    FloatParam,
    IntParam,
    Prior,
    SearchSpace,
    parse_space,
)
from speechtune.workflow._narrow import (
    FLOOR_SHARE,
    describe_param,
    distributions_for,
    encode_params,
    in_space,
    narrow_space,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space() -> SearchSpace:
    return parse_space(
        {
            "optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
            "optim.name": ["adam", "adamw", "sgd"],
            "optim.momentum": {
                "type": "float",
                "low": 0.5,
                "high": 0.99,
                "when": {"optim.name": "sgd"},
            },
            "model.conv_kernel": {"type": "int", "low": 7, "high": 31, "step": 2},
            "model.d_model": {"type": "int", "low": 16, "high": 512, "log": True},
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.05},
            "data.accents": {"choices": [["en-us", "en-gb"], ["en-us"]]},
            "model.encoder": {"value": "conformer"},
            "schedule.warmup_steps": {"derive": "4 * model.d_model"},
        },
        constraints=["model.d_model >= 16"],
        base={"train.epochs": 3},
    )


def _check_valid(space: SearchSpace, original: SearchSpace) -> None:
    """Every narrowed numeric param is a valid Optuna range inside the original, on its grid."""
    for name, param in space.params.items():
        old = original.params[name]
        assert type(param) is type(old)
        assert param.when == old.when
        if isinstance(param, (FloatParam, IntParam)):
            assert old.low <= param.low <= param.high <= old.high, name
            assert param.log == old.log and param.step == old.step
            if param.step is not None:
                k = (param.low - old.low) / param.step
                assert abs(k - round(k)) < 1e-9, f"{name}: low {param.low} off the grid"
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "error"
                )  # Optuna warns when it has to move `high` onto the grid
                param.distribution()
        if isinstance(param, CategoricalParam):
            assert set(param.encoded()) <= set(old.encoded())
            assert param.choices == tuple(
                c for c in old.choices if c in param.choices
            )  # order kept


def test_log_float_is_narrowed_in_log_space_and_stays_log() -> None:
    space = _space()
    top = [{"optim.lr": 1e-3}, {"optim.lr": 2e-3}]
    narrowed, changes = narrow_space(space, top, expand=0.25)
    lr = narrowed.params["optim.lr"]
    assert isinstance(lr, FloatParam) and lr.log is True
    # spread ln 2 = 0.69 is below the floor 0.2 * ln 100 = 0.92, so each side moves 0.25 * 0.92.
    pad = 0.25 * max(math.log(2), FLOOR_SHARE * math.log(100))
    assert lr.low == pytest.approx(1e-3 * math.exp(-pad), rel=1e-12)
    assert lr.high == pytest.approx(2e-3 * math.exp(pad), rel=1e-12)
    assert changes["optim.lr"] == {
        "before": "[0.0001, 0.01] log",
        "after": "[0.000794328, 0.00251785] log",
    }
    # A wide spread: the widening is expand x spread (in log space), clipped at the bound.
    wide, _ = narrow_space(space, [{"optim.lr": 2e-4}, {"optim.lr": 5e-3}], expand=0.1)
    spread = math.log(5e-3 / 2e-4)
    assert wide.params["optim.lr"].low == pytest.approx(2e-4 * math.exp(-0.1 * spread), rel=1e-12)
    assert wide.params["optim.lr"].high == pytest.approx(5e-3 * math.exp(0.1 * spread), rel=1e-12)
    clipped, changes = narrow_space(space, [{"optim.lr": 1e-4}, {"optim.lr": 1e-2}])
    assert (clipped.params["optim.lr"].low, clipped.params["optim.lr"].high) == (1e-4, 1e-2)
    assert "optim.lr" not in changes  # nothing changed, nothing reported


def test_identical_top_values_still_leave_room_and_expand_zero_collapses_validly() -> None:
    space = SearchSpace({"x": FloatParam("x", 0.0, 1.0)})
    narrowed, _ = narrow_space(space, [{"x": 0.5}, {"x": 0.5}, {"x": 0.5}])
    x = narrowed.params["x"]
    assert (x.low, x.high) == pytest.approx((0.5 - 0.25 * FLOOR_SHARE, 0.5 + 0.25 * FLOOR_SHARE))
    point, changes = narrow_space(space, [{"x": 0.5}], expand=0.0)
    assert (point.params["x"].low, point.params["x"].high) == (0.5, 0.5)
    assert changes["x"]["after"] == "[0.5, 0.5]"
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(lambda t: point.sample(t)["x"], n_trials=3)  # Optuna accepts low == high
    assert {t.params["x"] for t in study.trials} == {0.5}


def test_min_width_grows_the_region_and_shifts_it_off_a_bound() -> None:
    space = SearchSpace({"x": FloatParam("x", 0.0, 1.0)})
    narrowed, _ = narrow_space(space, [{"x": 0.05}], expand=0.0, min_width=0.5)
    assert (narrowed.params["x"].low, narrowed.params["x"].high) == pytest.approx((0.0, 0.5))
    with pytest.raises(ValueError, match="min_width"):
        narrow_space(space, [{"x": 0.05}], min_width=1.5)
    with pytest.raises(ValueError, match="expand"):
        narrow_space(space, [{"x": 0.05}], expand=-1)


def test_ints_round_outward_onto_their_step_grid() -> None:
    space = _space()
    narrowed, changes = narrow_space(space, [{"model.conv_kernel": 15}, {"model.conv_kernel": 19}])
    k = narrowed.params["model.conv_kernel"]
    # spread 4 < floor 0.2 * 24 = 4.8: [15 - 1.2, 19 + 1.2] = [13.8, 20.2] -> grid 7 + 2k: [13, 21]
    assert (k.low, k.high, k.step) == (13, 21, 2)
    assert changes["model.conv_kernel"] == {"before": "[7, 31] step 2", "after": "[13, 21] step 2"}
    edge, _ = narrow_space(space, [{"model.conv_kernel": 7}])
    assert (edge.params["model.conv_kernel"].low, edge.params["model.conv_kernel"].high) == (7, 9)
    single, _ = narrow_space(space, [{"model.conv_kernel": 21}], expand=0.0)
    assert (single.params["model.conv_kernel"].low, single.params["model.conv_kernel"].high) == (
        21,
        21,
    )


def test_log_ints_stay_log_and_at_least_one() -> None:
    space = SearchSpace({"n": IntParam("n", 1, 1024, log=True)})
    narrowed, changes = narrow_space(space, [{"n": 1}, {"n": 2}])
    n = narrowed.params["n"]
    assert n.log is True and n.low == 1 and isinstance(n.high, int) and 2 <= n.high < 8
    mid, _ = narrow_space(space, [{"n": 64}])
    # 64 * exp(-/+0.25 * 0.2 * ln 1024) = 45.25 .. 90.5 -> outward to [45, 91]
    assert (mid.params["n"].low, mid.params["n"].high) == (45, 91)


def test_float_step_grid_is_kept_exactly() -> None:
    space = _space()
    top = [
        {"model.dropout": 0.1 + 0.05 * 3},
        {"model.dropout": 0.35},
    ]  # 0.25000000000000006 as Optuna makes it
    narrowed, changes = narrow_space(space, top)
    d = narrowed.params["model.dropout"]
    # spread 0.1 = floor 0.2 * 0.5: pad 0.025 -> [0.225, 0.375] -> grid of 0.05: [0.2, 0.4]
    assert (d.low, d.high, d.step) == (0.2, 0.4, 0.05)
    assert changes["model.dropout"] == {
        "before": "[0, 0.5] step 0.05",
        "after": "[0.2, 0.4] step 0.05",
    }


def test_categoricals_keep_the_seen_choices_in_order() -> None:
    space = _space()
    top = [{"optim.name": "sgd"}, {"optim.name": "adam"}, {"optim.name": "sgd"}]
    narrowed, changes = narrow_space(space, top)
    assert narrowed.params["optim.name"].choices == ("adam", "sgd")
    assert changes["optim.name"] == {"before": "{adam, adamw, sgd}", "after": "{adam, sgd}"}
    # One choice left stays a categorical; list choices may arrive as Optuna's YAML text.
    one, changes = narrow_space(
        space, [{"data.accents": "[en-us, en-gb]"}, {"data.accents": ["en-us", "en-gb"]}]
    )
    accents = one.params["data.accents"]
    assert isinstance(accents, CategoricalParam) and accents.choices == (["en-us", "en-gb"],)
    assert changes["data.accents"] == {
        "before": "{[en-us, en-gb], [en-us]}",
        "after": "{[en-us, en-gb]}",
    }
    with pytest.raises(ValueError, match="not one of the choices"):
        narrow_space(space, [{"optim.name": "rmsprop"}])
    # bools and numbers stay apart: True is not the choice 1
    mixed = SearchSpace({"c": CategoricalParam("c", (1, True, 2))})
    assert narrow_space(mixed, [{"c": True}])[0].params["c"].choices == (True,)


def test_conditional_fixed_and_derived_params() -> None:
    space = _space()
    top = [
        {
            "optim.name": "sgd",
            "optim.momentum": 0.9,
            "model.encoder": "conformer",
            "schedule.warmup_steps": 256,
        },
        {"optim.name": "adam"},  # momentum inactive here
    ]
    narrowed, changes = narrow_space(space, top)
    m = narrowed.params["optim.momentum"]
    assert m.when == {"optim.name": ["sgd"]}
    assert m.low < 0.9 < m.high and (m.low, m.high) != (
        0.5,
        0.99,
    )  # narrowed from the one config that has it
    assert narrowed.params["model.encoder"] == FixedParam("model.encoder", "conformer")
    assert narrowed.params["schedule.warmup_steps"] == DerivedParam(
        "schedule.warmup_steps", "4 * model.d_model"
    )
    # absent from every top config: unchanged and not reported
    assert narrowed.params["optim.lr"] == space.params["optim.lr"] and "optim.lr" not in changes
    assert narrowed.constraints == space.constraints and narrowed.base == space.base
    inactive, changes = narrow_space(space, [{"optim.name": "adam"}])
    assert inactive.params["optim.momentum"] == space.params["optim.momentum"]
    assert "optim.momentum" not in changes
    unchanged, changes = narrow_space(space, [])
    assert unchanged.params == space.params and changes == {}


def test_priors_outside_the_new_range_are_dropped_inside_kept() -> None:
    space = SearchSpace(
        {
            "lr": FloatParam("lr", 1e-4, 1e-2, log=True, prior=Prior(3e-4, 0.2)),
            "k": IntParam("k", 7, 31, step=2, prior=Prior(15, 0.1)),
            "opt": CategoricalParam("opt", ("adam", "sgd"), prior=Prior("sgd")),
        }
    )
    narrowed, _ = narrow_space(
        space, [{"lr": 5e-3, "k": 13, "opt": "adam"}, {"lr": 8e-3, "k": 17, "opt": "adam"}]
    )
    assert narrowed.params["lr"].prior is None  # 3e-4 is far below the new range
    assert narrowed.params["k"].prior == Prior(15, 0.1)  # 15 lies in the new [11, 19]
    assert narrowed.params["opt"].prior is None and narrowed.params["opt"].choices == ("adam",)


def test_bad_top_values_are_refused() -> None:
    space = _space()
    with pytest.raises(ValueError, match="outside the original range"):
        narrow_space(space, [{"optim.lr": 0.5}])
    with pytest.raises(ValueError, match="not a number"):
        narrow_space(space, [{"model.conv_kernel": "15"}])
    with pytest.raises(ValueError, match="not an integer"):
        narrow_space(space, [{"model.conv_kernel": 15.5}])


def _coarse_study(space: SearchSpace, n: int = 40, seed: int = 3) -> optuna.Study:
    """A real random search over ``space`` with a known optimum (lr 2e-3, kernel 15, adam)."""

    def objective(trial: optuna.trial.Trial) -> float:
        cfg = space.sample(trial)
        value = (math.log10(cfg["optim.lr"]) - math.log10(2e-3)) ** 2 + abs(
            cfg["model.conv_kernel"] - 15
        ) / 10
        value += {"adam": 0.0, "adamw": 0.1, "sgd": 0.3}[cfg["optim.name"]] + cfg[
            "model.dropout"
        ] / 10
        trial.set_user_attr("config", cfg)
        return value

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    study.optimize(objective, n_trials=n)
    return study


def test_every_narrowed_space_is_valid_and_holds_its_top_configs() -> None:
    space = _space()
    for seed in range(6):
        study = _coarse_study(space, n=25, seed=seed)
        ranked = sorted(study.trials, key=lambda t: t.value)
        for k in (1, 3, 8):
            top = [t.user_attrs["config"] for t in ranked[:k]]
            for expand in (0.0, 0.25, 1.0):
                narrowed, changes = narrow_space(space, top, expand=expand)
                _check_valid(narrowed, space)
                assert all(in_space(narrowed, cfg) for cfg in top), (seed, k, expand)
                for name, change in changes.items():
                    assert change["before"] == describe_param(space.params[name])
                    assert change["after"] == describe_param(narrowed.params[name])


def test_in_space_checks_bounds_grid_and_choices() -> None:
    space = _space()
    narrowed, _ = narrow_space(
        space, [{"model.conv_kernel": 15, "optim.name": "adam", "model.dropout": 0.2}], expand=0.0
    )
    assert in_space(
        narrowed, {"model.conv_kernel": 15, "optim.name": "adam", "model.dropout": 0.2}
    )
    assert in_space(
        narrowed, {"optim.lr": 5e-3, "model.encoder": "anything", "unknown.key": 1}
    )  # unchecked keys
    assert not in_space(narrowed, {"model.conv_kernel": 17})  # outside the new bounds
    assert not in_space(space, {"model.conv_kernel": 16})  # off the step grid
    assert not in_space(space, {"model.dropout": 0.125})  # off the float grid
    assert not in_space(narrowed, {"optim.name": "sgd"})  # a dropped choice
    assert not in_space(space, {"model.conv_kernel": True})  # a bool is not an int
    assert not in_space(space, {"optim.lr": float("nan")})
    assert in_space(space, {"data.accents": "[en-us]"}) and in_space(
        space, {"data.accents": ["en-us"]}
    )


def test_encode_params_and_distributions_for_pair_up() -> None:
    space = _space()
    cfg = {
        "optim.lr": 1e-3,
        "optim.name": "adam",
        "model.conv_kernel": 15.0,
        "data.accents": ["en-us"],
        "model.encoder": "conformer",
        "schedule.warmup_steps": 64,
        "model.d_model": 16,
        "model.dropout": 0.1,
    }
    enc = encode_params(space, cfg)
    dists = distributions_for(space, cfg)
    assert list(enc) == list(dists)
    assert set(enc) == {
        "optim.lr",
        "optim.name",
        "model.conv_kernel",
        "data.accents",
        "model.d_model",
        "model.dropout",
    }
    assert (
        enc["data.accents"] == "[en-us]"
        and enc["model.conv_kernel"] == 15
        and isinstance(enc["model.conv_kernel"], int)
    )
    assert isinstance(dists["optim.lr"], FloatDistribution) and dists["optim.lr"].log
    assert (
        isinstance(dists["model.conv_kernel"], IntDistribution)
        and dists["model.conv_kernel"].step == 2
    )
    assert isinstance(dists["data.accents"], CategoricalDistribution)
    with pytest.raises(ValueError, match="not one of the choices"):
        encode_params(space, {"optim.name": "rmsprop"})


def test_coarse_trials_warm_start_a_tpe_study_that_stays_in_the_narrowed_region() -> None:
    space = _space()
    coarse = _coarse_study(space, n=40, seed=3)
    ranked = sorted(coarse.trials, key=lambda t: t.value)
    top = [t.user_attrs["config"] for t in ranked[:5]]
    narrowed, changes = narrow_space(space, top)
    assert {"optim.lr", "model.conv_kernel"} <= set(changes)  # the search really narrowed

    fine = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3))
    added = 0
    for trial in coarse.trials:
        cfg = trial.user_attrs["config"]
        if not in_space(narrowed, cfg):
            continue
        fine.add_trial(
            optuna.trial.create_trial(
                params=encode_params(narrowed, cfg),
                distributions=distributions_for(narrowed, cfg),
                value=trial.value,
            )
        )
        added += 1
    assert 5 <= added < len(coarse.trials)  # every top config, and not the whole coarse search
    assert {t.number for t in ranked[:5]} <= {
        t.number for t in coarse.trials if in_space(narrowed, t.user_attrs["config"])
    }
    assert fine.best_value == ranked[0].value  # the coarse winner is now the fine study's evidence

    sampled: list[dict] = []

    def objective(trial: optuna.trial.Trial) -> float:
        cfg = narrowed.sample(trial)
        sampled.append(cfg)
        return (math.log10(cfg["optim.lr"]) - math.log10(2e-3)) ** 2 + abs(
            cfg["model.conv_kernel"] - 15
        ) / 10

    fine.optimize(objective, n_trials=20)
    assert len(fine.trials) == added + 20
    for cfg in sampled:
        assert in_space(narrowed, cfg), cfg
        for name in ("optim.lr", "model.conv_kernel", "model.d_model", "model.dropout"):
            p = narrowed.params[name]
            assert p.low <= cfg[name] <= p.high
        assert cfg["optim.name"] in narrowed.params["optim.name"].choices
