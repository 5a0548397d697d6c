"""Using a trained model: load and decode (Recognizer), evaluate on a manifest, quantise to int8
or int4 weights, export to TorchScript/ONNX, decode a streaming model chunk by chunk (eager,
or through its exported chunk step).

Exports are lazy: these modules import torch, and ``speechtune.inference.FORMATS`` is needed
by the command line without it.
"""

from speechtune._lazy import lazy_exports
from speechtune.inference._formats import FORMATS

_LAZY = {
    "Recognizer": "._recognizer",
    "pad_waves": "._recognizer",
    "evaluate_model": "._evaluate",
    "measure_decoding_latency": "._evaluate",
    "measure_cpu_latency": "._evaluate",
    "read_wave": "._evaluate",
    "transcribe_files": "._evaluate",
    "ExportedRecognizer": "._export",
    "export_model": "._export",
    "exported_format": "._export",
    "load_exported": "._export",
    "INT4_STAGE": "._int4",
    "INT8_STAGE": "._quantize",
    "QAT_STAGE": "._quantize",
    "activation_observers": "._quantize",
    "prepare_qat": "._quantize",
    "quantize_model": "._quantize",
    "quantize_weight_int4": "._int4",
    "restore_quantized": "._quantize",
    "StreamingDecoder": "._streaming",
    "StreamResult": "._streaming",
    "stream_transcribe": "._streaming",
    "streaming_latency": "._streaming",
    "streaming_metrics": "._stream_export",
    "export_streaming": "._stream_export",
    "ExportedStreamingRecognizer": "._stream_runtime",
    "load_streaming_export": "._stream_runtime",
    "streaming_export_format": "._stream_runtime",
}

__all__ = ["FORMATS", *sorted(_LAZY)]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
