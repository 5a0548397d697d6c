"""benchmarks/fsdd_transfer.py: its planning and summaries, and one tiny run end to end
(pretraining, from scratch, fixed fine-tuning and a two-trial study on generated FSDD-like
digits), then again to see it resume without training anything."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from speechtune.config import config_from_dict, config_to_dict
from speechtune.data import import_fsdd
from speechtune.inference import evaluate_model
from speechtune.tuning.spec import load_tuning
from tests.helpers.fsdd import fake_fsdd
from tests.helpers.paths import REPO
from tests.helpers.recipes import tiny_config
from tests.helpers.scripts import load_script

ft = load_script(REPO / "benchmarks" / "fsdd_transfer.py", "fsdd_transfer")

#: A tiny Transformer-CTC (attention layers, so that LoRA has something to adapt).
TINY_MODEL = {
    "encoder": "transformer",
    "d_model": 32,
    "num_heads": 2,
    "ff_dim": 64,
    "num_layers": 2,
    "dropout": 0.0,
}


def _pretrained(**sections: dict[str, Any]) -> dict[str, Any]:
    """The config dict of a pretrained AN4-like model (a fine-tuning run's, to see it reset)."""
    return config_to_dict(
        tiny_config(
            model=TINY_MODEL,
            data={"corpus": "an4", "root": "/an4", "charset": "ABCDEFGHIJKLMNOPQRSTUVWXYZ'"},
            finetune={"freeze_layers": 1},
            schedule={"name": "warmup_cosine", "warmup_steps": 300},
            **sections,
        )
    )


def test_budgets_beyond_the_training_split_become_one_all_budget() -> None:
    # The shared FSDD copy has ~11.5 minutes of training audio with split seed 0.
    assert ft.plan_budgets([15, 2, 5], 11.5) == [("2min", 2.0), ("5min", 5.0), ("all", None)]
    assert ft.plan_budgets([15, 60], 11.5) == [("all", None)]
    assert ft.plan_budgets([0.5, 0.5], 11.5) == [("0.5min", 0.5)]
    with pytest.raises(ValueError, match="> 0"):
        ft.plan_budgets([2, 0], 11.5)


def test_warmup_is_a_share_of_the_run_steps() -> None:
    assert ft.warmup_steps(785, 16, 40, 0.1) == 200  # 50 batches x 40 epochs
    assert ft.warmup_steps(3, 16, 1, 0.1) == 1


def test_fsdd_recipe_keeps_the_architecture_and_resets_the_rest() -> None:
    pre = _pretrained()
    scratch = ft.fsdd_recipe(
        pre, "/fsdd", 5.0, split_seed=3, epochs=30, warmup=77, overrides=["train.batch_size=8"]
    )
    assert scratch["model"] == {**pre["model"], "init_from": None}
    assert scratch["features"] == pre["features"] and scratch["features"]["sample_rate"] == 16000
    data = scratch["data"]
    assert (data["corpus"], data["root"], data["split_seed"]) == ("fsdd", "/fsdd", 3)
    assert data["proxy_hours"] == pytest.approx(5 / 60) and data["allow_upsampling"] is True
    assert data["charset"] == pre["data"]["charset"]  # the same vocabulary as the pretrained one
    assert scratch["finetune"]["freeze_layers"] == 0  # the pretrained run's finetune keys reset
    assert scratch["train"]["epochs"] == 30 and scratch["train"]["batch_size"] == 8
    assert scratch["schedule"]["warmup_steps"] == 77
    assert (
        ft.fsdd_recipe(pre, "/f", None, split_seed=0, epochs=1, warmup=1)["data"]["proxy_hours"]
        is None
    )
    at_8k = _pretrained(features={"sample_rate": 8000})
    assert not ft.fsdd_recipe(at_8k, "/f", 2.0, split_seed=0, epochs=1, warmup=1)["data"][
        "allow_upsampling"
    ]

    tuned = ft.finetune_recipe(scratch, "/pre/model.pt", 0.3)
    assert tuned["model"]["init_from"] == "/pre/model.pt" and tuned["finetune"]["freeze_frontend"]
    assert tuned["optim"]["lr"] == pytest.approx(0.3 * scratch["optim"]["lr"])
    config_from_dict(tuned)  # a valid recipe


def test_the_study_searches_the_finetuning_knobs_around_the_fixed_recipe(tmp_path: Path) -> None:
    scratch = ft.fsdd_recipe(_pretrained(), str(tmp_path), 2.0, split_seed=0, epochs=2, warmup=5)
    fixed = ft.finetune_recipe(scratch, str(tmp_path / "model.pt"), 0.3)
    recipe = tmp_path / "finetune.yaml"
    recipe.write_text(yaml.safe_dump(fixed))
    spec_yaml = tmp_path / "tuning.yaml"
    spec = ft.study_spec(recipe, fixed, 0.003, "fsdd-ft-2min", 12, 0)
    spec_yaml.write_text(yaml.safe_dump(spec))
    loaded = load_tuning(spec_yaml)  # the real tuning-YAML checks
    assert set(loaded.space.tunable_names()) == {
        "finetune.freeze_layers",
        "finetune.lora_rank",
        "optim.lr",
        "finetune.layer_lr_decay",
    }
    assert spec["space"]["finetune.freeze_layers"]["high"] == 2
    assert spec["space"]["optim.lr"]["prior"] == pytest.approx(0.0009)
    assert loaded.base_recipe["model"]["init_from"] == str(tmp_path / "model.pt")


def _run(budget: str, arm: str, seed: int, wer: float) -> dict[str, Any]:
    return {
        "budget": budget, "arm": arm, "seed": seed, "train_minutes": 2.0, "wer": wer,
        "cer": wer / 2, "worst_group_wer": wer + 0.1, "train_seconds": 60.0 * seed,
        "seconds_to_best": 30.0, "best_epoch": 20,
    }  # fmt: skip


def test_summary_and_table() -> None:
    runs = [_run("2min", "scratch", s, w) for s, w in ((1, 0.9), (2, 0.8), (3, 1.0))]
    runs += [_run("2min", "finetune", s, w) for s, w in ((1, 0.2), (2, 0.3))]
    runs += [
        _run("2min", "tuned", 1, 0.1),
        {"budget": "2min", "arm": "tuned", "seed": 2, "wer": None},
    ]
    summary = ft.summarise(runs, {"2min": {"trials": 12, "train_seconds": 600.0}})
    s = summary["2min"]
    assert s["scratch"]["wer"][0] == pytest.approx(0.9)
    assert s["scratch"]["wer"][1] == pytest.approx(0.1 / math.sqrt(3))  # s.d. 0.1 over 3 seeds
    assert s["scratch"]["train_seconds"][0] == pytest.approx(120.0)
    assert (s["finetune"]["n"], s["finetune"]["trials"]) == (2, 1)
    assert (s["tuned"]["n"], s["tuned"]["trials"], s["tuned"]["study_train_seconds"]) == (
        1,
        13,
        600.0,
    )
    table = ft.markdown(summary)
    assert "| 2min (2.0 min) | scratch | 3 | 0.900 ± 0.058 |" in table
    assert "| 2min (2.0 min) | tuned | 1 | 0.100 |" in table and "(+ study 10.0 min)" in table


def test_a_tiny_transfer_end_to_end_then_resumed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "AN4": 16 kHz digits of other speakers; FSDD: 8 kHz digits, upsampled to the model's 16 kHz.
    an4 = fake_fsdd(tmp_path / "an4like", rate=16000, indices=(5, 6))
    fsdd = fake_fsdd(tmp_path / "fsdd", indices=(5, 6, 7))
    pre = config_to_dict(
        tiny_config(
            model=TINY_MODEL,
            data={"corpus": "fsdd", "root": str(an4)},
            train={"epochs": 1, "batch_size": 8},
        )
    )
    pre_yaml = tmp_path / "pre.yaml"
    pre_yaml.write_text(yaml.safe_dump(pre))
    out, record = tmp_path / "out", tmp_path / "record.json"
    argv = [
        "--pretrain-config", str(pre_yaml), "--fsdd-root", str(fsdd), "--minutes", "0.1",
        "--seeds", "1", "--epochs", "2", "--tune-trials", "2", "--parallel", "2",
        "--pretrain-threads", "1",
        "--out", str(out), "--record", str(record), "--cache-dir", str(tmp_path / "cache"),
        "--set", "train.batch_size=8",
    ]  # fmt: skip
    assert ft.main(argv) == 0
    rec = json.loads(record.read_text())
    # A share of the 0.3 minutes of training audio: a proxy subset (data.proxy_hours).
    assert [b["label"] for b in rec["budgets"]] == ["0.1min"]
    assert 0.05 < rec["budgets"][0]["train_minutes"] <= 0.1 < rec["fsdd_train_minutes_available"]
    assert all(r["wer"] is not None for r in rec["runs"]), rec["runs"]
    assert [r["arm"] for r in rec["runs"]] == ["scratch", "finetune", "tuned"]
    # (Parallel trials may overshoot n_trials by one: the record counts the trials run.)
    trials = rec["studies"]["0.1min"]["trials"]
    assert trials >= 2 and rec["summary"]["0.1min"]["tuned"]["trials"] == trials + 1
    assert "dev_wer" in rec["pretrained"]
    run = out / "0.1min" / "finetune-seed1"
    used = yaml.safe_load((run / "config.yaml").read_text())
    assert used["model"]["init_from"] == str(out / "pretrain" / "model.pt")
    assert used["features"]["sample_rate"] == 16000 and used["data"]["allow_upsampling"]
    assert "output tokens mapped" in (run / "train.log").read_text()
    assert "| 0.1min (" in capsys.readouterr().out
    # Its 8 kHz evaluation audio is upsampled too, as in training (data.allow_upsampling).
    clips = import_fsdd(fsdd, tmp_path / "eval")["train"][:4]
    assert evaluate_model(run, clips)["utterances"] == 4

    # Resumed: every run and study is there, nothing trains again.
    finished = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    assert ft.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == finished
