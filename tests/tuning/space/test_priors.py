"""Priors on search-space params, prior/uniform/local sampling, densities and warm starts (no training)."""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

import speechtune
from speechtune.config import ConfigError, config_from_dict, merge
from speechtune.tuning.space import (
    CategoricalParam,
    ConstraintViolation,
    FixedParam,
    FloatParam,
    IntParam,
    Prior,
    SearchSpace,
    parse_param,
    parse_space,
    prior_log_density,
    sample_near,
    sample_prior,
    sample_uniform,
    uniform_log_density,
    with_priors,
)
from speechtune.tuning.space._sampling import MAX_TRIES, complete_params
from speechtune.tuning.spec import PRESET_DIR, available_presets, load_tuning
from speechtune.tuning.spec._compose import _unflatten
from speechtune.tuning.study import load_warm_start
from speechtune.tuning.study._warm_start import WarmStart
from tests.helpers.paths import CONF

optuna.logging.set_verbosity(optuna.logging.WARNING)


# A space with every kind of param: log float, stepped float, int on a grid, a log int, a list
# choice, a conditional, a derived value and a repairable constraint.
SPACE = {
    "model.encoder": {
        "choices": ["conformer", "transformer", "blstm"],
        "prior": {"default": "conformer", "width": 0.5},
    },
    "model.conv_kernel": {
        "type": "int",
        "low": 7,
        "high": 31,
        "step": 2,
        "when": {"model.encoder": "conformer"},
        "prior": 31,
    },
    "model.d_model": [96, 144, 192, 256],
    "model.num_heads": {"choices": [2, 4, 8], "prior": 4},
    "model.ff_dim": {"derive": "4 * model.d_model"},
    "optim.lr": {
        "type": "float",
        "low": 1e-4,
        "high": 1e-2,
        "log": True,
        "prior": {"default": 1e-3, "width": 0.1},
    },
    "features.hop_ms": {"type": "float", "low": 10.0, "high": 20.0, "step": 2.5, "prior": 10.0},
    "train.batch": {"type": "int", "low": 1, "high": 64, "log": True},
    "data.accents": {"choices": [["en-us", "en"], ["en"]], "prior": ["en"]},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
}
CONSTRAINTS = ["model.d_model % model.num_heads == 0"]


def _space() -> SearchSpace:
    return parse_space(SPACE, CONSTRAINTS)


# --------------------------------------------------------------------------- parsing


def test_prior_forms_parse_and_normalise() -> None:
    space = _space()
    assert space.params["model.conv_kernel"].prior == Prior(31, 0.15)  # shorthand: width 0.15
    assert space.params["model.encoder"].prior == Prior("conformer", 0.5)
    assert space.params["data.accents"].prior == Prior(["en"], 0.15)
    assert (
        space.params["model.d_model"].prior is None and space.params["train.batch"].prior is None
    )
    # YAML text numbers, an int written as a float, and a list choice written as Optuna's text.
    lr, _ = parse_param(
        "optim.lr",
        {
            "type": "float",
            "low": 1e-4,
            "high": 1e-2,
            "log": True,
            "prior": {"default": "1e-3", "width": "2e-1"},
        },
    )
    assert lr.prior == Prior(1e-3, 0.2)
    k, _ = parse_param("k", {"type": "int", "low": 1, "high": 9, "prior": 3.0})
    assert k.prior == Prior(3, 0.15) and type(k.prior.default) is int
    acc, _ = parse_param("a", {"choices": [["en-us", "en"], ["en"]], "prior": "[en]"})
    assert acc.prior == Prior(["en"], 0.15)
    none, problems = parse_param("x", {"type": "float", "low": 0.0, "high": 1.0, "prior": None})
    assert none.prior is None and problems == []


