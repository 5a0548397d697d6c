"""``speechtune export``: a trained model as one TorchScript or ONNX file that ``transcribe`` loads."""

from __future__ import annotations

import argparse

from speechtune.inference import FORMATS

HELP = "export a trained model (front-end config and vocabulary included) as TorchScript or ONNX"
DESCRIPTION = (
    "Write one self-contained file that serves greedy CTC decoding and that `speechtune transcribe --checkpoint FILE` "
    "loads. TorchScript holds the log-mel front end in the graph; ONNX (needs the onnx package, and onnxruntime to "
    "run) takes log-mels, whose config it stores."
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


def run(args: argparse.Namespace) -> int:
    """Export (and verify) the model; 0."""
    from speechtune.inference import export_model

    path = export_model(args.checkpoint, args.out, args.format)
    print(f"exported {args.format}: {path}")
    return 0
