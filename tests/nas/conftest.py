"""Tiny search problems: a slice of the session's synthetic corpus and a small base recipe."""

from __future__ import annotations

from typing import Any

import pytest

from speechtune.data import PreparedData

#: The base recipe of every NAS test: 16-wide blocks, 2 epochs, no SpecAugment.
TINY_BASE: dict[str, Any] = {
    "seed": 3,
    "features": {"n_mels": 40},
    "specaugment": {"enabled": False},
    "model": {"d_model": 16, "num_heads": 2, "ff_dim": 32, "dropout": 0.0, "subsampling": 4},
    "optim": {"name": "adamw", "lr": 0.004},
    "schedule": {"name": "constant", "warmup_steps": 5},
    "train": {"epochs": 2, "batch_size": 16, "flatline_patience": 0},
}


@pytest.fixture(scope="session")
def nas_data(synth_data: PreparedData) -> PreparedData:
    """64 training and 24 dev utterances of the session corpus (speaker-disjoint as before)."""
    return PreparedData(
        train=synth_data.train[:64], dev=synth_data.dev[:24], report=synth_data.report
    )


def nas_dict(method: str = "darts", **sections: dict[str, Any]) -> dict[str, Any]:
    """A NAS config mapping over :data:`TINY_BASE` (an inline recipe)."""
    data: dict[str, Any] = {
        "recipe": TINY_BASE,
        "method": method,
        "search": {"num_blocks": 2, "ops": ["conv3", "mhsa", "ff", "skip", "zero"], "epochs": 2},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data
