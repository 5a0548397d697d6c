"""speechtune: find strong hyperparameters for speech models for a fraction of the compute."""

from ._lazy import lazy_exports

__version__ = "0.1.0"
_LAZY = {
    'RecipeConfig': '.config',
    'RunOptions': '.config',
    'load_config': '.config',
    'Reporter': '.training',
    'TrainResult': '.training',
    'train': '.training',
    'report': '._report_file',
    'tune': '.tuning',
}

__all__ = [
    "RecipeConfig",
    "Reporter",
    "RunOptions",
    "TrainResult",
    "__version__",
    "load_config",
    "report",
    "train",
    "tune",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
