"""The training recipe: loop, optimisers, LR schedules, batching, checkpoints, diagnostics."""

# Imported lazily (PEP 562) so that `import speechtune.<part>` stays light and parts can be
# used on their own (a training script that only needs the reporter does not import torch).
from importlib import import_module as _import_module
from typing import Any as _Any

_LAZY = {
    'BucketBatchSampler': '._batching',
    'COMPLETE': '._diagnostics',
    'DIVERGED': '._diagnostics',
    'FLATLINE': '._diagnostics',
    'OOM': '._diagnostics',
    'STOPPED': '._diagnostics',
    'TrainResult': '._loop',
    'evaluate_dev': '._loop',
    'train': '._loop',
    'OPTIMIZER_PARAMS': '._optim',
    'build_optimizer': '._optim',
    'effective_batch': '._optim',
    'scale_lr': '._optim',
    'CallbackReporter': '._reporter',
    'NullReporter': '._reporter',
    'Reporter': '._reporter',
    'PlateauTracker': '._schedules',
    'lr_at': '._schedules',
}

__all__ = [
    "COMPLETE",
    "DIVERGED",
    "FLATLINE",
    "OOM",
    "STOPPED",
    "OPTIMIZER_PARAMS",
    "BucketBatchSampler",
    "PlateauTracker",
    "CallbackReporter",
    "NullReporter",
    "Reporter",
    "TrainResult",
    "build_optimizer",
    "effective_batch",
    "evaluate_dev",
    "lr_at",
    "scale_lr",
    "train",
]


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        value = getattr(_import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
