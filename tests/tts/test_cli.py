"""``speechtune tts``: train, synthesize and tune from the command line; one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from speechtune.cli._main import main
from tests.tts.conftest import TINY
from tests.tts.test_staged import _staged_yaml


def test_train_then_synthesize_end_to_end(
    tts_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "tts"
    code = main(
        [
            "tts",
            "train",
            "--run-dir",
            str(run),
            "--cache-dir",
            str(tts_cache),
            "--threads",
            "1",
            "--set",
            *TINY,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "held-out MCD" in out and (run / "model.pt").is_file()
    assert main(["tts", "synthesize", "--model", str(run), "--list-speakers"]) == 0
    speakers = capsys.readouterr().out.split()
    assert len(speakers) == 2
    wav = tmp_path / "hi.wav"
    code = main(
        [
            "tts",
            "synthesize",
            "--model",
            str(run),
            "--speaker",
            speakers[1],
            "--out",
            str(wav),
            "A B C",
        ]
    )
    assert code == 0
    samples, rate = sf.read(wav)
    assert rate == 16000 and samples.size > 0


def test_tune_runs_the_stages_from_the_command_line(
    tts_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _staged_yaml(tmp_path)
    code = main(
        [
            "tts",
            "tune",
            "--config",
            str(conf),
            "--run-dir",
            str(tmp_path / "st"),
            "--cache-dir",
            str(tts_cache),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "stage acoustic: searched train.lr" in out and "stage vocoder:" in out
    record = json.loads((tmp_path / "st" / "stages.json").read_text())
    assert [s["name"] for s in record["stages"]] == ["acoustic", "vocoder"]
    assert (tmp_path / "st" / "acoustic" / "trials.csv").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--set", "model.d_modle=64"],
            "error: model.d_modle: unknown key; valid keys here: d_model, decoder_layers",
        ),
        (
            ["--set", "vocoder.kind=wavenet"],
            "error: vocoder.kind: must be one of: griffin_lim, neural (got 'wavenet')",
        ),
        (
            ["--set", "model.d_model=30", "model.num_heads=4"],
            "error: model.d_model: must be divisible by model.num_heads=4",
        ),
    ],
)
def test_a_bad_config_key_is_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["tts", "train", "--run-dir", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(message), err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_a_bad_yaml_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "tts.yaml"
    conf.write_text("train:\n  epochs: many\n")
    assert main(["tts", "train", "--config", str(conf), "--run-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {conf}: train.epochs: must be int (got 'many')", err
