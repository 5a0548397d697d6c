"""benchmarks/record_an4_curves.py: the grid, the seeded draw, and a real recording end to end.

The end-to-end tests train a tiny LSTM-CTC on a slice of the session's synthetic corpus (a real
manifest file, the recipe's real training loop), then check the file format, resumption, the
refusal of a file recorded with other settings, a torn last line and the time limit.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import yaml

from speechtune.data import Manifest
from tests.helpers.paths import REPO
from tests.helpers.scripts import load_script

_SCRIPT = REPO / "benchmarks" / "record_an4_curves.py"
_SPACE = _SCRIPT.with_name("an4_curves_space.yaml")


rec = load_script(_SCRIPT, "record_an4_curves")

# A tiny recipe: one 32-unit LSTM layer on a fifth of the training split trains an epoch in < 1 s.
_TINY_RECIPE = {
    "seed": 1,
    # --data replaces the manifest path (a missing file here: the recorder must not read it).
    "data": {
        "corpus": "manifest",
        "manifest": "/nonexistent/placeholder.jsonl",
        "dev_fraction": 0.15,
        "split_seed": 0,
        "proxy_fraction": 0.2,
    },
    "features": {"n_mels": 40},
    "specaugment": {"enabled": False},
    "model": {
        "encoder": "lstm",
        "d_model": 32,
        "num_layers": 1,
        "dropout": 0.0,
        "subsampling": 4,
        "head": "ctc",
    },
    "optim": {"name": "adamw", "lr": 0.003},
    "schedule": {"name": "constant", "warmup_steps": 5},
    "train": {"epochs": 1, "batch_size": 16},
}


def _write_space(folder: Path, space: dict, overrides: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny_recipe.yaml").write_text(yaml.safe_dump(_TINY_RECIPE))
    path = folder / "space.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "recipe": "tiny_recipe.yaml",
                "overrides": overrides or {"train.flatline_patience": 0},
                "space": space,
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def corpus_manifest(synth_corpus: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("curves") / "corpus.jsonl"
    synth_corpus.to_jsonl(path)
    return path


@pytest.fixture(scope="module")
def tiny_space(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 2 x 2 = 4 configs; the lr spans a factor of 10 so the curves differ.
    return _write_space(
        tmp_path_factory.mktemp("space"), {"optim.lr": [0.001, 0.01], "model.d_model": [32, 48]}
    )


def _argv(
    space: Path, manifest: Path, out: Path, cache: Path, n: int, epochs: int = 2, *extra: str
) -> list[str]:
    return [
        "--space",
        str(space),
        "--data",
        str(manifest),
        "--out",
        str(out),
        "--n-configs",
        str(n),
        "--epochs",
        str(epochs),
        "--seed",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--cache-dir",
        str(cache),
        *extra,
    ]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# grid and draw (no training)
# ---------------------------------------------------------------------------------------------
def test_shipped_space_is_a_grid_of_a_few_hundred_complete_recipes() -> None:
    grid = rec.load_grid(_SPACE)
    assert grid.size == math.prod(len(c) for c in grid.choices) >= 300
    assert len(grid.space_dict()["optim.lr"]) >= 5
    # Every corner of the grid is a recipe the schema accepts (config_from_dict raises otherwise).
    for config_id in (0, grid.size // 3, grid.size - 1):
        cfg = grid.recipe_config(config_id, epochs=7, data_location="/somewhere/an4")
        assert (
            cfg.train.epochs == 7
            and cfg.data.root == "/somewhere/an4"
            and cfg.data.corpus == "an4"
        )
        assert cfg.optim.lr == grid.params(config_id)["optim.lr"]


def test_config_ids_enumerate_the_product_exactly_once() -> None:
    grid = rec.load_grid(_SPACE)
    seen = {tuple(grid.params(i).values()) for i in range(grid.size)}
    assert seen == set(itertools.product(*grid.choices))
    with pytest.raises(ValueError, match="config_id"):
        grid.params(grid.size)


def test_draw_is_seeded_distinct_and_extends_as_a_prefix() -> None:
    first = rec.draw_config_ids(576, 40, seed=0)
    assert len(set(first)) == 40 and all(0 <= i < 576 for i in first)
    assert rec.draw_config_ids(576, 40, seed=0) == first
    assert rec.draw_config_ids(576, 60, seed=0)[:40] == first
    assert rec.draw_config_ids(576, 40, seed=1) != first
    assert sorted(rec.draw_config_ids(10, 99, seed=0)) == list(range(10))


def test_non_grid_spaces_are_refused_naming_the_key(tmp_path: Path) -> None:
    path = _write_space(
        tmp_path,
        {
            "optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
            "data.dev_fraction": [0.1, 0.2],
        },
    )
    with pytest.raises(ValueError) as err:
        rec.load_grid(path)
    assert "space.optim.lr: expected a list of choices" in str(err.value)
    assert "space.data.dev_fraction: data keys cannot be searched" in str(err.value)


# ---------------------------------------------------------------------------------------------
# recording end to end
# ---------------------------------------------------------------------------------------------
def test_record_format_resume_and_refusals(
    tiny_space: Path, corpus_manifest: Path, tmp_path: Path
) -> None:
    out, cache = tmp_path / "curves.jsonl", tmp_path / "cache"
    assert rec.main(_argv(tiny_space, corpus_manifest, out, cache, n=2)) == 0

    lines = _lines(out)
    assert len(lines) == 3
    meta = lines[0]["meta"]
    assert (
        meta["corpus"] == "manifest"
        and meta["metric"] == "wer"
        and meta["epochs"] == 2
        and meta["threads"] == 1
    )
    assert meta["device"].startswith("cpu") and isinstance(meta["torch"], str) and meta["recorded"]
    assert meta["space"] == {"optim.lr": [0.001, 0.01], "model.d_model": [32, 48]}
    assert meta["base_overrides"] == {"train.flatline_patience": 0}
    assert "data.manifest" not in meta["base_recipe"]  # a location, not a hyperparameter

    grid = rec.load_grid(tiny_space)
    drawn = rec.draw_config_ids(grid.size, 2, seed=0)
    data = rec.prepare(grid, str(corpus_manifest), 2, "cpu", 1, str(cache))
    assert [r["config_id"] for r in lines[1:]] == drawn
    for r in lines[1:]:
        assert r["params"] == grid.params(r["config_id"])
        assert r["status"] == "complete"
        cfg = grid.recipe_config(r["config_id"], 2, str(corpus_manifest))
        assert r["num_params"] == rec.count_parameters(cfg, data) > 0
        assert [e["epoch"] for e in r["epochs"]] == [1, 2]
        for e in r["epochs"]:
            assert (
                0.0 <= e["cer"] and 0.0 <= e["wer"] and e["dev_loss"] > 0 and e["train_loss"] > 0
            )
            assert e["time_s"] >= e["train_s"] > 0  # time_s adds dev decoding to training
            assert e["cpu_s"] > 0
    # Different configs learn differently: the recording is not one curve copied.
    assert lines[1]["epochs"][-1]["dev_loss"] != lines[2]["epochs"][-1]["dev_loss"]

    # Resuming with the same settings trains nothing; asking for one more config appends exactly it.
    before = out.read_bytes()
    assert rec.main(_argv(tiny_space, corpus_manifest, out, cache, n=2)) == 0
    assert out.read_bytes() == before
    assert (
        rec.record(
            tiny_space,
            out,
            3,
            2,
            seed=0,
            device="cpu",
            threads=1,
            data_location=str(corpus_manifest),
            cache_dir=str(cache),
        )
        == 1
    )
    assert out.read_bytes().startswith(before)
    assert [r["config_id"] for r in _lines(out)[1:]] == rec.draw_config_ids(grid.size, 3, seed=0)

    # Other settings: refused, naming what differs, and the file is left as it was.
    grown = out.read_bytes()
    assert rec.main(_argv(tiny_space, corpus_manifest, out, cache, n=3, epochs=1)) == 2
    with pytest.raises(rec.RecordingMismatch, match=r"epochs: 2 != 1"):
        rec.record(
            tiny_space,
            out,
            3,
            1,
            seed=0,
            device="cpu",
            threads=1,
            data_location=str(corpus_manifest),
            cache_dir=str(cache),
        )
    with pytest.raises(rec.RecordingMismatch, match=r"seed: 0 != 5"):
        rec.record(
            tiny_space,
            out,
            3,
            2,
            seed=5,
            device="cpu",
            threads=1,
            data_location=str(corpus_manifest),
            cache_dir=str(cache),
        )
    assert out.read_bytes() == grown

    # A run killed mid-write leaves an unterminated line: it is dropped, the rest is kept.
    with out.open("a") as fh:
        fh.write('{"config_id": 3, "params": {"optim.l')
    assert rec.main(_argv(tiny_space, corpus_manifest, out, cache, n=3)) == 0
    assert out.read_bytes() == grown


def test_time_limit_leaves_a_valid_file_with_the_meta_only(
    tiny_space: Path, corpus_manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "limited.jsonl"
    assert (
        rec.main(
            _argv(
                tiny_space, corpus_manifest, out, tmp_path / "cache", 4, 2, "--time-limit-s", "0"
            )
        )
        == 0
    )
    lines = _lines(out)
    assert len(lines) == 1 and lines[0]["meta"]["epochs"] == 2
    meta, records = rec.read_recording(out)
    assert meta == lines[0]["meta"] and records == {}


def test_a_second_recorder_on_the_same_file_is_refused(
    tiny_space: Path, corpus_manifest: Path, tmp_path: Path
) -> None:
    import fcntl

    out = tmp_path / "locked.jsonl"
    with out.open("a") as holder:
        fcntl.flock(
            holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB
        )  # stands in for a running recorder
        assert rec.main(_argv(tiny_space, corpus_manifest, out, tmp_path / "cache", 1)) == 2
        with pytest.raises(rec.RecordingLocked, match="another recorder"):
            rec.record(
                tiny_space,
                out,
                1,
                2,
                device="cpu",
                data_location=str(corpus_manifest),
                cache_dir=str(tmp_path / "cache"),
            )
    assert out.read_text() == ""


def test_a_diverging_config_is_recorded_with_its_status(
    corpus_manifest: Path, tmp_path: Path
) -> None:
    # SGD at lr 1e5 without clipping: the gradient norm is NaN within the first epoch. (Two
    # choices, one recorded: a one-point space is refused as nothing to search.)
    space = _write_space(
        tmp_path / "space",
        {"optim.lr": [1.0e5, 2.0e5]},
        {"train.flatline_patience": 0, "train.grad_clip": None, "optim.name": "sgd"},
    )
    out = tmp_path / "div.jsonl"
    assert rec.main(_argv(space, corpus_manifest, out, tmp_path / "cache", 1, 3)) == 0
    (record,) = _lines(out)[1:]
    assert record["status"] == "diverged" and "diverged" in record["reason"]
    assert len(record["epochs"]) < 3
    assert record["num_params"] > 0  # counted even though no checkpoint was ever written


def test_meta_comparison_tolerates_recipe_keys_added_at_their_default() -> None:
    meta = {
        "epochs": 10,
        "recorded": "2026-01-01",
        "base_recipe": {"optim.lr": 0.002, "train.grad_clip": 5.0},
    }
    later = {
        **meta,
        "recorded": "2026-02-01",
        "base_recipe": {**meta["base_recipe"], "train.schedule_epochs": None},
    }
    assert rec.meta_differences(meta, later) == []
    changed = {**meta, "base_recipe": {**meta["base_recipe"], "train.schedule_epochs": 20}}
    assert rec.meta_differences(meta, changed) == ["base_recipe.train.schedule_epochs: None != 20"]
    assert rec.meta_differences(meta, {**meta, "epochs": 12}) == ["epochs: 10 != 12"]


def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path: Path) -> None:
    out = tmp_path / "bad.jsonl"
    out.write_text('{"meta": {"epochs": 2}}\nnot json\n{"config_id": 1, "epochs": []}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON line"):
        rec.read_recording(out)
    out.write_text('{"config_id": 1}\n')
    with pytest.raises(ValueError, match=r":1: expected the meta record"):
        rec.read_recording(out)


def test_shards_split_the_draw_and_merge_in_draw_order(
    tiny_space: Path, corpus_manifest: Path, tmp_path: Path
) -> None:
    ids = list(range(10))
    shards = [rec.shard_of(ids, (i, 3)) for i in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    with pytest.raises(ValueError, match="--shard must be I/N"):
        rec.shard_of(ids, (3, 3))

    cache = tmp_path / "cache"
    parts = [tmp_path / f"part{i}.jsonl" for i in range(2)]
    for i, part in enumerate(parts):
        argv = _argv(tiny_space, corpus_manifest, part, cache, 3, 1, "--shard", f"{i}/2")
        assert rec.main(argv) == 0
    drawn = rec.draw_config_ids(4, 3, 0)
    assert [r["config_id"] for r in _lines(parts[0])[1:]] == drawn[0::2]
    assert [r["config_id"] for r in _lines(parts[1])[1:]] == drawn[1::2]

    merged = tmp_path / "merged.jsonl"
    merge = ["--space", str(tiny_space), "--out", str(merged), "--merge", *map(str, parts)]
    assert rec.main(merge) == 0
    lines = _lines(merged)
    assert lines[0]["meta"]["shards"] == 2
    assert [r["config_id"] for r in lines[1:]] == drawn  # the draw's order, every config once
    assert rec.main(merge) == 2  # never appends to an existing file

    other = tmp_path / "other.jsonl"
    assert rec.main(_argv(tiny_space, corpus_manifest, other, cache, 1, 2)) == 0  # 2 epochs
    mixed = ["--space", str(tiny_space), "--out", str(tmp_path / "m2.jsonl")]
    assert rec.main([*mixed, "--merge", str(parts[0]), str(other)]) == 2
    assert not (tmp_path / "m2.jsonl").exists()
