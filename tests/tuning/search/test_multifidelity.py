"""The ask/tell multi-fidelity engine: brackets, promotion, rung trust, priors, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from speechtune.tuning.search import Fidelity, MultiFidelitySearch, Rung
from speechtune.tuning.space import parse_space

SPACE = {
    "x": {"type": "float", "low": 0.0, "high": 1.0},
    "y": {"type": "float", "low": 0.0, "high": 1.0},
}


def _bowl(config: dict, budget: float, max_budget: float = 9.0, bias: float = 0.3) -> float:
    """A quadratic bowl with its minimum at (0.7, 0.2); low budgets add a smooth bias (ranks mostly right)."""
    x, y = config["x"], config["y"]
    gap = 1.0 - budget / max_budget
    return (x - 0.7) ** 2 + (y - 0.2) ** 2 + bias * gap * (x + 0.5) * 0.2 + 0.5 * gap


def _run(search: MultiFidelitySearch, fn, budget: float) -> list:
    jobs = []
    while search.budget_used < budget:
        job = search.ask()
        assert job is not None, "a sequential search never waits"
        search.tell(job, fn(job.config, job.config["epochs"]))
        jobs.append(job)
    return jobs


def test_hyperband_first_bracket_is_successive_halving() -> None:
    fid = Fidelity.from_budgets("epochs", [1, 3, 9], eta=3)
    search = MultiFidelitySearch(parse_space(SPACE), fid, strategy="hyperband", seed=0)
    jobs = _run(search, _bowl, 2.2)
    first = [j for j in jobs if j.bracket == 0]
    by_rung = [sum(1 for j in first if j.rung == r) for r in range(3)]
    assert by_rung == [9, 3, 1]
    # The 3 promoted configs are the best 3 of rung 0.
    low = sorted(
        (search._configs[j.config_id].values[0], j.config_id) for j in first if j.rung == 0
    )
    promoted = {j.config_id for j in first if j.rung == 1}
    assert promoted == {cid for _, cid in low[:3]}
    # Promotions continue from the lower rung: they pay only the extra epochs.
    for j in first:
        if j.rung == 1:
            assert j.source == "promotion" and j.parent is not None
            assert j.cost == pytest.approx(3 / 9 - 1 / 9)
        if j.rung == 0:
            assert j.cost == pytest.approx(1 / 9) and j.parent is None
    assert all(j.config["epochs"] == [1, 3, 9][j.rung] for j in jobs)


def test_restart_when_rungs_change_more_than_epochs() -> None:
    fid = Fidelity(
        (
            Rung("low", {"data.fraction": 0.1, "epochs": 1}, 0.01),
            Rung("high", {"epochs": 9}, 1.0),
        ),
        eta=3,
        resume_key="epochs",
    )
    search = MultiFidelitySearch(parse_space(SPACE), fid, strategy="hyperband", seed=0)
    jobs = _run(search, lambda c, b: _bowl(c, b), 1.5)
    promoted = [j for j in jobs if j.rung == 1 and j.source == "promotion"]
    assert promoted and all(j.parent is None and j.cost == pytest.approx(1.0) for j in promoted)
    assert all("data.fraction" not in j.config for j in promoted)


def test_same_seed_same_jobs_and_other_seed_differs() -> None:
    fid = Fidelity.from_budgets("epochs", [1, 3, 9])

    def trace(strategy: str, seed: int) -> list:
        s = MultiFidelitySearch(parse_space(SPACE), fid, strategy=strategy, seed=seed)
        return [(j.config_id, j.rung, round(j.params["x"], 12)) for j in _run(s, _bowl, 6.0)]

    for strategy in ("hyperband", "asha", "bohb", "speechtune"):
        assert trace(strategy, 3) == trace(strategy, 3), strategy
        assert trace(strategy, 3) != trace(strategy, 4), strategy


def test_synchronous_bracket_waits_for_its_rung() -> None:
    fid = Fidelity.from_budgets("epochs", [1, 3, 9])
    search = MultiFidelitySearch(parse_space(SPACE), fid, strategy="hyperband", seed=0)
    jobs = [search.ask() for _ in range(9)]
    assert all(j is not None and j.rung == 0 for j in jobs)
    assert search.ask() is None  # promotion needs all nine results
    for j in jobs[:8]:
        search.tell(j, _bowl(j.config, 1))
    assert search.ask() is None
    search.tell(jobs[8], _bowl(jobs[8].config, 1))
    nxt = search.ask()
    assert nxt is not None and nxt.rung == 1 and nxt.source == "promotion"


def test_asha_promotes_without_waiting_and_never_promotes_failures() -> None:
    fid = Fidelity.from_budgets("epochs", [1, 3, 9])
    search = MultiFidelitySearch(parse_space(SPACE), fid, strategy="asha", seed=0, n_workers=4)
    running = [search.ask() for _ in range(4)]
    assert all(j.rung == 0 for j in running)
    # Three results at rung 0: the best of them (1/eta) can go up although one job still runs.
    search.tell(running[0], None)  # failed
    search.tell(running[1], 0.5)
    search.tell(running[2], 0.9)
    up = search.ask()
    assert up.rung == 1 and up.config_id == running[1].config_id
    failed = running[0].config_id
    for _ in range(30):
        j = search.ask()
        assert not (j.config_id == failed and j.rung > 0)
        search.tell(j, _bowl(j.config, j.config["epochs"]))


def test_best_is_measured_at_the_top_rung_only() -> None:
    fid = Fidelity.from_budgets("epochs", [1, 3, 9])
    search = MultiFidelitySearch(parse_space(SPACE), fid, strategy="hyperband", seed=0)
    # Low rungs report much smaller values than the top: best() must ignore them.
    jobs = _run(search, lambda c, b: _bowl(c, b) - (10.0 if b < 9 else 0.0), 3.0)
    best_config, best_value = search.best()
    top_values = [search._configs[j.config_id].values[2] for j in jobs if j.rung == 2]
    assert best_value == min(top_values) and best_value > -1


def _noise_rung(config: dict, budget: float) -> float:
    """Rung 0 (budget 1) ranks configs badly (noise, and backwards); rung 1 (budget 3) faithfully.

    As on real learning curves where configs that look best after one epoch (a high learning
    rate, say) end worst.
    """
    if budget == 1:
        noise = np.random.default_rng([int(config["x"] * 1e9), int(config["y"] * 1e9)]).random()
        return 0.5 * noise - _bowl(config, 9)
    return _bowl(config, budget)


def test_speechtune_learns_that_a_rung_ranks_badly_and_stops_relying_on_it() -> None:
    fid = Fidelity.from_budgets("epochs", [1, 3, 9], resume=False)
    search = MultiFidelitySearch(
        parse_space(SPACE), fid, strategy="speechtune", seed=0, use_priors=False
    )
    jobs = _run(search, _noise_rung, 25.0)
    corr = search.rung_correlation()
    assert corr[0][1] >= 5 and corr[0][0] < 0.5
    assert corr[1][0] > 0.5
    assert not search.trusted(0) and search.trusted(1)
    # Probes measured full-fidelity configs at the cheap rungs.
    assert any(j.source == "probe" for j in jobs)
    # Once rung 0 is distrusted, new brackets start at rung 1 or above.
    first_distrust = next(i for i in range(len(jobs)) if jobs[i].source == "probe")
    late = [j for j in jobs[first_distrust + 30 :] if j.source not in ("probe", "promotion")]
    assert late and all(j.rung >= 1 for j in late)


def test_hyperband_keeps_using_a_misleading_rung() -> None:
    fid = Fidelity.from_budgets("epochs", [1, 3, 9], resume=False)
    search = MultiFidelitySearch(parse_space(SPACE), fid, strategy="hyperband", seed=0)
    jobs = _run(search, _noise_rung, 25.0)
    assert sum(1 for j in jobs if j.rung == 0) > 20  # plain Hyperband has no notion of trust
    assert search.trusted(0)


def test_intermediate_values_give_free_rank_pairs() -> None:
    fid = Fidelity.from_budgets("epochs", [1, 3, 9])
    search = MultiFidelitySearch(parse_space(SPACE), fid, strategy="random", seed=0)
    for _ in range(8):
        j = search.ask()
        assert j.rung == 2
        search.tell(
            j, _bowl(j.config, 9), intermediate={0: _bowl(j.config, 1), 1: _bowl(j.config, 3)}
        )
    corr = search.rung_correlation()
    assert corr[0][1] == 8 and corr[1][1] == 8 and corr[1][0] > 0.9


def test_bohb_and_speechtune_use_the_model_once_a_rung_has_enough_results() -> None:
    fid = Fidelity.from_budgets("epochs", [1, 3, 9])
    for strategy in ("bohb", "speechtune"):
        search = MultiFidelitySearch(
            parse_space(SPACE), fid, strategy=strategy, seed=1, use_priors=False
        )
        jobs = _run(search, _bowl, 10.0)
        sources = [j.source for j in jobs]
        assert "model" in sources, strategy
        assert "model" not in sources[:5], strategy  # not before a rung has enough observations


def _regret_after(strategy: str, seed: int, budget: float, space: dict) -> float:
    fid = Fidelity.from_budgets("epochs", [1, 3, 9])
    search = MultiFidelitySearch(
        parse_space(space), fid, strategy=strategy, seed=seed, use_priors=True
    )
    _run(search, _bowl, budget)
    return search.best()[1] - _bowl({"x": 0.7, "y": 0.2}, 9)


def test_model_based_search_beats_random_brackets() -> None:
    seeds = range(6)
    hb = np.mean([_regret_after("hyperband", s, 12.0, SPACE) for s in seeds])
    st = np.mean([_regret_after("speechtune", s, 12.0, SPACE) for s in seeds])
    assert st < hb


def test_ask_with_unknown_strategy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'bayes'.*speechtune"):
        MultiFidelitySearch(
            parse_space(SPACE), Fidelity.from_budgets("epochs", [1, 3]), strategy="bayes"
        )


def test_telling_a_job_twice_is_an_error() -> None:
    search = MultiFidelitySearch(
        parse_space(SPACE), Fidelity.from_budgets("epochs", [1, 3]), strategy="asha"
    )
    job = search.ask()
    search.tell(job, 1.0)
    with pytest.raises(ValueError, match="already told"):
        search.tell(job, 1.0)
    assert math.isclose(search.budget_used, job.cost)


def _with_prior(default: tuple[float, float], width: float):
    from speechtune.tuning.space import Prior, with_priors

    return with_priors(
        parse_space(SPACE), {"x": Prior(default[0], width), "y": Prior(default[1], width)}
    )


def _regret(
    space, seed: int, budget: float, use_priors: bool = True
) -> tuple[float, MultiFidelitySearch, list]:
    search = MultiFidelitySearch(
        space,
        Fidelity.from_budgets("epochs", [1, 3, 9]),
        strategy="speechtune",
        seed=seed,
        use_priors=use_priors,
    )
    jobs = _run(search, _bowl, budget)
    return search.best()[1] - _bowl({"x": 0.7, "y": 0.2}, 9), search, jobs


def test_a_good_prior_finds_good_configs_sooner() -> None:
    good = _with_prior((0.68, 0.22), 0.1)
    with_prior = np.mean([_regret(good, s, 4.0)[0] for s in range(6)])
    without = np.mean([_regret(good, s, 4.0, use_priors=False)[0] for s in range(6)])
    assert with_prior < 0.5 * without


def test_a_misleading_prior_is_overcome() -> None:
    wrong = _with_prior((0.02, 0.98), 0.05)  # confidently in the worst corner
    results = [_regret(wrong, s, 20.0) for s in range(4)]
    baseline = [_regret(parse_space(SPACE), s, 20.0)[0] for s in range(4)]
    for regret, search, jobs in results:
        assert search.prior_score() <= 0.5  # the data say the prior ranks no better than chance
        late = [j.source for j in jobs[len(jobs) // 2 :] if j.source not in ("promotion", "probe")]
        assert late.count("prior") <= 0.1 * len(late)
    # It ends about as well as a search without the prior.
    assert np.mean([r[0] for r in results]) < 2 * np.mean(baseline) + 1e-3


def test_a_distrusted_prior_fades_from_moves_around_its_own_config_too() -> None:
    """While the priors' own config is the incumbent, moves around it are prior draws: a prior
    the data distrust gets none of them (its share goes to uniform draws); once the search has
    beaten it, the incumbent's neighbourhood is back."""
    from speechtune.tuning.search._jobs import _Config
    from speechtune.tuning.search._proposals import Proposer

    wrong = _with_prior((0.02, 0.98), 0.05)
    rng = np.random.default_rng(0)
    configs = {0: _Config(0, {"x": 0.02, "y": 0.98}, {"x": 0.02, "y": 0.98}, "prior_default")}
    configs[0].values[2] = _bowl(configs[0].params, 9)
    for cid in range(1, 9):  # rung 0: the farther from the prior's mode, the better
        params = {"x": float(rng.uniform()), "y": float(rng.uniform())}
        configs[cid] = _Config(cid, params, dict(params), "random")
        configs[cid].values[0] = _bowl(params, 1)
    proposer = Proposer(wrong, "speechtune", use_priors=True, prior_first=False)

    def sources() -> list[str]:
        return [
            proposer.propose(np.random.default_rng([0, i]), configs, 2, lambda r: True)[2]
            for i in range(60)
        ]

    assert proposer.prior_score(configs, 2, lambda r: True) <= 0.5
    before = sources()
    assert "incumbent" not in before and "prior" not in before
    assert before.count("random") >= 20  # what the local share left: ~50 %
    # A config the search found beats the priors' own at the top rung: its moves come back.
    configs[9] = _Config(9, {"x": 0.6, "y": 0.3}, {"x": 0.6, "y": 0.3}, "model")
    configs[9].values[2] = _bowl(configs[9].params, 9)
    assert sources().count("incumbent") >= 20


