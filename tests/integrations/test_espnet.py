"""The ESPnet example (examples/espnet): ESPnet2's own ``espnet2.bin.asr_train`` tuned by speechtune.

ESPnet cannot be installed beside the CPU torch 2.13 this project pins (examples/espnet/README.md
has the exact errors): every release pins ``setuptools<74`` against torch's ``setuptools>=77.0.3``,
and ``espnet2.tasks.asr`` imports torchaudio, which does not load with a CPU torch 2.13. So CI checks
every piece of the example that does not need ESPnet itself, for real:

* ``prep_data.py`` writes Kaldi data dirs that a Kaldi reader (speechtune's importer) reads back,
  with ESPnet's char token list and shape files;
* a trial's ``{config}`` is ESPnet's own training config with the sampled values merged in, and its
  argv is ``asr_train``'s;
* ``metric_regex`` reads epochs and CER from real ``asr_train`` output (``asr_train_epochs.log``,
  captured from the study in the README).

With ``SPEECHTUNE_ESPNET_PYTHON`` naming an interpreter in which ``espnet2.bin.asr_train`` imports,
``test_two_trials_of_espnet_asr_train`` runs two trials of ESPnet for real (its timings are in
the example's README).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import optuna
import pytest
import yaml

from speechtune.data import Manifest, load_manifest
from speechtune.tuning import load_tuning
from speechtune.tuning.objectives import CommandObjective, build_objective
from speechtune.tuning.objectives._command import RegexParser
from speechtune.tuning.study import TrialRecord, load_study
from tests.helpers.paths import REPO
from tests.helpers.scripts import load_script
from tests.helpers.workers import speechtune_argv

EXAMPLE = REPO / "examples" / "espnet"
ESPNET_PYTHON = os.environ.get("SPEECHTUNE_ESPNET_PYTHON")


def _prep_module() -> ModuleType:
    return load_script(EXAMPLE / "prep_data.py", "espnet_prep_data")


@pytest.fixture(scope="module")
def espnet_data(synth_corpus: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's data dirs for 64 utterances of the session's synthetic corpus."""
    out = tmp_path_factory.mktemp("espnet") / "data"
    _prep_module().write_data(synth_corpus[:64], out, seed=0)
    return out


def _lines(path: Path) -> list[list[str]]:
    return [line.split(maxsplit=1) for line in path.read_text(encoding="utf-8").splitlines()]


def test_prep_data_writes_kaldi_dirs_and_espnets_token_list(
    espnet_data: Path, synth_corpus: Manifest
) -> None:
    tokens = (espnet_data / "token_list" / "char" / "tokens.txt").read_text().splitlines()
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-1] == "<sos/eos>"
    assert "<space>" in tokens and " " not in tokens and len(set(tokens)) == len(tokens)

    by_id = {u.id: u for u in synth_corpus}
    seen: dict[str, set[str]] = {}
    for split in ("train", "dev"):
        d = espnet_data / split
        wav_scp = _lines(d / "wav.scp")
        ids = [utt for utt, _ in wav_scp]
        # Kaldi's sort order, as ESPnet's validate_data_dir wants
        assert ids and ids == sorted(ids)
        for name in ("text", "utt2spk", "speech_shape", "text_shape.char"):
            assert [row[0] for row in _lines(d / name)] == ids, name
        # a Kaldi reader (speechtune's importer) reads the dir back: same audio and transcripts
        back = load_manifest(d)
        assert {u.id: u.text for u in back} == {i: by_id[i].text for i in ids}
        for utt, path in wav_scp:
            assert Path(path).is_absolute() and Path(path).is_file()
        for utt, shape in _lines(d / "speech_shape"):
            assert int(shape) == math.ceil(by_id[utt].duration * 16000)
        for utt, shape in _lines(d / "text_shape.char"):
            assert shape == f"{len(by_id[utt].text)},{len(tokens)}"
        # every character of every transcript is a token (the space as <space>)
        chars = {("<space>" if c == " " else c) for _, text in _lines(d / "text") for c in text}
        assert chars <= set(tokens)
        seen[split] = {spk for _, spk in _lines(d / "utt2spk")}
    assert seen["train"] and seen["dev"] and not seen["train"] & seen["dev"]  # speaker-disjoint


