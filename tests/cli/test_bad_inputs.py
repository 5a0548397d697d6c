"""The bad-input corpus: every input a user (or an attacker) might get wrong, through the CLI.

For each input the command must exit non-zero with exactly one ``error:`` line that names the
offending key, file or utterance, print no traceback, and write nothing outside its run or
output directory. (A file with several problems gets one ``error:`` line that counts them, then one
``  - key: problem`` line each.) The inputs span recipe configs, ``--set`` overrides, tuning YAMLs, search-space
expressions, manifests, audio, model files, study storages and tarballs; each case builds its
files in a fresh directory, so the corpus documents what is refused as much as it tests it.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from speechtune.cli import main
from tests.helpers.audio import noise_wav
from tests.helpers.paths import REPO

RATE = 16000


@dataclass(frozen=True)
class Case:
    """One bad input: the argv it runs (built in a fresh dir) and what the error must name."""

    build: Callable[[Path], list[str]]
    names: str  # a substring of the one error line (the key, file or utterance at fault)


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _wav16(path: Path, seconds: float = 0.5, seed: int = 0) -> Path:
    return noise_wav(path, seconds, seed, rate=RATE)


# ----------------------------------------------------------------------------------------------
# Recipe configs (``train``/``validate`` of a recipe) and ``--set`` overrides
# ----------------------------------------------------------------------------------------------

RECIPE = (REPO / "conf" / "synthetic.yaml").read_text()


def _recipe(tmp: Path, text: str | bytes, name: str = "recipe.yaml") -> Path:
    return _write(tmp / name, text)


def _train(config: Path, tmp: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(config), "--run-dir", str(tmp / "run"), "--quiet", *extra]


def _recipe_edit(old: str, new: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        assert old in RECIPE, old
        return _train(_recipe(tmp, RECIPE.replace(old, new, 1)), tmp)

    return build


def _recipe_set(*overrides: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        return _train(_recipe(tmp, RECIPE), tmp, "--set", *overrides)

    return build


def _recipe_text(text: str | bytes) -> Callable[[Path], list[str]]:
    return lambda tmp: _train(_recipe(tmp, text), tmp)


RECIPE_CASES: dict[str, Case] = {
    "recipe-missing-file": Case(lambda tmp: _train(tmp / "nope.yaml", tmp), "nope.yaml"),
    "recipe-is-a-directory": Case(lambda tmp: _train(tmp, tmp), "directory"),
    "recipe-empty-file": Case(_recipe_text(""), "recipe.yaml"),
    "recipe-top-level-list": Case(_recipe_text("- 1\n- 2\n"), "recipe.yaml"),
    "recipe-yaml-syntax": Case(_recipe_text("model: {d_model: 144\n"), "recipe.yaml"),
    "recipe-not-utf8": Case(_recipe_text(b"seed: 1\nname: caf\xe9\n"), "recipe.yaml"),
    "recipe-python-tag": Case(
        _recipe_text("seed: !!python/object/apply:os.system [id]\n"), "recipe.yaml"
    ),
    "recipe-unknown-section": Case(_recipe_edit("decode:", "decoder:"), "decoder"),
    "recipe-unknown-key": Case(_recipe_edit("d_model: 144", "d_modle: 144"), "d_modle"),
    "recipe-wrong-type": Case(_recipe_edit("d_model: 144", "d_model: big"), "model.d_model"),
    "recipe-negative-lr": Case(_recipe_edit("lr: 0.003", "lr: -0.003"), "optim.lr"),
    "recipe-nan-lr": Case(_recipe_edit("lr: 0.003", "lr: .nan"), "optim.lr"),
    "recipe-unknown-encoder": Case(
        _recipe_edit("encoder: conformer", "encoder: lstmx"), "model.encoder"
    ),
    "recipe-unknown-optimizer": Case(_recipe_edit("name: adamw", "name: adamx"), "optim.name"),
    "recipe-zero-epochs": Case(_recipe_edit("epochs: 25", "epochs: 0"), "train.epochs"),
    "recipe-bool-as-int": Case(
        _recipe_edit("batch_size: 8", "batch_size: true"), "train.batch_size"
    ),
    "recipe-heads-not-dividing": Case(_recipe_edit("num_heads: 4", "num_heads: 5"), "num_heads"),
    "recipe-dev-fraction-above-1": Case(
        _recipe_edit("dev_fraction: 0.15", "dev_fraction: 1.5"), "data.dev_fraction"
    ),
    "recipe-unknown-corpus": Case(
        _recipe_edit("corpus: synthetic", "corpus: timit"), "data.corpus"
    ),
    "set-unclosed-list": Case(_recipe_set("train.epochs=[1,"), "train.epochs"),
    "set-python-tag": Case(_recipe_set("seed=!!python/object/apply:os.system [id]"), "seed"),
    "set-no-equals": Case(_recipe_set("train.epochs"), "train.epochs"),
    "set-unknown-key": Case(_recipe_set("train.epoch=3"), "train.epoch"),
    "set-wrong-type": Case(_recipe_set("train.epochs=many"), "train.epochs"),
    "set-empty-key": Case(_recipe_set("=3"), "=3"),
}


# ----------------------------------------------------------------------------------------------
# Tuning YAMLs (``validate``/``tune``), search spaces and their expressions
# ----------------------------------------------------------------------------------------------

FUNCTION = "def objective(config, reporter):\n    return {'wer': float(config['x'])}\n"


def _tuning(tmp: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    _write(tmp / "fn_objective.py", FUNCTION)
    spec: dict[str, Any] = {
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "study": {"name": "bad", "sampler": "random", "pruner": "none", "n_trials": 2, "seed": 0},
        "objective": {"kind": "python", "function": "fn_objective:objective", "metric": "wer"},
    }
    edit(spec)
    return _write(tmp / "tuning.yaml", yaml.safe_dump(spec, sort_keys=False))


def _tune(config: Path, tmp: Path, *extra: str) -> list[str]:
    return ["tune", "--config", str(config), "--run-dir", str(tmp / "run"), "--quiet", "--no-tracking", *extra]  # fmt: skip


def _tuning_case(edit: Callable[[dict[str, Any]], None], names: str, cmd: str = "tune") -> Case:
    def build(tmp: Path) -> list[str]:
        config = _tuning(tmp, edit)
        return ["validate", str(config)] if cmd == "validate" else _tune(config, tmp)

    return Case(build, names)


def _space(**params: Any) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        spec["space"] = params

    return edit


def _derive(expression: str) -> Callable[[dict[str, Any]], None]:
    return _space(
        x={"type": "float", "low": 0.0, "high": 1.0},
        y={"derive": expression},
    )


def _constraint(expression: str) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        spec["constraints"] = [expression]

    return edit


def _section(section: str, **values: Any) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        spec[section].update(values)

    return edit


def _raw_tuning(text: str | bytes) -> Callable[[Path], list[str]]:
    return lambda tmp: _tune(_write(tmp / "tuning.yaml", text), tmp)


TUNING_CASES: dict[str, Case] = {
    "tuning-missing-file": Case(lambda tmp: _tune(tmp / "absent.yaml", tmp), "absent.yaml"),
    "tuning-not-utf8": Case(_raw_tuning(b"study:\n  name: \xff\xfe\n"), "tuning.yaml"),
    "tuning-yaml-syntax": Case(_raw_tuning("space: [\n"), "tuning.yaml"),
    "tuning-top-level-scalar": Case(_raw_tuning("42\n"), "tuning.yaml"),
    "tuning-python-tag": Case(_raw_tuning("study: !!python/name:os.system\n"), "tuning.yaml"),
    "tuning-unknown-section": Case(
        lambda tmp: _tune(_tuning(tmp, lambda s: s.update(stduy={})), tmp), "stduy"
    ),
    "space-empty": _tuning_case(_space(), "space", cmd="validate"),
    "space-empty-tune": _tuning_case(_space(), "space"),
    "space-all-fixed": _tuning_case(
        _space(x={"type": "fixed", "value": 1}), "space", cmd="validate"
    ),
    "space-unknown-type": _tuning_case(_space(x={"type": "gaussian"}), "x"),
    "space-low-above-high": _tuning_case(
        _space(x={"type": "float", "low": 2.0, "high": 1.0}), "x"
    ),
    "space-log-of-zero": _tuning_case(
        _space(x={"type": "float", "low": 0.0, "high": 1.0, "log": True}), "x"
    ),
    "space-no-choices": _tuning_case(_space(x={"type": "categorical", "choices": []}), "x"),
    "space-int-float-bounds": _tuning_case(_space(x={"type": "int", "low": 0.5, "high": 3}), "x"),
    "space-nan-bound": _tuning_case(
        _space(x={"type": "float", "low": float("nan"), "high": 1.0}), "x"
    ),
    "space-inf-bound": _tuning_case(
        _space(x={"type": "float", "low": 0.0, "high": float("inf")}), "x"
    ),
    "space-when-unknown-key": _tuning_case(
        _space(x={"type": "float", "low": 0.0, "high": 1.0, "when": {"nope": [1]}}), "nope"
    ),
    "derive-nested-power": _tuning_case(_derive("((9**1024)**1024)**1024"), "y"),
    "derive-power-tower": _tuning_case(_derive("9**9**9**9"), "y"),
    "derive-huge-shift": _tuning_case(_derive("2 << 10**6"), "y"),
    "derive-deep-nesting": _tuning_case(_derive("(" * 400 + "1" + ")" * 400), "y"),
    "derive-long-text": _tuning_case(_derive("+".join(["1"] * 5000)), "y"),
    "derive-string-repeat": _tuning_case(_derive("'a' * 10**9"), "y"),
    "derive-dunder": _tuning_case(_derive("x.__class__"), "y"),
    "derive-import": _tuning_case(_derive("__import__('os').system('id')"), "y"),
    "derive-lambda": _tuning_case(_derive("(lambda: 1)()"), "y"),
    "derive-syntax": _tuning_case(_derive("x +* 2"), "y"),
    "derive-unknown-name": _tuning_case(_derive("z * 2"), "z"),
    "derive-division-by-zero": _tuning_case(_derive("x / 0"), "y"),
    "constraint-bomb": _tuning_case(_constraint("(9**1024)**1024 > x"), "(9**1024)**1024"),
    "constraint-unknown-key": _tuning_case(_constraint("w > 0"), "w"),
    "constraint-syntax": _tuning_case(_constraint("x >"), "x >"),
    "study-negative-trials": _tuning_case(_section("study", n_trials=-1), "study.n_trials"),
    "study-unknown-sampler": _tuning_case(_section("study", sampler="gridx"), "study.sampler"),
    "study-unknown-pruner": _tuning_case(_section("study", pruner="never"), "study.pruner"),
    "study-bad-seed": _tuning_case(_section("study", seed="zero"), "study.seed"),
    "study-bad-name": _tuning_case(_section("study", name=""), "study.name"),
    "objective-unknown-kind": _tuning_case(_section("objective", kind="magic"), "objective.kind"),
    "objective-bad-function": _tuning_case(
        _section("objective", function="fn_objective"), "objective.function"
    ),
    "objective-missing-module": _tuning_case(
        _section("objective", function="no_such_module:f"), "no_such_module"
    ),
    "objective-bad-direction": _tuning_case(
        _section("objective", direction="up"), "objective.direction"
    ),
    "command-missing-argv0": _tuning_case(
        lambda s: s.update(
            objective={"kind": "command", "metric": "wer"},
            command={"argv": ["no-such-program-xyz", "{config}"]},
        ),
        "no-such-program-xyz",
    ),
    "command-empty-argv": _tuning_case(
        lambda s: s.update(objective={"kind": "command", "metric": "wer"}, command={"argv": []}),
        "command.argv",
    ),
    "tune-n-trials-flag-negative": Case(
        lambda tmp: _tune(_tuning(tmp, lambda s: None), tmp, "--n-trials", "-3"), "--n-trials"
    ),
}


# ----------------------------------------------------------------------------------------------
# Manifests and audio given to ``data import``
# ----------------------------------------------------------------------------------------------


def _import(manifest: Path, tmp: Path, *extra: str) -> list[str]:
    return ["data", "import", str(manifest), "--out", str(tmp / "run"), *extra]


def _jsonl(tmp: Path, *records: dict[str, Any], raw: bytes | None = None) -> Path:
    corpus = tmp / "corpus"
    _wav16(corpus / "wav" / "ok.wav")
    body = raw if raw is not None else "".join(json.dumps(r) + "\n" for r in records).encode()
    return _write(corpus / "manifest.jsonl", body)


def _record(audio: str = "wav/ok.wav", **extra: Any) -> dict[str, Any]:
    return {"id": "utt1", "audio": audio, "text": "YES", "speaker": "s1", **extra}


def _manifest_case(
    records: Callable[[Path], list[dict[str, Any]]] | None = None,
    names: str = "utt1",
    raw: bytes | None = None,
) -> Case:
    def build(tmp: Path) -> list[str]:
        return _import(_jsonl(tmp, *(records(tmp) if records else []), raw=raw), tmp)

    return Case(build, names)


def _with_audio(make: Callable[[Path], None], name: str) -> Callable[[Path], list[dict[str, Any]]]:
    def records(tmp: Path) -> list[dict[str, Any]]:
        make(tmp / "corpus" / "wav" / name)
        return [_record(f"wav/{name}")]

    return records


def _text_audio(path: Path) -> None:
    _write(path, "this is not audio\n")


def _empty_audio(path: Path) -> None:
    _write(path, b"")


def _truncated_audio(path: Path) -> None:
    _wav16(path, 1.0)
    path.write_bytes(path.read_bytes()[:30])


def _long_audio(path: Path) -> None:
    _wav16(path, 31.0)


def _silent_zero_samples(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(0, dtype=np.float32), RATE, subtype="PCM_16")


MANIFEST_CASES: dict[str, Case] = {
    "manifest-missing": Case(lambda tmp: _import(tmp / "none.jsonl", tmp), "none.jsonl"),
    "manifest-empty": _manifest_case(names="manifest.jsonl"),
    "manifest-bad-json": _manifest_case(raw=b'{"id": "utt1", "audio": \n', names="manifest.jsonl"),
    "manifest-not-utf8": _manifest_case(
        raw=b'{"id": "utt1", "audio": "wav/ok.wav", "text": "caf\xe9"}\n', names="manifest.jsonl"
    ),
    "manifest-missing-text": _manifest_case(
        lambda tmp: [{"id": "utt1", "audio": "wav/ok.wav"}], "text"
    ),
    "manifest-missing-audio-field": _manifest_case(
        lambda tmp: [{"id": "utt1", "text": "YES"}], "audio"
    ),
    "manifest-audio-not-found": _manifest_case(lambda tmp: [_record("wav/gone.wav")], "utt1"),
    "manifest-path-traversal": _manifest_case(
        lambda tmp: [_record("../../../../etc/passwd")], "utt1"
    ),
    "manifest-absolute-outside": _manifest_case(
        lambda tmp: [_record(str(_wav16(tmp / "elsewhere" / "a.wav")))], "utt1"
    ),
    "manifest-duplicate-ids": _manifest_case(lambda tmp: [_record(), _record()], "utt1"),
    "manifest-audio-is-text": _manifest_case(_with_audio(_text_audio, "text.wav"), "utt1"),
    "manifest-audio-empty-file": _manifest_case(_with_audio(_empty_audio, "empty.wav"), "utt1"),
    "manifest-audio-truncated": _manifest_case(_with_audio(_truncated_audio, "cut.wav"), "utt1"),
    "manifest-audio-too-long": _manifest_case(_with_audio(_long_audio, "long.wav"), "utt1"),
    "manifest-audio-zero-samples": _manifest_case(
        _with_audio(_silent_zero_samples, "zero.wav"), "utt1"
    ),
    "manifest-empty-transcript": _manifest_case(lambda tmp: [_record(text="")], "utt1"),
    "manifest-unknown-format": Case(
        lambda tmp: _import(_write(tmp / "corpus" / "m.xlsx", "x"), tmp), "m.xlsx"
    ),
    "manifest-csv-missing-column": Case(
        lambda tmp: _import(_write(tmp / "corpus" / "m.csv", "id,path\nutt1,wav/ok.wav\n"), tmp),
        "m.csv",
    ),
}


# ----------------------------------------------------------------------------------------------
# Model files (``evaluate``/``transcribe``/``export``) and audio given to ``transcribe``
# ----------------------------------------------------------------------------------------------


def _model_file(kind: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / "models" / "model.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "text":
            path.write_text("not a model\n")
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "tensor":
            torch.save(torch.zeros(3), path)
        elif kind == "pickle":
            path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
        elif kind == "dict-without-config":
            torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
        elif kind == "truncated":
            torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
            path.write_bytes(path.read_bytes()[:200])
        elif kind == "dir":
            return path.parent
        elif kind == "missing":
            return tmp / "models" / "absent.pt"
        return path

    return make


def _transcribe_with(kind: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        return [
            "transcribe",
            "--checkpoint",
            str(_model_file(kind)(tmp)),
            str(_wav16(tmp / "a.wav")),
        ]

    return build


def _evaluate_with(kind: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        manifest = _jsonl(tmp, _record())
        return ["evaluate", "--checkpoint", str(_model_file(kind)(tmp)), "--data", str(manifest)]

    return build


def _export_with(kind: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        model = _model_file(kind)(tmp)
        return ["export", "--checkpoint", str(model), "--format", "torchscript", "--out", str(tmp / "run" / "m.ts")]  # fmt: skip

    return build


MODEL_KINDS = (
    "text",
    "empty",
    "tensor",
    "pickle",
    "dict-without-config",
    "truncated",
    "dir",
    "missing",
)

MODEL_CASES: dict[str, Case] = {
    **{f"transcribe-model-{k}": Case(_transcribe_with(k), "models") for k in MODEL_KINDS},
    **{
        f"evaluate-model-{k}": Case(_evaluate_with(k), "models")
        for k in ("text", "tensor", "pickle", "dir")
    },
    **{f"export-model-{k}": Case(_export_with(k), "models") for k in ("empty", "pickle")},
}


# ----------------------------------------------------------------------------------------------
# Study storages (``tune --resume``/``report``/``worker``)
# ----------------------------------------------------------------------------------------------


def _storage_case(content: bytes, cmd: str) -> Case:
    def build(tmp: Path) -> list[str]:
        run = tmp / "run"
        _write(run / "study.db", content)
        if cmd == "report":
            return ["report", str(run)]
        return _tune(_tuning(tmp, lambda s: None), tmp, "--resume")

    return Case(build, "study.db")


SQLITE_HEADER = b"SQLite format 3\x00"

STORAGE_CASES: dict[str, Case] = {
    "storage-text-tune": _storage_case(b"hello, I am not a database\n", "tune"),
    "storage-text-report": _storage_case(b"hello, I am not a database\n", "report"),
    "storage-random-bytes-tune": _storage_case(np.random.default_rng(0).bytes(4096), "tune"),
    "storage-random-bytes-report": _storage_case(np.random.default_rng(1).bytes(4096), "report"),
    "storage-truncated-header-tune": _storage_case(SQLITE_HEADER + b"\x10\x00" * 20, "tune"),
    "storage-truncated-header-report": _storage_case(SQLITE_HEADER + b"\x10\x00" * 20, "report"),
    "storage-unknown-scheme": Case(
        lambda tmp: _tune(
            _tuning(tmp, lambda s: None), tmp, "--storage", "mongodb://localhost/st"
        ),
        "mongodb",
    ),
    "storage-journal-is-a-directory": Case(
        lambda tmp: _tune(
            _tuning(tmp, lambda s: None),
            tmp,
            "--storage",
            f"journal:///{(tmp / 'jdir').mkdir() or tmp / 'jdir'}",
        ),
        "jdir",
    ),
    "report-not-a-run-dir": Case(
        lambda tmp: ["report", str(_write(tmp / "run" / "notes.txt", "x").parent)], "run"
    ),
    "report-missing-dir": Case(lambda tmp: ["report", str(tmp / "run" / "absent")], "absent"),
    "rerun-not-a-run-dir": Case(
        lambda tmp: ["rerun", str(_write(tmp / "run" / "x.txt", "x").parent)], "run"
    ),
    "worker-unknown-study": Case(
        lambda tmp: [
            "worker",
            "--study-name",
            "nope",
            "--storage",
            f"journal:///{tmp}/run/s.log",
            "--run-dir",
            str(tmp / "run"),
            "--no-tracking",
        ],  # fmt: skip
        "nope",
    ),
}


# ----------------------------------------------------------------------------------------------
# Tarballs given to ``data an4`` (a local copy of the download)
# ----------------------------------------------------------------------------------------------


def _tarball(tmp: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    path = tmp / "corpus" / "an4.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, data: bytes = b"x", **attrs: Any) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, (data if info.isfile() else None)


def _an4_from(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    """``data an4`` on a local copy: a directory as is, an archive as a ``file://`` URL."""

    def build(tmp: Path) -> list[str]:
        source = make(tmp)
        where = source.as_uri() if source.name.endswith(".tar.gz") else str(source)
        return ["data", "an4", "--source", where, "--out", str(tmp / "run")]

    return build


