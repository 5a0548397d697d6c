"""Tuning YAML loading, validation, preset composition and shipped presets (no training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from speechtune.config import ConfigError, config_from_dict, merge
from speechtune.tuning.space import CategoricalParam, FixedParam
from speechtune.tuning.spec import (
    PRESET_DIR,
    CommandSpec,
    ObjectiveSpec,
    StudySpec,
    available_presets,
    load_tuning,
    validate_tuning,
)
from speechtune.tuning.spec._compose import _unflatten
from tests.helpers.paths import CONF

optuna.logging.set_verbosity(optuna.logging.WARNING)

RECIPE = str(CONF / "synthetic.yaml")


def _write(tmp_path: Path, data: dict[str, Any], name: str = "tuning.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_shipped_tuning_yaml_loads() -> None:
    spec = load_tuning(CONF / "tuning.yaml")
    assert spec.study == StudySpec(
        name="synthetic-tpe", sampler="tpe", pruner="median", n_trials=16
    )
    assert spec.objective == ObjectiveSpec(kind="recipe", metric="wer", seeds=[42])
    assert spec.command is None
    assert spec.overrides == {"train.epochs": 8, "data.synthetic.num_utterances": 600}
    assert spec.base_recipe["train"]["epochs"] == 8
    assert spec.base_recipe["data"]["synthetic"]["num_utterances"] == 600
    assert spec.base_recipe["model"]["ff_dim"] == 384  # from synthetic.yaml, not the defaults
    assert spec.space.params["model.d_model"] == CategoricalParam("model.d_model", (96, 144))
    assert (
        "optim.momentum" in spec.space.params
        and "specaugment.time_mask_width" in spec.space.params
    )
    assert spec.raw["space"]["model.num_layers"] == [2, 3]
    assert spec.raw["study"]["n_trials"] == 16
    yaml.safe_dump(spec.raw)  # the record is plain data


def test_cli_overrides_of_the_tuning_file() -> None:
    spec = load_tuning(
        CONF / "tuning.yaml",
        [
            "study.n_trials=5",
            "objective.seeds=[1,2]",
            "overrides.train.epochs=3",
            "space.optim.lr.high=0.02",
            "space.optim.name=adamw",
        ],
    )
    assert spec.study.n_trials == 5
    assert spec.objective.seeds == [1, 2]
    assert spec.overrides["train.epochs"] == 3 and spec.base_recipe["train"]["epochs"] == 3
    assert spec.space.params["optim.lr"].high == 0.02  # one field of a preset's spec edited
    assert spec.space.params["optim.name"] == FixedParam("optim.name", "adamw")
    with pytest.raises(ConfigError, match="study.n_trials"):
        load_tuning(CONF / "tuning.yaml", ["study.n_trials=0"])


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    bad = {
        "recipe": RECIPE,
        "overrides": {"train.epoch": 3},
        "presets": ["no_such_preset"],
        "space": {
            "model.dmodel": [96, 144],
            "optim.lr": {"type": "float", "low": 1e-2, "high": 1e-4},
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.3, "log": True},
            "train.batch_size": {"type": "int", "low": 8, "high": 30, "step": 8},
            "model.num_layers": [],
            "model.num_heads": {"type": "gaussian", "low": 1, "high": 8},
            "optim.momentum": {
                "type": "float",
                "low": 0.8,
                "high": 0.9,
                "when": {"optim.nam": "sgd"},
            },
            "model.subsampling": [3, 4],
            "model.encoder": ["conformer", "rnn"],
            "schedule.warmup_steps": {"derive": "4 * model.width + __import__('os')"},
            "schedule.cycle_steps": {"derive": "2 * model.ff_dim"},
            "model.ff_dim": {"derive": "schedule.cycle_steps // 2"},
        },
        "constraints": ["model.d_model %% 2", "model.d_model % model.heads == 0"],
        "study": {"sampler": "bayes", "pruner": "median", "n_trails": 3, "seed": "zero"},
        "objective": {
            "seeds": [],
            "extra_objectives": ["latency_ms_per_audio_s"],
            "metrik": "wer",
        },
        "command": {"argv": ["python"]},
        "fidelty": {},
    }
    path = _write(tmp_path, bad)
    problems = validate_tuning(path)
    text = "\n".join(map(str, problems))
    expected = [
        "overrides.train.epoch",  # unknown recipe key ...
        "train.epochs",  # ... with its close match
        "presets[0]",
        "space.model.dmodel",
        "model.d_model",
        "space.optim.lr",
        "space.model.dropout",
        "space.train.batch_size",
        "space.model.num_layers",
        "space.model.num_heads.type",
        "space.optim.momentum.when",
        "space.model.subsampling",  # choice 3 rejected by the recipe schema
        "space.model.encoder",  # choice 'rnn' rejected by the recipe schema
        "space.schedule.warmup_steps.derive",
        "dependency cycle",
        "constraints[0]",
        "constraints[1]",
        "study.sampler",
        "tpe, gp, random, cmaes, qmc, nsga2",  # the valid samplers are listed
        "study.n_trails",
        "study.seed",
        "study.pruner",  # multi-objective + pruner
        "objective.seeds",
        "objective.metrik",
        "command",
        "fidelty",
    ]
    missing = [key for key in expected if key not in text]
    assert not missing, f"not reported: {missing}\n{text}"
    with pytest.raises(ConfigError) as err:
        load_tuning(path)
    assert len(err.value.problems) == len(problems) >= 20


def test_rule_messages_say_what_is_expected(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "recipe": RECIPE,
            "space": {"model.conv_kernel": {"type": "int", "low": 8, "high": 30, "step": 2}},
            "study": {"pruner": "hyperband", "sampler": "cmaes"},
            "objective": {"extra_objectives": ["num_parameters"]},
        },
    )
    by_key = {p.key: p.rule for p in validate_tuning(path)}
    assert "must be odd" in by_key["space.model.conv_kernel"]
    assert "Optuna does not prune multi-objective" in by_key["study.pruner"]
    assert "multi-objective" in by_key["study.sampler"]


def test_validate_never_raises_for_content(tmp_path: Path) -> None:
    missing = validate_tuning(tmp_path / "nope.yaml")
    assert missing and "cannot read" in missing[0].rule
    broken = tmp_path / "broken.yaml"
    broken.write_text("study: [unclosed\n")
    assert "not valid YAML" in validate_tuning(broken)[0].rule
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    assert "mapping" in validate_tuning(scalar)[0].rule
    weird = _write(
        tmp_path, {"study": [1], "objective": "x", "space": [1], "presets": "audio"}, "weird.yaml"
    )
    keys = {p.key for p in validate_tuning(weird)}
    assert {"study", "objective", "space", "presets"} <= keys


def test_presets_compose_later_wins_then_file_wins(tmp_path: Path) -> None:
    (tmp_path / "presets").mkdir()
    _write(
        tmp_path / "presets",
        {
            "space": {"model.num_layers": [2, 3], "model.d_model": [96, 144]},
            "constraints": ["model.d_model % 4 == 0"],
        },
        "one.yaml",
    )
    _write(
        tmp_path / "presets",
        {"space": {"model.num_layers": [4, 5], "model.dropout": [0.1, 0.2]}},
        "two.yaml",
    )
    path = _write(
        tmp_path,
        {
            "recipe": RECIPE,
            "presets": ["one", "presets/two.yaml", "batch"],
            "space": {"model.dropout": 0.05},
        },
    )
    spec = load_tuning(path)
    params = spec.space.params
    assert params["model.num_layers"] == CategoricalParam(
        "model.num_layers", (4, 5)
    )  # later preset wins
    assert params["model.d_model"] == CategoricalParam("model.d_model", (96, 144))
    assert params["model.dropout"] == FixedParam("model.dropout", 0.05)  # the file wins
    assert "train.batch_size" in params  # a shipped preset found by name
    assert spec.space.constraints == ["model.d_model % 4 == 0"]


def test_override_and_space_on_one_key_is_an_error(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "recipe": RECIPE,
            "overrides": {"model.d_model": 96},
            "space": {"model.d_model": [96, 144]},
        },
    )
    problems = validate_tuning(path)
    assert [p.key for p in problems] == ["space.model.d_model"]
    assert "both fixed in overrides and searched" in problems[0].rule


def test_an_override_equal_to_the_prior_sets_the_defaults_of_a_searched_key(
    tmp_path: Path,
) -> None:
    """E.g. a mask width rescaled for a smaller front end: the base recipe (the defaults a
    study's baseline trains) takes it, and the space still searches the key around it."""
    space = {"specaugment.freq_mask_width": {"type": "int", "low": 3, "high": 12, "prior": 7}}
    path = _write(
        tmp_path,
        {"recipe": RECIPE, "overrides": {"specaugment.freq_mask_width": 7}, "space": space},
    )
    assert validate_tuning(path) == []
    spec = load_tuning(path)
    assert spec.base_recipe["specaugment"]["freq_mask_width"] == 7
    assert "specaugment.freq_mask_width" in spec.space.params
    disagreeing = _write(
        tmp_path,
        {"recipe": RECIPE, "overrides": {"specaugment.freq_mask_width": 5}, "space": space},
        name="disagreeing.yaml",
    )
    assert [p.key for p in validate_tuning(disagreeing)] == ["space.specaugment.freq_mask_width"]


def test_command_kind_takes_free_form_keys(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "overrides": {"trainer.max_epochs": 5},
            "space": {
                "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "encoder.blocks": [6, 12],
                "encoder.attention_dim": {"derive": "64 * encoder.blocks"},
                "decoder.depth": {
                    "type": "int",
                    "low": 1,
                    "high": 3,
                    "when": {"trainer.max_epochs": 5},
                },
            },
            "study": {"pruner": "none"},
            "objective": {"kind": "command", "metric": "cer"},
            "command": {
                "argv": ["python", "train.py", "--config", "{config}"],
                "overrides": "--{key}={value}",
                "metric_regex": r"epoch (?P<epoch>\d+) cer (?P<cer>[0-9.]+)",
            },
        },
    )
    spec = load_tuning(path)
    assert spec.command == CommandSpec(
        argv=["python", "train.py", "--config", "{config}"],
        overrides="--{key}={value}",
        metric_regex=r"epoch (?P<epoch>\d+) cer (?P<cer>[0-9.]+)",
    )
    assert spec.base_recipe == {}
    cfg = spec.space.sample(
        optuna.trial.FixedTrial({"optim.lr": 1e-3, "encoder.blocks": 12, "decoder.depth": 2})
    )
    assert cfg == {
        "optim.lr": 1e-3,
        "encoder.blocks": 12,
        "encoder.attention_dim": 768,
        "decoder.depth": 2,
    }
    no_argv = _write(
        tmp_path,
        {"objective": {"kind": "command"}, "command": {"metric_regex": "(unclosed"}},
        "b.yaml",
    )
    keys = {p.key for p in validate_tuning(no_argv)}
    assert {"command.argv", "command.metric_regex"} <= keys


