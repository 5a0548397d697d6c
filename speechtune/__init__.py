"""speechtune: find strong hyperparameters for speech models for a fraction of the compute."""

from speechtune._lazy import lazy_exports
from speechtune._version import __version__

_LAZY = {
    "RecipeConfig": ".config",
    "RunOptions": ".config",
    "load_config": ".config",
    "Reporter": ".training",
    "TrainResult": ".training",
    "train": ".training",
    "report": "._report_file",
    "should_stop": "._report_file",
    "tune": ".api",
}

__all__ = [
    "RecipeConfig",
    "Reporter",
    "RunOptions",
    "TrainResult",
    "__version__",
    "load_config",
    "report",
    "should_stop",
    "train",
    "tune",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
