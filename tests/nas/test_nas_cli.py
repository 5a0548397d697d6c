"""``speechtune nas`` end to end, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from speechtune.cli import main
from speechtune.config import load_config
from speechtune.data import Manifest
from tests.nas.conftest import TINY_BASE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_nas_cli_searches_derives_and_retrains(
    tmp_path: Path, synth_corpus: Manifest, capsys
) -> None:
    manifest = tmp_path / "train.jsonl"
    synth_corpus[:60].to_jsonl(manifest)
    recipe = {
        **TINY_BASE,
        "data": {"corpus": "manifest", "manifest": str(manifest), "dev_fraction": 0.25},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(recipe))
    nas = {
        "recipe": "base.yaml",
        "overrides": {"train.epochs": 3},
        "method": "darts",
        "search": {"num_blocks": 2, "ops": ["conv7", "mhsa", "ff", "skip"], "epochs": 2},
        "darts": {"warmup_epochs": 1, "guard": {"max_parameter_free": 2}},
        "retrain": {"seeds": [1]},
    }
    (tmp_path / "nas.yaml").write_text(yaml.safe_dump(nas))
    run_dir = tmp_path / "run"
    argv = ["nas", "--config", str(tmp_path / "nas.yaml"), "--run-dir", str(run_dir), "--retrain",
            "--set", "overrides.train.epochs=1", "--device", "cpu", "--threads", "1",
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "derived block_ops:" in out and "retrained over 1 seed(s)" in out
    derived = load_config(run_dir / "derived.yaml")
    assert derived.model.encoder == "searched" and derived.train.epochs == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["retrain"]["runs"][0]["status"] == "complete"
    assert (run_dir / "retrain" / "seed1" / "model.pt").is_file()
    assert (run_dir / "op_weights.png").is_file()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("method: enas\n", "method: must be one of: darts, weight_sharing (got 'enas')"),
        ("search: {epoch: 3}\n", "search.epoch: unknown key; valid keys here: num_blocks, ops"),
        ("search: {ops: [conv3, conv5]}\n", "search.ops: unknown op 'conv5'; allowed ops:"),
        ("search: {ops: [skip, zero]}\n", "search.ops: needs at least one op with weights"),
        ("search: {num_blocks: 0}\n", "search.num_blocks: must be >= 1 (got 0)"),
        ("recipe: missing.yaml\n", "recipe: must name a recipe YAML file (got 'missing.yaml')"),
        ("recipe: {model: {d_model: 30}}\n", "recipe: model.d_model: must be divisible by"),
        ("darts: {guard: {stable: 2}}\n", "darts.guard.stable: unknown key"),
    ],
)
def test_bad_nas_config_is_one_line_naming_the_key(
    tmp_path: Path, capsys, text: str, expected: str
) -> None:
    (tmp_path / "nas.yaml").write_text(text)
    assert (
        main(["nas", "--config", str(tmp_path / "nas.yaml"), "--run-dir", str(tmp_path / "r")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "r").exists()  # refused before any work
