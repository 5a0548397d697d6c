"""The training recipe: loop, optimisers, LR schedules, batching, checkpoints, diagnostics."""

from speechtune._lazy import lazy_exports

_LAZY = {
    "BucketBatchSampler": "._batching",
    "Batch": "._collate",
    "collate": "._collate",
    "resolve_device": "._loop",
    "COMPLETE": "._diagnostics",
    "DIVERGED": "._diagnostics",
    "FLATLINE": "._diagnostics",
    "OOM": "._diagnostics",
    "STOPPED": "._diagnostics",
    "TrainResult": "._loop",
    "evaluate_dev": "._evaluate",
    "train": "._loop",
    "OPTIMIZER_PARAMS": "._optim",
    "build_optimizer": "._optim",
    "effective_batch": "._optim",
    "scale_lr": "._optim",
    "layer_lr_groups": "._optim",
    "set_lr": "._optim",
    "prepare_finetune": "._finetune",
    "ENVIRONMENT_FILE": "._provenance",
    "environment_differences": "._provenance",
    "read_environment": "._provenance",
    "CallbackReporter": "._reporter",
    "NullReporter": "._reporter",
    "Reporter": "._reporter",
    "PlateauTracker": "._schedules",
    "lr_at": "._schedules",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