def test_speechtune_with_several_workers_never_waits_and_never_repeats_a_job() -> None:
    fid = Fidelity.from_budgets("epochs", [1, 3, 9])
    search = MultiFidelitySearch(
        parse_space(SPACE), fid, strategy="speechtune", seed=0, use_priors=False, n_workers=3
    )
    running = [search.ask() for _ in range(3)]
    seen = {(j.config_id, j.rung) for j in running}
    for _ in range(60):
        done = running.pop(0)  # the oldest job finishes first
        search.tell(done, _bowl(done.config, done.config["epochs"]))
        job = search.ask()
        assert job is not None
        assert (job.config_id, job.rung) not in seen
        seen.add((job.config_id, job.rung))
        running.append(job)
    assert {r for _, r in seen} == {0, 1, 2}


# ---------------------------------------------------------------------------------------------
# The ask/tell contract for callers who run the trials themselves


def test_a_job_says_what_it_continues_from_and_what_it_adds() -> None:
    fid = Fidelity.from_budgets("epochs", [1, 3, 9], eta=3)
    search = MultiFidelitySearch(parse_space(SPACE), fid, strategy="hyperband", seed=0)
    jobs = {j.number: j for j in _run(search, _bowl, 5)}
    promoted = [j for j in jobs.values() if j.parent is not None]
    assert promoted
    for job in promoted:
        parent = jobs[job.parent]  # type: ignore[index]
        assert job.parent_rung == parent.rung and job.config_id == parent.config_id
        assert job.resume_key == "epochs"
        assert job.resume_from == parent.config["epochs"]
        assert job.adds == job.config["epochs"] - parent.config["epochs"]
    fresh = next(j for j in jobs.values() if j.parent is None and j.rung == 1)
    assert (fresh.parent_rung, fresh.resume_from, fresh.adds) == (None, 0.0, 3.0)


