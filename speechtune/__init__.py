"""speechtune: find strong hyperparameters for speech models for a fraction of the compute."""

# Imported lazily (PEP 562) so that `import speechtune.<part>` stays light and parts can be
# used on their own (a training script that only needs the reporter does not import torch).
from importlib import import_module as _import_module
from typing import Any as _Any

__version__ = "0.1.0"
_LAZY = {
    'RecipeConfig': '.config',
    'RunOptions': '.config',
    'load_config': '.config',
    'Reporter': '.train',
    'TrainResult': '.train',
    'train': '.train',
}

__all__ = ["RecipeConfig", "Reporter", "RunOptions", "TrainResult", "__version__", "load_config", "train"]


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        value = getattr(_import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
