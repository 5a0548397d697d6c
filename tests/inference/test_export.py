"""`speechtune export`: TorchScript / ONNX artefacts that reproduce the eager model.

A tiny model is trained on the synthesised corpus for the end-to-end path (export, then
``speechtune transcribe`` on the artefact); every encoder type is checked on an untrained model
of its kind, since what is being tested is the graph's equivalence, not what it has learnt.
Audio is real espeak-ng speech of several lengths, batched and alone.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from speechtune.cli import main
from speechtune.config import config_from_dict
from speechtune.data import Manifest, PreparedData, load_audio
from speechtune.data._tokenizer import CharTokenizer
from speechtune.features import GlobalCMVN
from speechtune.inference import (
    FORMATS,
    Recognizer,
    export_model,
    exported_format,
    load_exported,
    pad_waves,
)
from speechtune.inference._export import (
    SUPPORTED_ENCODERS,
    VERIFY_ATOL,
    _eager_log_probs,
)
from speechtune.models import build_model
from speechtune.training import train
from tests.helpers.recipes import run_options, tiny_config

HAVE_ONNX = (
    importlib.util.find_spec("onnx") is not None
    and importlib.util.find_spec("onnxruntime") is not None
)
needs_onnx = pytest.mark.skipif(
    not HAVE_ONNX,
    reason="onnx and onnxruntime are not installed (optional: pip install onnx onnxruntime)",
)
ALL_FORMATS = ["torchscript", pytest.param("onnx", marks=needs_onnx)]


@pytest.fixture(scope="module")
def trained_model(synth_data: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.pt of a tiny LSTM trained briefly on the synthetic corpus."""
    tmp = tmp_path_factory.mktemp("export_train")
    cfg = tiny_config(model={"d_model": 48}, train={"epochs": 2, "batch_size": 16})
    result = train(cfg, run_options(tmp, "lstm"), data=synth_data)
    assert result.ok, result.reason
    return result.output_dir / "model.pt"