def test_a_ladder_that_never_continues_says_so() -> None:
    fid = Fidelity.geometric("epochs", 9, eta=3, resume=False)
    search = MultiFidelitySearch(parse_space(SPACE), fid, strategy="hyperband", seed=0)
    jobs = _run(search, _bowl, 2.2)
    assert all(j.parent is None and j.resume_key is None and j.adds is None for j in jobs)
    assert all(j.cost == pytest.approx(j.config["epochs"] / 9) for j in jobs)


def test_told_cost_is_what_was_spent_more_or_less_than_planned() -> None:
    fid = Fidelity.from_budgets("epochs", [1, 3, 9], eta=3)
    search = MultiFidelitySearch(parse_space(SPACE), fid, strategy="hyperband", seed=0)
    a, b = search.ask(), None
    assert a is not None
    search.tell(a, 0.5, cost=a.cost * 3)  # the run crashed once and restarted: it cost more
    b = search.ask()
    assert b is not None
    search.tell(b, None, cost=0.0)  # failed at start-up
    assert search.budget_used == pytest.approx(a.cost * 3)
    c = search.ask()
    assert c is not None
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match=f"job {c.number}: cost must be a finite number >= 0"):
            search.tell(c, 0.1, cost=bad)


def test_maximising_is_minimising_the_negation() -> None:
    fid = Fidelity.from_budgets("epochs", [1, 3, 9], eta=3)
    low = MultiFidelitySearch(parse_space(SPACE), fid, strategy="speechtune", seed=4)
    high = MultiFidelitySearch(
        parse_space(SPACE), fid, strategy="speechtune", seed=4, direction="maximize"
    )
    jobs_low = _run(low, _bowl, 4)
    jobs_high = _run(high, lambda c, b: -_bowl(c, b), 4)
    assert [(j.config_id, j.rung) for j in jobs_low] == [(j.config_id, j.rung) for j in jobs_high]
    best_low, best_high = low.best(), high.best()
    assert best_low is not None and best_high is not None
    assert best_high[0] == best_low[0] and best_high[1] == pytest.approx(-best_low[1])
    with pytest.raises(ValueError, match="direction must be 'minimize' or 'maximize'"):
        MultiFidelitySearch(parse_space(SPACE), fid, direction="max")


