"""The random-forest surrogate: where its expected-improvement search looks for candidates."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from speechtune.tuning.search._surrogate import ForestModel
from speechtune.tuning.space import parse_space, sample_near, sample_neighbour, sample_uniform

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


def test_a_neighbour_moves_exactly_one_param() -> None:
    rng = np.random.default_rng(3)
    centre = {"model.encoder": "conformer", "model.kernel": 0.5, "optim.lr": 0.5}
    moved = {"model.encoder": 0, "model.kernel": 0, "optim.lr": 0}
    for _ in range(300):
        params, config = sample_neighbour(SPACE, centre, rng)
        changed = [k for k in centre if k in params and params[k] != centre[k]]
        assert len(changed) == 1, params
        moved[changed[0]] += 1
        if changed == ["model.encoder"]:
            # The switch drops the conformer's kernel and draws the RNN's cell.
            assert set(params) == {"model.encoder", "model.cell", "optim.lr"}
            assert config["optim.lr"] == 0.5
    # Each of the three params is the moved one about a third of the time.
    assert all(60 <= n <= 140 for n in moved.values()), moved


def test_a_neighbour_round_trips_through_optuna() -> None:
    rng = np.random.default_rng(4)
    params, _ = sample_uniform(SPACE, rng)
    for _ in range(30):
        params, config = sample_neighbour(SPACE, params, rng)
        assert SPACE.sample(optuna.trial.FixedTrial(params)) == config


def test_a_neighbour_needs_a_scale_in_range() -> None:
    with pytest.raises(ValueError, match="sample_neighbour: scale"):
        sample_neighbour(SPACE, {"optim.lr": 0.5}, np.random.default_rng(0), scale=0.0)


def test_the_local_search_adds_candidates_that_score_higher() -> None:
    """The same first candidates (the same draws come first), then the climb's neighbours:
    the list grows and its best expected improvement can only rise."""

    def ranked(climb: bool) -> list:
        rng = np.random.default_rng(5)
        return _fitted().ranked_candidates(
            rng,
            lambda r: sample_uniform(SPACE, r),
            lambda centre, r, scale: sample_near(SPACE, centre, r, scale),
            (lambda centre, r: sample_neighbour(SPACE, centre, r)) if climb else None,
            n_random=40,
            n_local=40,
        )

    plain, climbed = ranked(False), ranked(True)
    assert len(plain) == 80 and len(climbed) > 80
    assert climbed[0][0] >= plain[0][0]
    plain_keys = {repr(sorted(p.items())) for _, p, _ in plain}
    assert plain_keys <= {repr(sorted(p.items())) for _, p, _ in climbed}


def _ranked_by_proposer(space: object) -> list:
    """The forest's ranked candidates after one model proposal on 20 observed configs."""
    from speechtune.tuning.search._jobs import _Config
    from speechtune.tuning.search._proposals import Proposer

    proposer = Proposer(space, "speechtune", use_priors=False)  # type: ignore[arg-type]
    rng = np.random.default_rng(8)
    configs = {}
    for i in range(20):
        params, config = sample_uniform(space, rng)  # type: ignore[arg-type]
        configs[i] = _Config(i, params, config, "random", values={0: float(rng.random())})
    proposer._forest(rng, configs, 0)
    assert proposer._ranked is not None
    return proposer._ranked[2]


def test_the_model_climbs_in_a_conditional_space_only() -> None:
    flat = parse_space(
        {
            "model.encoder": {"type": "categorical", "choices": ["conformer", "rnn"]},
            "optim.lr": {"type": "float", "low": 0.0, "high": 1.0},
        }
    )
    # 250 uniform draws + 250 local moves, one taken; the climb adds its neighbours.
    assert len(_ranked_by_proposer(flat)) == 499
    assert len(_ranked_by_proposer(SPACE)) > 499


def test_predictions_are_the_trees_own() -> None:
    """The forest's mean and spread come from every tree's prediction, exactly as scikit-learn's
    checked ``predict`` gives them (the model skips the per-tree input check for speed)."""
    model = _fitted()
    rng = np.random.default_rng(2)
    params = [sample_uniform(SPACE, rng)[0] for _ in range(30)]
    x = model.encoder.encode_many(params)
    per_tree = np.stack([tree.predict(x) for tree in model._forest.estimators_])
    mean, std = model.predict(params)
    np.testing.assert_array_equal(mean, per_tree.mean(axis=0))
    np.testing.assert_array_equal(std, per_tree.std(axis=0))