@pytest.fixture(scope="module")
def real_waves(synth_corpus: Manifest) -> list[np.ndarray]:
    """Real utterances of clearly different lengths (shortest to longest of a sample)."""
    utts = sorted(list(synth_corpus)[:40], key=lambda u: u.duration)
    picks = [utts[0], utts[len(utts) // 3], utts[2 * len(utts) // 3], utts[-1]]
    waves = [load_audio(synth_corpus, u, 16000) for u in picks]
    assert len({len(w) for w in waves}) == 4
    return waves


def _assert_log_probs_match(rec: Recognizer, path: Path, waves: list[np.ndarray]) -> None:
    """Each utterance alone, and all of them as one padded batch, within VERIFY_ATOL of eager."""
    exported = load_exported(path)
    for batch in [[w] for w in waves] + [waves]:
        wav, lens = pad_waves(batch, "cpu")
        ref, ref_lens = _eager_log_probs(rec, wav, lens)
        got, got_lens = exported.log_probs(wav, lens)
        assert torch.equal(ref_lens, got_lens.long())
        assert ref.shape == got.shape
        finite = torch.isfinite(ref)
        assert torch.equal(finite, torch.isfinite(got))
        assert float((ref[finite] - got[finite]).abs().max()) <= VERIFY_ATOL


def _untrained_checkpoint(tmp_path: Path, encoder: str, **model: object) -> Path:
    cfg = config_from_dict(
        {
            "features": {"n_mels": 40},
            "model": {
                "encoder": encoder,
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
    cmvn = GlobalCMVN.fit([torch.randn(200, 40) * 3 - 5]) if cfg.features.normalize else None
    rec = Recognizer(cfg, tok, cmvn, build_model(cfg.model, 40, tok.vocab_size)).eval()
    path = tmp_path / f"{encoder}.pt"
    torch.save(rec.to_payload(), path)
    return path


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_trained_model_export_matches_eager(
    trained_model: Path, real_waves: list[np.ndarray], tmp_path: Path, fmt: str
) -> None:
    path = export_model(trained_model, tmp_path / "export", fmt)
    assert path == tmp_path / "export" / FORMATS[fmt] and exported_format(path) == fmt
    rec = Recognizer.load(trained_model)
    _assert_log_probs_match(rec, path, real_waves)
    exported = load_exported(path)
    # A model this briefly trained may still emit only blanks; the log-prob check above is the
    # strong one, and test_every_encoder_exports compares non-empty transcripts.
    assert exported.transcribe(real_waves) == rec.transcribe(real_waves)
    # batch size 1 too (sorting and padding must not change a transcript)
    assert exported.transcribe(real_waves, batch_size=1) == rec.transcribe(
        real_waves, batch_size=1
    )
    meta = exported.metadata
    assert meta["runtime"] == fmt and meta["decoding"] == "ctc_greedy"
    assert meta["graph_input"] == ("waveform" if fmt == "torchscript" else "log_mel")
    assert meta["features"]["n_mels"] == 40 and meta["sample_rate"] == 16000
    assert meta["vocab"] == rec.tokenizer.symbols


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_cli_export_then_transcribe(
    trained_model: Path, synth_corpus: Manifest, tmp_path: Path, capsys, fmt: str
) -> None:
    wavs = [str(synth_corpus.resolve(u)) for u in list(synth_corpus)[:3]]
    assert main(["transcribe", "--checkpoint", str(trained_model), *wavs]) == 0
    eager_out = capsys.readouterr().out
    out_dir = tmp_path / "export"
    assert (
        main(
            ["export", "--checkpoint", str(trained_model), "--format", fmt, "--out", str(out_dir)]
        )
        == 0
    )
    artefact = out_dir / FORMATS[fmt]
    assert str(artefact) in capsys.readouterr().out
    # the file, and its directory, transcribe exactly like model.pt
    for checkpoint in (artefact, out_dir):
        assert main(["transcribe", "--checkpoint", str(checkpoint), *wavs]) == 0
        assert capsys.readouterr().out == eager_out
    assert exported_format(trained_model) is None  # model.pt is not mistaken for an export


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize(
    "encoder,extra",
    [
        ("lstm", {}),
        ("blstm", {}),
        ("gru", {"subsampling": 6}),
        ("bgru", {}),
        ("transformer", {"init": "deepnorm"}),
        ("conformer", {"head": "ctc_attention", "decoder_layers": 1}),
        ("searched", {"num_layers": 4, "block_ops": "dconv7,mhsa,ff_half,conv15"}),
    ],
)
def test_every_encoder_exports(
    tmp_path: Path, real_waves: list[np.ndarray], encoder: str, extra: dict, fmt: str
) -> None:
    checkpoint = _untrained_checkpoint(tmp_path, encoder, **extra)
    path = export_model(checkpoint, tmp_path / "out", fmt)
    rec = Recognizer.load(checkpoint)
    _assert_log_probs_match(rec, path, real_waves)
    texts = load_exported(path).transcribe(real_waves)
    assert texts == rec.transcribe(real_waves)
    assert all(
        t.strip() for t in texts
    )  # random weights emit tokens: the comparison is not vacuous


def test_every_recipe_encoder_is_covered() -> None:
    from speechtune.models import ENCODER_BUILDERS

    assert set(SUPPORTED_ENCODERS) == set(ENCODER_BUILDERS)


def test_without_cmvn_and_file_path_out(tmp_path: Path, real_waves: list[np.ndarray]) -> None:
    cfg_path = tmp_path / "gru.pt"
    cfg = config_from_dict(
        {
            "features": {"n_mels": 40, "normalize": False},
            "model": {"encoder": "gru", "d_model": 32, "num_layers": 1},
        }
    )
    tok = CharTokenizer(list("AB "))
    torch.manual_seed(1)
    rec = Recognizer(cfg, tok, None, build_model(cfg.model, 40, tok.vocab_size)).eval()
    torch.save(rec.to_payload(), cfg_path)
    path = export_model(cfg_path, tmp_path / "deploy" / "asr.pt", "torchscript")
    assert path == tmp_path / "deploy" / "asr.pt"
    _assert_log_probs_match(rec, path, real_waves[:2])


def test_too_short_audio_is_a_clear_error(tmp_path: Path) -> None:
    path = export_model(_untrained_checkpoint(tmp_path, "lstm"), tmp_path / "out", "torchscript")
    exported = load_exported(path)
    with pytest.raises(ValueError, match="needs at least"):
        exported.transcribe([np.zeros(100, dtype=np.float32)])


def test_bad_format_names_the_valid_ones(trained_model: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="torchscript, onnx"):
        export_model(trained_model, tmp_path, "tflite")
    with pytest.raises(SystemExit):
        main(
            [
                "export",
                "--checkpoint",
                str(trained_model),
                "--format",
                "tflite",
                "--out",
                str(tmp_path),
            ]
        )
    err = capsys.readouterr().err
    assert "'torchscript'" in err and "'onnx'" in err


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope" / "model.pt"
    with pytest.raises(FileNotFoundError, match=r"model file .*model.pt: not found \(expected"):
        export_model(missing, tmp_path / "out", "torchscript")
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(missing),
                "--format",
                "torchscript",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert f"model file {missing}: not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(FileNotFoundError, match="exported model not found"):
        load_exported(missing)


def test_export_of_an_export_and_non_cpu_device_are_refused(tmp_path: Path) -> None:
    path = export_model(_untrained_checkpoint(tmp_path, "gru"), tmp_path / "out", "torchscript")
    with pytest.raises(ValueError, match="already an exported model"):
        export_model(path, tmp_path / "again", "torchscript")
    with pytest.raises(ValueError, match="run on the CPU"):
        load_exported(path, device="cuda")


@pytest.mark.skipif(HAVE_ONNX, reason="checks the message shown when onnx is missing")
def test_onnx_without_the_package_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(ImportError, match="pip install onnx onnxruntime"):
        export_model(_untrained_checkpoint(tmp_path, "gru"), tmp_path / "out", "onnx")
    assert not (tmp_path / "out").exists()
