"""Streaming latency on one CPU thread: eager against the exported chunk step (TorchScript, ONNX).

Builds the recipe's default Conformer (80 log-mels, d_model 144, 4 blocks, kernel 15, character
vocabulary) as a streaming model at each ``--chunk-ms``, saves it as a ``model.pt``, exports its
chunk step with :func:`speechtune.inference.export_streaming` and streams the same seeded noise
utterances through each. Weights are random: per-chunk compute does not depend on their values,
only on the architecture and the chunk. The paths are timed in turn, ``--rounds`` times, and each
figure is the median over the rounds, so that load from other processes falls on all paths
alike. Prints a Markdown table. Usage:

    python benchmarks/stream_export_latency.py [--chunk-ms 100 400] [--utterances 8] [--seconds 4]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import torch

from speechtune.config import config_from_dict
from speechtune.data._tokenizer import CharTokenizer
from speechtune.features import GlobalCMVN
from speechtune.inference import (
    ExportedStreamingRecognizer,
    Recognizer,
    export_streaming,
    load_streaming_export,
    streaming_latency,
)
from speechtune.models import build_model


def streaming_model(chunk_ms: float, left_chunks: int) -> Recognizer:
    """The default recipe's Conformer, streaming, with seeded random weights and CMVN."""
    cfg = config_from_dict({"model": {"chunk_ms": chunk_ms, "left_chunks": left_chunks}})
    torch.manual_seed(0)
    tok = CharTokenizer(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ '"))
    n_mels = cfg.features.n_mels
    cmvn = GlobalCMVN.fit([torch.randn(500, n_mels) * 3 - 5])
    net = build_model(cfg.model, n_mels, tok.vocab_size, cfg.features.hop_ms)
    return Recognizer(cfg, tok, cmvn, net).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-ms", type=float, nargs="+", default=[100.0, 400.0])
    parser.add_argument("--left-chunks", type=int, default=-1)
    parser.add_argument("--utterances", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = int(args.seconds * 16000)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for _ in range(args.utterances)]
    formats = ["torchscript"] + (["onnx"] if importlib.util.find_spec("onnxruntime") else [])
    print(
        f"torch {torch.__version__}, {args.utterances} utterances of {args.seconds:g} s, 1 thread"
    )
    print("| chunk_ms (encoder frames) | path | chunk p50 ms | chunk p95 ms | RTF |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for chunk_ms in args.chunk_ms:
            rec = streaming_model(chunk_ms, args.left_chunks)
            model_pt = Path(tmp) / f"model_{chunk_ms:g}.pt"
            torch.save(rec.to_payload(), model_pt)
            runs: list[tuple[str, Recognizer | ExportedStreamingRecognizer]] = [("eager", rec)]
            for fmt in formats:
                path = export_streaming(model_pt, Path(tmp) / f"{chunk_ms:g}_{fmt}", fmt)
                runs.append((f"exported {fmt}", load_streaming_export(path)))
            rounds = [
                [streaming_latency(src, waves) for _, src in runs] for _ in range(args.rounds)
            ]
            for i, (name, _) in enumerate(runs):
                med = {k: float(np.median([r[i][k] for r in rounds])) for k in rounds[0][i]}
                print(
                    f"| {chunk_ms:g} ({rec.model.streaming.chunk}) | {name} "
                    f"| {med['stream_chunk_ms_p50']:.2f} | {med['stream_chunk_ms_p95']:.2f} "
                    f"| {med['stream_rtf']:.3f} |"
                )


if __name__ == "__main__":
    main()