def test_a_trial_gets_espnets_config_with_the_sampled_values(tmp_path: Path) -> None:
    spec = load_tuning(EXAMPLE / "tuning.yaml")
    objective = build_objective(spec)
    assert isinstance(objective, CommandObjective)
    config = {
        "optim_conf.lr": 0.0031,
        "encoder_conf.num_blocks": 3,
        "encoder_conf.dropout_rate": 0.2,
    }
    (tmp_path / "t0").mkdir()
    argv = objective.prepare(config, tmp_path / "t0", seed=7)

    base = yaml.safe_load((EXAMPLE / "conf" / "train_asr_ctc.yaml").read_text())
    trial = yaml.safe_load((tmp_path / "t0" / "config.yaml").read_text())
    assert trial["optim_conf"] == {**base["optim_conf"], "lr": 0.0031}
    assert trial["encoder_conf"] == {**base["encoder_conf"], "num_blocks": 3, "dropout_rate": 0.2}
    assert {k: v for k, v in trial.items() if k not in ("optim_conf", "encoder_conf")} == {
        k: v for k, v in base.items() if k not in ("optim_conf", "encoder_conf")
    }
    assert argv[:3] == [sys.executable, "-m", "espnet2.bin.asr_train"]
    pairs = dict(zip(argv[3::2], argv[4::2]))
    assert pairs["--config"] == str(tmp_path / "t0" / "config.yaml")
    assert pairs["--output_dir"] == str(tmp_path / "t0" / "exp")
    assert pairs["--seed"] == "7"
    # no per-key arguments: the sampled values travel in ESPnet's own --config file
    assert not any(a.startswith(("--optim_conf", "--encoder_conf")) for a in argv)
    # every data file the argv names is one prep_data.py writes
    for value in pairs.values():
        if value.startswith("data/"):
            name = value.split(",")[0]
            assert name.split("/")[-1] in {
                "wav.scp",
                "text",
                "speech_shape",
                "text_shape.char",
                "tokens.txt",
            }, name


def test_metric_regex_reads_real_asr_train_output() -> None:
    spec = load_tuning(EXAMPLE / "tuning.yaml")
    assert spec.command is not None and spec.command.metric_regex
    parser = RegexParser(spec.command.metric_regex)
    lines = (EXAMPLE / "asr_train_epochs.log").read_text().splitlines()
    rows = [row for row in map(parser.parse, lines) if row is not None]
    assert [(row.epoch, row.metrics) for row in rows] == [
        (1, {"cer": 1.0}),
        (2, {"cer": 0.992}),
        (3, {"cer": 0.926}),
    ]
    # the [train] part's numbers, the valid cer=nan of the absent attention decoder and
    # scientific notation (ESPnet prints values under 1e-3 as 5.000e-04) are handled
    assert parser.parse("5epoch results: [train] loss=1.0, [valid] cer_ctc=5.000e-04, cer=nan")
    assert parser.parse("6epoch results: [train] cer_ctc=0.5, loss=1.0") is None


@pytest.mark.skipif(
    not ESPNET_PYTHON,
    reason="set SPEECHTUNE_ESPNET_PYTHON to a python in which espnet2.bin.asr_train imports "
    "(ESPnet cannot be installed beside this project's torch 2.13: examples/espnet/README.md)",
)
def test_two_trials_of_espnet_asr_train(tmp_path: Path, espnet_data: Path) -> None:
    """ESPnet's own trainer, two trials of two epochs, tuned through the example's tuning.yaml."""
    spec = yaml.safe_load((EXAMPLE / "tuning.yaml").read_text())
    spec["study"].update(name="espnet-test", sampler="random", pruner="none", n_trials=2, seed=3)
    spec["overrides"] = {"max_epoch": 2}
    command = spec["command"]
    command["config_file"] = str(EXAMPLE / command["config_file"])
    assert command["argv"][0] == "{python}"
    command["argv"] = [ESPNET_PYTHON] + [
        a.replace("data/", f"{espnet_data}/", 1) if a.startswith("data/") else a
        for a in command["argv"][1:]
    ]
    tuning = tmp_path / "tuning.yaml"
    tuning.write_text(yaml.safe_dump(spec, sort_keys=False))
    run_dir = tmp_path / "run"
    tune = subprocess.run(
        speechtune_argv(
            "tune", "--config", str(tuning), "--run-dir", str(run_dir), "--quiet", "--no-tracking"
        ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert tune.returncode == 0, tune.stdout[-3000:] + tune.stderr[-3000:]
    records = [TrialRecord.from_trial(t) for t in load_study(run_dir).trials]
    assert len(records) == 2
    for rec in records:
        trial_dir = Path(rec.trial_dir or "")
        detail = (
            f"trial {rec.number}: {rec.reason}\n" + (trial_dir / "stdout.log").read_text()[-3000:]
        )
        assert rec.state == optuna.trial.TrialState.COMPLETE, detail
        assert [row["epoch"] for row in rec.history] == [1, 2], detail
        assert all(0.0 <= row["cer"] <= 1.5 for row in rec.history)
        assert rec.value == pytest.approx(rec.history[-1]["cer"])
        # ESPnet trained with the sampled learning rate: its own copy of the config says so
        used = yaml.safe_load((trial_dir / "exp" / "config.yaml").read_text())
        assert used["optim_conf"]["lr"] == pytest.approx(rec.config["optim_conf.lr"])
        assert used["encoder_conf"]["num_blocks"] == rec.config["encoder_conf.num_blocks"]
        assert used["max_epoch"] == 2
        argv = json.loads((trial_dir / "command.json").read_text())["argv"]
        assert argv[:3] == [ESPNET_PYTHON, "-m", "espnet2.bin.asr_train"]
