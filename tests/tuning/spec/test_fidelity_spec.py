"""The ``fidelity:`` section of a tuning YAML, the recipe's default ladder and rung cost estimates
(no training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from speechtune.config import ConfigError, config_from_dict, config_to_dict, flatten
from speechtune.tuning.search import (
    Fidelity,
    default_ladder,
    estimate_cost,
    estimate_train_utterances,
    schedule_horizon,
)
from speechtune.tuning.search._ladder import MIN_RUNG_UTTERANCES
from speechtune.tuning.spec import FidelitySpec, load_tuning, validate_tuning
from tests.helpers.paths import CONF

RECIPE = str(CONF / "synthetic.yaml")
#: A space with something to search, for specs about other sections (an empty one is refused).
SPACE = {"model.dropout": [0.0, 0.1]}


def _write(tmp_path: Path, data: dict[str, Any], name: str = "tuning.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _base(**flat: Any) -> dict[str, Any]:
    """A complete flat recipe: the defaults with ``flat`` (dotted keys, '__' for '.') over them."""
    base = flatten(config_to_dict(config_from_dict({})))
    base.update({k.replace("__", "."): v for k, v in flat.items()})
    return base


def _ladder(fid: Fidelity) -> list[tuple[str, dict[str, Any]]]:
    return [(r.name, dict(r.overrides)) for r in fid.rungs]


# ---------------------------------------------------------------------------------------------
# default ladder


def test_default_ladder_480_utterances_small_model() -> None:
    # The session corpus size with the shipped synthetic recipe's model (3 layers, 25 epochs):
    # a small corpus, so the cheap rungs train 30 % and 60 % of the epochs on all of the data.
    base = _base(model__num_layers=3, train__epochs=25)
    fid = default_ladder(base, 480, set(), eta=3)
    assert _ladder(fid) == [
        ("low", {"train.epochs": 8}),
        ("medium", {"train.epochs": 15}),
        ("high", {"train.epochs": 25}),
    ]
    assert fid.eta == 3 and fid.resume_key == "train.epochs"
    assert [r.cost for r in fid.rungs] == pytest.approx([8 / 25, 15 / 25, 1.0])
    # every rung differs only in epochs: a promoted config continues its checkpoint
    assert fid.continues(0, 1) and fid.continues(1, 2)
    assert fid.job_cost(1, 0) == pytest.approx(7 / 25)


def test_default_ladder_948_utterances_an4_sized() -> None:
    # AN4's 948 training utterances, its 6-layer 60-epoch recipe: epochs only (AN4's
    # learning curves rank configs well from 30 % of the epochs, a 30 % data share does not).
    base = _base(model__num_layers=6, model__d_model=144, train__epochs=60)
    fid = default_ladder(base, 948, set(), eta=3)
    assert _ladder(fid) == [
        ("low", {"train.epochs": 18}),
        ("medium", {"train.epochs": 36}),
        ("high", {"train.epochs": 60}),
    ]
    assert [r.cost for r in fid.rungs] == pytest.approx([0.3, 0.6, 1.0])


@pytest.mark.parametrize(("n_train", "small"), [(4999, True), (5000, False)])
def test_small_corpora_cut_epochs_and_larger_ones_data_and_layers(
    n_train: int, small: bool
) -> None:
    base = _base(model__num_layers=6, train__epochs=20)
    rungs = _ladder(default_ladder(base, n_train, set()))
    uses_data = any("data.proxy_fraction" in o for _, o in rungs)
    assert uses_data is not small
    if small:
        assert rungs == [
            ("low", {"train.epochs": 6}),
            ("medium", {"train.epochs": 12}),
            ("high", {"train.epochs": 20}),
        ]
    # An epochs key the search owns leaves a small corpus nothing to cut.
    assert _ladder(default_ladder(base, 800, {"train.epochs"})) == [("high", {})]


def test_default_ladder_100k_utterances_keeps_nominal_shares() -> None:
    base = _base(model__num_layers=12, model__d_model=256, model__num_heads=4, train__epochs=50)
    fid = default_ladder(base, 100_000, set(), eta=4)
    assert _ladder(fid) == [
        ("low", {"data.proxy_fraction": 0.01, "model.num_layers": 3, "train.epochs": 1}),
        ("medium", {"data.proxy_fraction": 0.1, "model.num_layers": 6, "train.epochs": 5}),
        ("high", {}),
    ]
    assert fid.eta == 4
    assert [r.cost for r in fid.rungs] == pytest.approx([0.01 * 0.25 / 50, 0.1 * 0.5 * 0.1, 1.0])


@pytest.mark.parametrize("n_train", [120, 480, 948, 5000, 100_000])
def test_every_rung_holds_at_least_the_minimum_utterances(n_train: int) -> None:
    fid = default_ladder(_base(model__num_layers=12, train__epochs=50), n_train, set())
    for rung in fid.rungs:
        share = rung.overrides.get("data.proxy_fraction", 1.0)
        assert share * n_train >= MIN_RUNG_UTTERANCES
        assert 1 <= rung.overrides.get("train.epochs", 50) <= 50
        assert rung.overrides.get("model.num_layers", 12) <= 12
    costs = [r.cost for r in fid.rungs]
    assert costs == sorted(costs) and costs[-1] == 1.0


def test_default_ladder_drops_tuned_keys_and_collapses_equal_rungs() -> None:
    base = _base(model__num_layers=12, train__epochs=50)
    fid = default_ladder(base, 100_000, {"model.num_layers", "train.epochs"})
    assert _ladder(fid) == [
        ("low", {"data.proxy_fraction": 0.01}),
        ("medium", {"data.proxy_fraction": 0.1}),
        ("high", {}),
    ]
    # Tuning the data share too leaves nothing for the cheap rungs: only full fidelity stays.
    only = default_ladder(
        base, 100_000, {"model.num_layers", "train.epochs", "data.proxy_fraction"}
    )
    assert _ladder(only) == [("high", {})] and only.rungs[0].cost == 1.0
    # A corpus under 100 utterances is used whole; with a 2-layer 1-epoch base nothing is cheaper.
    assert _ladder(default_ladder(_base(model__num_layers=2, train__epochs=1), 80, set())) == [
        ("high", {})
    ]
    # A small corpus' rungs cut only epochs: a 1-epoch base has nothing cheaper either.
    assert _ladder(default_ladder(_base(model__num_layers=4, train__epochs=1), 80, set())) == [
        ("high", {})
    ]
    # A large corpus: low (3 of 4 layers) stays; medium would equal high and collapses into it.
    four = default_ladder(_base(model__num_layers=4, train__epochs=1), 100_000, set())
    assert [n for n, _ in _ladder(four)] == ["low", "medium", "high"]
    # A 3-epoch base: medium's 5 epochs are capped to the base's, so medium is not an epochs rung.
    three = default_ladder(_base(model__num_layers=3, train__epochs=3), 100_000, set())
    assert _ladder(three)[1] == ("medium", {"data.proxy_fraction": 0.1})


def test_default_ladder_scales_a_base_proxy_and_unknown_sizes() -> None:
    # The share is relative to the base's own training set: a base proxy is scaled down.
    halved = default_ladder(
        _base(data__proxy_fraction=0.5, model__num_layers=3, train__epochs=10), 100_000, set()
    )
    assert [r.overrides.get("data.proxy_fraction") for r in halved.rungs] == [0.005, 0.05, None]
    # proxy_hours wins over proxy_fraction in prepare_data, so the hours are scaled.
    hours = default_ladder(
        _base(data__proxy_hours=20.0, model__num_layers=3, train__epochs=10), 100_000, set()
    )
    assert [r.overrides.get("data.proxy_hours") for r in hours.rungs] == [0.2, 2.0, None]
    assert all("data.proxy_fraction" not in r.overrides for r in hours.rungs)
    # Unknown corpus size: the nominal shares, to be rescaled once the data exists.
    unknown = default_ladder(_base(model__num_layers=3, train__epochs=10), None, set())
    assert [r.overrides.get("data.proxy_fraction") for r in unknown.rungs] == [0.01, 0.1, None]


def test_estimate_train_utterances() -> None:
    assert (
        estimate_train_utterances(
            _base(data__synthetic__num_utterances=600, data__dev_fraction=0.15)
        )
        == 510
    )
    assert (
        estimate_train_utterances(
            _base(
                data__synthetic__num_utterances=600,
                data__dev_fraction=0.1,
                data__proxy_fraction=0.5,
            )
        )
        == 270
    )
    assert estimate_train_utterances(_base(data__corpus="an4", data__root="/x")) is None
    assert estimate_train_utterances(_base(data__proxy_hours=1.0)) is None


def test_estimate_cost_multiplies_data_epochs_and_model_size() -> None:
    base = _base(train__epochs=4, model__num_layers=4, model__d_model=128)
    assert estimate_cost(base, {}) == 1.0
    over = {
        "data.proxy_fraction": 0.5,
        "train.epochs": 2,
        "model.num_layers": 2,
        "model.d_model": 64,
    }
    assert estimate_cost(base, over) == pytest.approx(0.5 * 0.5 * 0.5 * 0.25)
    assert estimate_cost(base, {"model.d_model": 256}) == pytest.approx(4.0)
    assert estimate_cost(base, {"optim.lr": 0.1, "train.batch_size": 4}) == 1.0  # not modelled
    # Width and depth multipliers scale the same way as the sizes they multiply.
    assert estimate_cost(base, {"model.width_mult": 0.5}) == pytest.approx(0.25)
    assert estimate_cost(base, {"model.depth_mult": 0.5, "model.d_model": 64}) == pytest.approx(
        0.5 * 0.25
    )
    # Hours against the corpus' hours when known; two hour figures compare directly.
    assert estimate_cost(base, {"data.proxy_hours": 2.5}, corpus_hours=10.0) == pytest.approx(0.25)
    assert estimate_cost(
        {**base, "data.proxy_hours": 8.0}, {"data.proxy_hours": 2.0}
    ) == pytest.approx(0.25)
    assert (
        estimate_cost(base, {"data.proxy_hours": 2.5}) == 1.0
    )  # corpus size unknown: not comparable


# ---------------------------------------------------------------------------------------------
# the YAML section


def test_shipped_tuning_yaml_has_no_fidelity() -> None:
    assert load_tuning(CONF / "tuning.yaml").fidelity is None


def test_fidelity_section_defaults_to_the_scaled_ladder(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "recipe": RECIPE,
            "overrides": {"train.epochs": 8},
            "space": {
                "model.num_layers": [2, 3],
                "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            },
            "fidelity": {"budget": 12},
        },
    )
    spec = load_tuning(path)
    fs = spec.fidelity
    assert isinstance(fs, FidelitySpec)
    assert (fs.strategy, fs.eta, fs.budget, fs.priors, fs.warm_start, fs.warm_start_top_k) == (
        "speechtune",
        3,
        12.0,
        True,
        None,
        3,
    )
    # synthetic.yaml: 600 utterances, dev 15% -> 510 training utterances; the space tunes the layers
    assert fs.default_rungs and fs.n_train == 510
    assert _ladder(fs.fidelity) == [
        ("low", {"train.epochs": 2}),
        ("medium", {"train.epochs": 5}),
        ("high", {"train.epochs": 8}),
    ]
    assert spec.raw["fidelity"] == {"budget": 12}
    # CLI overrides of the tuning file reach the section
    assert load_tuning(path, ["fidelity.eta=4", "fidelity.strategy=asha"]).fidelity.eta == 4


def test_explicit_rungs_flatten_estimate_and_keep_given_costs(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "recipe": RECIPE,
            "overrides": {"train.epochs": 8},
            "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
            "fidelity": {
                "strategy": "hyperband",
                "eta": 2,
                "rungs": [
                    {
                        "name": "low",
                        "overrides": {"data": {"proxy_fraction": 0.05}, "train.epochs": 2},
                    },
                    {
                        "name": "medium",
                        "overrides": {"data.proxy_fraction": 0.3, "train.epochs": 4},
                        "cost": 0.2,
                    },
                    {"name": "high", "overrides": {}},
                ],
            },
        },
    )
    fs = load_tuning(path).fidelity
    assert not fs.default_rungs and fs.n_train is None
    assert fs.fidelity.eta == 2 and fs.strategy == "hyperband"
    assert _ladder(fs.fidelity) == [
        ("low", {"data.proxy_fraction": 0.05, "train.epochs": 2}),
        ("medium", {"data.proxy_fraction": 0.3, "train.epochs": 4}),
        ("high", {}),
    ]
    assert [r.cost for r in fs.fidelity.rungs] == pytest.approx([0.05 * 2 / 8, 0.2, 1.0])


def test_epoch_ladder_continues(tmp_path: Path) -> None:
    rungs = [{"name": f"e{e}", "overrides": {"train.epochs": e}} for e in (1, 3, 9)]
    path = _write(
        tmp_path,
        {"recipe": RECIPE, "space": {"model.d_model": [96, 144]}, "fidelity": {"rungs": rungs}},
    )
    fid = load_tuning(path).fidelity.fidelity
    assert [r.cost for r in fid.rungs] == pytest.approx([1 / 9, 3 / 9, 1.0])
    assert fid.continues(0, 1) and fid.continues(1, 2) and fid.continues(0, 2)


def test_every_fidelity_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "recipe": RECIPE,
            "space": {"model.d_model": [96, 144], "model.num_layers": [2, 3]},
            "fidelity": {
                "strategy": "sha",
                "eta": 1,
                "budget": 0,
                "warmstart": "x",
                "warm_start": "nowhere/best.yaml",
                "warm_start_top_k": 0,
                "rungs": [
                    {"name": "low", "overrides": {"train.epochs": 2, "model.num_layers": 2}},
                    {"name": "low", "overrides": {"train.epoch": 4, "data.proxy_fraction": 1.5}},
                    {"name": "high", "overrides": {"train.epochs": 1}, "cots": 1},
                ],
            },
        },
    )
    problems = validate_tuning(path)
    by_key = {p.key: p for p in problems}
    assert list(by_key) == [
        "fidelity.strategy",
        "fidelity.eta",
        "fidelity.budget",
        "fidelity.warmstart",
        "fidelity.warm_start_top_k",
        "fidelity.warm_start",  # existence is checked once the section's keys are read
        "fidelity.rungs[0].overrides.model.num_layers",
        "fidelity.rungs[1].name",
        "fidelity.rungs[1].overrides.train.epoch",
        "fidelity.rungs[1].overrides.data.proxy_fraction",
        "fidelity.rungs[2].cots",
        "fidelity.rungs[2]",
    ]
    assert (
        "valid strategies: random, hyperband, asha, bohb, speechtune"
        in by_key["fidelity.strategy"].rule
    )
    assert "did you mean: warm_start" in by_key["fidelity.warmstart"].rule
    assert "did you mean: train.epochs" in by_key["fidelity.rungs[1].overrides.train.epoch"].rule
    assert "search space" in by_key["fidelity.rungs[0].overrides.model.num_layers"].rule
    assert "duplicate" in by_key["fidelity.rungs[1].name"].rule
    assert "<= 1" in by_key["fidelity.rungs[1].overrides.data.proxy_fraction"].rule
    assert "did you mean: cost" in by_key["fidelity.rungs[2].cots"].rule
    # the top rung (1 epoch) is cheaper than the 25-epoch middle one
    assert "cheapest first" in by_key["fidelity.rungs[2]"].rule
    with pytest.raises(ConfigError, match=r"fidelity\.rungs\[1\]\.overrides\.train\.epoch"):
        load_tuning(path)


def test_rung_shape_problems(tmp_path: Path) -> None:
    def keys(fidelity: Any) -> list[str]:
        return [
            p.key
            for p in validate_tuning(
                _write(tmp_path, {"recipe": RECIPE, "space": SPACE, "fidelity": fidelity})
            )
        ]

    assert keys([1, 2]) == ["fidelity"]
    assert keys({"rungs": []}) == ["fidelity.rungs"]
    assert keys({"rungs": ["low", {"overrides": {}}]}) == [
        "fidelity.rungs[0]",
        "fidelity.rungs[1].name",
    ]
    same = [
        {"name": "a", "overrides": {"train.epochs": 2}},
        {"name": "b", "overrides": {"train.epochs": 2}},
    ]
    assert keys({"rungs": same}) == ["fidelity.rungs[1].overrides"]
    costs = [{"name": "a", "overrides": {"train.epochs": 2}, "cost": -1}, {"name": "b", "cost": 2}]
    assert keys({"rungs": costs}) == ["fidelity.rungs[0].cost", "fidelity.rungs[1].cost"]
    explicit_order = [
        {"name": "a", "overrides": {"train.epochs": 2}, "cost": 0.5},
        {"name": "b", "overrides": {"train.epochs": 3}, "cost": 0.4},
        {"name": "c"},
    ]
    assert keys({"rungs": explicit_order}) == ["fidelity.rungs[1]"]


def test_warm_start_is_resolved_against_the_tuning_file(tmp_path: Path) -> None:
    previous = tmp_path / "runs" / "old"
    previous.mkdir(parents=True)
    (previous / "best.yaml").write_text("model: {d_model: 96}\n")
    path = _write(
        tmp_path,
        {
            "recipe": RECIPE,
            "space": SPACE,
            "fidelity": {
                "warm_start": "runs/old/best.yaml",
                "warm_start_top_k": 5,
                "priors": False,
            },
        },
    )
    spec = load_tuning(path)
    assert spec.fidelity.warm_start == (previous / "best.yaml").resolve()
    assert spec.fidelity.warm_start_top_k == 5 and spec.fidelity.priors is False
    # the recorded spec reloads from elsewhere
    assert spec.raw["fidelity"]["warm_start"] == str((previous / "best.yaml").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert (
        load_tuning(_write(elsewhere, dict(spec.raw, recipe=RECIPE))).fidelity.warm_start
        == spec.fidelity.warm_start
    )


def test_other_corpora_get_nominal_shares_until_the_size_is_known(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "recipe": RECIPE,
            "space": SPACE,
            "overrides": {
                "data.corpus": "manifest",
                "data.manifest": "train.jsonl",
                "train.epochs": 8,
            },
            "fidelity": {},
        },
    )
    spec = load_tuning(path)
    fs = spec.fidelity
    assert fs.default_rungs and fs.n_train is None
    assert [r.overrides.get("data.proxy_fraction") for r in fs.fidelity.rungs] == [0.01, 0.1, None]
    sized = fs.with_corpus_size(flatten(spec.base_recipe), 948, set(spec.space.params))
    assert sized.n_train == 948 and sized.budget == fs.budget
    # 948 utterances is a small corpus: epochs only (30 % and 60 % of 8)
    assert _ladder(sized.fidelity) == [
        ("low", {"train.epochs": 2}),
        ("medium", {"train.epochs": 5}),
        ("high", {"train.epochs": 8}),
    ]


def test_command_objectives_must_give_rungs_and_costs(tmp_path: Path) -> None:
    common = {
        "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "study": {"pruner": "none"},
        "objective": {"kind": "command", "metric": "cer"},
        "command": {"argv": ["python", "train.py", "{config}"]},
    }
    assert [p.key for p in validate_tuning(_write(tmp_path, {**common, "fidelity": {}}))] == [
        "fidelity.rungs"
    ]
    rungs = [
        {"name": "short", "overrides": {"trainer.max_epochs": 3}},
        {"name": "full", "overrides": {"trainer.max_epochs": 30}},
    ]
    assert [
        p.key for p in validate_tuning(_write(tmp_path, {**common, "fidelity": {"rungs": rungs}}))
    ] == ["fidelity.rungs[0].cost"]
    rungs[0]["cost"] = 0.1
    fs = load_tuning(_write(tmp_path, {**common, "fidelity": {"rungs": rungs}})).fidelity
    assert [(r.name, r.cost) for r in fs.fidelity.rungs] == [("short", 0.1), ("full", 1.0)]
    assert fs.fidelity.resume_key is None  # only the recipe continues checkpoints


def test_multi_objective_studies_cannot_climb_a_ladder(tmp_path: Path) -> None:
    objective = {"extra_objectives": ["latency_ms_per_audio_s"]}
    path = _write(
        tmp_path,
        {
            "recipe": RECIPE,
            "space": SPACE,
            "study": {"pruner": "none"},
            "objective": objective,
            "fidelity": {},
        },
    )
    problems = validate_tuning(path)
    assert [p.key for p in problems] == ["fidelity"] and "scalarize" in problems[0].rule
    objective["scalarize"] = {"wer": 1.0, "latency_ms_per_audio_s": 0.01}
    assert (
        load_tuning(
            _write(
                tmp_path,
                {"recipe": RECIPE, "space": SPACE, "objective": objective, "fidelity": {}},
            )
        ).fidelity
        is not None
    )


def test_schedule_horizon_is_the_highest_rung_a_run_continues_to() -> None:
    chain = Fidelity.from_budgets("train.epochs", [1, 3, 9])
    assert [schedule_horizon(chain, r) for r in range(3)] == [9, 9, None]
    # the default ladder of a small corpus cuts epochs only: every run continues to the top
    ladder = default_ladder(_base(model__num_layers=3, train__epochs=25), 480, set())
    assert [schedule_horizon(ladder, r) for r in range(3)] == [25, 25, None]
    # a large corpus': every rung trains on another share of the data, so none continues
    large = default_ladder(_base(model__num_layers=3, train__epochs=25), 100_000, set())
    assert [schedule_horizon(large, r) for r in range(3)] == [None, None, None]
    # no epochs to continue on: a data ladder, or a ladder without a resume key
    assert schedule_horizon(Fidelity.from_budgets("data.proxy_fraction", [0.1, 1.0]), 0) is None
    assert schedule_horizon(Fidelity.from_budgets("train.epochs", [1, 3], resume=False), 0) is None


@pytest.mark.parametrize(
    ("objective", "fidelity", "want"),
    [
        ({"metric": "wer"}, {}, "dev_loss"),  # error rates tie early: the dev loss ranks
        ({"metric": "cer"}, {}, "dev_loss"),
        ({"metric": "wer", "group": "worst_group"}, {}, "worst_group_dev_loss"),
        ({"metric": "wer"}, {"rank_metric": None}, None),  # explicit null: the objective
        ({"metric": "wer"}, {"rank_metric": "cer"}, "cer"),
        ({"metric": "dev_loss"}, {}, None),  # not an error rate: ranked by itself
    ],
)
def test_rank_metric_defaults_to_a_dev_loss_for_error_rate_objectives(
    tmp_path: Path, objective: dict[str, Any], fidelity: dict[str, Any], want: str | None
) -> None:
    path = _write(
        tmp_path,
        {
            "recipe": RECIPE,
            "space": SPACE,
            "objective": {"kind": "recipe", **objective},
            "fidelity": {"strategy": "hyperband", **fidelity},
        },
    )
    spec = load_tuning(path)
    assert spec.fidelity is not None and spec.fidelity.rank_metric == want


@pytest.mark.parametrize(
    ("space", "group", "want"),
    [
        ({"model.ctc_weight": [0.2, 0.8]}, None, "dev_ctc_loss"),
        ({"model.interctc_weight": [0.0, 0.3]}, None, "dev_ctc_loss"),
        ({"model.head": ["ctc", "ctc_attention"]}, None, "dev_ctc_loss"),
        ({"model.ctc_weight": [0.2, 0.8]}, "worst_group", "worst_group_dev_ctc_loss"),
        (SPACE, None, "dev_loss"),  # no loss weight tuned: the dev loss is one quantity
    ],
)
def test_a_space_that_tunes_a_loss_weight_ranks_by_the_ctc_loss(
    tmp_path: Path, space: dict[str, Any], group: str | None, want: str
) -> None:
    objective = {"kind": "recipe", "metric": "wer", **({"group": group} if group else {})}
    path = _write(
        tmp_path,
        {
            "recipe": RECIPE,
            "space": {**SPACE, **space},
            "objective": objective,
            "fidelity": {"strategy": "hyperband"},
        },
    )
    spec = load_tuning(path)
    assert spec.fidelity is not None and spec.fidelity.rank_metric == want
