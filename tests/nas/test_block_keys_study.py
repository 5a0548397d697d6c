"""Architecture search as an ordinary recipe study: per-block keys ``model.block_ops.<i>``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from speechtune.cli import main
from speechtune.config import ConfigError, config_from_dict, load_config, merge, unflatten
from speechtune.data import Manifest
from speechtune.tuning.space import CategoricalParam
from speechtune.tuning.spec import load_tuning
from tests.helpers.paths import CONF
from tests.nas.conftest import TINY_BASE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPS = ["conv3", "mhsa", "ff", "skip"]
SEARCHED = {**TINY_BASE, "model": {**TINY_BASE["model"], "encoder": "searched"}}


def _spec_problems(tmp_path: Path, space: dict[str, Any], **extra: Any) -> list[tuple[str, str]]:
    """``(key, rule)`` of every problem of a recipe study over :data:`TINY_BASE`."""
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_BASE))
    tuning = {"recipe": "base.yaml", "objective": {"kind": "recipe", "metric": "wer"},
              "space": space, **extra}  # fmt: skip
    (tmp_path / "tuning.yaml").write_text(yaml.safe_dump(tuning))
    try:
        load_tuning(tmp_path / "tuning.yaml")
    except ConfigError as exc:
        return [(p.key, p.rule) for p in exc.problems]
    return []


def test_the_shipped_blocks_study_is_a_recipe_study_over_four_blocks() -> None:
    spec = load_tuning(CONF / "tuning_nas_blocks.yaml")
    assert spec.objective.kind == "recipe" and spec.fidelity is not None
    blocks = [spec.space.params[f"model.block_ops.{i}"] for i in range(1, 5)]
    assert all(isinstance(p, CategoricalParam) and len(p.choices) == 10 for p in blocks)
    assert spec.base_recipe["data"]["corpus"] == "synthetic"  # conf/synthetic.yaml


def test_block_keys_join_in_order_and_set_num_layers(tmp_path: Path) -> None:
    flat = {"model.block_ops.3": "zero", "model.block_ops.1": "conv31", "model.block_ops.2": "ff"}
    cfg = config_from_dict(merge(SEARCHED, unflatten(flat)))
    assert cfg.model.block_ops == "conv31,ff,zero" and cfg.model.num_layers == 3
    # A recipe's own block_ops (and num_layers) give way to --set per-block keys.
    written = {**SEARCHED, "model": {**SEARCHED["model"], "num_layers": 1, "block_ops": "ff"}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(written))
    cfg = load_config(tmp_path / "r.yaml", ["model.block_ops.2=mhsa", "model.block_ops.1=skip"])
    assert cfg.model.block_ops == "skip,mhsa" and cfg.model.num_layers == 2


@pytest.mark.parametrize(
    ("model", "key", "rule"),
    [
        ({"block_ops": {"1": "ff", "3": "ff"}}, "model.block_ops.3", "block 2 is missing"),
        ({"block_ops": {"x": "ff"}}, "model.block_ops.x", "must be a whole number from 1"),
        ({"block_ops": {"0": "ff"}}, "model.block_ops.0", "must be a whole number from 1"),
        ({"block_ops": {"1": "conv5"}}, "model.block_ops.1", "unknown op 'conv5'"),
        (
            {"encoder": "conformer", "block_ops": {"1": "ff"}},
            "model.block_ops.1",
            "model.encoder is 'conformer'; set model.encoder: searched",
        ),
    ],
)
def test_bad_block_keys_in_a_recipe_name_the_key(model: dict, key: str, rule: str) -> None:
    data = {**SEARCHED, "model": {**SEARCHED["model"], **model}}
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert [(p.key, rule in p.rule) for p in err.value.problems] == [(key, True)]


@pytest.mark.parametrize(
    ("space", "key", "rule"),
    [
        (
            {"model.encoder": "searched", "model.block_ops.1": OPS, "model.block_ops.3": OPS},
            "space.model.block_ops.3",
            "block 2 is missing",
        ),
        (
            {"model.encoder": "searched", "model.block_ops.1": OPS, "model.block_ops.a": OPS},
            "space.model.block_ops.a",
            "must be a whole number from 1",
        ),
        (
            {"model.block_ops.1": OPS, "model.block_ops.2": OPS},
            "space.model.block_ops.1",
            "model.encoder can be 'conformer'",
        ),
        (
            {"model.encoder": ["searched", "lstm"], "model.block_ops.1": OPS},
            "space.model.block_ops.1",
            "model.encoder can be 'lstm'",
        ),
        (
            {
                "model.encoder": "searched",
                "model.num_layers": 3,
                "model.block_ops.1": OPS,
                "model.block_ops.2": OPS,
            },  # fmt: skip
            "space.model.num_layers",
            "set model.num_layers to 2",
        ),
        (
            {"model.encoder": "searched", "model.num_heads": 3, "model.block_ops.1": OPS},
            "space.model.block_ops.1",
            "value 'mhsa' is rejected by the recipe: model.d_model: must be divisible",
        ),
        (
            {"model.encoder": "searched", "model.block_ops.1": ["ff", "conv5"]},
            "space.model.block_ops.1",
            "value 'conv5' is rejected by the recipe: unknown op 'conv5'",
        ),
    ],
)
def test_bad_block_keys_in_a_space_name_the_key(
    tmp_path: Path, space: dict, key: str, rule: str
) -> None:
    problems = _spec_problems(tmp_path, space)
    assert len(problems) == 1 and problems[0][0] == key and rule in problems[0][1], problems


def test_a_space_may_condition_blocks_on_the_encoder_and_fix_num_layers(tmp_path: Path) -> None:
    when = {"model.encoder": "searched"}
    space = {"model.encoder": ["searched", "conformer"], "model.num_layers": 2,
             "model.block_ops.1": {"choices": OPS, "when": when},
             "model.block_ops.2": {"value": "ff", "when": when}}  # fmt: skip
    assert _spec_problems(tmp_path, space) == []


def test_blocks_are_given_in_space_or_in_overrides_not_both(tmp_path: Path) -> None:
    fixed = {"model.encoder": "searched", "model.block_ops.1": "ff", "model.block_ops.2": "mhsa"}
    assert _spec_problems(tmp_path, {"optim.lr": [0.001, 0.003]}, overrides=fixed) == []
    space = {"model.encoder": "searched", "model.block_ops.1": OPS, "model.block_ops.2": OPS}
    keys = [k for k, _ in _spec_problems(tmp_path, space, overrides={"model.block_ops.3": "ff"})]
    assert "overrides.model.block_ops.3" in keys


def test_a_recipe_study_over_two_blocks_trains_and_writes_a_recipe(
    tmp_path: Path, synth_corpus: Manifest, capsys
) -> None:
    manifest = tmp_path / "train.jsonl"
    synth_corpus[:60].to_jsonl(manifest)
    recipe = {**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 1},
              "data": {"corpus": "manifest", "manifest": str(manifest), "dev_fraction": 0.25}}  # fmt: skip
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(recipe))
    tuning = {
        "recipe": "base.yaml",
        "objective": {"kind": "recipe", "metric": "dev_loss"},
        "space": {
            "model.encoder": "searched",
            "model.block_ops.1": OPS,
            "model.block_ops.2": ["conv3", "ff"],
        },  # fmt: skip
        "study": {
            "name": "blocks",
            "sampler": "random",
            "pruner": "none",
            "n_trials": 3,
            "seed": 0,
        },  # fmt: skip
    }
    (tmp_path / "tuning.yaml").write_text(yaml.safe_dump(tuning))
    run_dir = tmp_path / "run"
    argv = ["tune", "--config", str(tmp_path / "tuning.yaml"), "--run-dir", str(run_dir),
            "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--threads", "1",
            "--quiet", "--no-tracking"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr()
    trained = sorted(run_dir.glob("trials/*/config.yaml"))
    assert len(trained) == 3
    for path in trained:
        model = yaml.safe_load(path.read_text())["model"]
        ops = model["block_ops"].split(",")
        assert model["encoder"] == "searched" and model["num_layers"] == 2
        assert ops[0] in OPS and ops[1] in ("conv3", "ff")
    best = load_config(run_dir / "best.yaml")  # a complete recipe
    assert best.model.encoder == "searched" and best.model.num_layers == 2
    assert len(best.model.block_ops.split(",")) == 2
    argv = ["train", "--config", str(run_dir / "best.yaml"), "--run-dir", str(tmp_path / "again"),
            "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--threads", "1",
            "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr()
    again = load_config(tmp_path / "again" / "config.yaml")
    assert again.model.block_ops == best.model.block_ops


def test_a_gap_in_the_blocks_is_one_line_from_the_cli(tmp_path: Path, capsys) -> None:
    space = {"model.encoder": "searched", "model.block_ops.1": OPS, "model.block_ops.3": OPS}
    assert _spec_problems(tmp_path, space)
    run_dir = tmp_path / "run"
    assert (
        main(["tune", "--config", str(tmp_path / "tuning.yaml"), "--run-dir", str(run_dir)]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "space.model.block_ops.3: block 2 is missing" in err, err
    assert not run_dir.exists()  # refused before any trial


def test_a_best_yaml_warm_starts_a_space_of_block_keys(tmp_path: Path) -> None:
    from speechtune.tuning.space import parse_space
    from speechtune.tuning.study import load_warm_start

    # a best.yaml holds the joined string (what config_to_dict writes for a searched encoder)
    best = {**SEARCHED, "model": {**SEARCHED["model"], "num_layers": 2, "block_ops": "mhsa,ff"}}
    (tmp_path / "best.yaml").write_text(yaml.safe_dump(best))
    space = parse_space({"model.block_ops.1": OPS, "model.block_ops.2": OPS, "optim.lr": [0.001]})
    warm = load_warm_start(tmp_path / "best.yaml", space)
    blocks = {k: v for k, v in warm.configs[0].items() if k.startswith("model.block_ops.")}
    assert {k: space.params[k].decode(v) for k, v in blocks.items()} == {
        "model.block_ops.1": "mhsa",
        "model.block_ops.2": "ff",
    }
    assert warm.priors["model.block_ops.1"].default == "mhsa"