@pytest.mark.parametrize(
    ("spec", "key", "fragment"),
    [
        (
            {"type": "int", "low": 7, "high": 31, "step": 2, "prior": 33},
            "space.p.prior.default",
            "[low, high] = [7, 31]",
        ),
        (
            {"type": "int", "low": 7, "high": 31, "step": 2, "prior": 30},
            "space.p.prior.default",
            "grid",
        ),
        ({"type": "int", "low": 7, "high": 31, "prior": 7.5}, "space.p.prior.default", "an int"),
        (
            {"type": "float", "low": 0.0, "high": 1.0, "prior": "high"},
            "space.p.prior.default",
            "a number",
        ),
        (
            {"type": "float", "low": 0.0, "high": 1.0, "prior": {"default": 0.5, "width": 0}},
            "space.p.prior.width",
            "(0, 10]",
        ),
        (
            {"type": "float", "low": 0.0, "high": 1.0, "prior": {"default": 0.5, "width": 10.5}},
            "space.p.prior.width",
            "(0, 10]",
        ),
        (
            {"type": "float", "low": 0.0, "high": 1.0, "prior": {"default": 0.5, "width": True}},
            "space.p.prior.width",
            "(0, 10]",
        ),
        ({"choices": ["a", "b"], "prior": "c"}, "space.p.prior.default", "one of the choices"),
        (
            {"choices": [1, 2], "prior": True},
            "space.p.prior.default",
            "one of the choices",
        ),  # True is not 1
        ({"value": 3, "prior": 3}, "space.p.prior", "this one is fixed"),
        ({"derive": "a + 1", "prior": 3}, "space.p.prior", "this one is derived"),
        (
            {"type": "float", "low": 0.0, "high": 1.0, "prior": {"mean": 0.5}},
            "space.p.prior",
            "unknown key(s) ['mean']",
        ),
        (
            {"type": "float", "low": 0.0, "high": 1.0, "prior": {"width": 0.1}},
            "space.p.prior",
            "default",
        ),
    ],
)
def test_bad_priors_name_the_key(spec: dict, key: str, fragment: str) -> None:
    param, problems = parse_param("p", spec)
    assert [p.key for p in problems] == [key]
    assert fragment in problems[0].rule
    # The param survives without its prior, so nothing depending on it draws follow-up problems.
    assert param is not None and getattr(param, "prior", None) is None


def test_parse_space_reports_every_bad_prior_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        parse_space(
            {
                "a": {"type": "int", "low": 0, "high": 4, "prior": 9},
                "b": {"choices": ["x", "y"], "prior": "z"},
                "c": {"value": 1, "prior": 1},
                "d": {
                    "type": "float",
                    "low": 0.0,
                    "high": 1.0,
                    "prior": {"default": 0.5, "width": -1},
                },
            }
        )
    keys = {p.key for p in err.value.problems}
    assert keys == {
        "space.a.prior.default",
        "space.b.prior.default",
        "space.c.prior",
        "space.d.prior.width",
    }


def test_programmatic_params_check_their_prior() -> None:
    assert FloatParam("x", 0.0, 1.0, prior=Prior(0.25, 0.1)).prior == Prior(0.25, 0.1)
    with pytest.raises(ConfigError, match=r"space\.x\.prior\.default"):
        FloatParam("x", 0.0, 1.0, prior=Prior(2.0, 0.1))
    with pytest.raises(ConfigError, match=r"space\.n\.prior\.width"):
        IntParam("n", 0, 4, prior=Prior(2, 0.0))
    # Priors do not change what Optuna's samplers see, nor equality of prior-less params.
    assert CategoricalParam("c", (1, 2)) == CategoricalParam("c", (1, 2), prior=None)
    assert (
        IntParam("n", 0, 4, prior=Prior(2, 0.1)).distribution()
        == IntParam("n", 0, 4).distribution()
    )


# --------------------------------------------------------------------------- presets


def test_every_shipped_preset_loads_with_priors_inside_its_ranges(tmp_path: Path) -> None:
    for name in available_presets():
        raw = yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text())
        with_prior = [k for k, v in raw["space"].items() if isinstance(v, dict) and "prior" in v]
        assert with_prior, f"preset {name} has no prior"
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            yaml.safe_dump({"recipe": str(CONF / "synthetic.yaml"), "presets": [name]})
        )
        spec = load_tuning(path)
        for key in with_prior:
            assert spec.space.params[key].prior is not None, key