TAR_CASES: dict[str, Case] = {
    "tar-traversal-member": Case(
        _an4_from(lambda tmp: _tarball(tmp, [_member("../../evil.txt")])), "an4.tar.gz"
    ),
    # Extracted inside the output dir with its leading "/" dropped: then simply not AN4.
    "tar-absolute-member": Case(
        _an4_from(lambda tmp: _tarball(tmp, [_member("/tmp/evil-abs.txt")])), "not an AN4 tree"
    ),
    "tar-symlink-out": Case(
        _an4_from(
            lambda tmp: _tarball(
                tmp, [_member("an4/link", type=tarfile.SYMTYPE, linkname="/etc/passwd")]
            )
        ),
        "an4",
    ),
    "tar-not-a-tarball": Case(
        _an4_from(lambda tmp: _write(tmp / "corpus" / "an4.tar.gz", b"plain text")), "an4.tar.gz"
    ),
    "tar-without-an4": Case(_an4_from(lambda tmp: _tarball(tmp, [_member("readme.txt")])), "an4"),
    "an4-dir-missing": Case(_an4_from(lambda tmp: tmp / "corpus" / "nowhere"), "nowhere"),
    "an4-dir-empty": Case(
        _an4_from(lambda tmp: (tmp / "corpus").mkdir() or tmp / "corpus"), "corpus"
    ),
}


