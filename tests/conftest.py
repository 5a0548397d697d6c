"""Shared fixtures: a small synthetic corpus generated once per test session."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from speechtune.config import RunOptions, config_from_dict
from speechtune.data import Manifest, PreparedData, split_dev, synthesize_corpus, validate_manifest

# Two cores in CI: more threads than cores only adds contention. SPEECHTUNE_TEST_THREADS=1 when
# another process already keeps a core busy (two spinning OpenMP threads then slow tiny models ~20x).
torch.set_num_threads(int(os.environ.get("SPEECHTUNE_TEST_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """A real espeak-ng corpus: 2 accents x 4 voices, 480 AN4-style utterances (~5 s to make)."""
    root = tmp_path_factory.mktemp("corpus")
    return synthesize_corpus(root, num_utterances=480, seed=7, accents=("en-us", "en-gb-scotland"), num_voices=4)


@pytest.fixture(scope="session")
def synth_data(synth_corpus: Manifest) -> PreparedData:
    manifest, report = validate_manifest(synth_corpus.with_split("train"))
    train, dev = split_dev(manifest, 0.25, seed=0)
    return PreparedData(train=train, dev=dev, report=report)


#: A recipe small enough to train in seconds on two CPU cores (the sections tiny_config changes).
TINY_RECIPE: dict = {
    "seed": 1,
    "features": {"n_mels": 40},
    "specaugment": {"enabled": False},
    "model": {"encoder": "lstm", "d_model": 64, "num_layers": 1, "dropout": 0.0, "subsampling": 4},
    "optim": {"name": "adamw", "lr": 0.003},
    "schedule": {"name": "constant", "warmup_steps": 10},
    "train": {"epochs": 2, "batch_size": 16, "flatline_patience": 0},
}


def tiny_config(**sections: dict) -> object:
    """A recipe small enough to train in seconds on two CPU cores."""
    base = copy.deepcopy(TINY_RECIPE)
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return config_from_dict(base)


def learning_config() -> object:
    """A recipe that learns the synthetic corpus (dev CER ~0.23 after 20 epochs, ~1 min on 2 cores)."""
    return tiny_config(
        model={"encoder": "conformer", "d_model": 96, "num_layers": 2, "num_heads": 4, "ff_dim": 256, "dropout": 0.1},
        specaugment={"enabled": True, "time_mask_width": 10, "freq_mask_width": 8},
        schedule={"name": "warmup_cosine", "warmup_steps": 50},
        optim={"lr": 0.004},
        train={"epochs": 20, "batch_size": 8},
    )


@pytest.fixture(scope="session")
def trained(synth_data: PreparedData, tmp_path_factory: pytest.TempPathFactory):  # -> TrainResult
    """A model that has learned the synthetic corpus; shared by the training and gating tests."""
    from speechtune.training import train

    tmp = tmp_path_factory.mktemp("e2e")
    return train(learning_config(), run_options(tmp, "learn"), data=synth_data)


def run_options(tmp_path: Path, name: str = "run", **kw) -> RunOptions:
    return RunOptions(
        output_dir=str(tmp_path / name),
        device="cpu",
        cache_dir=str(tmp_path.parent / "shared_cache"),
        progress=False,
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# services for the worker and fault-injection tests
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg():  # -> Iterator[tests.pg_server.PgServer]
    """A private PostgreSQL cluster for one test module (skips, or fails in CI, without one)."""
    from tests.pg_server import pg_or_skip

    server = pg_or_skip()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def procs(tmp_path: Path):  # -> Iterator[tests.worker_helpers.Procs]
    """Processes a test starts; every one (its whole process group) is killed at the end."""
    from tests.worker_helpers import Procs

    running = Procs(tmp_path)
    try:
        yield running
    finally:
        running.close()