def test_the_engine_runs_without_torch() -> None:
    """Benchmarks and other toolkits drive the engine in environments without torch."""
    import subprocess
    import sys

    code = (
        "import sys, importlib.abc\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchaudio', 'lhotse'):\n"
        "            raise ImportError('no ' + name)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from speechtune.tuning.search import Fidelity, MultiFidelitySearch\n"
        "from speechtune.tuning.space import parse_space\n"
        "s = MultiFidelitySearch(parse_space({'x': {'type': 'float', 'low': 0, 'high': 1}}),\n"
        "    Fidelity.from_budgets('epochs', [1, 3, 9]), seed=0)\n"
        "while s.budget_used < 3:\n"
        "    j = s.ask(); s.tell(j, (j.config['x'] - 0.3) ** 2)\n"
        "print(round(s.best()[1], 6) >= 0, 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["True", "False"]


def test_the_documented_parallel_loop_pays_each_epoch_once() -> None:
    """docs/multi-fidelity.md's loop with 4 workers finishing out of order: continuations resume
    the parent's epochs, and the budget used is exactly the epochs trained / 27."""
    rng = np.random.default_rng(0)
    fid = Fidelity.from_budgets("epochs", [1, 3, 9, 27])
    search = MultiFidelitySearch(parse_space(SPACE), fid, seed=0, n_workers=4)
    running: dict[int, tuple] = {}
    trained_to: dict[int, float] = {}  # job number -> epochs its checkpoint holds
    epochs_trained = 0.0
    while search.budget_used < 6 or running:
        job = search.ask() if search.budget_used < 6 and len(running) < 4 else None
        if job is not None:
            start = trained_to[job.parent] if job.parent is not None else 0.0
            assert start == job.resume_from and job.adds == job.config["epochs"] - start
            epochs_trained += job.adds  # type: ignore[operator]
            running[job.number] = (job, _bowl(job.config, job.config["epochs"], 27.0))
            continue
        number = list(running)[int(rng.integers(len(running)))]  # any one finishes next
        job, value = running.pop(number)
        trained_to[job.number] = job.config["epochs"]
        search.tell(job, value)
    assert search.budget_used == pytest.approx(epochs_trained / 27)
    assert any(j.parent is not None for j in search._jobs.values())
    assert search.best() is not None


DISCRETE = {
    "layers": {"type": "int", "low": 2, "high": 6},
    "width": {"type": "categorical", "choices": [64, 128, 256, 512]},
    "specaug": {"type": "categorical", "choices": [True, False]},
}  # 5 x 4 x 2 = 40 configs


def _discrete_loss(config: dict, budget: float) -> float:
    return (
        abs(config["layers"] - 4) + abs(math.log2(config["width"]) - 8) + 0.5 * config["specaug"]
    )


@pytest.mark.parametrize("strategy", ["speechtune", "bohb", "hyperband", "asha"])
def test_new_configs_never_repeat_one_already_tried(strategy: str) -> None:
    """In a small discrete space a move around the incumbent often changes nothing; the engine
    must not pay to train the same config twice while untried ones remain."""
    fid = Fidelity.from_budgets("epochs", [1, 3, 9])
    search = MultiFidelitySearch(
        parse_space(DISCRETE), fid, strategy=strategy, seed=0, use_priors=False
    )
    first_seen: dict[tuple, int] = {}
    for job in _run(search, _discrete_loss, 8.0):
        key = (job.params["layers"], job.params["width"], job.params["specaug"])
        first_seen.setdefault(key, job.config_id)
        assert first_seen[key] == job.config_id, f"{key} proposed again as a new config"
    assert len(first_seen) >= 15  # the budget bought many distinct configs


def _late_bloomer(config: dict, budget: float) -> float:
    """Like a long warmup: the baseline (x = 0.9) looks worst on the cheap rungs, best at the top."""
    x = config["x"]
    final = abs(x - 0.9)
    return final if budget >= 9 else 1.0 + (x - 0.9) ** 2 - 0.5 * abs(x - 0.9)


@pytest.mark.parametrize("strategy", ["speechtune", "hyperband", "bohb", "asha", "random"])
def test_the_baseline_runs_first_at_the_top_rung_and_competes_for_best(strategy: str) -> None:
    fid = Fidelity.from_budgets("epochs", [1, 3, 9], eta=3)
    space = parse_space({"x": {"type": "float", "low": 0.0, "high": 1.0}})
    search = MultiFidelitySearch(space, fid, strategy=strategy, seed=0, baseline={"x": 0.9})
    jobs = _run(search, lambda c, b: _late_bloomer(c, b), 4.0)
    first = jobs[0]
    assert (first.rung, first.source, first.params, first.parent) == (
        2,
        "baseline",
        {"x": 0.9},
        None,
    )
    assert first.cost == pytest.approx(1.0)
    assert sum(j.source == "baseline" for j in jobs) == 1
    # Cheap rungs rank the baseline last, so a search without it would never promote it.
    best = search.best()
    assert best is not None and best[0]["x"] == pytest.approx(0.9) and best[1] == 0.0

    without = MultiFidelitySearch(space, fid, strategy=strategy, seed=0)
    _run(without, lambda c, b: _late_bloomer(c, b), 4.0)
    assert without.best() is None or without.best()[1] > 0.0


def test_a_baseline_the_constraints_refuse_is_not_run() -> None:
    fid = Fidelity.from_budgets("epochs", [1, 3, 9], eta=3)
    space = parse_space({"x": {"type": "float", "low": 0.0, "high": 1.0}}, constraints=["x < 0.5"])
    search = MultiFidelitySearch(space, fid, seed=0, baseline={"x": 0.9})
    job = search.ask()
    assert job is not None and job.source != "baseline" and job.params["x"] < 0.5


def test_the_priors_own_config_runs_first_at_the_top_rung() -> None:
    good = _with_prior((0.68, 0.22), 0.1)
    fid = Fidelity.from_budgets("epochs", [1, 3, 9], eta=3)
    search = MultiFidelitySearch(good, fid, seed=3)
    jobs = _run(search, _bowl, 3.0)
    first = jobs[0]
    assert (first.rung, first.source, first.params) == (2, "prior_default", {"x": 0.68, "y": 0.22})
    assert sum(j.source == "prior_default" for j in jobs) == 1
    # Off, or without priors in use, the search starts at a cheap rung.
    for search in (
        MultiFidelitySearch(good, fid, seed=3, prior_first=False),
        MultiFidelitySearch(good, fid, seed=3, use_priors=False),
    ):
        job = search.ask()
        assert job is not None and job.source != "prior_default" and job.rung == 0


def test_with_a_baseline_the_priors_own_config_is_the_first_new_one() -> None:
    good = _with_prior((0.68, 0.22), 0.1)
    fid = Fidelity.from_budgets("epochs", [1, 3, 9], eta=3)
    search = MultiFidelitySearch(good, fid, seed=0, baseline={"x": 0.1, "y": 0.1})
    jobs = [search.ask(), search.ask()]
    assert [(j.source, j.rung) for j in jobs if j is not None] == [
        ("baseline", 2),
        ("prior_default", 0),
    ]
    # A baseline that is the priors' own config is not trained twice.
    same = MultiFidelitySearch(good, fid, seed=0, baseline={"x": 0.68, "y": 0.22})
    jobs = _run(same, _bowl, 3.0)
    assert [j.source for j in jobs].count("prior_default") == 0
    assert sum(j.params == {"x": 0.68, "y": 0.22} for j in jobs if j.source != "promotion") == 1


def test_the_draws_after_the_priors_own_config_do_not_depend_on_it() -> None:
    """Its draw has its own generator: the rest of the search is what it was before."""
    good = _with_prior((0.68, 0.22), 0.1)
    fid = Fidelity.from_budgets("epochs", [1, 3, 9], eta=3)
    with_it = MultiFidelitySearch(good, fid, seed=5, baseline={"x": 0.68, "y": 0.22})
    without = MultiFidelitySearch(
        good, fid, seed=5, baseline={"x": 0.68, "y": 0.22}, prior_first=False
    )
    a, b = _run(with_it, _bowl, 3.0), _run(without, _bowl, 3.0)
    assert [(j.params, j.rung) for j in a] == [(j.params, j.rung) for j in b]
