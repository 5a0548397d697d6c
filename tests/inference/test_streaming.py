"""Streaming recognition of a saved model: transcripts chunk by chunk against whole-utterance
decoding, export of a streaming model, the latency figures, and ``transcribe --stream``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from speechtune.cli import main
from speechtune.config import RecipeConfig, config_from_dict
from speechtune.data._tokenizer import CharTokenizer
from speechtune.features import GlobalCMVN
from speechtune.inference import (
    Recognizer,
    export_model,
    load_exported,
    stream_transcribe,
    streaming_latency,
)
from speechtune.models import build_model
from tests.helpers.audio import noise_wav
from tests.inference.test_export import ALL_FORMATS

SR = 16000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def recognizer(**model: object) -> Recognizer:
    """A small random-init recogniser (n_mels 40, Conformer 32x2) with ``model`` keys."""
    cfg: RecipeConfig = config_from_dict(
        {
            "features": {"n_mels": 40},
            "model": {
                "d_model": 32,
                "num_layers": 2,
                "num_heads": 4,
                "ff_dim": 64,
                "conv_kernel": 7,
                **model,
            },
        }
    )
    torch.manual_seed(0)
    tok = CharTokenizer(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ '"))
    cmvn = GlobalCMVN.fit([torch.randn(200, 40) * 3 - 5])
    net = build_model(cfg.model, 40, tok.vocab_size, cfg.features.hop_ms)
    return Recognizer(cfg, tok, cmvn, net).eval()


def waves(*lengths: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


@pytest.mark.parametrize("pos_enc", ["abs", "rel"])
def test_streamed_transcripts_equal_whole_utterance_transcripts(pos_enc: str) -> None:
    rec = recognizer(chunk_ms=160, left_chunks=2, pos_enc=pos_enc)
    audio = waves(16000, 9000, 5000, 1300)
    assert [stream_transcribe(rec, w).text for w in audio] == rec.transcribe(audio)
    # too short for one subsampled frame (5 < 7 feature frames): a stream says nothing, where
    # whole-utterance decoding refuses the input
    short = stream_transcribe(rec, waves(700)[0])
    assert short.text == "" and short.chunk_ms == [] and short.partials == []

    seen: list[tuple[float, str]] = []
    result = stream_transcribe(rec, audio[0], lambda s, t: seen.append((s, t)))
    assert seen == result.partials and result.text.strip()
    # 1 s at a 10 ms hop is 101 frames -> 24 encoder frames -> 6 chunks of 4
    assert len(result.chunk_ms) == len(result.partials) == 6
    times = [s for s, _ in result.partials]
    assert times == sorted(times) and times[0] == pytest.approx(0.19)  # 16 frames + 3 lookahead
    assert times[-1] == pytest.approx(0.99)  # encoder frame 23 reads input frames 92..98
    # CTC greedy only ever appends: each partial extends the one before
    texts = [t for _, t in result.partials]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:])) and texts[-1] == result.text


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_a_streaming_model_exports_its_masked_full_utterance_forward(
    tmp_path: Path, fmt: str
) -> None:
    rec = recognizer(chunk_ms=160, left_chunks=1)
    checkpoint = tmp_path / "model.pt"
    torch.save(rec.to_payload(), checkpoint)
    audio = waves(16000, 9000, 5000)
    # export_model checks the artefact against the eager model on other lengths and batches
    exported = load_exported(export_model(checkpoint, tmp_path / "out", fmt))
    assert exported.transcribe(audio) == rec.transcribe(audio)
    assert [stream_transcribe(rec, w).text for w in audio] == rec.transcribe(audio)


def test_latency_figures_are_sane_and_leave_the_thread_count_alone() -> None:
    rec = recognizer(chunk_ms=320)
    torch.set_num_threads(2)
    figures = streaming_latency(rec, waves(16000, 12000))
    assert torch.get_num_threads() == 2
    assert set(figures) == {"stream_chunk_ms_p50", "stream_chunk_ms_p95", "stream_rtf"}
    assert 0 < figures["stream_chunk_ms_p50"] <= figures["stream_chunk_ms_p95"]
    assert 0 < figures["stream_rtf"] < 10
    with pytest.raises(ValueError, match="non-empty"):
        streaming_latency(rec, [np.zeros(0, dtype=np.float32)])


def test_transcribe_stream_prints_partials_then_the_transcript(tmp_path: Path, capsys) -> None:
    rec = recognizer(chunk_ms=320)
    checkpoint = tmp_path / "model.pt"
    torch.save(rec.to_payload(), checkpoint)
    wav = noise_wav(tmp_path / "a.wav", seconds=1.0, rate=SR)
    assert main(["transcribe", "--stream", "--checkpoint", str(checkpoint), str(wav)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 4  # 24 encoder frames: 3 chunks of 8, then the transcript
    assert all(line.split("\t")[1].startswith("+") for line in lines[:3])
    assert lines[-1] == f"{wav}\t{rec.transcribe([_read(wav)])[0]}"
    assert "3 chunk(s) of 320 ms" in err and "p95" in err and "RTF" in err

    exported = export_model(checkpoint, tmp_path / "out", "torchscript")
    assert main(["transcribe", "--stream", "--checkpoint", str(exported), str(wav)]) != 0
    assert "--stream needs a model.pt" in capsys.readouterr().err


def test_transcribe_stream_refuses_a_full_context_model(tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "model.pt"
    torch.save(recognizer().to_payload(), checkpoint)
    wav = noise_wav(tmp_path / "a.wav", seconds=0.5, rate=SR)
    assert main(["transcribe", "--stream", "--checkpoint", str(checkpoint), str(wav)]) != 0
    err = capsys.readouterr().err
    assert "model.chunk_ms > 0" in err and len(err.strip().splitlines()) == 1


def _read(path: Path) -> np.ndarray:
    from speechtune.inference import read_wave

    return read_wave(path, SR)
