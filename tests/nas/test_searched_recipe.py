"""The discrete space as an ordinary recipe: train, save, reload, export, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from speechtune.cli import main
from speechtune.config import ConfigError, config_from_dict
from speechtune.data import Manifest, PreparedData
from speechtune.inference import Recognizer, export_model, load_exported
from speechtune.models import SEARCH_OPS, build_model
from speechtune.training import train
from tests.helpers.recipes import run_options
from tests.nas.conftest import TINY_BASE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _searched(block_ops: str) -> dict:
    return {**TINY_BASE, "model": {**TINY_BASE["model"], "encoder": "searched",
                                   "num_layers": len(block_ops.split(",")), "block_ops": block_ops}}  # fmt: skip


def test_every_op_builds_keeps_the_shape_and_ignores_padding() -> None:
    from speechtune.config import BLOCK_OPS

    assert tuple(SEARCH_OPS) == BLOCK_OPS  # the config validates the names the model builds
    ops = ",".join(SEARCH_OPS)
    cfg = config_from_dict(_searched(ops))
    torch.manual_seed(0)
    model = build_model(cfg.model, 40, 12).eval()
    x = torch.randn(2, 80, 40)
    enc, lens = model.encode(x, torch.tensor([80, 48]))
    assert enc.shape[0] == 2 and enc.shape[2] == 16 and lens[1] < lens[0] == enc.shape[1]
    assert enc[1, lens[1] :].abs().sum() == 0  # padded frames zeroed
    # The short utterance alone encodes as it does padded in the batch.
    alone, alone_lens = model.encode(x[1:, :48], torch.tensor([48]))
    assert alone_lens.tolist() == [int(lens[1])]
    assert torch.allclose(alone[0], enc[1, : lens[1]], atol=1e-5)


def test_searched_recipe_trains_saves_reloads_and_exports(
    tmp_path: Path, nas_data: PreparedData
) -> None:
    cfg = config_from_dict(_searched("dconv7,mhsa,ff_half,zero"))
    result = train(cfg, run_options(tmp_path), data=nas_data)
    assert result.status == "complete"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    rec = Recognizer.load(tmp_path / "run" / "model.pt")
    assert rec.cfg.model.block_ops == "dconv7,mhsa,ff_half,zero"
    assert sum(p.numel() for p in rec.model.parameters()) == metrics["num_parameters"]
    target = export_model(tmp_path / "run" / "model.pt", tmp_path / "export")  # verified
    assert load_exported(target).transcribe([torch.randn(16000).numpy() * 0.1])


@pytest.mark.parametrize(
    ("block_ops", "layers", "expected"),
    [
        ("mhsa,conv5", 2, "unknown op 'conv5'; ops: conv3, conv7"),
        ("mhsa,,ff", 3, "must list one op per block"),
        ("mhsa,ff", 3, "has 2 op(s) but model.num_layers=3"),
    ],
)
def test_bad_block_ops_is_one_line_naming_the_key(
    tmp_path: Path, capsys, block_ops: str, layers: int, expected: str
) -> None:
    with pytest.raises(ConfigError):
        config_from_dict(
            {"model": {"encoder": "searched", "num_layers": layers, "block_ops": block_ops}}
        )
    argv = ["train", "--set", "model.encoder=searched", f"model.num_layers={layers}",
            f"model.block_ops={block_ops}", "--run-dir", str(tmp_path / "x")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: model.block_ops:")
    assert expected in err


def test_train_cli_trains_a_derived_yaml(tmp_path: Path, synth_corpus: Manifest, capsys) -> None:
    manifest = tmp_path / "train.jsonl"
    synth_corpus[:60].to_jsonl(manifest)
    recipe = _searched("conv7,mhsa")
    recipe["data"] = {"corpus": "manifest", "manifest": str(manifest), "dev_fraction": 0.25}
    recipe["train"] = {**recipe["train"], "epochs": 1}
    (tmp_path / "derived.yaml").write_text(yaml.safe_dump(recipe))
    argv = ["train", "--config", str(tmp_path / "derived.yaml"), "--run-dir", str(tmp_path / "run"),
            "--device", "cpu", "--threads", "1", "--cache-dir", str(tmp_path / "cache"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert "status: complete" in capsys.readouterr().out
    assert (tmp_path / "run" / "model.pt").is_file()
