"""Search-space model and the safe expression evaluator (no training)."""

from __future__ import annotations

import math

import optuna
import pytest

from speechtune.config import ConfigError
from speechtune.tuning.space import (
    CategoricalParam,
    ConstraintViolation,
    DerivedParam,
    ExprError,
    FixedParam,
    FloatParam,
    IntParam,
    SearchSpace,
    parse_param,
    parse_space,
)
from speechtune.tuning.space import evaluate_expression as evaluate
from speechtune.tuning.space import expression_names as names
from speechtune.tuning.space import parse_expression as parse
from speechtune.tuning.spec import PRESET_DIR

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _random_configs(
    space: SearchSpace, n: int, seed: int = 0, sampler: str = "random"
) -> list[dict]:
    """Sample ``n`` configs through a real in-memory study."""
    samplers = {
        "random": optuna.samplers.RandomSampler(seed=seed),
        "tpe": optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
    }
    study = optuna.create_study(sampler=samplers[sampler])
    configs: list[dict] = []

    def objective(trial: optuna.trial.Trial) -> float:
        cfg = space.sample(trial)
        configs.append(cfg)
        return sum(float(v) for v in cfg.values() if isinstance(v, (int, float)))

    study.optimize(objective, n_trials=n)
    return configs


# --------------------------------------------------------------------------- expressions


def test_expr_evaluates_dotted_names_functions_and_logic() -> None:
    values = {"model.d_model": 144, "model.num_heads": 4, "a": 2.0, "optim.name": "sgd"}
    assert evaluate("4 * model.d_model", values) == 576
    assert evaluate("model.d_model // model.num_heads % 7", values) == 36 % 7
    assert (
        evaluate("-a ** 2 + max(1, a) + min(a, 3) + round(2.6) + int(3.9) + float(1)", values)
        == -4.0 + 2 + 2 + 3 + 3 + 1
    )
    assert math.isclose(evaluate("sqrt(16) + log(a)", values), 4 + math.log(2.0))
    assert evaluate("model.d_model % model.num_heads == 0 and not a > 3", values) is True
    assert evaluate("a > 3 or optim.name == 'sgd'", values) is True
    assert evaluate("1 < a <= 2", values) is True
    assert names("4 * model.d_model + max(a, data.synthetic.num_utterances)") == {
        "model.d_model",
        "a",
        "data.synthetic.num_utterances",
    }


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("__import__('os').system('echo hi')", "__import__"),
        ("(1).real", "attribute access"),
        ("max(1, 2).real", "attribute access"),
        ("lambda: 1", "Lambda"),
        ("model.layers[0]", "Subscript"),
        ("model.__class__", "dunder"),
        ("open('x')", "open"),
        ("[1, 2]", "List"),
        ("1 if a else 2", "IfExp"),
        ("a in b", "In"),
        ("max(*a)", "starred"),
        ("1 +", "does not parse"),
    ],
)
def test_expr_refuses_disallowed_syntax(expr: str, fragment: str) -> None:
    with pytest.raises(ExprError, match=fragment):
        parse(expr)


def test_expr_runtime_errors_are_expr_errors() -> None:
    with pytest.raises(ExprError, match="unknown name"):
        evaluate("missing.key + 1", {})
    with pytest.raises(ExprError, match="too large"):
        evaluate("9 ** 9 ** 9", {})
    with pytest.raises(ExprError, match="numbers"):
        evaluate("'a' * 1000", {})
    with pytest.raises(ExprError):
        evaluate("1 / a", {"a": 0})


# --------------------------------------------------------------------------- parsing


