"""``speechtune transcribe``: transcribe audio files with a trained or exported model."""

from __future__ import annotations

import argparse

HELP = "transcribe audio files"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``speechtune transcribe``."""
    p.add_argument(
        "--checkpoint",
        required=True,
        help="model.pt, or a model exported by `speechtune export` (file or directory; trusted sources only: "
        "an exported TorchScript file is code)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("audio", nargs="+")


def run(args: argparse.Namespace) -> int:
    """Print ``path<TAB>text`` per file; 0."""
    from speechtune.inference import transcribe_files

    for path, text in zip(args.audio, transcribe_files(args.checkpoint, args.audio, args.device)):
        print(f"{path}\t{text}")
    return 0
