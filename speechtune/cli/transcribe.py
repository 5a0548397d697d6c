"""``speechtune transcribe``: transcribe audio files with a trained or exported model."""

from __future__ import annotations

import argparse
import sys

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
    p.add_argument(
        "--stream",
        action="store_true",
        help="decode chunk by chunk as a stream (a model.pt trained with model.chunk_ms > 0, or its "
        "chunk step exported by `speechtune export`; CPU, one thread): print the partial transcript "
        "after each chunk and the latency",
    )
    p.add_argument("audio", nargs="+")


def run(args: argparse.Namespace) -> int:
    """Print ``path<TAB>text`` per file; 0."""
    if args.stream:
        return _run_stream(args)
    from speechtune.inference import exported_format, streaming_export_format, transcribe_files

    if exported_format(args.checkpoint) is None and streaming_export_format(args.checkpoint):
        raise ValueError(
            f"{args.checkpoint} is the chunk step of a streaming model: decode it with --stream "
            "(the whole-utterance export beside it, or the model.pt, serves plain transcribe)"
        )
    for path, text in zip(args.audio, transcribe_files(args.checkpoint, args.audio, args.device)):
        print(f"{path}\t{text}")
    return 0


def _run_stream(args: argparse.Namespace) -> int:
    """Per file: ``path<TAB>+SECONDS s<TAB>partial`` after each chunk, then ``path<TAB>text``;
    the latency per file goes to stderr. ``--checkpoint`` is a ``model.pt`` (eager) or the
    streaming chunk step ``speechtune export`` writes for a streaming model."""
    import torch

    from speechtune.inference import (
        ExportedStreamingRecognizer,
        Recognizer,
        exported_format,
        load_streaming_export,
        read_wave,
        stream_transcribe,
        streaming_export_format,
        streaming_latency,
    )

    if args.device != "cpu":
        raise ValueError(f"--stream measures CPU latency: use --device cpu (got {args.device!r})")
    source: Recognizer | ExportedStreamingRecognizer
    # An export directory holds both artefacts of a streaming model: --stream takes the step.
    if streaming_export_format(args.checkpoint) is not None:
        source = load_streaming_export(args.checkpoint)
        sample_rate, chunk_ms = source.sample_rate, source.chunk_ms
        how = f" through the exported {source.format} chunk step"
    elif exported_format(args.checkpoint) is not None:
        raise ValueError(
            f"--stream needs a model.pt or a streaming chunk step (model.stream.torchscript.pt / "
            f"model.stream.onnx): {args.checkpoint} is an exported model, whose graph decodes "
            "whole utterances"
        )
    else:
        source = Recognizer.load(args.checkpoint, "cpu")
        sample_rate, chunk_ms = source.cfg.features.sample_rate, source.cfg.model.chunk_ms
        how = ""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for path in args.audio:
            wave = read_wave(path, sample_rate)
            result = stream_transcribe(
                source, wave, lambda fed, text, path=path: print(f"{path}\t+{fed:.2f}s\t{text}")
            )
            print(f"{path}\t{result.text}")
            stats = streaming_latency(source, [wave], warmup=0)
            print(
                f"{path}: {len(result.chunk_ms)} chunk(s) of {chunk_ms:g} ms{how}; "
                f"chunk compute p50 {stats['stream_chunk_ms_p50']:.2f} ms, "
                f"p95 {stats['stream_chunk_ms_p95']:.2f} ms; RTF {stats['stream_rtf']:.3f}",
                file=sys.stderr,
            )
    finally:
        torch.set_num_threads(threads)
    return 0
