"""The NeMo example (examples/nemo) tuned for real: ``speechtune tune`` runs two trials of its
``speech_to_text_ctc.py`` (NeMo's ``@hydra_runner`` script: a Lightning Trainer and an
``EncDecCTCModel``, a Conformer encoder with a CTC decoder on characters) on the synthetic corpus.
The sampled values reach NeMo as Hydra overrides (``model.optim.lr=...``); each epoch's dev WER comes
back through ``speechtune.report``."""

from __future__ import annotations

import importlib.util
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

from speechtune.data import Manifest
from tests.helpers.command_studies import run_study
from tests.helpers.paths import REPO
from tests.helpers.scripts import load_script

EXAMPLE = REPO / "examples" / "nemo"

# find_spec, not importorskip: importing NeMo takes 15-30 s, and only the trials need it.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("nemo") is None,
    reason="NeMo is not installed (nemo_toolkit[asr]: the `nemo` extra; not in CI yet, see examples/nemo)",
)

EPOCHS = 2


def _prep_module() -> ModuleType:
    return load_script(EXAMPLE / "prep_data.py", "nemo_prep_data")


def _tuning_yaml(tmp_path: Path, data: Path) -> Path:
    """The example's tuning.yaml, cut down to 2 quick trials on 48 utterances.

    Only the scale changes: the script, its Hydra config, the space keys and the override template
    are the example's own. The YAML lives in tmp_path, so the script is given by absolute path
    (NeMo's hydra_runner finds conf/ next to the script).
    """
    spec = yaml.safe_load((EXAMPLE / "tuning.yaml").read_text())
    # fixed values travel as Hydra overrides too, after the argv and before the sampled ones
    spec["overrides"] = {
        "trainer.max_epochs": EPOCHS,
        "model.train_ds.manifest_filepath": str(data / "train_manifest.json"),
        "model.validation_ds.manifest_filepath": str(data / "dev_manifest.json"),
    }
    spec["space"]["model.encoder.n_layers"] = [1, 2]  # seconds per epoch
    spec["study"].update(name="nemo-test", sampler="random", pruner="none", n_trials=2, seed=3)
    argv = spec["command"]["argv"]
    assert "speech_to_text_ctc.py" in argv, argv
    spec["command"]["argv"] = [
        str(EXAMPLE / a) if a == "speech_to_text_ctc.py" else a for a in argv
    ]
    spec["command"]["timeout_s"] = 600
    path = tmp_path / "tuning.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_two_trials_of_the_nemo_script(tmp_path: Path, synth_corpus: Manifest) -> None:
    data = tmp_path / "data"
    counts = _prep_module().write_data(synth_corpus[:48], data, seed=0)
    assert counts["train"] > counts["dev"] > 0
    first = json.loads((data / "train_manifest.json").read_text().splitlines()[0])
    assert set(first) == {"audio_filepath", "duration", "text"} and first["text"].islower()

    run_dir = tmp_path / "run"
    records = run_study(_tuning_yaml(tmp_path, data), run_dir, timeout=1200)
    assert len(records) == 2
    for rec in records:
        trial_dir = Path(rec.trial_dir or "")
        log = (trial_dir / "stdout.log").read_text()
        detail = f"trial {rec.number}: {rec.reason}\n" + log[-3000:]
        assert rec.state == optuna.trial.TrialState.COMPLETE, detail
        # one row per validation epoch, each with a finite WER and loss from NeMo
        assert [row["epoch"] for row in rec.history] == list(range(1, EPOCHS + 1)), detail
        for row in rec.history:
            assert math.isfinite(row["wer"]) and row["wer"] >= 0, row
            assert math.isfinite(row["loss"]), row
        assert rec.value == pytest.approx(rec.history[-1]["wer"])

        # The sampled values went out as Hydra overrides, and NeMo trained with them: the
        # optimizer's lr is the sampled one, and the encoder NeMo built has the sampled depth.
        lr, n_layers = rec.config["model.optim.lr"], rec.config["model.encoder.n_layers"]
        argv = json.loads((trial_dir / "command.json").read_text())["argv"]
        assert f"model.optim.lr={lr!r}" in argv, argv
        assert f"model.encoder.n_layers={n_layers}" in argv, argv
        assert f"trainer.max_epochs={EPOCHS}" in argv, argv
        assert [row["lr"] for row in rec.history] == pytest.approx([lr] * EPOCHS, rel=1e-12)
        assert f"n_layers: {n_layers}\n" in log  # the resolved Hydra config NeMo logged
    assert records[0].config["model.optim.lr"] != records[1].config["model.optim.lr"]


def test_the_script_stops_after_the_epoch_in_which_it_is_pruned(
    tmp_path: Path, synth_corpus: Manifest
) -> None:
    """Run by hand with speechtune's environment: a stop file already there (as a pruning tuner
    creates it) ends training after epoch 1 of 3, with a clean exit and that epoch reported."""
    data = tmp_path / "data"
    _prep_module().write_data(synth_corpus[:24], data, seed=0)
    report, stop = tmp_path / "metrics.jsonl", tmp_path / "STOP"
    stop.touch()
    argv = [
        sys.executable,
        str(EXAMPLE / "speech_to_text_ctc.py"),
        "trainer.max_epochs=3",
        "model.encoder.n_layers=1",
        "model.optim.lr=0.004",
        f"model.train_ds.manifest_filepath={data / 'train_manifest.json'}",
        f"model.validation_ds.manifest_filepath={data / 'dev_manifest.json'}",
    ]
    env = {**os.environ, "SPEECHTUNE_REPORT_FILE": str(report), "SPEECHTUNE_STOP_FILE": str(stop)}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1]
    assert rows[0]["lr"] == pytest.approx(0.004)
    assert math.isfinite(rows[0]["wer"])
    assert "speechtune pruned this trial after epoch 1" in proc.stdout + proc.stderr
