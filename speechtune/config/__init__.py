"""Typed recipe configuration: schema, YAML loading, dotted overrides, validation."""

from ._load import (
    ConfigError,
    ConfigProblem,
    config_from_dict,
    config_to_dict,
    dump_config,
    flatten,
    load_config,
    parse_overrides,
)
from ._schema import (
    DataConfig,
    DecodeConfig,
    FeaturesConfig,
    ModelConfig,
    OptimConfig,
    RecipeConfig,
    RunOptions,
    ScheduleConfig,
    SpecAugmentConfig,
    SyntheticConfig,
    TokenizerConfig,
    TrainConfig,
)

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "DataConfig",
    "DecodeConfig",
    "FeaturesConfig",
    "ModelConfig",
    "OptimConfig",
    "RecipeConfig",
    "RunOptions",
    "ScheduleConfig",
    "SpecAugmentConfig",
    "SyntheticConfig",
    "TokenizerConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "flatten",
    "load_config",
    "parse_overrides",
]
