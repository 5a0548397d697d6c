"""YAHPO Gym surrogates read with onnxruntime: the same numbers as yahpo-gym, the benchmark's protocol.

The surrogates live in ``../shared/benchmarks/yahpo`` (not in the repository); without them these
tests skip. ``fixtures/yahpo_gym_reference.json`` holds predictions made by the ``yahpo-gym``
package itself (1.0.2, ConfigSpace 0.6.1, in its own environment) for random configs of the
three scenarios at two training shares.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from speechtune.benchmarking import STRATEGIES, YahpoProblem, run_benchmark, run_strategy
from tests.helpers.paths import SHARED

YAHPO = SHARED / "benchmarks" / "yahpo"
REFERENCE = Path(__file__).parent / "fixtures" / "yahpo_gym_reference.json"

pytestmark = pytest.mark.skipif(
    not YAHPO.is_dir(), reason=f"YAHPO surrogates not present at {YAHPO}"
)


def test_predictions_match_yahpo_gym() -> None:
    reference = json.loads(REFERENCE.read_text())
    problems: dict[tuple[str, str], YahpoProblem] = {}
    assert {r["scenario"] for r in reference} == {"rbv2_xgboost", "rbv2_rpart", "iaml_glmnet"}
    for row in reference:
        key = (row["scenario"], row["instance"])
        problem = problems.setdefault(key, YahpoProblem(*key, YAHPO))
        ours = problem.predict([row["config"]], [row["share"]])[0]
        for target, value in row["y"].items():
            assert ours[target] == pytest.approx(value, rel=1e-5, abs=1e-6), (
                key,
                row["config"],
                target,
            )


def test_space_protocol_and_bounds() -> None:
    xgb = YahpoProblem("rbv2_xgboost", "12", YAHPO)
    # 14 searched hyperparameters; the instance, the data share and repl are not searched.
    assert xgb.dim == 14 and not {"task_id", "trainsize", "repl"} & set(xgb.space.params)
    assert xgb.default_budget() == pytest.approx(20 + 40 * math.sqrt(14))
    assert {k: list(v) for k, v in (xgb.space.params["eta"].when or {}).items()} == {
        "booster": ["dart", "gbtree"]
    }
    assert xgb.continues is False and xgb.incumbent_any_fidelity is True
    # acc is maximised: the value is -acc, the regret bounds are the published max and min.
    assert xgb.optimum < xgb.reference < 0
    linear = {
        "booster": "gblinear",
        "alpha": 0.1,
        "lambda": 0.1,
        "nrounds": 100,
        "subsample": 0.8,
        "num.impute.selected.cpo": "impute.mean",
    }
    full, cheap = xgb.evaluate(linear, 27), xgb.evaluate(linear, 1)
    assert -1.0 <= full <= 0.0 and full != cheap  # a 1/27 share of the data is another training
    glm = YahpoProblem("iaml_glmnet", "40981", YAHPO)
    assert glm.target == "mmce" and glm.optimum < glm.reference  # minimised as is
    with pytest.raises(ValueError, match="budget"):
        xgb.evaluate(linear, 0.5)
    with pytest.raises(ValueError, match="unknown instance"):
        YahpoProblem("rbv2_rpart", "999999", YAHPO)


def test_priors_point_at_a_good_and_a_bad_region() -> None:
    problem = YahpoProblem("rbv2_rpart", "14", YAHPO)
    good = {k: v for k, (v, _) in problem.prior_good.items()}
    bad = {k: v for k, (v, _) in problem.prior_bad.items()}
    assert set(good) == set(problem.space.params)
    assert problem.evaluate(good, problem.max_budget) < problem.evaluate(bad, problem.max_budget)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_runs_a_yahpo_problem(strategy: str) -> None:
    problem = YahpoProblem("rbv2_rpart", "14", YAHPO)
    trace = run_strategy(problem, strategy, seed=0, budget=6.0)
    assert trace.costs and trace.costs[-1] >= 6.0 - 1e-9
    assert all(b >= a for a, b in zip(trace.costs, trace.costs[1:]))
    regret = trace.regret_at([6.0], problem.optimum, problem.reference)[0]
    assert -0.2 < regret < 1.0  # an evaluation at any share counts: there is always an incumbent
    # Shares are new trainings: a cheap evaluation costs its share, never a continuation's difference.
    assert any(trace.costs[0] == pytest.approx(c) for c in (1 / 27, 3 / 27, 9 / 27, 1.0))


def test_run_benchmark_uses_each_problems_own_budget() -> None:
    problem = YahpoProblem("iaml_glmnet", "40981", YAHPO)
    result = run_benchmark([problem], ["random", "speechtune"], seeds=[0, 1], budget=None)
    assert result.problems[problem.name].budget == pytest.approx(problem.default_budget())
    assert result.budgets(problem.name)[-1] == pytest.approx(problem.default_budget())
    assert np.all(np.isfinite(result.problems[problem.name].mean["speechtune"]))
