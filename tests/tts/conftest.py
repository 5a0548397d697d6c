"""A tiny TTS set-up: 10 espeak-ng utterances (2 voices, one accent), tiny model dims."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from speechtune.tts import TTSConfig, load_tts_config

#: Overrides that make the recipe tiny: 10 utterances (2 held out), small dims, 2 epochs.
TINY = [
    "data.synthetic.num_utterances=10",
    "data.synthetic.num_voices=2",
    "data.synthetic.accents=[en-us]",
    "data.num_eval=2",
    "model.d_model=32",
    "model.ff_dim=64",
    "model.encoder_layers=1",
    "model.decoder_layers=1",
    "model.duration_channels=16",
    "aligner.channels=16",
    "train.epochs=2",
    "train.batch_size=8",
    "vocoder.griffin_lim.n_iter=4",
    "vocoder.neural.channels=16",
    "vocoder.neural.num_blocks=1",
    "vocoder.neural.steps=5",
]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tts_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus cache holding the tiny corpus (generated once per session, ~1 s)."""
    from speechtune.tts import prepare_tts_data

    cache = tmp_path_factory.mktemp("tts_cache")
    prepare_tts_data(tiny_config(), cache)
    return cache


def tiny_config(*extra: str) -> TTSConfig:
    """The tiny recipe, with more dotted overrides."""
    return load_tts_config(None, [*TINY, *extra])
