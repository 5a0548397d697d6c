"""The Hugging Face integration for real: ``SpeechtuneCallback`` inside real ``Trainer`` runs
(reports, stop file), and the example (examples/huggingface) tuned by ``speechtune tune``: two
trials of a tiny Wav2Vec2-CTC model on the synthetic corpus, each reporting its dev WER per epoch.
"""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml

from speechtune.data import Manifest, synthesize_corpus
from tests.helpers.command_studies import run_study, trial_detail
from tests.helpers.paths import REPO

pytest.importorskip("transformers")

from transformers import Trainer, TrainerCallback, TrainingArguments

from speechtune.integrations.huggingface import DEFAULT_EXCLUDE, SpeechtuneCallback

EXAMPLE = REPO / "examples" / "huggingface"
EPOCHS = 2


# ---------------------------------------------------------------------------------------------
# the callback in a real Trainer: a linear regression small enough to train in a second
# ---------------------------------------------------------------------------------------------
class _Regression(torch.nn.Module):
    """y = w.x + b, with the Trainer's contract: a dict with ``loss`` when labels are given."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        pred = self.linear(x).squeeze(-1)
        out: dict[str, Any] = {"logits": pred}
        if labels is not None:
            out["loss"] = torch.nn.functional.mse_loss(pred, labels)
        return out


def _data(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
    return [{"x": x[i], "labels": y[i]} for i in range(n)]


def _mae(pred: Any) -> dict[str, float]:
    return {"mae": float(abs(pred.predictions - pred.label_ids).mean())}


class _StopAt(TrainerCallback):
    """Creates the stop file after a given step, as a tuner pruning the trial mid-epoch does."""

    def __init__(self, stop_file: Path, step: int) -> None:
        self.stop_file, self.step = stop_file, step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            self.stop_file.touch()


def _trainer(tmp_path: Path, callbacks: list[Any], **args: Any) -> Any:
    """32 training examples in batches of 4 (8 steps an epoch), 3 epochs, evaluated every epoch."""
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "hf"),
        "num_train_epochs": 3,
        "per_device_train_batch_size": 4,
        "learning_rate": 0.05,
        "eval_strategy": "epoch",
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        **args,
    }
    return Trainer(
        model=_Regression(),
        args=TrainingArguments(**settings),
        train_dataset=_data(32, seed=0),
        eval_dataset=_data(16, seed=1),
        compute_metrics=_mae,
        callbacks=callbacks,
    )


@pytest.fixture
def tuner_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The environment a command trial runs in: its report file and (not yet created) stop file."""
    report, stop = tmp_path / "metrics.jsonl", tmp_path / "stop"
    monkeypatch.setenv("SPEECHTUNE_REPORT_FILE", str(report))
    monkeypatch.setenv("SPEECHTUNE_STOP_FILE", str(stop))
    return report, stop


def _rows(report: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in report.read_text().splitlines()]


def test_each_evaluation_is_one_row_per_epoch(
    tuner_env: tuple[Path, Path], tmp_path: Path
) -> None:
    report, _ = tuner_env
    trainer = _trainer(tmp_path, [SpeechtuneCallback()])
    trainer.train()
    rows = _rows(report)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for row, logged in zip(rows, [r for r in trainer.state.log_history if "eval_mae" in r]):
        # the eval_ prefix stripped, the Trainer's timings left out, the values as logged
        assert set(row) == {"epoch", "loss", "mae"}
        assert row["mae"] == pytest.approx(logged["eval_mae"])
        assert row["loss"] == pytest.approx(logged["eval_loss"])
    assert rows[-1]["mae"] < rows[0]["mae"]  # it trained


def test_steps_as_epochs_and_renamed_metrics(tuner_env: tuple[Path, Path], tmp_path: Path) -> None:
    report, _ = tuner_env
    callback = SpeechtuneCallback({"mae": "dev_mae"}, exclude=(*DEFAULT_EXCLUDE, "loss"))
    _trainer(tmp_path, [callback], eval_strategy="steps", eval_steps=5, max_steps=12).train()
    # evaluated at steps 5, 10 and the last one; the default step_as_epoch=None counts in steps
    # when the evaluations are not once an epoch (epochs 0.625, 1.25, 1.5 would round to 1, 1, 2)
    assert [(row["epoch"], set(row)) for row in _rows(report)] == [
        (5, {"epoch", "dev_mae"}),
        (10, {"epoch", "dev_mae"}),
        (12, {"epoch", "dev_mae"}),
    ]


