"""Architecture search for the speech encoder's blocks: DARTS and weight sharing.

The discrete space is an ordinary recipe (``model.encoder: searched`` with one op per block in
``model.block_ops``); a search trains a supernet over it, derives an architecture, writes it as
a recipe and, when asked, retrains it with the ordinary trainer. See ``docs/nas.md``.
"""

from speechtune.nas._config import (
    METHODS,
    NasConfig,
    load_nas_config,
    nas_config_from_dict,
)
from speechtune.nas._data import SearchData, load_search_data
from speechtune.nas._derive import derive_architecture, derived_recipe, write_recipe
from speechtune.nas._guard import CollapseGuard, GuardDecision, OpWeightsLog
from speechtune.nas._objective import blocks_objective
from speechtune.nas._rank import sample_architectures, spearman
from speechtune.nas._run import NasResult, retrain_arch, run_nas
from speechtune.nas._supernet import MixedBlock, Supernet
from speechtune.nas._train import SupernetRun, evaluate_path, train_darts, train_weight_sharing

__all__ = [
    "METHODS",
    "CollapseGuard",
    "GuardDecision",
    "MixedBlock",
    "NasConfig",
    "NasResult",
    "OpWeightsLog",
    "SearchData",
    "Supernet",
    "SupernetRun",
    "blocks_objective",
    "derive_architecture",
    "derived_recipe",
    "evaluate_path",
    "load_nas_config",
    "load_search_data",
    "nas_config_from_dict",
    "retrain_arch",
    "run_nas",
    "sample_architectures",
    "spearman",
    "train_darts",
    "train_weight_sharing",
    "write_recipe",
]
