"""Config schema: defaults, YAML round trip, dotted overrides, and all-errors-at-once validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from speechtune.cli import main
from speechtune.config import (
    ConfigError,
    RecipeConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
    flatten,
    load_config,
    merge,
    parse_overrides,
)
from tests.helpers.paths import CONF, REPO


@pytest.mark.parametrize("name", ["synthetic.yaml", "an4.yaml", "an4_cpu_tuned.yaml"])
def test_shipped_recipes_are_valid(name: str) -> None:
    cfg = load_config(CONF / name)
    assert isinstance(cfg, RecipeConfig)


def test_the_shipped_tuned_an4_recipe_is_the_measured_one() -> None:
    """conf/an4_cpu_tuned.yaml is the config whose dev WER docs/benchmarks.md reports."""
    record = json.loads(
        (REPO / "benchmarks/data/an4_tuned_vs_default_cpu_equal_time.json").read_text()
    )
    measured = config_to_dict(config_from_dict(record["tuned_config"]))
    assert config_to_dict(load_config(CONF / "an4_cpu_tuned.yaml")) == measured
    assert record["summary"]["relative_wer_change"] < 0  # it beat the defaults


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = load_config(CONF / "synthetic.yaml", ["model.num_layers=5", "optim.lr=3e-4"])
    dump_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    assert again.model.num_layers == 5 and again.optim.lr == pytest.approx(3e-4)


def test_overrides_are_typed_yaml_scalars() -> None:
    nested = parse_overrides(
        ["model.encoder=lstm", "train.grad_clip=null", "data.synthetic.accents=[en-us, en]"]
    )
    assert nested == {
        "model": {"encoder": "lstm"},
        "train": {"grad_clip": None},
        "data": {"synthetic": {"accents": ["en-us", "en"]}},
    }
    cfg = config_from_dict(nested)
    assert cfg.train.grad_clip is None and cfg.data.synthetic.accents == ["en-us", "en"]


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(
            {
                "model": {"encoder": "rnnt", "d_model": "big", "layers": 3},
                "train": {"epochs": 0},
                "optimizer": {},
            }
        )
    problems = {p.key: p for p in info.value.problems}
    assert set(problems) == {
        "model.encoder",
        "model.d_model",
        "model.layers",
        "train.epochs",
        "optimizer",
    }
    # an unknown key lists the valid ones
    assert "num_layers" in problems["model.layers"].rule
    assert "conformer" in problems["model.encoder"].rule
    assert problems["train.epochs"].value == 0


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(
            {
                "model": {
                    "encoder": "conformer",
                    "d_model": 100,
                    "num_heads": 3,
                    "conv_kernel": 16,
                },
                "features": {"window_ms": 10, "hop_ms": 20},
                "data": {"corpus": "an4"},
            }
        )
    keys = {p.key for p in info.value.problems}
    assert {"model.d_model", "model.conv_kernel", "features.hop_ms", "data.root"} <= keys


def test_width_and_depth_multipliers_resolve_into_sizes(tmp_path: Path) -> None:
    base = {"model": {"d_model": 144, "ff_dim": 576, "num_heads": 4, "num_layers": 4}}
    cfg = config_from_dict(merge(base, {"model": {"width_mult": 0.5, "depth_mult": 0.75}}))
    m = cfg.model
    # 72 is a multiple of the 4 heads; ff_dim keeps its 4x ratio; 4 x 0.75 = 3 layers.
    assert (m.d_model, m.ff_dim, m.num_layers) == (72, 288, 3)
    assert (m.width_mult, m.depth_mult) == (1.0, 1.0)  # resolved: a saved config reloads as is
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    # Rounding keeps d_model divisible by the heads, and the floors hold.
    odd = config_from_dict(merge(base, {"model": {"width_mult": 0.3, "depth_mult": 0.1}}))
    assert odd.model.d_model % 4 == 0 and odd.model.d_model == 44 and odd.model.num_layers == 1
    tiny = config_from_dict(merge(base, {"model": {"width_mult": 0.01, "num_heads": 3}}))
    assert tiny.model.d_model == 9  # the schema's floor of 8, rounded up to the 3 heads
    with pytest.raises(ConfigError, match="model.width_mult"):
        config_from_dict({"model": {"width_mult": 0}})


def test_flatten_gives_dotted_keys() -> None:
    flat = flatten(config_to_dict(RecipeConfig()))
    assert flat["model.d_model"] == RecipeConfig().model.d_model
    assert "data.synthetic.num_utterances" in flat


def test_validate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"encoder": "nope", "dropout": 1.5}}))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model.encoder" in err and "model.dropout" in err
    assert main(["validate", str(CONF / "synthetic.yaml")]) == 0