CASES: dict[str, Case] = {
    **RECIPE_CASES,
    **TUNING_CASES,
    **MANIFEST_CASES,
    **MODEL_CASES,
    **STORAGE_CASES,
    **TAR_CASES,
}


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 80


def _snapshot(root: Path, keep: Path) -> dict[Path, tuple[int, int]]:
    """Every file under ``root`` outside ``keep``: its size and modification time."""
    return {
        p: (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in root.rglob("*")
        if not p.is_relative_to(keep)
    }


@pytest.fixture
def log_streams_here() -> Any:
    """Point the stream handlers of Optuna and the root logger at this test's stderr.

    They were made by an earlier test (or import) around a capture stream pytest has closed
    since: writing there prints a "--- Logging error ---" traceback that is not the CLI's.
    """
    handlers = [
        h
        for name in ("optuna", "")
        for h in logging.getLogger(name).handlers
        if type(h) is logging.StreamHandler
    ]
    old = [h.stream for h in handlers]
    for handler in handlers:
        handler.stream = sys.stderr  # not setStream(): it would flush the closed stream
    yield
    for handler, stream in zip(handlers, old):
        handler.stream = stream


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.usefixtures("log_streams_here")
def test_bad_input_is_one_named_line(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    case = CASES[name]
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # relative outputs (runs/, .cache/) would land here
    argv = case.build(tmp_path)
    before = _snapshot(tmp_path, tmp_path / "run")
    capfd.readouterr()
    code = main(argv)
    out, err = capfd.readouterr()
    text = out + err
    assert code != 0, f"{name}: exit 0\n{text[-2000:]}"
    assert "Traceback" not in text, f"{name}: traceback\n{text[-3000:]}"
    lines = err.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1, f"{name}: expected one error line\n{err[-2000:]}"
    # One line, or, where a file has several problems, that line and one "  - " line for each.
    block = [lines[errors[0]]]
    block += [ln for ln in lines[errors[0] + 1 :] if ln.startswith("  - ")]
    message = "\n".join(block)
    assert case.names in message, f"{name}: {case.names!r} not named in {message!r}"
    assert _snapshot(tmp_path, tmp_path / "run") == before, f"{name}: wrote outside the run dir"
    assert not Path("/tmp/evil-abs.txt").exists()
