"""DARTS and weight-sharing search on a tiny corpus: they train, record, derive and rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from speechtune.config import load_config
from speechtune.data import PreparedData
from speechtune.nas import (
    CollapseGuard,
    derive_architecture,
    nas_config_from_dict,
    run_nas,
    sample_architectures,
    spearman,
)
from speechtune.nas._data import load_search_data
from speechtune.nas._train import train_darts
from tests.helpers.recipes import run_options
from tests.nas.conftest import nas_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_darts_trains_alpha_records_op_weights_and_derives_a_recipe(
    tmp_path: Path, nas_data: PreparedData
) -> None:
    cfg = nas_config_from_dict(nas_dict("darts", darts={"warmup_epochs": 0, "arch_lr": 0.05}))
    result = run_nas(cfg, tmp_path / "nas", run_options(tmp_path), data=nas_data)

    record = json.loads((tmp_path / "nas" / "op_weights.json").read_text())
    assert record["ops"] == ["conv3", "mhsa", "ff", "skip", "zero"]
    assert [e["epoch"] for e in record["epochs"]] == [0, 1, 2]
    first, last = (torch.tensor(record["epochs"][i]["weights"]) for i in (0, -1))
    assert torch.allclose(first, torch.full_like(first, 0.2))  # uniform at the start
    assert (last - first).abs().max() > 1e-3  # alpha moved on the dev batches
    assert torch.allclose(last.sum(-1), torch.ones(2))
    assert (tmp_path / "nas" / "op_weights.png").stat().st_size > 1000

    derived = load_config(tmp_path / "nas" / "derived.yaml")
    assert derived.model.encoder == "searched"
    assert derived.model.block_ops.split(",") == result.arch
    assert derived.model.num_layers == 2 and derived.model.d_model == 16
    summary = json.loads((tmp_path / "nas" / "summary.json").read_text())
    assert summary["block_ops"] == derived.model.block_ops
    assert summary["stop_reason"] == "completed 2 epochs"
    assert summary["search_cpu_seconds"] > 0


def test_darts_is_reproducible(tmp_path: Path, nas_data: PreparedData) -> None:
    cfg = nas_config_from_dict(nas_dict("darts", search={"epochs": 1}, darts={"warmup_epochs": 0}))
    data = load_search_data(
        cfg.recipe, tmp_path.parent / "shared_cache", torch.device("cpu"), nas_data
    )
    a, b = train_darts(cfg, data), train_darts(cfg, data)
    assert torch.equal(a.supernet.alpha, b.supernet.alpha)


def test_weight_sharing_ranks_samples_and_measures_spearman(
    tmp_path: Path, nas_data: PreparedData
) -> None:
    cfg = nas_config_from_dict(
        nas_dict(
            "weight_sharing",
            search={"epochs": 1},
            weight_sharing={"num_samples": 5, "top_k": 2, "correlation_samples": 2},
            retrain={"epochs": 1},
        )
    )
    result = run_nas(cfg, tmp_path / "ws", run_options(tmp_path), data=nas_data)
    candidates = json.loads((tmp_path / "ws" / "candidates.json").read_text())
    assert len(candidates) == 5
    assert [c["shared_rank"] for c in candidates] == [1, 2, 3, 4, 5]
    losses = [c["shared"]["dev_loss"] for c in candidates]
    assert losses == sorted(losses)
    trained = [c for c in candidates if "standalone" in c]
    assert len(trained) == 4 and [c["shared_rank"] for c in trained[:2]] == [1, 2]
    assert all(c["standalone"]["status"] == "complete" for c in trained)
    summary = result.summary
    assert summary["spearman_all_trained"]["n"] == 4
    assert summary["spearman_random_sample"]["n"] == 2
    assert summary["spearman_random_sample"]["rho"] is None  # two points say nothing
    # The better of the top two by stand-alone dev loss is derived.
    best = min(trained[:2], key=lambda c: c["standalone"]["dev_loss"])
    assert result.arch == best["arch"]
    assert load_config(tmp_path / "ws" / "derived.yaml").model.block_ops == ",".join(result.arch)


def test_guard_stops_a_constructed_collapse_and_keeps_the_last_healthy_architecture() -> None:
    guard = CollapseGuard(max_parameter_free=2)
    assert not guard.update(["conv3", "mhsa", "ff"]).stop
    assert not guard.update(["skip", "mhsa", "ff"]).stop
    decision = guard.update(["skip", "zero", "ff"])
    assert decision.stop and decision.collapsed and "2 of 3" in decision.reason
    assert guard.last_healthy == ["skip", "mhsa", "ff"]

    stable = CollapseGuard(stable_epochs=2)
    assert not stable.update(["conv3", "ff"]).stop
    assert not stable.update(["conv3", "ff"]).stop
    assert stable.update(["conv3", "ff"]).stop  # unchanged for 2 epochs


def test_darts_guard_stops_the_search(tmp_path: Path, nas_data: PreparedData) -> None:
    # Parameter-free ops against one conv at a high alpha lr: skip leads a block after the first
    # epoch (seeded: always the same), and a limit of one parameter-free block stops the search.
    cfg = nas_config_from_dict(
        nas_dict(
            "darts",
            search={"ops": ["skip", "zero", "conv3"], "epochs": 3},
            darts={"warmup_epochs": 0, "arch_lr": 0.5, "guard": {"max_parameter_free": 1}},
        )
    )
    data = load_search_data(
        cfg.recipe, tmp_path.parent / "shared_cache", torch.device("cpu"), nas_data
    )
    run = train_darts(cfg, data)
    assert run.stop_reason.startswith("guard after epoch 1: collapse: 1 of 2 blocks")
    assert len(run.op_weights.epochs) == 2  # epoch 0 (uniform) and epoch 1: then it stopped
    # Collapsed from the first searching epoch: the strongest op with weights is derived.
    assert run.arch == ["conv3", "conv3"]


def test_derivation_never_drops_every_block() -> None:
    ops = ["conv3", "skip", "zero"]
    weights = [[0.1, 0.2, 0.7], [0.3, 0.1, 0.6]]
    assert derive_architecture(weights, ops) == ["zero", "conv3"]
    assert derive_architecture([[0.5, 0.2, 0.3], [0.1, 0.1, 0.8]], ops) == ["conv3", "zero"]


def test_sampled_architectures_are_distinct_seeded_and_never_all_zero() -> None:
    archs = sample_architectures(["conv3", "zero"], 2, 10, seed=0)
    # conv3,zero and zero,conv3 are one network (a zero block is absent): only one is kept.
    assert len(archs) == 2 and ["conv3", "conv3"] in archs
    assert ["conv3", "zero"] in archs or ["zero", "conv3"] in archs
    assert archs == sample_architectures(["conv3", "zero"], 2, 10, seed=0)
    # Networks of 1 to 3 blocks over {conv3, ff}: 2 + 4 + 8.
    assert len(sample_architectures(["conv3", "ff", "zero"], 3, 100, seed=1)) == 2 + 4 + 8


def test_spearman_reports_uncertainty() -> None:
    res = spearman([1, 2, 3, 4, 5, 6], [1, 3, 2, 4, 6, 5])
    assert res["n"] == 6 and 0.8 < res["rho"] < 0.9
    lo, hi = res["ci90"]
    assert lo <= res["rho"] <= hi
