"""Shared fixtures: a small synthetic corpus generated once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from speechtune.data import (
    Manifest,
    PreparedData,
    split_dev,
    synthesize_corpus,
    validate_manifest,
)
from tests.helpers.recipes import learning_config, run_options

# Two cores in CI: more threads than cores only adds contention. SPEECHTUNE_TEST_THREADS=1 when
# another process already keeps a core busy (two spinning OpenMP threads then slow tiny models ~20x).
torch.set_num_threads(int(os.environ.get("SPEECHTUNE_TEST_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a test (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    float results that do not depend on the thread count, and no contention with a busy core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """A real espeak-ng corpus: 2 accents x 4 voices, 480 AN4-style utterances (~5 s to make)."""
    root = tmp_path_factory.mktemp("corpus")
    return synthesize_corpus(
        root, num_utterances=480, seed=7, accents=("en-us", "en-gb-scotland"), num_voices=4
    )


@pytest.fixture(scope="session")
def synth_data(synth_corpus: Manifest) -> PreparedData:
    manifest, report = validate_manifest(synth_corpus.with_split("train"))
    train, dev = split_dev(manifest, 0.25, seed=0)
    return PreparedData(train=train, dev=dev, report=report)


@pytest.fixture(scope="session")
def trained(synth_data: PreparedData, tmp_path_factory: pytest.TempPathFactory):  # -> TrainResult
    """A model that has learned the synthetic corpus; shared by the training and gating tests."""
    from speechtune.training import train

    tmp = tmp_path_factory.mktemp("e2e")
    return train(learning_config(), run_options(tmp, "learn"), data=synth_data)


# ---------------------------------------------------------------------------------------------
# services for the worker and fault-injection tests
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg():  # -> Iterator[tests.helpers.pg_server.PgServer]
    """A private PostgreSQL cluster for one test module (skips, or fails in CI, without one)."""
    from tests.helpers.pg_server import pg_or_skip

    server = pg_or_skip()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def procs(tmp_path: Path):  # -> Iterator[tests.helpers.workers.Procs]
    """Processes a test starts; every one (its whole process group) is killed at the end."""
    from tests.helpers.workers import Procs

    running = Procs(tmp_path)
    try:
        yield running
    finally:
        running.close()