def _assert_samples_build_recipes(path: Path, n: int = 50) -> set[str]:
    """Sample ``n`` random configs; each merged into the base recipe must validate."""
    spec = load_tuning(path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: set[str] = set()
    for _ in range(n):
        trial = study.ask()
        cfg = spec.space.sample(trial)
        config_from_dict(merge(spec.base_recipe, _unflatten(cfg)))
        seen.update(cfg)
        study.tell(trial, 0.0)
    return seen


@pytest.mark.parametrize(
    "preset", ["audio", "architecture", "specaugment", "optimizer", "schedule", "batch"]
)
def test_shipped_presets_sample_valid_recipes(tmp_path: Path, preset: str) -> None:
    assert preset in available_presets()
    data = yaml.safe_load((PRESET_DIR / f"{preset}.yaml").read_text())
    seen = _assert_samples_build_recipes(_write(tmp_path, {"recipe": RECIPE, "presets": [preset]}))
    assert seen == set(data["space"])  # every param of the preset is reachable


def test_shipped_tuning_yaml_samples_valid_recipes() -> None:
    seen = _assert_samples_build_recipes(CONF / "tuning.yaml")
    assert {
        "optim.momentum",
        "optim.beta1",
        "model.d_model",
        "specaugment.time_mask_width",
    } <= seen


@pytest.mark.parametrize("name", sorted(p.name for p in CONF.glob("tuning_an4*.yaml")))
def test_shipped_an4_studies_sample_valid_recipes(name: str) -> None:
    seen = _assert_samples_build_recipes(CONF / name)
    assert {"optim.lr", "model.ctc_weight"} <= seen


def test_the_equal_time_an4_study_tunes_no_knob_that_changes_an_epochs_cost() -> None:
    """Its tuned config and the defaults are compared at equal epochs: equal epochs must mean
    equal training time (batch size sets the steps per epoch, relative positions cost 1.2x)."""
    spec = load_tuning(CONF / "tuning_an4_cpu_equal_time.yaml")
    cost_knobs = {"train.batch_size", "train.grad_accum", "model.pos_enc", "model.d_model"}
    cost_knobs |= {"model.num_layers", "model.ff_dim", "data.speed_perturb", "features.n_mels"}
    assert not cost_knobs & set(spec.space.params)
    assert (
        spec.base_recipe["train"]["epochs"]
        == load_tuning(CONF / "tuning_an4_cpu.yaml").base_recipe["train"]["epochs"]
    )


def test_all_presets_together(tmp_path: Path) -> None:
    path = _write(tmp_path, {"recipe": RECIPE, "presets": available_presets()})
    seen = _assert_samples_build_recipes(path, n=50)
    assert "model.conv_kernel" in seen and "features.n_mels" in seen


def test_repaired_divisibility_is_not_a_recipe_problem(tmp_path: Path) -> None:
    space = {"model.d_model": {"type": "int", "low": 102, "high": 256}}
    plain = _write(tmp_path, {"recipe": RECIPE, "space": space}, "plain.yaml")
    assert [p.key for p in validate_tuning(plain)] == ["space.model.d_model"]  # 102 % 4 heads != 0
    repaired = _write(
        tmp_path,
        {
            "recipe": RECIPE,
            "space": space,
            "constraints": ["model.d_model % model.num_heads == 0"],
        },
        "rep.yaml",
    )
    assert validate_tuning(repaired) == []
    _assert_samples_build_recipes(repaired, n=30)


def test_a_recipe_study_without_a_recipe_says_it_tunes_the_builtin_defaults(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    space = {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    with caplog.at_level("WARNING", logger="speechtune.tuning"):
        spec = load_tuning(_write(tmp_path, {"space": space}))
    assert spec.base_recipe["data"]["corpus"] == "synthetic"
    assert "no recipe: key" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="speechtune.tuning"):
        load_tuning(_write(tmp_path, {"recipe": RECIPE, "space": space}, "with.yaml"))
    assert "no recipe: key" not in caplog.text
