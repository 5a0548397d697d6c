"""The exported chunk step of a small random-init streaming Conformer (whose greedy output is not
empty, unlike a model trained for one epoch) streams the eager transcripts, for each positional
encoding and left context; an export that would disagree is not written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speechtune.inference import (
    _stream_export,
    export_streaming,
    load_streaming_export,
    stream_transcribe,
    streaming_export_format,
)
from tests.inference.test_export import ALL_FORMATS
from tests.inference.test_streaming import recognizer, waves

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize(
    "model",
    [
        {"chunk_ms": 160, "left_chunks": 1, "pos_enc": "abs"},
        {"chunk_ms": 160, "left_chunks": 2, "pos_enc": "rel"},
        {"chunk_ms": 320, "left_chunks": -1, "pos_enc": "rel", "head": "ctc_attention"},
    ],
    ids=["abs-left1", "rel-left2", "rel-all-ctc_attention"],
)
def test_exported_streams_equal_eager_streams(
    tmp_path: Path, fmt: str, model: dict[str, object]
) -> None:
    rec = recognizer(**model)
    checkpoint = tmp_path / "model.pt"
    torch.save(rec.to_payload(), checkpoint)
    path = export_streaming(checkpoint, tmp_path / "out", fmt)
    assert streaming_export_format(path) == fmt and streaming_export_format(checkpoint) is None
    exported = load_streaming_export(path)
    audio = waves(16000, 9000, 5000, 1300, 700)  # 700 samples: no complete window, no chunk
    eager = [stream_transcribe(rec, w) for w in audio]
    got = [stream_transcribe(exported, w) for w in audio]
    assert [g.text for g in got] == [e.text for e in eager]
    assert [g.partials for g in got] == [e.partials for e in eager]
    assert all(e.text.strip() for e in eager[:3]) and got[-1].text == "" and not got[-1].chunk_ms
    # and both equal whole-utterance decoding with the chunked mask (what export_model serves)
    assert [g.text for g in got[:4]] == rec.transcribe(audio[:4])


def test_an_export_that_disagrees_with_eager_streaming_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = recognizer(chunk_ms=160, left_chunks=1)
    checkpoint = tmp_path / "model.pt"
    torch.save(rec.to_payload(), checkpoint)
    # a graph that forgets to trim the left context attends to more than the eager model does
    monkeypatch.setattr(_stream_export._ChunkStep, "_trim", lambda self, cached: cached)
    with pytest.raises(RuntimeError, match="disagrees with eager streaming"):
        export_streaming(checkpoint, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())