def test_a_pruned_trial_stops_after_the_step_its_stop_file_appeared(
    tuner_env: tuple[Path, Path], tmp_path: Path
) -> None:
    report, stop = tuner_env
    # Step 11 is in epoch 2 (8 steps an epoch): training ends there, not after 24 steps, and
    # train() returns normally, so a script can exit 0 with what it has.
    trainer = _trainer(tmp_path, [_StopAt(stop, 11), SpeechtuneCallback()])
    trainer.train()
    assert trainer.state.global_step == 11
    assert [row["epoch"] for row in _rows(report)] == [1]


def test_a_stop_file_there_from_the_start_ends_training_after_one_step(
    tuner_env: tuple[Path, Path], tmp_path: Path
) -> None:
    report, stop = tuner_env
    stop.touch()
    trainer = _trainer(tmp_path, [SpeechtuneCallback()])
    trainer.train()
    assert trainer.state.global_step == 1
    assert not report.exists()  # stopped before the first evaluation: nothing to report


def test_only_finite_numbers_are_reported() -> None:
    callback = SpeechtuneCallback({"wer": "dev_wer"})
    row = callback.metrics_row(
        {
            "eval_wer": 0.25,
            "eval_loss": float("nan"),
            "eval_runtime": 1.5,
            "eval_groups": {"en": 0.2},
            "epoch": 2.0,
            "train_note": "x",
        }
    )
    assert row == {"dev_wer": 0.25}
    with pytest.raises(ValueError, match="reserved"):
        SpeechtuneCallback({"wer": "epoch"})


def test_the_integration_imports_only_the_report_file_from_speechtune() -> None:
    # A training script pays for nothing of speechtune but the standard-library report helper,
    # and `import speechtune` does not import transformers.
    module = REPO / "speechtune" / "integrations" / "huggingface.py"
    imported = {
        node.module
        for node in ast.walk(ast.parse(module.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert {m for m in imported if m.startswith("speechtune")} == {"speechtune._report_file"}
    code = "import sys, speechtune; speechtune.report; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------------------------------
# the example, tuned for real
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """48 utterances, 4 voices of one accent: enough for a speaker-disjoint dev set (~2 s)."""
    pytest.importorskip("espeakng_loader", reason="the synthetic corpus needs the `synth` extra")
    root = tmp_path_factory.mktemp("hf-corpus")
    return synthesize_corpus(root, num_utterances=48, seed=3, accents=("en-us",), num_voices=4)


def _tuning_yaml(tmp_path: Path, corpus_root: Path) -> Path:
    """The example's tuning.yaml, cut down to 2 quick trials on the test corpus.

    Only the scale changes: the script, its space keys and placeholders are the example's own.
    The YAML lives in tmp_path, so train.py is given by absolute path (a command runs from its
    tuning YAML's directory).
    """
    spec = yaml.safe_load((EXAMPLE / "tuning.yaml").read_text())
    # smaller than the example (a narrower model, the faster feature encoder): seconds an epoch
    spec["overrides"] = {
        "train.epochs": EPOCHS,
        "train.batch_size": 8,
        "model.hidden_size": 32,
        "model.conv_layers": 1,
    }
    spec["study"].update(name="hf-test", sampler="random", pruner="none", n_trials=2, seed=3)
    argv = spec["command"]["argv"]
    replaced = {"train.py": str(EXAMPLE / "train.py"), "data": str(corpus_root)}
    assert set(replaced) <= set(argv), argv  # the example still has the arguments replaced here
    spec["command"]["argv"] = [replaced.get(a, a) for a in argv]
    spec["command"]["timeout_s"] = 120
    path = tmp_path / "tuning.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_two_trials_of_the_example(tmp_path: Path, small_corpus: Manifest) -> None:
    assert small_corpus.root is not None
    run_dir = tmp_path / "run"
    # One thread per trial: on a shared 2-core machine, two spinning OpenMP threads are slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    records = run_study(_tuning_yaml(tmp_path, small_corpus.root), run_dir, timeout=300, env=env)
    assert len(records) == 2
    for rec in records:
        detail = trial_detail(rec)
        assert rec.state == optuna.trial.TrialState.COMPLETE, detail
        # one row per epoch from the callback, each with a finite WER and dev loss
        assert [row["epoch"] for row in rec.history] == list(range(1, EPOCHS + 1)), detail
        for row in rec.history:
            assert math.isfinite(row["wer"]) and row["wer"] >= 0, row
            assert math.isfinite(row["cer"]) and row["cer"] >= 0, row
            assert math.isfinite(row["loss"]), row
        assert rec.value == pytest.approx(rec.history[-1]["cer"])  # the example tunes CER
        # the sampled values reached the script through {config}
        read = yaml.safe_load((Path(rec.trial_dir or "") / "config.yaml").read_text())
        assert read["optim"]["lr"] == pytest.approx(rec.config["optim.lr"])
        assert read["train"]["epochs"] == EPOCHS
    assert records[0].config["optim.lr"] != records[1].config["optim.lr"]
