"""Evaluate a trained model on a manifest, and transcribe audio files.

Evaluation is the one place where the test split may be read: it measures a model that has
already been chosen, and nothing here feeds back into training or selection.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

from speechtune.data import Manifest, load_audio, validate_manifest
from speechtune.inference._recognizer import Recognizer, resolve_model_file
from speechtune.metrics import (
    error_counts,
    group_wer,
    measure_latency,
    parameter_count,
    worst_group,
)


def measure_decoding_latency(
    recognizer: Recognizer, manifest: Manifest, max_utterances: int = 32, batch_size: int = 1
) -> dict[str, float]:
    """Wall time to transcribe (front end included) per second of audio, on the model's device.

    Utterances are decoded one at a time by default, as a streaming-free server would.
    """
    utts = list(manifest)[:max_utterances]
    sr = recognizer.cfg.features.sample_rate
    waves = [load_audio(manifest, u, sr) for u in utts]
    seconds = sum(len(w) for w in waves) / sr
    res = measure_latency(
        lambda: recognizer.transcribe(waves, batch_size=batch_size),
        audio_seconds=seconds,
        device=recognizer.device,
        repeats=3,
        warmup=1,
    )
    return {"latency_ms_per_audio_s": res.ms_per_audio_second, "rtf": res.real_time_factor}


def measure_cpu_latency(
    recognizer: Recognizer, manifest: Manifest, max_utterances: int = 8
) -> float:
    """Median over up to ``max_utterances`` utterances of the ms per audio second it takes to
    transcribe each alone (front end included) on one CPU thread, in eager mode.

    One thread and one utterance at a time: the figure of a small device serving one stream,
    comparable across machines with different core counts. ``recognizer`` must be on the CPU.
    """
    if recognizer.device.type != "cpu":
        raise ValueError(f"CPU latency needs a recognizer on the CPU, not {recognizer.device}")
    sr = recognizer.cfg.features.sample_rate
    waves = [load_audio(manifest, u, sr) for u in list(manifest)[:max_utterances]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        per_utterance = [
            measure_latency(
                lambda w=w: recognizer.transcribe([w], batch_size=1),
                audio_seconds=len(w) / sr,
                device="cpu",
                repeats=3,
                warmup=1,
            ).ms_per_audio_second
            for w in waves
            if len(w)
        ]
    finally:
        torch.set_num_threads(threads)
    return statistics.median(per_utterance) if per_utterance else float("nan")


def evaluate_model(
    model_path: str | Path,
    manifest: Manifest,
    *,
    device: str | torch.device = "cpu",
    name: str | None = None,
    skip_bad: bool = False,
    batch_size: int = 16,
) -> dict[str, Any]:
    """WER, CER, per-group and worst-group WER, latency and size of a ``model.pt`` on a manifest.

    The result is also written as JSON beside the model file (``eval_<name>.json``).
    """
    model_path = resolve_model_file(model_path)  # a run directory names its model.pt
    rec = Recognizer.load(model_path, device)
    sr = rec.cfg.features.sample_rate
    # A model trained on upsampled audio (data.allow_upsampling) is evaluated on it too.
    floor = None if rec.cfg.data.allow_upsampling else sr
    manifest, report = validate_manifest(
        manifest, charset=None, sample_rate=floor, skip_bad=skip_bad
    )
    waves = [load_audio(manifest, u, sr) for u in manifest]
    hyps = rec.transcribe(waves, batch_size=batch_size)
    refs = [u.text for u in manifest]
    per_group = group_wer(refs, hyps, [u.group for u in manifest])
    worst_name, worst_rate = worst_group(per_group)
    result: dict[str, Any] = {
        "model": str(model_path),
        "split": manifest.split,
        "utterances": len(manifest),
        "skipped": [b.id for b in report.skipped],
        "wer": error_counts(refs, hyps, unit="word").rate,
        "cer": error_counts(refs, hyps, unit="char").rate,
        "group_wer": per_group,
        "worst_group": worst_name,
        "worst_group_wer": worst_rate,
        "num_parameters": parameter_count(rec.model),
        "model_bytes": model_path.stat().st_size,
        **measure_decoding_latency(rec, manifest),
    }
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", name or manifest.split)
    (model_path.parent / f"eval_{label}.json").write_text(json.dumps(result, indent=2))
    return result


def read_wave(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read an audio file as mono float32 at ``sample_rate``."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise ValueError(f"cannot read audio file {path}: {exc}") from exc
    wave = data.mean(axis=1)
    if sr != sample_rate:
        g = np.gcd(sr, sample_rate)
        wave = resample_poly(wave, sample_rate // g, sr // g).astype(np.float32)
    return wave


def transcribe_files(
    model_path: str | Path, paths: Sequence[str | Path], device: str | torch.device = "cpu"
) -> list[str]:
    """Transcribe audio files with a trained ``model.pt`` or a model from ``speechtune export``.

    An exported artefact is detected by its content and decoded greedily (what it serves); load
    one only from a trusted source, since a TorchScript file is code. ``model.pt`` is still
    read with ``torch.load(weights_only=True)``.
    """
    from speechtune.inference._export import exported_format, load_exported

    if exported_format(model_path) is not None:
        exported = load_exported(model_path, device)
        return exported.transcribe([read_wave(p, exported.sample_rate) for p in paths])
    rec = Recognizer.load(model_path, device)
    waves = [read_wave(p, rec.cfg.features.sample_rate) for p in paths]
    return rec.transcribe(waves)
