"""The command line end to end: data import with bad input, training from a manifest, refusal of
held-out data, evaluate and transcribe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from speechtune.cli import main
from speechtune.config import config_from_dict
from speechtune.data import Manifest, TestSplitError, prepare_data


def _write_corpus(tmp_path: Path, synth_corpus: Manifest, n: int = 6) -> Path:
    """A JSONL manifest of real synthetic utterances plus one empty transcript and one corrupt file."""
    rows = [u.to_dict() | {"audio": str(synth_corpus.resolve(u))} for u in list(synth_corpus)[:n]]
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF....not audio at all")
    rows.append(
        {
            "id": "bad_corrupt",
            "audio": "corrupt.wav",
            "duration": 1.0,
            "text": "YES",
            "speaker": "x",
        }
    )
    good = rows[0]
    rows.append({**good, "id": "bad_empty_text", "text": "   "})
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_data_import_names_bad_utterances(tmp_path: Path, synth_corpus: Manifest, capsys) -> None:
    src = _write_corpus(tmp_path, synth_corpus)
    # The manifest names the synthetic corpus's audio by absolute path, outside its directory.
    outside = "--allow-outside-root"
    assert main(["data", "import", str(src), "--out", str(tmp_path / "out"), outside]) == 1
    err = capsys.readouterr().err
    assert "bad_corrupt" in err and "bad_empty_text" in err
    assert not (tmp_path / "out" / "manifest.jsonl").exists()

    assert (
        main(["data", "import", str(src), "--out", str(tmp_path / "out"), "--skip-bad", outside])
        == 0
    )
    out = capsys.readouterr().out
    assert "imported 6 utterances" in out
    assert (
        "bad_corrupt" in out and "bad_empty_text" in out
    )  # skipped ones are listed, never silent
    lines = (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 6


def test_training_refuses_held_out_manifest(tmp_path: Path, synth_corpus: Manifest) -> None:
    test_manifest = tmp_path / "an4_test.jsonl"
    synth_corpus.to_jsonl(test_manifest)
    cfg = config_from_dict({"data": {"corpus": "manifest", "manifest": str(test_manifest)}})
    with pytest.raises(TestSplitError, match="held-out"):
        prepare_data(cfg.data, 16000, tmp_path / "cache")


def test_prepare_data_proxy_subset_keeps_dev(tmp_path: Path, synth_corpus: Manifest) -> None:
    path = tmp_path / "train.jsonl"
    synth_corpus.to_jsonl(path)
    full = prepare_data(
        config_from_dict({"data": {"corpus": "manifest", "manifest": str(path)}}).data,
        16000,
        tmp_path,
    )
    proxy = prepare_data(
        config_from_dict(
            {"data": {"corpus": "manifest", "manifest": str(path), "proxy_fraction": 0.25}}
        ).data,
        16000,
        tmp_path,
    )
    assert [u.id for u in proxy.dev] == [u.id for u in full.dev]
    assert 0.2 * full.train.hours < proxy.train.hours < 0.3 * full.train.hours
    assert set(proxy.train.groups) == set(full.train.groups)
    assert not set(u.speaker for u in full.train) & set(u.speaker for u in full.dev)


def test_train_evaluate_transcribe_from_the_command_line(
    tmp_path: Path, synth_corpus: Manifest, capsys
) -> None:
    manifest_path = tmp_path / "corpus" / "train.jsonl"
    synth_corpus.to_jsonl(manifest_path)
    recipe = {
        "data": {"corpus": "manifest", "manifest": str(manifest_path), "dev_fraction": 0.25},
        "features": {"n_mels": 40},
        "specaugment": {"enabled": False},
        "model": {"encoder": "gru", "d_model": 48, "num_layers": 1, "dropout": 0.0},
        "train": {"epochs": 1, "batch_size": 32},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--config",
            str(tmp_path / "recipe.yaml"),
            "--set",
            "train.epochs=2",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--quiet",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "status: complete" in printed and "dev WER" in printed
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 2

    # evaluate on a manifest of real utterances
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "tone.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 8000)
    eval_rows = [
        u.to_dict() | {"audio": str(synth_corpus.resolve(u))} for u in list(synth_corpus)[:4]
    ]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in eval_rows))
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(out / "model.pt"),
                "--data",
                str(tmp_path / "eval.jsonl"),
                "--name",
                "mini",
            ]
        )
        == 0
    )
    result = json.loads((out / "eval_mini.json").read_text())
    assert result["utterances"] == 4 and 0.0 <= result["cer"] and result["split"] == "test"
    assert {
        "group_wer",
        "worst_group_wer",
        "latency_ms_per_audio_s",
        "rtf",
        "num_parameters",
    } <= set(result)

    capsys.readouterr()
    assert (
        main(["transcribe", "--checkpoint", str(out / "model.pt"), str(tmp_path / "tone.wav")])
        == 0
    )
    assert str(tmp_path / "tone.wav") in capsys.readouterr().out


def test_bad_config_key_fails_before_any_work(tmp_path: Path, capsys) -> None:
    assert main(["train", "--set", "model.layers=3", "--out", str(tmp_path / "x")]) == 2
    assert "model.layers" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", ["train", "tune", "validate", "workflow"])
def test_repeated_set_flags_all_apply(command: str) -> None:
    """``--set a=1 --set b=2`` keeps both (argparse's default would keep only the last)."""
    from speechtune.cli._main import build_parser

    config = ["x.yaml"] if command == "validate" else ["--config", "x.yaml"]
    argv = [command, *config, "--set", "a.b=1", "c.d=2", "--set", "e.f=3"]
    args = build_parser().parse_args(argv)
    assert args.set == ["a.b=1", "c.d=2", "e.f=3"]
