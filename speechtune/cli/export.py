"""``speechtune export``: a trained model as one TorchScript or ONNX file that ``transcribe`` loads."""

from __future__ import annotations

import argparse

from speechtune.inference import FORMATS

HELP = "export a trained model (front-end config and vocabulary included) as TorchScript or ONNX"
DESCRIPTION = (
    "Write one self-contained file that serves greedy CTC decoding and that `speechtune transcribe --checkpoint FILE` "
    "loads. TorchScript holds the log-mel front end in the graph; ONNX (needs the onnx package, and onnxruntime to "
    "run) takes log-mels, whose config it stores. A streaming model (model.chunk_ms > 0) also gets its chunk step, "
    "state in and out (model.stream.torchscript.pt / model.stream.onnx), which `speechtune transcribe --stream` "
    "decodes chunk by chunk."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``speechtune export``."""
    p.add_argument("--checkpoint", required=True, help="model.pt written by `speechtune train`")
    p.add_argument("--format", required=True, choices=list(FORMATS), help="artefact format")
    p.add_argument(
        "--out",
        required=True,
        help="output directory (file named model.torchscript.pt / model.onnx) or a file path ending in .pt/.onnx",
    )
    p.add_argument(
        "--no-streaming",
        action="store_true",
        help="for a streaming model, skip the chunk-step artefact written beside the whole-utterance one",
    )


def run(args: argparse.Namespace) -> int:
    """Export (and verify) the model, and the chunk step of a streaming model; 0."""
    from pathlib import Path

    from speechtune.inference import Recognizer, export_model, export_streaming

    path = export_model(args.checkpoint, args.out, args.format)
    print(f"exported {args.format}: {path}")
    if args.no_streaming or not Recognizer.load(args.checkpoint, "cpu").model.streaming.enabled:
        return 0
    out = Path(args.out)
    # beside the whole-utterance file: model.stream.* in a directory, NAME.stream.EXT for a file
    stream_out = out if path.parent == out else path.with_name(f"{path.stem}.stream{path.suffix}")
    stream_path = export_streaming(args.checkpoint, stream_out, args.format)
    print(f"exported {args.format} streaming chunk step: {stream_path}")
    return 0
