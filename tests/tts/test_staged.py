"""Staged tuning runs both stages, records what each searched and froze, and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from speechtune.config import ConfigError
from speechtune.tts import load_staged, run_staged
from tests.tts.conftest import TINY


def _staged_yaml(tmp_path: Path) -> Path:
    recipe = tmp_path / "recipe.yaml"
    overrides = {}
    for item in TINY:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    recipe.write_text(yaml.safe_dump({"seed": 0}))
    spec = {
        "recipe": "recipe.yaml",
        "overrides": overrides,
        "study": {"sampler": "random", "seed": 0},
        "objective": {"metric": "mcd"},
        "stages": [
            {
                "name": "acoustic",
                "n_trials": 2,
                "space": {"train.lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True}},
            },
            {
                "name": "vocoder",
                "n_trials": 2,
                "space": {
                    "vocoder.griffin_lim.n_iter": {"type": "int", "low": 2, "high": 8},
                    "vocoder.griffin_lim.momentum": {"low": 0.0, "high": 1.0},
                },
            },
        ],
    }
    path = tmp_path / "staged.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_staged_tuning_runs_both_stages_and_records_frozen_keys(
    tts_cache: Path, tmp_path: Path
) -> None:
    spec = load_staged(_staged_yaml(tmp_path))
    record = run_staged(spec, tmp_path / "run", cache_dir=tts_cache)
    assert record == json.loads((tmp_path / "run" / "stages.json").read_text())
    acoustic, vocoder = record["stages"]
    assert acoustic["searched"] == ["train.lr"]
    # Stage 1 froze the vocoder's keys at the recipe's values.
    assert acoustic["frozen"] == {
        "vocoder.griffin_lim.n_iter": 4,
        "vocoder.griffin_lim.momentum": 0.99,
    }
    assert acoustic["acoustic_model_from"] is None and acoustic["trials"] == 2
    # Stage 2 froze stage 1's winner and reused its trained acoustic model.
    assert vocoder["searched"] == ["vocoder.griffin_lim.momentum", "vocoder.griffin_lim.n_iter"]
    assert vocoder["frozen"] == {"train.lr": acoustic["winner"]["config"]["train.lr"]}
    assert vocoder["acoustic_model_from"] == acoustic["winner"]["model"]
    assert all(
        json.loads((d / "history.json").read_text()) == []
        for d in (tmp_path / "run" / "vocoder" / "trials").iterdir()
    )
    assert record["final"]["trials"] == 4
    assert set(record["final"]["config"]) == {"train.lr", *vocoder["searched"]}
    # The final model is the better of the stage winners (stage 2 may not beat stage 1's).
    best = min(record["stages"], key=lambda s: s["winner"]["metrics"]["mcd"])
    assert record["final"]["stage"] == best["name"]
    assert record["final"]["metrics"]["mcd"] == best["winner"]["metrics"]["mcd"]
    # Resuming a finished staged study runs no trial again.
    trials_before = sorted(p.name for p in (tmp_path / "run").glob("*/trials/*"))
    again = run_staged(spec, tmp_path / "run", cache_dir=tts_cache)
    assert sorted(p.name for p in (tmp_path / "run").glob("*/trials/*")) == trials_before
    assert again["final"] == record["final"]


def test_a_stage_marked_done_is_not_run_again(tts_cache: Path, tmp_path: Path) -> None:
    spec = load_staged(_staged_yaml(tmp_path))
    run_staged(spec, tmp_path / "run", cache_dir=tts_cache)
    # An interruption during stage 2: its record is gone, stage 1's stays done.
    record = json.loads((tmp_path / "run" / "stages.json").read_text())
    record["stages"] = record["stages"][:1]
    (tmp_path / "run" / "stages.json").write_text(json.dumps(record))
    stage1 = sorted(
        p.stat().st_mtime_ns for p in (tmp_path / "run" / "acoustic" / "trials").rglob("model.pt")
    )
    again = run_staged(spec, tmp_path / "run", cache_dir=tts_cache)
    assert [s["name"] for s in again["stages"]] == ["acoustic", "vocoder"]
    assert (
        sorted(
            p.stat().st_mtime_ns
            for p in (tmp_path / "run" / "acoustic" / "trials").rglob("model.pt")
        )
        == stage1
    )


def test_joint_tuning_searches_every_key_with_the_same_trials(
    tts_cache: Path, tmp_path: Path
) -> None:
    spec = load_staged(_staged_yaml(tmp_path))
    record = run_staged(spec, tmp_path / "run", cache_dir=tts_cache, mode="joint")
    assert record["searched"] == [
        "train.lr",
        "vocoder.griffin_lim.momentum",
        "vocoder.griffin_lim.n_iter",
    ]
    assert record["n_trials"] == 4 and record["trials"] == 4 and record["frozen"] == {}


def test_bad_staged_files_list_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "stages": [
                    {
                        "name": "a",
                        "n_trials": 0,
                        "space": {"model.d_modle": [1, 2], "train.lr": [0.001, 0.002]},
                        "freeze": {"train.lr": 0.001},
                    },
                    {"name": "a", "n_trials": 2, "space": {}, "extra": 1},
                ],
                "objective": {"metric": "bleu"},
                "nonsense": 1,
            }
        )
    )
    with pytest.raises(ConfigError) as info:
        load_staged(path)
    text = str(info.value)
    for needle in (
        "nonsense: unknown key",
        "stages[0].space.model.d_modle: is not a key of the TTS recipe",
        "stages[0].n_trials: must be an integer >= 1",
        "stages[0].freeze.train.lr: is searched by this stage",
        "stages[1].extra: unknown key",
        "stages[1].space: must search at least one key",
        "stage names must be distinct",
        "objective.metric: must be one of: mcd, wer, cer",
    ):
        assert needle in text, text


def test_the_shipped_tts_configs_are_valid() -> None:
    from speechtune.tts import load_tts_config
    from tests.helpers.paths import CONF, REPO

    cfg = load_tts_config(CONF / "tts_synthetic.yaml")
    assert cfg.features.n_mels == 64 and cfg.data.synthetic.seed == 1
    for path in (CONF / "tts_staged.yaml", REPO / "benchmarks" / "tts_staged_cpu.yaml"):
        spec = load_staged(path)
        assert [s.name for s in spec.stages] == ["acoustic", "vocoder"]
        assert all(k.startswith("vocoder.") for k in spec.stages[1].space)
        assert not any(k.startswith("vocoder.") for k in spec.stages[0].space)
