"""The random-forest surrogate: where its expected-improvement search looks for candidates."""

from __future__ import annotations

import numpy as np

from speechtune.tuning.search._surrogate import ForestModel
from speechtune.tuning.space import parse_space, sample_near, sample_uniform

# A conditional space like a speech recipe's: the encoder type gates its own width param.
SPACE = parse_space(
    {
        "model.encoder": {"type": "categorical", "choices": ["conformer", "rnn"]},
        "model.kernel": {
            "type": "float",
            "low": 0.0,
            "high": 1.0,
            "when": {"model.encoder": "conformer"},
        },
        "model.cell": {"type": "float", "low": 0.0, "high": 1.0, "when": {"model.encoder": "rnn"}},
        "optim.lr": {"type": "float", "low": 0.0, "high": 1.0},
    }
)


def _fitted(seed: int = 0) -> ForestModel:
    """Twelve conformers, all better than four RNNs; the best RNN has cell 0.9."""
    rng = np.random.default_rng(seed)
    params: list[dict] = []
    values: list[float] = []
    for i in range(12):
        params.append({"model.encoder": "conformer", "model.kernel": i / 12, "optim.lr": 0.5})
        values.append(0.1 + 0.01 * i)
    for cell, value in ((0.9, 0.5), (0.2, 0.7), (0.4, 0.8), (0.6, 0.9)):
        params.append(
            {"model.encoder": "rnn", "model.cell": cell, "optim.lr": float(rng.random())}
        )
        values.append(value)
    model = ForestModel(SPACE, seed)
    model.fit(params, values)
    return model


def test_the_best_config_of_each_choice_is_a_local_search_centre() -> None:
    model = _fitted()
    bests = model.choice_bests()
    # The best conformer (index 0) and the best RNN (index 12, value 0.5), best first.
    assert bests == [0, 12]


def test_local_moves_refine_the_best_of_a_losing_branch_too() -> None:
    """Without the per-choice centres every local move circles the eight best configs, all
    conformers; with them the best RNN's neighbourhood (cell near 0.9) is searched as well."""
    model = _fitted()
    rng = np.random.default_rng(1)
    ranked = model.ranked_candidates(
        rng,
        lambda r: sample_uniform(SPACE, r),
        lambda centre, r, scale: sample_near(SPACE, centre, r, scale),
        n_random=0,
        n_local=90,
    )
    assert len(ranked) == 90
    near_best_rnn = [
        p for _, p, _ in ranked if p["model.encoder"] == "rnn" and abs(p["model.cell"] - 0.9) < 0.1
    ]
    # 90 moves over 9 centres: about 10 start from the best RNN (a few of them switch encoder).
    assert len(near_best_rnn) >= 5
