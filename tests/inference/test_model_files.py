"""Files that are not a speechtune ``model.pt`` are refused with one line naming them.

``evaluate``, ``transcribe`` and ``export`` used to end with KeyError, EOFError,
UnpicklingError or AttributeError tracebacks on such files, and a run directory was reported as
"model file not found". Every model here is built in the test (an untrained tiny model: what is
tested is loading, not decoding quality).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechtune.cli import main
from speechtune.config import config_from_dict
from speechtune.data._tokenizer import CharTokenizer
from speechtune.inference import Recognizer, export_model, transcribe_files
from speechtune.models import build_model

EXPECTED = "(expected a speechtune model.pt written by train/tune)"


def _recognizer() -> Recognizer:
    cfg = config_from_dict(
        {
            "features": {"n_mels": 40, "normalize": False},
            "model": {"encoder": "gru", "d_model": 32, "num_layers": 1},
        }
    )
    tok = CharTokenizer(list("AB "))
    torch.manual_seed(0)
    return Recognizer(cfg, tok, None, build_model(cfg.model, 40, tok.vocab_size)).eval()


def _good(path: Path) -> None:
    torch.save(_recognizer().to_payload(), path)


def _truncated(path: Path) -> None:
    _good(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _wrong_shapes(path: Path) -> None:
    payload = _recognizer().to_payload()
    payload["config"]["model"]["d_model"] = 48  # the weights are for 32
    torch.save(payload, path)


class _Other:
    """Some other object, pickled."""


#: kind -> (write the file, what the one-line error must say)
BAD: dict[str, tuple[Callable[[Path], object], str]] = {
    "text": (lambda p: p.write_text("epoch 3: WER 0.31\n"), "is a text file, not a torch file"),
    "empty": (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    "random-bytes": (
        lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
        "is not a torch file",
    ),
    "bare-tensor": (lambda p: torch.save(torch.zeros(3), p), "holds a Tensor, not a speechtune"),
    "pickle-of-object": (lambda p: p.write_bytes(pickle.dumps(_Other())), "is a Python pickle"),
    "pickle-of-dict": (
        lambda p: p.write_bytes(pickle.dumps({"model": [1.0]})),
        "is a Python pickle",
    ),
    "foreign-dict": (
        lambda p: torch.save({"state_dict": {"w": torch.zeros(2)}}, p),
        "without the key(s) format_version, config, tokenizer, model",
    ),
    "last-pt": (
        lambda p: torch.save({"model": {}, "optimizer": {}, "state": {}}, p),
        "a last.pt training checkpoint?",
    ),
    "truncated": (_truncated, "is a damaged or truncated torch file"),
    "wrong-shapes": (_wrong_shapes, "does not load as a speechtune model"),
    "bad-config": (
        lambda p: torch.save(
            {**_recognizer().to_payload(), "config": {"model": {"d_model": "x"}}}, p
        ),
        "its config is not valid (model.d_model",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_model_files_are_one_line_naming_the_file(tmp_path: Path, kind: str) -> None:
    write, says = BAD[kind]
    path = tmp_path / "model.pt"
    write(path)
    with pytest.raises(ValueError) as err:
        Recognizer.load(path)
    message = str(err.value)
    assert message.startswith(f"model file {path}: "), message
    assert says in message and message.endswith(EXPECTED), message
    assert "\n" not in message


def test_a_run_directory_stands_for_its_model_pt(tmp_path: Path) -> None:
    _good(tmp_path / "model.pt")
    rec = Recognizer.load(tmp_path)
    assert rec.cfg.model.d_model == 32
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is a directory without a model.pt"):
        Recognizer.load(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"absent.pt: not found \(expected"):
        Recognizer.load(tmp_path / "absent.pt")


def _wav(path: Path) -> Path:
    noise = 0.1 * np.random.default_rng(0).standard_normal(8000)
    sf.write(str(path), noise.astype(np.float32), 16000)
    return path


def test_transcribe_and_export_accept_a_run_directory(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _good(run / "model.pt")
    wav = _wav(tmp_path / "a.wav")
    assert transcribe_files(run, [wav]) == transcribe_files(run / "model.pt", [wav])
    out = export_model(run, tmp_path / "out", "torchscript", verify=False)
    assert out.is_file()


def _one_error_line(capfd: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capfd.readouterr()
    code = main(argv)
    out, err = capfd.readouterr()
    assert code == 1, out + err  # bad input (not a config error): exit code 1, as documented
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("kind", ["text", "empty", "bare-tensor", "pickle-of-object", "dir"])
@pytest.mark.parametrize("command", ["transcribe", "evaluate", "export"])
def test_cli_commands_refuse_bad_model_files_in_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], command: str, kind: str
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    if kind == "dir":
        target, says = models, "is a directory without a model.pt"
    else:
        target, says = models / "model.pt", BAD[kind][1]
        BAD[kind][0](target)
    wav = _wav(tmp_path / "a.wav")
    manifest = tmp_path / "eval.jsonl"
    row = {"id": "u1", "audio": str(wav), "duration": 0.5, "text": "AB", "speaker": "s"}
    manifest.write_text(json.dumps(row) + "\n")
    argv = {
        "transcribe": ["transcribe", "--checkpoint", str(target), str(wav)],
        "evaluate": ["evaluate", "--checkpoint", str(target), "--data", str(manifest)],
        "export": [
            "export",
            "--checkpoint",
            str(target),
            "--format",
            "torchscript",
            "--out",
            str(tmp_path / "o"),
        ],  # fmt: skip
    }[command]
    line = _one_error_line(capfd, argv)
    assert f"model file {target}: {says}" in line and EXPECTED in line, line
    assert not (tmp_path / "o").exists()
