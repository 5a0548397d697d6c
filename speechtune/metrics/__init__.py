"""Evaluation metrics: WER/CER (overall and per group), decoding latency, model size, cost and CO2.

Exports are lazy (see :mod:`speechtune._lazy`): the tuning engine imports the cost meter without
paying for torch, which the latency and size metrics need.
"""

from .._lazy import lazy_exports

_LAZY = {
    "ErrorCounts": "._wer",
    "cer": "._wer",
    "error_counts": "._wer",
    "group_wer": "._wer",
    "wer": "._wer",
    "worst_group": "._wer",
    "LatencyResult": "._latency",
    "measure_latency": "._latency",
    "parameter_count": "._size",
    "size_on_disk": "._size",
    "COST_FIELDS": "._cost",
    "CURRENCY_SYMBOLS": "._cost",
    "CostModel": "._cost",
    "CostRecord": "._cost",
    "EnergyMeter": "._cost",
    "estimate_cost": "._cost",
    "format_cost": "._cost",
    "gpus_for_device": "._cost",
    "sum_costs": "._cost",
    "summarize_costs": "._cost",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