def test_shorthand_typed_fixed_and_derived_parsing() -> None:
    space = parse_space(
        {
            "model.num_layers": [2, 3, 4],
            "optim.lr": {"type": "float", "low": "1e-4", "high": 1.0e-2, "log": True},
            "model.num_heads": {"type": "categorical", "choices": [2, 4]},
            "model.conv_kernel": {
                "type": "int",
                "low": 7,
                "high": 31,
                "step": 2,
                "when": {"model.encoder": "conformer"},
            },
            "optim.momentum": {"low": 0.8, "high": 0.99, "when": {"optim.name": ["sgd"]}},
            "train.batch_size": {"low": 8, "high": 32, "step": 8},
            "schedule.warmup_steps": {"derive": "4 * model.d_model"},
            "model.dropout": 0.1,
            "data.synthetic.accents": {"value": ["en-us", "en"]},
        }
    )
    p = space.params
    assert p["model.num_layers"] == CategoricalParam("model.num_layers", (2, 3, 4))
    assert p["optim.lr"] == FloatParam("optim.lr", 1e-4, 1e-2, log=True)  # "1e-4" read as a number
    assert p["model.num_heads"] == CategoricalParam("model.num_heads", (2, 4))
    assert p["model.conv_kernel"] == IntParam(
        "model.conv_kernel", 7, 31, step=2, when={"model.encoder": ["conformer"]}
    )
    assert p["optim.momentum"] == FloatParam(
        "optim.momentum", 0.8, 0.99, when={"optim.name": ["sgd"]}
    )
    assert p["train.batch_size"] == IntParam(
        "train.batch_size", 8, 32, step=8
    )  # ints => int param
    assert p["schedule.warmup_steps"] == DerivedParam("schedule.warmup_steps", "4 * model.d_model")
    assert p["model.dropout"] == FixedParam("model.dropout", 0.1)
    assert p["data.synthetic.accents"] == FixedParam("data.synthetic.accents", ["en-us", "en"])
    assert set(space.tunable_names()) == {
        "model.num_layers",
        "optim.lr",
        "model.num_heads",
        "model.conv_kernel",
        "optim.momentum",
        "train.batch_size",
    }
    dists = space.distributions()
    assert dists["optim.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert dists["model.conv_kernel"] == optuna.distributions.IntDistribution(7, 31, step=2)


def test_bad_param_specs_are_all_reported() -> None:
    with pytest.raises(ConfigError) as err:
        parse_space(
            {
                "a.low_high": {"type": "float", "low": 2.0, "high": 1.0},
                "a.log": {"type": "float", "low": 0.0, "high": 1.0, "log": True},
                "a.step": {"type": "int", "low": 0, "high": 10, "step": 3},
                "a.empty": [],
                "a.type": {"type": "loguniform", "low": 1, "high": 2},
                "a.derive": {"derive": "__import__('os')"},
                "a.cycle1": {"derive": "a.cycle2 + 1"},
                "a.cycle2": {"derive": "a.cycle1 + 1"},
            },
            constraints=["a.x +* 2"],
        )
    text = str(err.value)
    for key in (
        "a.low_high",
        "a.log",
        "a.step",
        "a.empty",
        "a.type",
        "a.derive",
        "a.cycle",
        "constraints[0]",
    ):
        assert key in text, key
    assert "high: 9" in text  # the step problem suggests a fix
    assert "loguniform" in text and "float, int, categorical, fixed" in text


def test_unknown_keys_in_a_spec_are_named() -> None:
    _, problems = parse_param("x.y", {"type": "int", "low": 1, "hihg": 3})
    assert problems and "hihg" in problems[0].rule and "high" in problems[0].rule


# --------------------------------------------------------------------------- sampling

_OPTIM = {
    "optim.name": ["adam", "adamw", "sgd"],
    "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "optim.beta1": {
        "type": "float",
        "low": 0.85,
        "high": 0.95,
        "when": {"optim.name": ["adam", "adamw"]},
    },
    "optim.momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optim.name": "sgd"}},
    # Depends on a conditional param: inactive whenever momentum is.
    "optim.nesterov": {
        "type": "categorical",
        "choices": [True, False],
        "when": {"optim.momentum": [0.9]},
    },
}


def test_conditional_params_with_fixed_trial() -> None:
    space = parse_space(_OPTIM)
    params = {
        "optim.name": "sgd",
        "optim.lr": 1e-3,
        "optim.beta1": 0.9,
        "optim.momentum": 0.9,
        "optim.nesterov": True,
    }
    sgd = space.sample(optuna.trial.FixedTrial(params))
    assert sgd == {
        "optim.name": "sgd",
        "optim.lr": 1e-3,
        "optim.momentum": 0.9,
        "optim.nesterov": True,
    }
    adam = space.sample(optuna.trial.FixedTrial({**params, "optim.name": "adam"}))
    assert adam == {"optim.name": "adam", "optim.lr": 1e-3, "optim.beta1": 0.9}