def test_prior_samples_of_all_presets_build_valid_recipes(tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    path.write_text(
        yaml.safe_dump({"recipe": str(CONF / "synthetic.yaml"), "presets": available_presets()})
    )
    spec = load_tuning(path)
    rng = np.random.default_rng(0)
    encoders = Counter()
    for _ in range(60):
        _, config = sample_prior(spec.space, rng)
        config_from_dict(merge(spec.base_recipe, _unflatten(config)))
        encoders[config["model.encoder"]] += 1
    assert encoders.most_common(1)[0][0] == "conformer"


# --------------------------------------------------------------------------- sampling statistics


def _draws(space: SearchSpace, name: str, n: int = 2000, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [sample_prior(space, rng)[0][name] for _ in range(n)]


def test_int_prior_concentrates_on_its_default_on_the_grid() -> None:
    space = parse_space(
        {
            "k": {
                "type": "int",
                "low": 7,
                "high": 31,
                "step": 2,
                "prior": {"default": 31, "width": 0.1},
            }
        }
    )
    values = _draws(space, "k")
    assert set(values) <= set(range(7, 32, 2))  # truncated and snapped
    assert all(type(v) is int for v in values)
    counts = Counter(values)
    assert counts.most_common(1)[0][0] == 31
    # std = 0.1 x 24 = 2.4 around 31: ~96% of draws round to 27..31 (uniform would give 3/13).
    assert sum(counts[v] for v in (27, 29, 31)) / len(values) > 0.9


def test_float_prior_is_a_normal_of_the_stated_width() -> None:
    space = parse_space(
        {"x": {"type": "float", "low": 0.0, "high": 1.0, "prior": {"default": 0.4, "width": 0.1}}}
    )
    values = np.array(_draws(space, "x"))
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert abs(values.mean() - 0.4) < 0.01
    assert abs(values.std() - 0.1) < 0.01  # std = width x (high - low); little truncation here


def test_log_prior_is_normal_in_log_space() -> None:
    space = parse_space(
        {
            "lr": {
                "type": "float",
                "low": 1e-4,
                "high": 1e-2,
                "log": True,
                "prior": {"default": 1e-3, "width": 0.1},
            }
        }
    )
    logs = np.log(np.array(_draws(space, "lr")))
    assert abs(logs.mean() - math.log(1e-3)) < 0.03
    assert abs(logs.std() - 0.1 * math.log(100)) < 0.03


def test_truncation_at_an_edge_of_the_range() -> None:
    space = parse_space(
        {"x": {"type": "float", "low": 0.0, "high": 1.0, "prior": {"default": 1.0, "width": 0.3}}}
    )
    values = np.array(_draws(space, "x"))
    assert values.min() >= 0.0 and values.max() <= 1.0
    # A half-normal below 1.0 (truncated also at 0): mean 1 - 0.3 * sqrt(2/pi) ~ 0.76 untruncated.
    assert 0.74 < values.mean() < 0.80


def test_categorical_prior_frequencies() -> None:
    space = parse_space(
        {"c": {"choices": ["a", "b", "c"], "prior": {"default": "b", "width": 0.3}}}
    )
    counts = Counter(_draws(space, "c"))
    assert abs(counts["b"] / 2000 - 0.7) < 0.035  # 1 - width
    assert abs(counts["a"] / 2000 - 0.15) < 0.03 and abs(counts["c"] / 2000 - 0.15) < 0.03
    wide = parse_space(
        {"c": {"choices": ["a", "b", "c"], "prior": {"default": "b", "width": 0.9}}}
    )
    counts = Counter(_draws(wide, "c"))
    assert all(abs(counts[k] / 2000 - 1 / 3) < 0.04 for k in "abc")  # max(1/k, 1 - width) = 1/3


def test_params_without_prior_are_uniform() -> None:
    space = parse_space(
        {
            "n": {"type": "int", "low": 1, "high": 4},
            "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        }
    )
    rng = np.random.default_rng(3)
    draws = [sample_prior(space, rng)[0] for _ in range(2000)]
    counts = Counter(d["n"] for d in draws)
    assert all(abs(counts[v] / 2000 - 0.25) < 0.035 for v in (1, 2, 3, 4))
    below = (
        sum(d["lr"] < 1e-3 for d in draws) / 2000
    )  # log-uniform: half below the geometric middle
    assert abs(below - 0.5) < 0.04


def test_same_seed_same_configs_other_seed_other_configs() -> None:
    space = _space()

    def run(seed: int) -> list:
        rng = np.random.default_rng(seed)
        out = [sample_prior(space, rng) for _ in range(10)] + [
            sample_uniform(space, rng) for _ in range(10)
        ]
        centre = out[0][0]
        return out + [sample_near(space, centre, rng) for _ in range(10)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_conditions_derived_values_and_repairs_hold() -> None:
    space = _space()
    rng = np.random.default_rng(0)
    seen = Counter()
    for sampler in (sample_prior, sample_uniform):
        for _ in range(300):
            params, config = sampler(space, rng)
            active = config["model.encoder"] == "conformer"
            assert ("model.conv_kernel" in params) == active == ("model.conv_kernel" in config)
            assert config["model.d_model"] % config["model.num_heads"] == 0
            assert config["model.ff_dim"] == 4 * config["model.d_model"]
            seen[active] += 1
    assert seen[True] and seen[False]


def _assert_round_trip(space: SearchSpace, params: dict, config: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FixedTrial warns when a value is outside its distribution
        assert space.sample(optuna.trial.FixedTrial(params)) == config


def test_params_round_trip_through_fixed_trial_and_enqueue() -> None:
    space = _space()
    rng = np.random.default_rng(0)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(40):
        params, config = (sample_prior, sample_uniform)[i % 2](space, rng)
        _assert_round_trip(space, params, config)
        near_params, near_config = sample_near(space, params, rng, scale=0.2)
        _assert_round_trip(space, near_params, near_config)
        study.enqueue_trial(near_params)
        trial = study.ask()
        assert space.sample(trial) == near_config
        assert trial.params == near_params  # exactly what Optuna stores
        study.tell(trial, 0.0)


def test_unrepairable_constraints_get_fresh_draws_then_raise() -> None:
    space = parse_space(
        {
            "a": {"type": "float", "low": 0.0, "high": 1.0},
            "b": {"type": "float", "low": 0.0, "high": 1.0},
        },
        ["a < b"],
    )
    rng = np.random.default_rng(0)
    for _ in range(50):
        _, config = sample_uniform(space, rng)
        assert config["a"] < config["b"]
    impossible = parse_space({"a": {"type": "float", "low": 0.0, "high": 1.0}}, ["a > 2"])
    with pytest.raises(ConstraintViolation, match=f"{MAX_TRIES} draws"):
        sample_prior(impossible, rng)


# --------------------------------------------------------------------------- sample_near


def test_sample_near_stays_close() -> None:
    space = _space()
    centre = {
        "model.encoder": "conformer",
        "model.conv_kernel": 15,
        "model.d_model": 144,
        "model.num_heads": 4,
        "optim.lr": 2e-3,
        "features.hop_ms": 15.0,
        "train.batch": 8,
        "data.accents": "[en]",
        "model.dropout": 0.15,
    }
    rng = np.random.default_rng(0)
    draws = [sample_near(space, centre, rng, scale=0.05)[0] for _ in range(500)]
    lr = np.log(np.array([d["optim.lr"] for d in draws]))
    assert np.abs(lr - math.log(2e-3)).max() < 5 * 0.05 * math.log(100)
    assert abs(np.median(np.abs(lr - math.log(2e-3))) - 0.6745 * 0.05 * math.log(100)) < 0.03
    drop = np.array([d["model.dropout"] for d in draws])
    assert np.abs(drop - 0.15).max() < 5 * 0.05 * 0.3
    kept = sum(d["model.encoder"] == "conformer" for d in draws) / 500
    assert abs(kept - 0.95) < 0.03  # keep the choice with probability 1 - scale
    kernels = [d["model.conv_kernel"] for d in draws if "model.conv_kernel" in d]
    assert sum(abs(k - 15) <= 2 for k in kernels) / len(kernels) > 0.9


def test_sample_near_fills_what_the_centre_lacks_and_checks_scale() -> None:
    space = _space()
    rng = np.random.default_rng(1)
    # A centre with an out-of-range lr (clipped) and an unknown choice (redrawn from the prior).
    params, config = sample_near(space, {"optim.lr": 5.0, "model.encoder": "rnn"}, rng, scale=0.01)
    assert 1e-2 * math.exp(-5 * 0.01 * math.log(100)) <= params["optim.lr"] <= 1e-2
    _assert_round_trip(space, params, config)
    assert set(params) >= {"model.encoder", "model.d_model", "optim.lr", "train.batch"}
    for scale in (0, -0.1, 11, True):
        with pytest.raises(ValueError, match="scale"):
            sample_near(space, params, rng, scale=scale)


# --------------------------------------------------------------------------- densities


def test_prior_log_density_peaks_at_the_default() -> None:
    space = _space()
    at_default = {
        "model.encoder": "conformer",
        "model.conv_kernel": 31,
        "optim.lr": 1e-3,
        "features.hop_ms": 10.0,
        "model.num_heads": 4,
        "data.accents": "[en]",
    }
    far = {
        "model.encoder": "blstm",
        "optim.lr": 1e-4,
        "features.hop_ms": 20.0,
        "model.num_heads": 2,
        "data.accents": "[en-us, en]",
    }
    assert prior_log_density(space, at_default) > prior_log_density(space, far)
    assert prior_log_density(space, at_default) > uniform_log_density(space, at_default)
    assert prior_log_density(space, far) < uniform_log_density(space, far)
    # Params without a prior contribute nothing; unknown names are ignored.
    assert prior_log_density(space, {"model.d_model": 96, "train.batch": 3, "nope": 1}) == 0.0
    assert prior_log_density(space, {**at_default, "model.d_model": 96}) == prior_log_density(
        space, at_default
    )
    # A value the param cannot take has density 0.
    assert prior_log_density(space, {"optim.lr": 1.0}) == -math.inf
    assert prior_log_density(space, {"model.conv_kernel": 8}) == -math.inf
    assert prior_log_density(space, {"model.encoder": "rnn"}) == -math.inf
    # The decoded choice is accepted as well as Optuna's text.
    assert prior_log_density(space, {"data.accents": ["en"]}) == prior_log_density(
        space, {"data.accents": "[en]"}
    )


def test_densities_are_normalised_and_match_the_sampler() -> None:
    prior = Prior(31, 0.2)
    grid = parse_space(
        {
            "k": {
                "type": "int",
                "low": 7,
                "high": 31,
                "step": 2,
                "prior": {"default": 31, "width": 0.2},
            }
        }
    )
    values = range(7, 32, 2)
    masses = [math.exp(prior_log_density(grid, {"k": v})) for v in values]
    assert abs(sum(masses) - 1) < 1e-9
    assert abs(sum(math.exp(uniform_log_density(grid, {"k": v})) for v in values) - 1) < 1e-9
    counts = Counter(_draws(grid, "k", n=5000))
    for v, m in zip(values, masses):  # the sampler draws what the density says
        assert abs(counts[v] / 5000 - m) < 4 * math.sqrt(m * (1 - m) / 5000) + 1e-3, (v, prior)
    log_int = parse_space({"b": {"type": "int", "low": 1, "high": 64, "log": True, "prior": 8}})
    total = sum(math.exp(prior_log_density(log_int, {"b": v})) for v in range(1, 65))
    assert abs(total - 1) < 1e-9
    assert (
        abs(sum(math.exp(uniform_log_density(log_int, {"b": v})) for v in range(1, 65)) - 1) < 1e-9
    )
    cont = parse_space(
        {
            "lr": {
                "type": "float",
                "low": 1e-4,
                "high": 1e-2,
                "log": True,
                "prior": {"default": 1e-4, "width": 0.3},
            }
        }
    )
    ys = np.linspace(math.log(1e-4), math.log(1e-2), 4001)
    dens = np.array([math.exp(prior_log_density(cont, {"lr": math.exp(y)})) for y in ys])
    integral = float(
        np.sum((dens[1:] + dens[:-1]) / 2 * np.diff(ys))
    )  # density is per unit of log(lr)
    assert abs(integral - 1) < 1e-3
    cat = parse_space(
        {"c": {"choices": ["a", "b", "c", "d"], "prior": {"default": "d", "width": 0.4}}}
    )
    probs = {c: math.exp(prior_log_density(cat, {"c": c})) for c in "abcd"}
    assert abs(probs["d"] - 0.6) < 1e-12 and abs(probs["a"] - 0.4 / 3) < 1e-12


# --------------------------------------------------------------------------- with_priors


def test_with_priors_copies_and_validates() -> None:
    space = _space()
    changed = with_priors(space, {"model.d_model": Prior(192, 0.2), "optim.lr": None})
    assert changed.params["model.d_model"].prior == Prior(192, 0.2)
    assert changed.params["optim.lr"].prior is None
    assert space.params["model.d_model"].prior is None  # the original is untouched
    assert space.params["optim.lr"].prior == Prior(1e-3, 0.1)
    assert changed.constraints == space.constraints and changed.order == space.order
    with pytest.raises(ConfigError) as err:
        with_priors(
            space,
            {
                "model.nope": Prior(1, 0.1),
                "model.d_model": Prior(100, 0.1),
                "model.ff_dim": Prior(4, 0.1),
            },
        )
    keys = {p.key for p in err.value.problems}
    assert keys == {
        "space.model.nope.prior",
        "space.model.d_model.prior.default",
        "space.model.ff_dim.prior",
    }
    fixed = SearchSpace({"x": FixedParam("x", 1)})
    with pytest.raises(ConfigError, match="this one is fixed"):
        with_priors(fixed, {"x": Prior(1, 0.1)})


# --------------------------------------------------------------------------- warm start

_RUN_SPACE = {
    "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "model.layers": {"type": "int", "low": 1, "high": 6},
    "model.enc": ["a", "b", "c"],
    "model.kernel": {"type": "int", "low": 3, "high": 15, "step": 2, "when": {"model.enc": "a"}},
    "model.width": {"derive": "model.layers * 8"},
}


def _objective(config: dict, reporter: object) -> dict:
    return {
        "wer": abs(math.log10(config["optim.lr"]) + 2.5)
        + 0.1 * config["model.layers"]
        + (config["model.enc"] == "c")
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, optuna.Study]:
    """A real run directory (SQLite study.db, trials.csv, best.yaml) of a cheap function."""
    path = tmp_path_factory.mktemp("run")
    study = speechtune.tune(
        _objective, _RUN_SPACE, n_trials=10, sampler="random", pruner="none", run_dir=path, seed=0
    )
    return path, study


def _ranked(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return sorted(done, key=lambda t: (t.value, t.number))


def test_warm_start_from_a_run_directory(run_dir: tuple[Path, optuna.Study]) -> None:
    path, study = run_dir
    assert (path / "study.db").is_file()
    space = parse_space(_RUN_SPACE)
    ws = load_warm_start(path, space, top_k=3, width=0.2)
    assert isinstance(ws, WarmStart) and str(path) in ws.source
    best3 = _ranked(study)[:3]
    assert ws.configs == [t.params for t in best3]  # best first, raw Optuna values
    assert ws.priors == {name: Prior(value, 0.2) for name, value in best3[0].params.items()}
    for params, trial in zip(ws.configs, best3):
        _assert_round_trip(space, params, trial.user_attrs["config"])
    # The priors fit the space, and prior sampling then concentrates on the best config.
    primed = with_priors(space, ws.priors)
    rng = np.random.default_rng(0)
    best_enc = best3[0].params["model.enc"]
    encs = Counter(sample_prior(primed, rng)[1]["model.enc"] for _ in range(300))
    assert encs.most_common(1)[0][0] == best_enc


def test_warm_start_into_a_different_space(
    run_dir: tuple[Path, optuna.Study], caplog: pytest.LogCaptureFixture
) -> None:
    path, study = run_dir
    best = _ranked(study)[0]
    lr = best.params["optim.lr"]
    new = parse_space(
        {
            # A narrower lr range that excludes the best value: clipped, with a warning.
            "optim.lr": {"type": "float", "low": lr * 2, "high": lr * 4, "log": True},
            # A choice list without the best value: skipped, with a warning.
            "model.enc": [e for e in ("a", "b", "c") if e != best.params["model.enc"]],
            "model.layers": {"type": "int", "low": 1, "high": 6},
            "model.extra": {"type": "float", "low": 0.0, "high": 1.0},  # the run did not tune it
        }
    )
    with caplog.at_level(logging.WARNING, logger="speechtune.tuning.study._warm_start"):
        ws = load_warm_start(path, new, top_k=1)
    assert ws.configs == [{"optim.lr": lr * 2, "model.layers": best.params["model.layers"]}]
    assert set(ws.priors) == {"optim.lr", "model.layers"}
    text = caplog.text
    assert "optim.lr" in text and "clipped" in text
    assert "model.enc" in text and "skipped" in text
    # The missing params are drawn, the given ones kept exactly.
    params, config = complete_params(new, ws.configs[0], np.random.default_rng(0))
    assert params["optim.lr"] == lr * 2 and "model.enc" in params and "model.extra" in params
    _assert_round_trip(new, params, config)


def test_warm_start_from_best_yaml(run_dir: tuple[Path, optuna.Study]) -> None:
    path, study = run_dir
    space = parse_space(_RUN_SPACE)
    ws = load_warm_start(path / "best.yaml", space)
    best = _ranked(study)[0]
    expected = {k: v for k, v in best.params.items()}
    assert ws.configs == [expected]
    assert ws.priors["model.enc"] == Prior(best.params["model.enc"], 0.1)


def test_warm_start_from_a_nested_recipe_best_yaml(tmp_path: Path) -> None:
    recipe = {
        "optim": {"name": "adamw", "lr": 0.002, "beta1": 0.9, "momentum": 0.9},
        "model": {"encoder": "conformer", "conv_kernel": 15, "d_model": 144},
        "specaugment": {"enabled": True, "time_mask_width": 30},
    }
    best = tmp_path / "best.yaml"
    best.write_text("# best trial of study 'x'\n" + yaml.safe_dump(recipe))
    spec_path = tmp_path / "t.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {"recipe": str(CONF / "synthetic.yaml"), "presets": ["optimizer", "architecture"]}
        )
    )
    space = load_tuning(spec_path).space
    ws = load_warm_start(best, space)
    # optim.momentum is a tunable param, but inactive for adamw: dropped.
    assert ws.configs == [
        {
            "optim.name": "adamw",
            "optim.lr": 0.002,
            "optim.beta1": 0.9,
            "model.encoder": "conformer",
            "model.conv_kernel": 15,
            "model.d_model": 144,
        }
    ]
    assert ws.priors["model.conv_kernel"] == Prior(15, 0.1)
    primed = with_priors(space, ws.priors)  # replaces the preset's own priors
    assert primed.params["model.conv_kernel"].prior == Prior(15, 0.1)


def _mf_study(path: Path) -> None:
    """A study as the multi-fidelity engine stores it: a cheap rung whose values look better."""
    path.mkdir()
    study = optuna.create_study(study_name="mf", storage=f"sqlite:///{path / 'study.db'}")
    study.set_user_attr(
        "fidelity",
        {
            "strategy": "asha",
            "eta": 3,
            "resume_key": None,
            "rungs": [
                {"name": "low", "overrides": {}, "cost": 0.1},
                {"name": "high", "overrides": {}, "cost": 1.0},
            ],
        },
    )
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    # x = 0.4 twice at the top rung (a re-evaluated config): one warm-start config.
    for x, rung, value in [
        (0.1, 0, 0.01),
        (0.2, 0, 0.02),
        (0.3, 1, 0.5),
        (0.4, 1, 0.4),
        (0.5, 0, 0.03),
        (0.4, 1, 0.41),
    ]:
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": x},
                distributions=dist,
                value=value,
                user_attrs={"rung": rung, "config": {"x": x}},
            )
        )


def test_warm_start_from_a_multi_fidelity_run_uses_the_top_rung(tmp_path: Path) -> None:
    _mf_study(tmp_path / "mf")
    space = parse_space({"x": {"type": "float", "low": 0.0, "high": 1.0}})
    ws = load_warm_start(tmp_path / "mf", space, top_k=5)
    assert ws.configs == [
        {"x": 0.4},
        {"x": 0.3},
    ]  # the low-rung values are not comparable; no duplicate
    assert ws.priors == {"x": Prior(0.4, 0.1)}


def test_warm_start_errors_name_the_path(
    tmp_path: Path, run_dir: tuple[Path, optuna.Study]
) -> None:
    space = parse_space(_RUN_SPACE)
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=str(missing)):
        load_warm_start(missing, space)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"cannot read a study from {empty}"):
        load_warm_start(empty, space)
    no_trials = tmp_path / "none"
    no_trials.mkdir()
    optuna.create_study(study_name="s", storage=f"sqlite:///{no_trials / 'study.db'}")
    with pytest.raises(ValueError, match=f"{no_trials}.*no complete trial"):
        load_warm_start(no_trials, space)
    bad_yaml = tmp_path / "best.yaml"
    bad_yaml.write_text("- a list\n- not a config\n")
    with pytest.raises(ValueError, match=str(bad_yaml)):
        load_warm_start(bad_yaml, space)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [unclosed\n")
    with pytest.raises(ValueError, match=str(broken)):
        load_warm_start(broken, space)
    path, _ = run_dir
    with pytest.raises(ValueError, match="nothing in .* is a tunable param"):
        load_warm_start(path, parse_space({"other.key": [1, 2]}))
    with pytest.raises(ValueError, match="top_k"):
        load_warm_start(path, space, top_k=0)
    with pytest.raises(ValueError, match="width"):
        load_warm_start(path, space, width=0)
