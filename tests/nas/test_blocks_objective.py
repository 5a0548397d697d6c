"""``blocks_objective`` (kept for Python-function studies): block1..blockN joined into model.block_ops.

The shipped study is a recipe study over ``model.block_ops.<i>`` (``test_block_keys_study.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from speechtune.config import ConfigError
from speechtune.nas._objective import blocks_recipe
from tests.helpers.paths import CONF
from tests.nas.conftest import TINY_BASE


def test_blocks_become_block_ops_over_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_BASE))
    config = {"recipe": str(tmp_path / "base.yaml"), "block2": "ff", "block1": "conv31",
              "block3": "zero", "train.epochs": 3, "seed": 5}  # fmt: skip
    cfg = blocks_recipe(config)
    assert cfg.model.encoder == "searched" and cfg.model.block_ops == "conv31,ff,zero"
    assert cfg.model.num_layers == 3 and cfg.train.epochs == 3 and cfg.seed == 5
    assert cfg.model.d_model == TINY_BASE["model"]["d_model"]


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"block1": "ff"}, "recipe"),
        ({"recipe": "RECIPE", "block1": "ff", "block3": "ff"}, "block1"),
        ({"recipe": "RECIPE", "block1": "conv5"}, "model.block_ops"),
    ],
)
def test_bad_trial_configs_name_the_key(tmp_path: Path, config: dict, key: str) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_BASE))
    config = {k: str(tmp_path / "base.yaml") if v == "RECIPE" else v for k, v in config.items()}
    with pytest.raises(ConfigError) as err:
        blocks_recipe(config)
    assert err.value.problems[0].key == key


def test_the_shipped_nas_configs_validate() -> None:
    from speechtune.nas import load_nas_config
    from speechtune.tuning.spec import load_tuning

    for name in ("nas_darts.yaml", "nas_weight_sharing.yaml"):
        cfg = load_nas_config(CONF / name)
        assert cfg.search.num_blocks == 4 and len(cfg.search.ops) == 10
    spec = load_tuning(CONF / "tuning_nas_blocks.yaml")  # a recipe study (per-block keys)
    assert spec.objective.kind == "recipe" and "model.block_ops.4" in spec.space.params