def test_conditional_params_over_random_study() -> None:
    space = parse_space(
        {
            **_OPTIM,
            "model.encoder": ["conformer", "transformer", "blstm"],
            "model.conv_kernel": {
                "type": "int",
                "low": 7,
                "high": 31,
                "step": 2,
                "when": {"model.encoder": "conformer"},
            },
        }
    )
    configs = _random_configs(space, 200)
    for cfg in configs:
        assert ("optim.momentum" in cfg) == (cfg["optim.name"] == "sgd")
        assert ("optim.beta1" in cfg) == (cfg["optim.name"] in ("adam", "adamw"))
        assert ("model.conv_kernel" in cfg) == (cfg["model.encoder"] == "conformer")
        assert "optim.nesterov" not in cfg  # momentum is continuous: never exactly 0.9
        if "model.conv_kernel" in cfg:
            assert cfg["model.conv_kernel"] % 2 == 1
    names_seen = {c["optim.name"] for c in configs}
    assert names_seen == {"adam", "adamw", "sgd"}


def test_when_reads_base_values_for_keys_outside_the_space() -> None:
    space = parse_space(
        {
            "model.conv_kernel": {
                "type": "int",
                "low": 7,
                "high": 9,
                "step": 2,
                "when": {"model.encoder": "conformer"},
            }
        },
        base={"model.encoder": "blstm"},
    )
    trial = optuna.trial.FixedTrial({"model.conv_kernel": 9})
    assert space.sample(trial) == {}
    assert space.sample(trial, base={"model.encoder": "conformer"}) == {"model.conv_kernel": 9}


def test_derived_values_use_sampled_fixed_and_base_values() -> None:
    space = parse_space(
        {
            "schedule.warmup_steps": {"derive": "4 * model.d_model + train.epochs"},
            "model.ff_dim": {"derive": "int(model.d_model * ratio)"},
            "model.d_model": [96, 144],
            "ratio": 2.5,
        }
    )
    cfg = space.sample(optuna.trial.FixedTrial({"model.d_model": 144}), base={"train.epochs": 6})
    assert cfg == {
        "model.d_model": 144,
        "ratio": 2.5,
        "schedule.warmup_steps": 582,
        "model.ff_dim": 360,
    }
    # Derived params come after what they read, whatever the declaration order.
    assert space.order.index("schedule.warmup_steps") > space.order.index("model.d_model")


def test_list_choices_round_trip_through_optuna() -> None:
    space = SearchSpace(
        {"optim.betas": CategoricalParam("optim.betas", ([0.9, 0.98], [0.9, 0.999], "auto", None))}
    )
    configs = _random_configs(space, 40)
    assert {repr(c["optim.betas"]) for c in configs} == {
        "[0.9, 0.98]",
        "[0.9, 0.999]",
        "'auto'",
        "None",
    }
    assert all(isinstance(c["optim.betas"], (list, str, type(None))) for c in configs)


