"""The same discrete space for the tuner: one categorical per block, trained by the recipe.

``speechtune tune`` with ``objective.kind: python`` and ``function:
speechtune.nas:blocks_objective`` searches the blocks the way it searches any hyperparameter
(TPE, multi-fidelity...): the space holds ``block1 .. blockN`` (one list of ops each), the base
recipe as the fixed key ``recipe``, and any dotted recipe keys (a rung's ``train.epochs``,
``optim.lr``...).

A recipe study does the same without this module: its space holds ``model.block_ops.1 ..
model.block_ops.N``, which the recipe loader joins (``conf/tuning_nas_blocks.yaml``). This
objective stays for existing Python-function studies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from speechtune.config import (
    ConfigError,
    ConfigProblem,
    RecipeConfig,
    RunOptions,
    config_from_dict,
    merge,
    read_yaml,
    unflatten,
)
from speechtune.nas._derive import derived_recipe
from speechtune.training import Reporter, TrainResult, train

_BLOCK = re.compile(r"^block(\d+)$")


def blocks_recipe(config: Mapping[str, Any]) -> RecipeConfig:
    """The recipe of a trial config: ``recipe`` + dotted overrides + ``block1..blockN``.

    Raises:
        ConfigError: no ``recipe``, no blocks, a gap in the block numbers, or a recipe problem.
    """
    blocks: dict[int, str] = {}
    overrides: dict[str, Any] = {}
    for key, value in config.items():
        match = _BLOCK.match(key)
        if match:
            blocks[int(match.group(1))] = str(value)
        elif key != "recipe":
            overrides[key] = value
    path = config.get("recipe")
    if not isinstance(path, str) or not Path(path).is_file():
        rule = "must name the base recipe YAML (a fixed value of the space)"
        raise ConfigError([ConfigProblem("recipe", rule, path)])
    if not blocks or sorted(blocks) != list(range(1, len(blocks) + 1)):
        rule = "the space needs keys block1, block2, ... (one op list per block, no gaps)"
        raise ConfigError([ConfigProblem("block1", rule, sorted(blocks))])
    base = config_from_dict(merge(read_yaml(path) or {}, unflatten(overrides)), source=path)
    return derived_recipe(base, [blocks[i] for i in sorted(blocks)])


def train_blocks(
    config: Mapping[str, Any], opts: RunOptions, reporter: Reporter | None = None
) -> TrainResult:
    """Train the recipe of a trial config (see :func:`blocks_recipe`) with the ordinary trainer."""
    return train(blocks_recipe(config), opts, reporter)


def blocks_objective(
    config: dict[str, Any], reporter: Reporter, trial_dir: Path, seed: int
) -> dict[str, float]:
    """A tuner objective over per-block ops (``objective.function`` of a tuning YAML).

    Args:
        config: The trial's flat config (``recipe``, ``block1..blockN``, dotted recipe keys).
        reporter: The study's reporter (per-epoch dev metrics; may stop the trial).
        trial_dir: Where the trial trains (``model.pt``, ``metrics.json``).
        seed: The trial's seed (the recipe's ``seed``).

    Returns:
        Dev ``wer``, ``cer``, ``dev_loss``, ``num_parameters`` and 1-thread CPU latency.
    """
    flat = {**config, "seed": seed}
    opts = RunOptions(output_dir=str(trial_dir), device="auto", progress=False)
    result = train_blocks(flat, opts, reporter)
    m = result.metrics
    if not m and result.history:  # stopped before a model was saved: its last epoch stands
        m = result.history[-1]
    keys = ("wer", "cer", "dev_loss", "num_parameters", "cpu_latency_ms_per_audio_s")
    return {k: float(m[k]) for k in keys if isinstance(m.get(k), (int, float))}
