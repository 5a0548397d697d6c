"""Evaluation metrics: WER/CER (overall and per group), decoding latency, model size."""

from speechtune.metrics._latency import LatencyResult, measure_latency
from speechtune.metrics._size import parameter_count, size_on_disk
from speechtune.metrics._wer import ErrorCounts, cer, error_counts, group_wer, wer, worst_group

__all__ = [
    "ErrorCounts",
    "LatencyResult",
    "cer",
    "error_counts",
    "group_wer",
    "measure_latency",
    "parameter_count",
    "size_on_disk",
    "wer",
    "worst_group",
]