def test_divisibility_repair_over_random_trials() -> None:
    space = parse_space(
        {
            "model.d_model": {"type": "int", "low": 64, "high": 512, "step": 8},
            "model.num_heads": [3, 4, 6, 8],
            "model.ff_dim": {"derive": "4 * model.d_model"},
        },
        constraints=["model.d_model % model.num_heads == 0"],
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    repaired = 0
    for _ in range(200):
        trial = study.ask()
        cfg = space.sample(trial)
        assert cfg["model.d_model"] % cfg["model.num_heads"] == 0
        assert 64 <= cfg["model.d_model"] <= 512 and (cfg["model.d_model"] - 64) % 8 == 0
        assert cfg["model.ff_dim"] == 4 * cfg["model.d_model"]  # derived values follow the repair
        if "repaired" in trial.user_attrs:
            fix = trial.user_attrs["repaired"]["model.d_model"]
            assert (
                fix["repaired"] == cfg["model.d_model"]
                and fix["suggested"] == trial.params["model.d_model"]
            )
            assert (
                abs(fix["repaired"] - fix["suggested"]) <= 12
            )  # nearest multiple, not any multiple
            repaired += 1
        study.tell(trial, 0.0)
    assert repaired > 20


def test_repair_moves_the_divisor_when_the_target_is_fixed() -> None:
    space = parse_space(
        {"model.num_heads": [3, 4, 5]},
        ["model.d_model % model.num_heads == 0"],
        base={"model.d_model": 144},
    )
    trial = optuna.trial.FixedTrial({"model.num_heads": 5})
    assert space.sample(trial) == {"model.num_heads": 4}


def test_other_constraint_violations_raise() -> None:
    space = parse_space(
        {"features.hop_ms": [10.0, 30.0], "features.window_ms": 25.0},
        constraints=["features.hop_ms <= features.window_ms"],
    )
    assert (
        space.sample(optuna.trial.FixedTrial({"features.hop_ms": 10.0}))["features.hop_ms"] == 10.0
    )
    with pytest.raises(ConstraintViolation, match="hop_ms <= features.window_ms"):
        space.sample(optuna.trial.FixedTrial({"features.hop_ms": 30.0}))
    unrepairable = parse_space({"a": [7], "b": [2]}, ["a % b == 0"])
    with pytest.raises(ConstraintViolation, match="cannot be repaired"):
        unrepairable.sample(optuna.trial.FixedTrial({"a": 7, "b": 2}))


def test_constraints_on_inactive_keys_do_not_apply() -> None:
    space = parse_space(
        {
            "optim.name": ["adam", "sgd"],
            "optim.momentum": {"low": 0.8, "high": 0.99, "when": {"optim.name": "sgd"}},
        },
        constraints=["optim.momentum < 0.85"],
    )
    assert space.sample(
        optuna.trial.FixedTrial({"optim.name": "adam", "optim.momentum": 0.9})
    ) == {"optim.name": "adam"}


def test_same_seed_same_configs_other_seed_other_configs() -> None:
    space = parse_space(
        {
            **_OPTIM,
            "model.d_model": [96, 144, 192],
            "model.num_layers": {"type": "int", "low": 2, "high": 6},
        }
    )
    for sampler in ("random", "tpe"):
        first = _random_configs(space, 12, seed=3, sampler=sampler)
        again = _random_configs(space, 12, seed=3, sampler=sampler)
        other = _random_configs(space, 12, seed=4, sampler=sampler)
        assert first == again
        assert first != other


def test_cycles_and_mismatched_names_are_refused() -> None:
    with pytest.raises(ValueError, match="cycle"):
        SearchSpace({"a": DerivedParam("a", "b + 1"), "b": FixedParam("b", 1, when={"a": [2]})})
    with pytest.raises(ValueError, match="holds a param named"):
        SearchSpace({"a": FixedParam("b", 1)})


def test_param_spec_round_trips_every_preset_and_kind() -> None:
    """A space built in code is stored as YAML and rebuilt identically (workers rebuild specs so)."""

    import yaml

    from speechtune.tuning.space import (
        FloatParam,
        IntParam,
        Prior,
        param_spec,
        parse_param,
        space_spec,
    )

    presets = PRESET_DIR
    spaces = [
        yaml.safe_load(p.read_text()).get("space", {}) for p in sorted(presets.glob("*.yaml"))
    ]
    assert spaces and all(spaces)
    extra = {
        "a.lr": FloatParam("a.lr", 1e-4, 1e-2, log=True, prior=Prior(1e-3, 0.2)),
        "a.grid": FloatParam("a.grid", 0.1, 0.5, step=0.1, when={"a.kind": ["x", "y"]}),
        "a.n": IntParam("a.n", 2, 10, step=2),
    }
    for raw in spaces:
        space = parse_space(raw)
        again = parse_space(yaml.safe_load(yaml.safe_dump(space_spec(space))))
        assert again.params == space.params
    for name, param in extra.items():
        rebuilt, problems = parse_param(name, yaml.safe_load(yaml.safe_dump(param_spec(param))))
        assert not problems and rebuilt == param


def test_a_float_on_a_grid_reaches_the_config_as_the_grid_value() -> None:
    """0.0 + 6 * 0.1 is 0.6000000000000001 in floats: the config (and best.yaml) get 0.6."""
    space = SearchSpace({"p": FloatParam("p", 0.0, 0.9, step=0.1)})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        value = space.sample(trial)["p"]
        seen.add(value)
        study.tell(trial, 0.0)
    assert seen == {round(0.1 * k, 1) for k in range(10)}
