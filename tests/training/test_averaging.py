"""Checkpoint averaging: the N best epochs' weights, kept on disk, averaged into the final model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from speechtune.data import PreparedData
from speechtune.inference import Recognizer
from speechtune.training import CallbackReporter, train
from speechtune.training._averaging import BestEpochs, average_state_dicts
from speechtune.training._checkpoint import load_checkpoint
from tests.helpers.recipes import run_options, tiny_config


def test_floats_are_averaged_and_counters_come_from_the_last_state() -> None:
    states = [
        {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)},
        {"w": torch.tensor([3.0, 4.0]), "n": torch.tensor(5)},
        {"w": torch.tensor([5.0, 9.0]), "n": torch.tensor(7)},
    ]
    avg = average_state_dicts(states)
    assert torch.equal(avg["w"], torch.tensor([3.0, 5.0]))
    assert avg["w"].dtype == torch.float32
    assert int(avg["n"]) == 7
    with pytest.raises(ValueError, match="different parameters"):
        average_state_dicts([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])
    with pytest.raises(ValueError, match="'w' differs in shape"):
        average_state_dicts([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])


def test_only_the_n_best_epochs_stay_on_disk(tmp_path: Path) -> None:
    keeper = BestEpochs(tmp_path / "best", 2)
    for epoch, wer, loss in [(1, 0.9, 3.0), (2, 0.5, 2.0), (3, 0.7, 1.5), (4, 0.5, 1.0)]:
        keeper.update(epoch, wer, loss, {"w": torch.full((2,), float(epoch))})
    # WER ties are broken by dev loss: epoch 4 (0.5, 1.0) before epoch 2 (0.5, 2.0).
    assert keeper.epochs == [4, 2]
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["epoch2.pt", "epoch4.pt"]
    assert torch.equal(keeper.averaged()["w"], torch.full((2,), 3.0))
    assert not keeper.update(5, 0.8, 0.1, {"w": torch.zeros(2)})  # worse than both: not kept
    # A resumed run rebuilds the ranking from its saved state.
    again = BestEpochs(tmp_path / "best", 2, keeper.state())
    assert again.epochs == [4, 2]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return Recognizer.load(path, torch.device("cpu")).model.state_dict()


def test_the_final_model_is_the_average_when_it_is_no_worse_on_dev(
    synth_data: PreparedData, tmp_path: Path
) -> None:
    cfg = tiny_config(train={"epochs": 4, "average_best": 3})
    result = train(cfg, run_options(tmp_path, "avg"), data=synth_data)
    assert result.status == "complete"
    out = Path(result.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    kept = sorted(int(p.stem.removeprefix("epoch")) for p in (out / "best").glob("epoch*.pt"))
    assert len(kept) == 3
    final = _weights(out / "model.pt")
    if metrics["averaged_epochs"]:
        assert metrics["averaged_epochs"] == kept
        expected = average_state_dicts(
            [load_checkpoint(out / "best" / f"epoch{e}.pt") for e in kept]
        )
        best_single = min(row["wer"] for row in result.history)
        assert metrics["wer"] <= best_single + 1e-9
    else:
        expected = load_checkpoint(out / "best" / f"epoch{metrics['best_epoch']}.pt")
    for name, tensor in expected.items():
        assert torch.allclose(final[name], tensor, atol=1e-6), name


def test_averaging_survives_a_resume(synth_data: PreparedData, tmp_path: Path) -> None:
    cfg = tiny_config(train={"epochs": 4, "average_best": 2})
    straight = train(cfg, run_options(tmp_path, "straight"), data=synth_data)
    stop_after_2 = CallbackReporter(lambda epoch, m: epoch == 2)
    train(cfg, run_options(tmp_path, "part"), stop_after_2, data=synth_data)
    resumed = train(cfg, run_options(tmp_path, "part", resume=True), data=synth_data)
    assert resumed.metrics["averaged_epochs"] == straight.metrics["averaged_epochs"]
    assert resumed.metrics["wer"] == pytest.approx(straight.metrics["wer"])
    final_a = _weights(Path(straight.output_dir) / "model.pt")
    final_b = _weights(Path(resumed.output_dir) / "model.pt")
    for name, tensor in final_a.items():
        assert torch.allclose(final_b[name], tensor, atol=1e-6), name


def test_without_averaging_no_weights_are_kept(synth_data: PreparedData, tmp_path: Path) -> None:
    result = train(tiny_config(train={"epochs": 2}), run_options(tmp_path), data=synth_data)
    assert result.metrics["averaged_epochs"] == []
    assert not (Path(result.output_dir) / "best").exists()
