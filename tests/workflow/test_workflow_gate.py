"""Gating both ways on real models, and a workflow killed in the middle of a stage resuming.

The gate compares real models on the same golden utterances: a model that learned the corpus
(the session's ``trained`` fixture, dev CER ~0.23) and barely trained ones (one epoch: all blanks).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speechtune.data import Manifest, PreparedData
from speechtune.track import ModelRegistry
from speechtune.training import train
from speechtune.workflow import STAGES, load_workflow, run_workflow
from speechtune.workflow._gate import gate_model
from tests.helpers.recipes import run_options, tiny_config
from tests.helpers.workers import speechtune_argv, wait_for
from tests.helpers.workflow import split_corpus, write_workflow


def _gate(
    model_dir: Path, golden: Manifest, reg: ModelRegistry, work: Path, margin: float = 0.02
) -> dict:
    return gate_model(
        model_dir,
        golden,
        reg,
        metric="wer",
        margin=margin,
        device="cpu",
        work_dir=work,
        params={"optim.lr": 0.003},
        dev={"wer": 0.5},
        cost={"cpu_core_hours": 0.01},
        tags={"t": "1"},
        lineage={"note": "test"},
        run_name="gate-test",
    )


@pytest.fixture(scope="module")
def weak_models(synth_data: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("weak")
    out = []
    for seed in (1, 2):
        cfg = tiny_config(train={"epochs": 1})
        cfg.seed = seed
        result = train(cfg, run_options(tmp, f"weak{seed}"), data=synth_data)
        out.append(result.output_dir)
    return out


def test_a_better_challenger_is_promoted_and_a_worse_one_is_not(
    trained, weak_models, synth_data, tmp_path
) -> None:
    golden = synth_data.dev.with_split("golden")
    reg = ModelRegistry(None, "asr-gate", store_dir=tmp_path / "registry")
    first = _gate(weak_models[0], golden, reg, tmp_path / "g1")
    assert (
        first["promoted"]
        and first["registered_version"] == "1"
        and "first champion" in first["decision"]
    )

    better = _gate(trained.output_dir, golden, reg, tmp_path / "g2")
    assert better["champion"]["version"] == "1"
    assert better["challenger"]["wer"] < better["champion"]["wer"] - 0.02
    assert better["promoted"] and better["decision"].startswith("promoted")
    assert reg.champion().version == "2"

    worse = _gate(weak_models[1], golden, reg, tmp_path / "g3")
    assert not worse["promoted"] and worse["registered_version"] == "3"
    assert "not promoted" in worse["decision"] and "worse" in worse["decision"]
    assert reg.champion().version == "2", "a worse model must not take the champion alias"
    assert reg.version_by_alias("challenger").version == "3"
    assert json.loads((tmp_path / "g3" / "decision.json").read_text())["promoted"] is False
    # the champion was measured on the same golden set, now
    assert worse["champion"]["wer"] == pytest.approx(better["challenger"]["wer"])

    again = _gate(trained.output_dir, golden, reg, tmp_path / "g4")
    assert again["registered_version"] == "2" and "already the champion" in again["decision"]
    assert len(reg.versions()) == 3, "the same model bytes are never registered twice"


def test_a_gain_below_the_margin_is_not_promoted(
    trained, weak_models, synth_data, tmp_path
) -> None:
    golden = synth_data.dev.with_split("golden")
    reg = ModelRegistry(None, "asr-margin", store_dir=tmp_path / "registry")
    _gate(weak_models[0], golden, reg, tmp_path / "g1")
    result = _gate(trained.output_dir, golden, reg, tmp_path / "g2", margin=0.99)
    assert result["challenger"]["wer"] < result["champion"]["wer"]
    assert (
        not result["promoted"]
        and "better only" in result["decision"]
        and "0.9900" in result["decision"]
    )
    assert reg.champion().version == "1"


@pytest.mark.faults
def test_a_workflow_killed_mid_stage_resumes(
    synth_corpus: Manifest, tmp_path: Path, procs
) -> None:
    train_manifest, golden_manifest = split_corpus(synth_corpus, tmp_path)
    config = write_workflow(
        tmp_path / "conf", train_manifest, golden_manifest, coarse={"n_trials": 4}
    )
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    argv = speechtune_argv(
        "workflow",
        "--config",
        str(config),
        "--run-dir",
        str(run_dir),
        "--device",
        "cpu",
        "--cache-dir",
        str(cache),
        "--to-stage",
        "coarse",
        "--quiet",
    )
    proc = procs.start("workflow", argv)
    # Kill it (SIGKILL: no clean-up) once the coarse study has finished a trial and started another.
    wait_for(
        lambda: (run_dir / "coarse" / "trials" / "0002").is_dir() or proc.poll() is not None,
        240,
        "the second coarse trial",
    )
    assert proc.poll() is None, procs.log(proc)
    procs.kill(proc)
    proc.wait(timeout=30)
    state = json.loads((run_dir / "state.json").read_text())
    assert (
        state["stages"]["coarse"]["status"] == "running"
        and state["stages"]["baseline"]["status"] == "done"
    )

    resumed = run_workflow(
        load_workflow(config), run_dir, to_stage="coarse", device="cpu", cache_dir=cache
    ).data
    coarse = resumed["stages"]["coarse"]
    assert coarse["status"] == "done" and coarse["attempts"] == 2
    assert coarse["result"]["n_complete"] == 4, coarse["result"]
    assert resumed["stages"]["baseline"]["attempts"] == 1, "a finished stage is not rerun"
    assert [s for s in STAGES if s in resumed["stages"]] == ["proxy", "baseline", "coarse"]
