"""Peer optimisers (SMAC3, DEHB, Syne Tune) driven by the harness: spaces, charges, determinism.

Tiny budgets: these prove the adapters run end to end and account cost as speechtune's
strategies do; how well the peers search is the benchmark's business (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import math

import pytest

from speechtune.benchmarking import PEER_STRATEGIES, Hartmann3, available_peers, run_strategy
from speechtune.benchmarking._peers import to_configspace
from speechtune.tuning.space import SearchSpace, parse_space

pytestmark = pytest.mark.skipif(
    set(available_peers()) != set(PEER_STRATEGIES),
    reason="the peers are the `bench` extra (requirements-bench.txt, requirements-nodeps.txt)",
)


class RecordingHartmann3(Hartmann3):
    """Hartmann3 that remembers every (config, budget, value) it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[dict[str, object], float, float]] = []

    def evaluate(self, config, budget):  # type: ignore[no-untyped-def]
        value = super().evaluate(config, budget)
        self.calls.append((dict(config), float(budget), value))
        return value


def _conditional_space() -> SearchSpace:
    return parse_space(
        {
            "booster": {"type": "categorical", "choices": ["gblinear", "gbtree", "dart"]},
            "eta": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
            "depth": {
                "type": "int",
                "low": 1,
                "high": 15,
                "when": {"booster": ["gbtree", "dart"]},
            },
            "rate_drop": {"type": "float", "low": 0.0, "high": 1.0, "when": {"booster": ["dart"]}},
            "seed": {"type": "fixed", "value": 7},
        }
    )


def test_configspace_keeps_types_scales_and_conditions() -> None:
    cs = to_configspace(_conditional_space(), seed=0)
    assert set(cs) == {"booster", "eta", "depth", "rate_drop"}  # fixed values are not searched
    assert cs["eta"].log and (cs["eta"].lower, cs["eta"].upper) == (1e-4, 1.0)
    assert (cs["depth"].lower, cs["depth"].upper) == (1, 15)
    samples = [dict(c) for c in cs.sample_configuration(200)]
    for c in samples:
        assert ("depth" in c) == (c["booster"] != "gblinear")
        assert ("rate_drop" in c) == (c["booster"] == "dart")
    assert {c["booster"] for c in samples} == {"gblinear", "gbtree", "dart"}


def test_configspace_refuses_what_it_cannot_express() -> None:
    stepped = parse_space({"heads": {"type": "int", "low": 2, "high": 8, "step": 2}})
    with pytest.raises(ValueError, match="heads: a step grid has no ConfigSpace form"):
        to_configspace(stepped, seed=0)


@pytest.mark.parametrize("strategy", sorted(PEER_STRATEGIES))
def test_peer_bookkeeping_and_determinism(strategy: str) -> None:
    problem = RecordingHartmann3()
    top = problem.max_budget
    trace = run_strategy(problem, strategy, seed=1, budget=4)
    again = run_strategy(Hartmann3(), strategy, seed=1, budget=4)
    other = run_strategy(Hartmann3(), strategy, seed=2, budget=4)
    assert (trace.costs, trace.incumbents) == (again.costs, again.incumbents)
    assert trace.incumbents != other.incumbents
    assert trace.costs == sorted(trace.costs) and 4 - 1e-9 <= trace.costs[-1] < 4 + 1 + 1e-9
    assert len(problem.calls) == len(trace.costs) == trace.info["evaluations"]
    budgets = [b for _, b, _ in problem.calls]
    assert set(budgets) <= {1.0, 3.0, 9.0, 27.0}  # Hyperband's ladder with eta = 3
    if strategy == "smac_hpo":
        assert set(budgets) == {27.0}
    else:
        assert min(budgets) == 1.0  # multi-fidelity: cheap evaluations happen
    # Epochs continue on Hartmann3, but only a Syne Tune trial trains on: it pays each rung's
    # increment; SMAC3 and DEHB restart a config at each budget and pay it in full.
    if strategy == "syne_bohb":
        paid, last = 0.0, {}
        for config, b, _ in problem.calls:
            key = tuple(sorted(config.items()))
            paid += b - last.get(key, 0.0)
            last[key] = b
        assert trace.costs[-1] == pytest.approx(paid / top)
        assert paid < sum(budgets)  # some trial was promoted and continued
    else:
        assert trace.costs[-1] == pytest.approx(sum(budgets) / top)
    full = [v for _, b, v in problem.calls if b == top]
    assert trace.n_full == len(full)
    assert trace.incumbents[-1] == (min(full) if full else math.inf)


@pytest.mark.parametrize("strategy", ["smac_mf", "smac_hpo"])
def test_a_peer_leaves_the_process_logging_as_it_found_it(strategy: str) -> None:
    # SMAC3 dictConfigs the root logger unless told not to: every later WARNING of the
    # process (a trial's train.log included) would vanish under its ERROR level.
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    run_strategy(Hartmann3(), strategy, seed=0, budget=1)
    assert (root.level, list(root.handlers)) == before


def test_missing_peer_is_named_with_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from speechtune.benchmarking import _peers

    monkeypatch.setattr(_peers, "available_peers", list)
    with pytest.raises(
        RuntimeError, match=r"'dehb' needs dehb: pip install 'speechtune\[bench\]'"
    ):
        run_strategy(Hartmann3(), "dehb", seed=0, budget=1)
