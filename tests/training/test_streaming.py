"""A streaming Conformer (``model.chunk_ms > 0``) trains, reports its streaming latency in
``metrics.json`` and decodes chunk by chunk as it decodes whole utterances."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from speechtune.data import PreparedData, load_audio
from speechtune.inference import Recognizer, StreamingDecoder, stream_transcribe
from speechtune.training import train
from tests.helpers.recipes import run_options, tiny_config
from tests.training.test_edge import TINY_CONFORMER

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_tiny_streaming_model_trains_reports_latency_and_streams(
    synth_data: PreparedData, tmp_path: Path
) -> None:
    data = PreparedData(
        train=synth_data.train[:96], dev=synth_data.dev[:16], report=synth_data.report
    )
    streaming = {"chunk_ms": 320, "left_chunks": 2, "dynamic_chunk": True, "pos_enc": "rel"}
    cfg = tiny_config(model={**TINY_CONFORMER, **streaming}, train={"epochs": 1})
    result = train(cfg, run_options(tmp_path), data=data)
    assert result.status == "complete", result.reason
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))

    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert 0 < metrics["stream_chunk_ms_p50"] <= metrics["stream_chunk_ms_p95"]
    assert metrics["stream_rtf"] > 0

    rec = Recognizer.load(result.output_dir / "model.pt")
    assert rec.model.streaming.chunk == 8 and rec.model.streaming.left_chunks == 2
    waves = [load_audio(data.dev, u, 16000) for u in list(data.dev)[:4]]
    assert [stream_transcribe(rec, w).text for w in waves] == rec.transcribe(waves)
    # one epoch teaches little text, so compare what decoding reads: the encoder output of
    # real speech, chunk by chunk against the masked whole-utterance forward
    wave = torch.from_numpy(waves[0])[None]
    feats, frames = rec.frontend(wave, torch.tensor([wave.size(1)]))
    feats = rec.normalize(feats)
    decoder = StreamingDecoder(rec.model, keep_encoder_output=True)
    decoder.accept(feats[0, : int(frames[0])])
    decoder.finish()
    full, _ = rec.model.encode(feats, frames)
    torch.testing.assert_close(torch.cat(decoder.encoded, dim=1), full, atol=1e-4, rtol=0)


def test_a_full_context_run_reports_no_streaming_figures(
    synth_data: PreparedData, tmp_path: Path
) -> None:
    data = PreparedData(
        train=synth_data.train[:32], dev=synth_data.dev[:8], report=synth_data.report
    )
    result = train(
        tiny_config(model=TINY_CONFORMER, train={"epochs": 1}), run_options(tmp_path), data=data
    )
    assert result.status == "complete", result.reason
    assert not any(k.startswith("stream_") for k in result.metrics)
