"""Search-efficiency benchmark: problems, tabular replay, harness bookkeeping and target checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from speechtune.benchmarking import (
    BenchmarkResult,
    Branin,
    Hartmann3,
    Hartmann6,
    Problem,
    ProblemResult,
    TabularProblem,
    Trace,
    beats_everywhere,
    fraction_to_reach,
    markdown_table,
    normalised_regret,
    plot_regret,
    run_benchmark,
    run_strategy,
    suite_checks,
    suite_summary,
    update_docs,
    write_outputs,
)
from speechtune.benchmarking._harness import summarise
from speechtune.benchmarking._report import DOCS_BEGIN, DOCS_END

SYNTHETIC = (Hartmann3, Hartmann6, Branin)


# ---------------------------------------------------------------------------------------------
# Synthetic problems


@pytest.mark.parametrize(
    "cls, argmins, optimum",
    [
        (Hartmann3, [(0.114614, 0.555649, 0.852547)], -3.86278),
        (Hartmann6, [(0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573)], -3.32237),
        (Branin, [(-math.pi, 12.275), (math.pi, 2.275), (9.42478, 2.475)], 0.397887),
    ],
)
def test_known_optimum_at_full_budget(
    cls: type, argmins: list[tuple[float, ...]], optimum: float
) -> None:
    problem = cls()
    assert problem.optimum == pytest.approx(optimum, abs=1e-5)
    for x in argmins:
        assert problem.evaluate(problem.config(x), problem.max_budget) == pytest.approx(
            optimum, abs=1e-5
        )
    # No random config beats the known optimum at full budget.
    x = problem.sample_uniform(5000, np.random.default_rng(0))
    assert problem.values(x, problem.max_budget).min() >= optimum - 1e-5
    assert isinstance(problem, Problem)
    assert problem.reference > optimum + 0.5 * abs(optimum)


@pytest.mark.parametrize("cls", SYNTHETIC)
def test_low_budget_is_biased_and_deterministic(cls: type) -> None:
    problem = cls()
    cfg = problem.config(problem.argmin)
    full = problem.evaluate(cfg, problem.max_budget)
    low = problem.evaluate(cfg, 1)
    # Curves come down with budget: a low budget looks worse than the final value.
    assert low > full + 0.1 * (problem.reference - problem.optimum)
    assert problem.evaluate(cfg, 1) == low  # same config and budget -> same value (seeded noise)
    assert problem.evaluate(cfg, problem.max_budget) == full
    other_seed = cls(seed=1)
    assert other_seed.evaluate(cfg, 1) != low  # the noise depends on the problem's seed ...
    assert other_seed.evaluate(cfg, problem.max_budget) == full  # ... and vanishes at full budget
    with pytest.raises(ValueError, match="budget must be in"):
        problem.evaluate(cfg, problem.max_budget + 1)
    with pytest.raises(KeyError, match="lacks param"):
        problem.evaluate({"x0": 0.5}, 3)


@pytest.mark.parametrize("cls", SYNTHETIC)
def test_low_budgets_rank_configs_imperfectly(cls: type) -> None:
    problem = cls()
    x = problem.sample_uniform(400, np.random.default_rng(1))
    full = problem.values(x, problem.max_budget)
    rho = {
        b: spearmanr([problem.evaluate(problem.config(p), b) for p in x], full).statistic
        for b in (1, 3, 9)
    }
    # Like real training: one epoch ranks configs poorly but not at random, later epochs better.
    assert 0.2 <= rho[1] <= 0.8, rho
    assert rho[1] < rho[3] < rho[9], rho
    assert rho[9] >= 0.85, rho


@pytest.mark.parametrize("cls", SYNTHETIC)
def test_priors_point_where_they_claim(cls: type) -> None:
    problem = cls()
    good = {k: v for k, (v, _) in problem.prior_good.items()}
    bad = {k: v for k, (v, _) in problem.prior_bad.items()}
    assert set(good) == set(bad) == set(problem.space.tunable_names())
    span = problem.reference - problem.optimum
    assert (
        normalised_regret(
            problem.evaluate(good, problem.max_budget), problem.optimum, problem.reference
        )
        < 0.15
    )
    assert problem.evaluate(bad, problem.max_budget) > problem.optimum + 0.8 * span
    # The bad prior's region is not penalised at the cheapest budget: it looks better than average there.
    cheap = problem.values(problem.sample_uniform(2000, np.random.default_rng(2)), 1)
    assert problem.evaluate(bad, 1) < np.mean(cheap)


# ---------------------------------------------------------------------------------------------
# Tabular replay


def _write_table(path: Path) -> Path:
    meta = {
        "meta": {
            "corpus": "toy",
            "device": "cpu",
            "epochs": 4,
            "metric": "wer",
            "space": {"model.d_model": [64, 128, 256], "optim.lr": [0.001, 0.003, 0.01]},
        }
    }

    def rec(
        cid: int,
        d: int,
        lr: float,
        wers: list[float | None],
        status: str = "complete",
        **extra: object,
    ) -> dict:
        epochs = [
            {
                "epoch": i + 1,
                "wer": w,
                "cer": 0.5 * w if w is not None else None,
                "dev_loss": 1.0,
                "time_s": 10.0 + i,
            }
            for i, w in enumerate(wers)
        ]
        return {
            "config_id": cid,
            "params": {"model.d_model": d, "optim.lr": lr},
            "num_params": d * 1000,
            "status": status,
            "epochs": epochs,
            **extra,
        }

    rows = [
        meta,
        rec(0, 64, 0.001, [0.9, 0.7, 0.6, 0.55]),
        rec(1, 128, 0.003, [0.8, 0.5, 0.4, 0.30]),
        rec(2, 256, 0.001, [0.95, 0.6, 0.45, 0.35]),
        rec(
            3, 256, 0.003, [0.7, 0.55], status="failed"
        ),  # stopped after 2 epochs (e.g. out of memory)
        rec(4, 64, 0.01, [0.9, 0.8, None], status="failed"),  # diverged at epoch 3 (NaN WER)
        rec(5, 128, 0.01, [], status="failed"),  # crashed before the first epoch
        rec(7, 128, 0.001, [0.85, 0.6, 0.5, 0.42]),
        rec(6, 64, 0.003, [0.9, 0.6, 0.5, 0.40]),
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_tabular_replays_recorded_curves(tmp_path: Path) -> None:
    table = TabularProblem.load(_write_table(tmp_path / "curves.jsonl"))
    assert table.name == "toy" and table.max_budget == 4 and table.metric == "wer"
    assert table.space.tunable_names() == ["model.d_model", "optim.lr"]
    assert table.evaluate({"model.d_model": 128, "optim.lr": 0.003}, 2) == 0.5
    assert table.evaluate({"model.d_model": 128, "optim.lr": 0.003}, 4.0) == 0.30
    # Failed after 2 epochs: the last recorded value stands.
    assert table.evaluate({"model.d_model": 256, "optim.lr": 0.003}, 4) == 0.55
    # Diverged at epoch 3: worst (1.0) from there on, recorded values before.
    assert [table.evaluate({"model.d_model": 64, "optim.lr": 0.01}, b) for b in (1, 2, 3, 4)] == [
        0.9,
        0.8,
        1.0,
        1.0,
    ]
    assert table.evaluate({"model.d_model": 128, "optim.lr": 0.01}, 1) == 1.0  # no epochs at all
    assert table.optimum == 0.30
    finals = [0.55, 0.30, 0.35, 0.55, 1.0, 1.0, 0.40, 0.42]
    assert table.reference == pytest.approx(np.mean(finals))
    assert table.elapsed({"model.d_model": 128, "optim.lr": 0.003}, 3) == pytest.approx(
        10 + 11 + 12
    )
    assert table.prior_good == {"model.d_model": (128, 0.3), "optim.lr": (0.003, 0.3)}
    with pytest.raises(ValueError, match=r"budget must be in \[1, 4\]"):
        table.evaluate({"model.d_model": 128, "optim.lr": 0.003}, 5)


def test_tabular_nearest_config_fallback(tmp_path: Path) -> None:
    path = _write_table(tmp_path / "curves.jsonl")
    lines = path.read_text().splitlines()
    # Drop config 1 (128, 0.003): its neighbours at ordinal distance 0.5 are configs 3 (256, 0.003),
    # 5 (128, 0.01), 6 (64, 0.003) and 7 (128, 0.001): the smallest config_id (3) wins the tie.
    path.write_text("\n".join(ln for ln in lines if '"config_id": 1,' not in ln) + "\n")
    table = TabularProblem.load(path)
    assert table.lookup({"model.d_model": 128, "optim.lr": 0.003}).config_id == 3
    assert table.evaluate({"model.d_model": 128, "optim.lr": 0.003}, 4) == 0.55
    # Off-grid and absent values: positions are compared, an absent param counts as distance 1.
    assert table.lookup({"model.d_model": 256, "optim.lr": 0.001}).config_id == 2  # exact
    assert (
        table.lookup({"model.d_model": 64}).config_id == 0
    )  # absent lr: nearest on d_model, lowest id


def test_tabular_recorder_conventions(tmp_path: Path) -> None:
    """The AN4 recorder writes status "diverged", nulls for non-finite numbers, and appends while it trains."""
    path = _write_table(tmp_path / "curves.jsonl")
    extra = {
        "config_id": 8,
        "params": {"model.d_model": 256, "optim.lr": 0.01},
        "num_params": 1,
        "status": "diverged",
        "reason": "loss is nan",
        "epochs": [
            {"epoch": 1, "wer": 0.9, "time_s": 1.0},
            {"epoch": 2, "wer": 0.85, "time_s": 1.0},
        ],
    }
    torn = '{"config_id": 9, "params": {"model.d_mo'
    path.write_text(path.read_text() + json.dumps(extra) + "\n" + torn)
    table = TabularProblem.load(path)
    assert [r.config_id for r in table.records] == [
        0,
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
    ]  # the torn line is not read
    assert [table.evaluate({"model.d_model": 256, "optim.lr": 0.01}, b) for b in (1, 2, 3, 4)] == [
        0.9,
        0.85,
        1.0,
        1.0,
    ]


def test_tabular_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"meta": {"space": {"a": [1, 2]}}}) + "\n")
    with pytest.raises(ValueError, match="meta lacks 'epochs'"):
        TabularProblem.load(bad)
    bad.write_text(
        json.dumps({"meta": {"epochs": 2, "space": {"a": [1, 2]}}}) + "\n{oops\n"
    )  # terminated: an error
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        TabularProblem.load(bad)
    bad.write_text(
        json.dumps({"meta": {"epochs": 2, "space": {"a": [1, 2]}}})
        + "\n"
        + json.dumps({"params": {"a": 1}})
        + "\n"
    )
    with pytest.raises(ValueError, match="lacks 'config_id'"):
        TabularProblem.load(bad)


def test_tabular_problem_runs_in_the_harness(tmp_path: Path) -> None:
    table = TabularProblem.load(_write_table(tmp_path / "curves.jsonl"))
    trace = run_strategy(table, "tpe_median", seed=0, budget=3)
    assert trace.costs[-1] >= 3 and trace.n_full >= 1
    assert min(trace.incumbents) >= table.optimum


# ---------------------------------------------------------------------------------------------
# Harness bookkeeping


class RecordingHartmann3(Hartmann3):
    """Hartmann 3 that keeps a log of its evaluations (to check the harness's arithmetic)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[float, float]] = []

    def evaluate(self, config, budget):  # type: ignore[no-untyped-def]
        value = super().evaluate(config, budget)
        self.calls.append((float(budget), value))
        return value


@pytest.mark.parametrize("strategy", ["random", "tpe", "tpe_median", "tpe_hyperband"])
def test_optuna_baselines_bookkeeping(strategy: str) -> None:
    problem = RecordingHartmann3()
    trace = run_strategy(problem, strategy, seed=0, budget=3)
    top = problem.max_budget
    # Every evaluation is one epoch for the pruned strategies and one full run for the others.
    spent = len(problem.calls) / top if strategy.startswith("tpe_") else len(problem.calls)
    assert trace.costs[-1] == pytest.approx(spent)
    assert trace.costs[-1] >= 3 and trace.costs == sorted(trace.costs)
    full_values = [v for b, v in problem.calls if b == top]
    assert trace.n_full == len(full_values)
    assert trace.incumbents[-1] == min(full_values)
    # Before the first full-budget value the regret is 1.0; at the end it is the incumbent's.
    first_full = next(c for c, v in zip(trace.costs, trace.incumbents) if math.isfinite(v))
    r = trace.regret_at([first_full - 1e-3, trace.costs[-1]], problem.optimum, problem.reference)
    assert r[0] == 1.0
    assert r[1] == pytest.approx(
        (min(full_values) - problem.optimum) / (problem.reference - problem.optimum)
    )


def test_harness_is_deterministic_per_seed() -> None:
    problem = Hartmann3()
    for strategy in ("tpe", "tpe_hyperband"):
        a = run_strategy(problem, strategy, seed=3, budget=4)
        b = run_strategy(problem, strategy, seed=3, budget=4)
        c = run_strategy(problem, strategy, seed=4, budget=4)
        assert (a.costs, a.incumbents) == (b.costs, b.incumbents)
        assert a.incumbents != c.incumbents


@pytest.mark.parametrize(
    "strategy", ["hyperband", "bohb", "asha", "speechtune", "speechtune_badprior"]
)
def test_engine_strategies_bookkeeping_and_determinism(strategy: str) -> None:
    problem = RecordingHartmann3()
    trace = run_strategy(problem, strategy, seed=1, budget=4)
    again = run_strategy(Hartmann3(), strategy, seed=1, budget=4)
    assert (trace.costs, trace.incumbents) == (again.costs, again.incumbents)
    assert trace.costs[-1] >= 4 - 1e-9 and trace.costs == sorted(trace.costs)
    # Engine jobs run at the rungs 1, 3, 9, 27 epochs only; the incumbent is the best 27-epoch value.
    assert {b for b, _ in problem.calls} <= {1.0, 3.0, 9.0, 27.0}
    full = [v for b, v in problem.calls if b == 27.0]
    assert trace.incumbents[-1] == min(full)
    assert trace.n_full >= 1


def test_unknown_strategy_and_bad_budget_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'smac'"):
        run_strategy(Hartmann3(), "smac", seed=0, budget=1)
    with pytest.raises(ValueError, match="budget must be > 0"):
        run_strategy(Hartmann3(), "tpe", seed=0, budget=0)


# ---------------------------------------------------------------------------------------------
# Regret and target checks on hand-built traces


def _trace(strategy: str, points: list[tuple[float, float | None, bool]], seed: int = 0) -> Trace:
    t = Trace("toy", strategy, seed, budget=10.0)
    for cost, value, full in points:
        t.record(cost, value, full)
    return t


def test_trace_regret_bookkeeping() -> None:
    t = _trace(
        "x",
        [
            (0.5, 5.0, False),
            (1.0, 8.0, True),
            (2.0, 1.0, False),
            (3.0, 4.0, True),
            (4.0, 6.0, True),
        ],
    )
    # Only full-budget values count; the low-budget 1.0 never becomes the incumbent.
    assert t.incumbents == [math.inf, 8.0, 8.0, 4.0, 4.0]
    assert t.n_full == 3
    r = t.regret_at([0.4, 0.5, 1.0, 2.9, 3.0, 10.0], optimum=0.0, reference=10.0)
    assert r.tolist() == pytest.approx([1.0, 1.0, 0.8, 0.8, 0.4, 0.4])
    assert normalised_regret(math.nan, 0.0, 10.0) == 1.0
    with pytest.raises(ValueError, match="reference"):
        normalised_regret(1.0, 5.0, 5.0)


def test_fraction_to_reach_and_beats_everywhere() -> None:
    fr = np.array([0.1, 0.2, 0.3, 0.5, 1.0])
    assert fraction_to_reach(fr, [0.9, 0.5, 0.3, 0.2, 0.1], target=0.3) == 0.3
    assert fraction_to_reach(fr, [0.9, 0.5, 0.4, 0.35, 0.31], target=0.3) is None
    b = [0.8, 0.6, 0.5, 0.4, 0.3]
    assert beats_everywhere(fr, [0.9, 0.5, 0.4, 0.3, 0.2], b)  # worse at 10% does not count
    assert not beats_everywhere(fr, [0.5, 0.5, 0.5, 0.3, 0.2], b)  # a tie at 30% is not below
    assert beats_everywhere(
        fr, [0.9, 0.5, 0.4, 0.0, 0.0], [0.8, 0.6, 0.5, 0.0, 0.0]
    )  # both found the optimum
    assert not beats_everywhere(fr[:1], [0.0], [1.0])  # nothing past 10% to compare


def test_summarise_runs_both_target_checks() -> None:
    res = ProblemResult("toy", optimum=0.0, reference=10.0, max_budget=27)
    # TPE ends at regret 0.4 (two seeds: 4 and 4); speechtune gets there by cost 2 (20%);
    # tpe_hyperband is better than speechtune at 50%.
    res.traces["tpe"] = [_trace("tpe", [(1, 9.0, True), (10, 4.0, True)], s) for s in (0, 1)]
    res.traces["tpe_hyperband"] = [
        _trace("tpe_hyperband", [(1, 6.0, True), (5, 1.0, True)], s) for s in (0, 1)
    ]
    res.traces["speechtune"] = [
        _trace("speechtune", [(2, 4.0, True), (8, 0.5, True)], 0),
        _trace("speechtune", [(2, 4.0, True), (8, 1.5, True)], 1),
    ]
    fractions = np.arange(1, 11) / 10
    summarise(res, fractions, budget=10.0)
    assert res.mean["speechtune"].tolist() == pytest.approx(
        [1.0, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.1, 0.1, 0.1]
    )
    assert res.se["speechtune"][-1] == pytest.approx(np.std([0.05, 0.15], ddof=1) / math.sqrt(2))
    assert res.checks["speechtune"]["fraction_to_tpe_final"] == pytest.approx(0.2)
    assert res.checks["tpe"]["fraction_to_tpe_final"] == pytest.approx(1.0)
    assert res.checks["speechtune"]["beats_tpe_hyperband"] is False  # 0.4 > 0.1 at 50%
    assert res.checks["tpe_hyperband"]["beats_tpe_hyperband"] is None


def test_run_benchmark_outputs_and_workers(tmp_path: Path) -> None:
    problems = [Branin()]
    serial = run_benchmark(
        problems, ["random", "tpe_hyperband"], seeds=[0, 1], budget=2, grid_points=20
    )
    parallel = run_benchmark(
        problems, ["random", "tpe_hyperband"], seeds=[0, 1], budget=2, grid_points=20, workers=2
    )
    for s in ("random", "tpe_hyperband"):
        assert (
            serial.problems["branin"].mean[s].tolist()
            == parallel.problems["branin"].mean[s].tolist()
        )
    paths = write_outputs(serial, tmp_path / "out")
    saved = json.loads(paths["json"].read_text())
    assert (
        saved["problems"]["branin"]["mean_regret"]["random"]
        == serial.problems["branin"].mean["random"].tolist()
    )
    traces = [json.loads(line) for line in paths["traces"].read_text().splitlines()]
    assert sorted((t["strategy"], t["seed"]) for t in traces) == [
        ("random", 0),
        ("random", 1),
        ("tpe_hyperband", 0),
        ("tpe_hyperband", 1),
    ]
    assert (
        traces[0]["costs"]
        == serial.problems["branin"].traces[traces[0]["strategy"]][traces[0]["seed"]].costs
    )
    table = markdown_table(serial)
    assert "| tpe_hyperband |" in table and "## branin" in table
    assert paths["regret_branin"].stat().st_size > 1000


def test_run_benchmark_resumes_from_its_kept_runs(tmp_path: Path) -> None:
    kept = tmp_path / "runs"
    first = run_benchmark([Branin()], ["random"], seeds=[0, 1], budget=2, cache_dir=kept)
    files = sorted(kept.glob("*.json"))
    assert [f.name for f in files] == ["branin__random__0__2.json", "branin__random__1__2.json"]
    # A kept run is reused as it is: alter one and the summary shows the altered value.
    saved = json.loads(files[0].read_text())
    saved["incumbents"] = [None] + [0.0] * (len(saved["incumbents"]) - 1)
    files[0].write_text(json.dumps(saved))
    files[1].write_text("{not json")  # unreadable: run again and rewrite
    again = run_benchmark([Branin()], ["random"], seeds=[0, 1], budget=2, cache_dir=kept)
    t0, t1 = again.problems["branin"].traces["random"]
    assert math.isinf(t0.incumbents[0]) and t0.incumbents[1:] == [0.0] * (len(t0.incumbents) - 1)
    assert t1.costs == first.problems["branin"].traces["random"][1].costs
    assert json.loads(files[1].read_text())["seed"] == 1


# ---------------------------------------------------------------------------------------------
# Suites: averaged problems, issue 13's targets, the generated docs section


def _suite_result() -> BenchmarkResult:
    """Two toy 'yahpo' problems, two seeds, a grid of 4: regrets chosen to pass and fail checks."""
    result = BenchmarkResult(budget=10.0, seeds=[0, 1], fractions=np.array([0.25, 0.5, 0.75, 1.0]))
    # regret = value / 10 (optimum 0, reference 10); each trace: (cost, value) pairs.
    curves = {
        "random": {"a": [(1, 8.0), (10, 6.0)], "b": [(1, 8.0), (10, 6.0)]},
        "smac_mf": {"a": [(1, 5.0), (10, 3.0)], "b": [(1, 5.0), (10, 3.0)]},
        "speechtune_noprior": {"a": [(1, 4.0), (6, 2.0)], "b": [(1, 9.0), (6, 2.0)]},
        "speechtune": {"a": [(1, 2.0)], "b": [(1, 3.0)]},
        "speechtune_badprior": {"a": [(1, 6.0), (9, 2.4)], "b": [(1, 9.0), (9, 2.4)]},
    }
    for name in ("a", "b"):
        pr = ProblemResult(
            name, optimum=0.0, reference=10.0, max_budget=27, budget=10.0, suite="yahpo"
        )
        for strategy, per_problem in curves.items():
            pr.traces[strategy] = []
            for seed in (0, 1):
                t = Trace(name, strategy, seed, 10.0, info={"wall_s": 2.0 + seed})
                for cost, value in per_problem[name]:
                    t.record(cost, value + 0.1 * seed, full=True)
                pr.traces[strategy].append(t)
        summarise(pr, result.fractions, pr.budget)
        result.problems[name] = pr
    lone = ProblemResult("c", optimum=0.0, reference=1.0, max_budget=27, suite="synthetic")
    lone.traces["random"] = [_trace("random", [(1, 0.5, True)], s) for s in (0, 1)]
    summarise(lone, result.fractions, 10.0)
    result.problems["c"] = lone
    return result


def test_suite_summary_averages_per_seed_then_over_seeds() -> None:
    result = _suite_result()
    summary = suite_summary(result, "yahpo")
    assert summary is not None and summary.problems == ["a", "b"]
    assert suite_summary(result, "synthetic") is None  # one problem is not a suite
    # speechtune_noprior at 25% (cost 2.5): a = 0.4 + 0.01 s, b = 0.9 + 0.01 s -> per seed 0.65, 0.66.
    assert summary.mean["speechtune_noprior"][0] == pytest.approx(0.655)
    assert summary.se["speechtune_noprior"][0] == pytest.approx(
        np.std([0.65, 0.66], ddof=1) / math.sqrt(2)
    )
    assert summary.mean["speechtune_noprior"][-1] == pytest.approx(0.205)
    assert summary.wall["smac_mf"] == pytest.approx(2.5)


def test_suite_checks_name_what_passes_and_what_fails() -> None:
    result = _suite_result()
    summary = suite_summary(result, "yahpo")
    assert summary is not None
    checks = dict(suite_checks(result, summary))
    texts = list(checks)
    # 25% and 50%: 0.655 vs smac_mf's 0.505 -> fail; 100%: 0.205 vs 0.305 -> pass.
    assert [checks[t] for t in texts[:3]] == [False, False, True]
    assert "(smac_mf)" in texts[0]
    # Problem b at 25%: 0.9 > random's 0.8: named.
    assert checks[texts[3]] is False and "b at 25%" in texts[3] and "a at" not in texts[3]
    # Good prior: 0.255 at 25%, below smac_mf's final 0.305 -> reached at 0.25 <= 1/3.
    assert checks[texts[4]] is True and "at 0.25 of the budget" in texts[4]
    # Misleading prior: 0.245 final vs 0.205 * 1.1 = 0.2255 -> fail.
    assert checks[texts[5]] is False
    table = markdown_table(result)
    assert "## yahpo suite: mean over 2 problems (a, b)" in table
    assert "- FAIL: no prior at 25%" in table and "| s/run |" in table


def test_update_docs_rewrites_only_its_section(tmp_path: Path) -> None:
    result = _suite_result()
    docs = tmp_path / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    docs.write_text(f"# Benchmarks\n\nkept above\n\n{DOCS_BEGIN}\nold\n{DOCS_END}\n\nkept below\n")
    plots = plot_regret(result, tmp_path / "out")
    names = sorted(p.name for p in plots)
    assert names == ["regret_a.png", "regret_b.png", "regret_c.png", "regret_yahpo_suite.png"]
    for _ in range(2):  # a second run replaces the first
        update_docs(
            result,
            docs,
            {p.stem: p for p in plots},
            command="python benchmarks/search_efficiency.py --seeds 2",
            wall_s=120,
            machine="2 CPU cores",
        )
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nkept above\n") and text.endswith("\n\nkept below\n")
    assert text.count(DOCS_BEGIN) == 1 and "old" not in text
    assert "\n### Search efficiency" in text and "\n#### yahpo suite: mean over 2" in text
    assert "![regret_yahpo_suite](img/search_efficiency/regret_yahpo_suite.png)" in text
    assert (docs.parent / "img" / "search_efficiency" / "regret_a.png").stat().st_size > 1000
    docs.write_text("no markers")
    with pytest.raises(ValueError, match="no generated section"):
        update_docs(result, docs, {}, command="x", wall_s=1, machine="m")
