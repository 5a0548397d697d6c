"""A trained streaming Conformer's chunk step, exported (TorchScript, ONNX), streams as the eager
model does: same transcripts, same per-chunk log-probs, its own latency figures in
``metrics.json``, ``speechtune export`` writes it and ``transcribe --stream`` runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from speechtune.cli import main
from speechtune.data import PreparedData, load_audio
from speechtune.inference import (
    Recognizer,
    StreamingDecoder,
    export_streaming,
    load_streaming_export,
    stream_transcribe,
    streaming_latency,
)
from speechtune.training import TrainResult, train
from tests.helpers.audio import noise_wav
from tests.helpers.recipes import run_options, tiny_config
from tests.inference.test_export import ALL_FORMATS
from tests.inference.test_streaming import recognizer
from tests.training.test_edge import TINY_CONFORMER

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: abs positions (the offset is a graph input) and a left context that fills up and is trimmed.
STREAMING = {"chunk_ms": 160, "left_chunks": 2, "dynamic_chunk": True, "pos_enc": "abs"}


@pytest.fixture(scope="module")
def streaming_run(
    synth_data: PreparedData, tmp_path_factory: pytest.TempPathFactory
) -> TrainResult:
    data = PreparedData(
        train=synth_data.train[:96], dev=synth_data.dev[:8], report=synth_data.report
    )
    cfg = tiny_config(model={**TINY_CONFORMER, **STREAMING}, train={"epochs": 1})
    result = train(cfg, run_options(tmp_path_factory.mktemp("stream_export")), data=data)
    assert result.status == "complete", result.reason
    return result


@pytest.fixture(scope="module")
def dev_waves(streaming_run: TrainResult, synth_data: PreparedData) -> list[np.ndarray]:
    return [load_audio(synth_data.dev, u, 16000) for u in list(synth_data.dev)[:4]]


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_the_exported_chunk_step_streams_what_the_eager_model_streams(
    streaming_run: TrainResult, dev_waves: list[np.ndarray], tmp_path: Path, fmt: str
) -> None:
    model_pt = streaming_run.output_dir / "model.pt"
    rec = Recognizer.load(model_pt)
    path = export_streaming(model_pt, tmp_path, fmt)
    assert path.name == f"model.stream.{'torchscript.pt' if fmt == 'torchscript' else 'onnx'}"
    exported = load_streaming_export(tmp_path)  # the directory names its one artefact
    for wave in dev_waves:
        eager, got = stream_transcribe(rec, wave), stream_transcribe(exported, wave)
        assert got.text == eager.text == rec.transcribe([wave])[0]
        assert got.partials == eager.partials and len(got.chunk_ms) == len(eager.chunk_ms) > 1

    # one epoch teaches little text: compare what greedy decoding reads, every chunk's log-probs
    feats = exported.features(dev_waves[0])
    reference = StreamingDecoder(rec.model, keep_encoder_output=True)
    reference.accept(rec.normalize(feats[None])[0])
    reference.finish()
    decoder = exported.decoder(keep_log_probs=True)
    decoder.accept(feats)
    decoder.finish()
    assert decoder.chunks == reference.chunks > 2  # the left context (2 chunks) is trimmed
    expected = torch.cat([rec.model.ctc.log_probs(enc) for enc in reference.encoded], dim=1)
    torch.testing.assert_close(torch.cat(decoder.log_probs, dim=1), expected, atol=1e-4, rtol=0)
    assert decoder.tokens == reference.tokens


def test_latency_through_the_export_and_in_metrics(
    streaming_run: TrainResult, dev_waves: list[np.ndarray], tmp_path: Path
) -> None:
    exported = load_streaming_export(export_streaming(streaming_run.output_dir, tmp_path))
    torch.set_num_threads(2)
    figures = streaming_latency(exported, dev_waves)
    assert torch.get_num_threads() == 2
    assert set(figures) == {"stream_chunk_ms_p50", "stream_chunk_ms_p95", "stream_rtf"}
    assert 0 < figures["stream_chunk_ms_p50"] <= figures["stream_chunk_ms_p95"]
    assert 0 < figures["stream_rtf"] < 10

    metrics = json.loads((streaming_run.output_dir / "metrics.json").read_text())
    for prefix in ("stream", "stream_export"):
        assert 0 < metrics[f"{prefix}_chunk_ms_p50"] <= metrics[f"{prefix}_chunk_ms_p95"]
        assert metrics[f"{prefix}_rtf"] > 0


def test_speechtune_export_writes_the_chunk_step_that_transcribe_streams(
    streaming_run: TrainResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_pt = str(streaming_run.output_dir / "model.pt")
    wav = noise_wav(tmp_path / "a.wav", seconds=1.0, rate=16000)
    out = tmp_path / "out"
    assert (
        main(["export", "--checkpoint", model_pt, "--format", "torchscript", "--out", str(out)])
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "model.stream.torchscript.pt",
        "model.torchscript.pt",
    ]
    assert "streaming chunk step" in capsys.readouterr().out

    assert main(["transcribe", "--stream", "--checkpoint", model_pt, str(wav)]) == 0
    eager_out, _ = capsys.readouterr()
    assert main(["transcribe", "--stream", "--checkpoint", str(out), str(wav)]) == 0
    exported_out, err = capsys.readouterr()
    assert exported_out == eager_out  # partials (audio time and text) and transcript
    assert "through the exported torchscript chunk step" in err and "RTF" in err
    stream_file = str(out / "model.stream.torchscript.pt")
    assert main(["transcribe", "--checkpoint", stream_file, str(wav)]) != 0  # no --stream
    err = capsys.readouterr().err
    assert "decode it with --stream" in err and len(err.strip().splitlines()) == 1
    assert main(["transcribe", "--checkpoint", str(out), str(wav)]) == 0  # the full graph
    assert capsys.readouterr().out == eager_out.splitlines(keepends=True)[-1]

    single = tmp_path / "single"
    argv = ["export", "--checkpoint", model_pt, "--format", "torchscript", "--out", str(single)]
    assert main([*argv, "--no-streaming"]) == 0
    assert [p.name for p in single.iterdir()] == ["model.torchscript.pt"]
    named = tmp_path / "named" / "asr.pt"
    assert (
        main(["export", "--checkpoint", model_pt, "--format", "torchscript", "--out", str(named)])
        == 0
    )
    assert sorted(p.name for p in named.parent.iterdir()) == ["asr.pt", "asr.stream.pt"]


def test_a_bad_or_missing_artefact_is_a_one_line_error(
    streaming_run: TrainResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_streaming_export(tmp_path / "missing.pt")
    garbage = tmp_path / "model.stream.torchscript.pt"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a streaming model exported"):
        load_streaming_export(garbage)
    (tmp_path / "model.stream.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(ValueError, match="name the file"):
        load_streaming_export(tmp_path)  # two candidates (both bad): which one is ambiguous

    wav = noise_wav(tmp_path / "a.wav", seconds=0.5, rate=16000)
    for bad in (tmp_path / "missing.pt", garbage):
        assert main(["transcribe", "--stream", "--checkpoint", str(bad), str(wav)]) != 0
        err = capsys.readouterr().err
        assert str(bad) in err and len(err.strip().splitlines()) == 1

    full_context = tmp_path / "full.pt"
    torch.save(recognizer().to_payload(), full_context)  # model.chunk_ms = 0
    with pytest.raises(ValueError, match=r"model.chunk_ms > 0"):
        export_streaming(full_context, tmp_path / "x")
    with pytest.raises(ValueError, match="already an exported model"):
        export_streaming(
            export_streaming(streaming_run.output_dir, tmp_path / "y"), tmp_path / "z"
        )


def test_a_dynamic_int8_streaming_model_exports_its_chunk_step(
    synth_data: PreparedData, dev_waves: list[np.ndarray], tmp_path: Path
) -> None:
    # dynamic int8 takes activation ranges per call: the export and its check must feed the
    # chunks as the stream does, not the whole utterance at once
    data = PreparedData(
        train=synth_data.train[:32], dev=synth_data.dev[:4], report=synth_data.report
    )
    cfg = tiny_config(
        model={**TINY_CONFORMER, **STREAMING},
        train={"epochs": 1},
        edge={"quantize": "dynamic_int8"},
    )
    result = train(cfg, run_options(tmp_path), data=data)
    assert result.status == "complete", result.reason
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert metrics["stream_export_rtf"] > 0
    rec = Recognizer.load(result.output_dir / "model.pt")
    exported = load_streaming_export(export_streaming(result.output_dir, tmp_path / "export"))
    for wave in dev_waves[:2]:
        eager, got = stream_transcribe(rec, wave), stream_transcribe(exported, wave)
        assert got.partials == eager.partials and got.text == eager.text
