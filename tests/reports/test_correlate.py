"""Proxy check (``speechtune correlate``) and the multi-fidelity parts of the report.

Studies are real Optuna studies in SQLite, built with ``create_trial`` + ``add_trial`` and the
issue-4 contract's records. Values come from a seeded generator: rung ``small`` is a noisy
monotone transform of the top rung (so its rank correlation is known to be high) and rung
``tiny`` is pure noise (correlation about 0), yet ``tiny`` decided promotions.
"""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import scipy.stats
import yaml
from optuna.distributions import FloatDistribution
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from speechtune.cli import main
from speechtune.reports import (
    correlate_study,
    report_command,
    write_best_yaml,
    write_trials_csv,
)
from speechtune.reports._correlate import MIN_PAIRS
from speechtune.reports._fidelity_report import (
    compute_savings,
    rung_summaries,
    rung_warnings,
)
from speechtune.reports._rank import kendall_rows, rank_correlation, spearman_rows
from speechtune.tuning.study import load_study, select_best
from tests.helpers.reports import make_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUNGS = [("tiny", 1 / 9, 1), ("small", 1 / 3, 3), ("full", 1.0, 9)]  # name, cost, train.epochs
TOP = len(RUNGS) - 1
FAILED, PRUNED = (33, 34), (35,)  # config ids of bracket 0 that never finish their tiny run
T0 = datetime(2026, 1, 1, 12, 0, 0)
LR = FloatDistribution(1e-4, 1e-2, log=True)


class _Builder:
    """Adds contract-shaped MF trials to an in-memory study, then copies it to SQLite."""

    def __init__(self, name: str, rung_defs: list[tuple[str, float, int]]) -> None:
        self.rungs = rung_defs
        self.memory = optuna.storages.InMemoryStorage()
        self.study = optuna.create_study(storage=self.memory, study_name=name)
        self.study.set_user_attr("objective_names", ["wer"])
        self.study.set_user_attr("directions", ["minimize"])
        self.study.set_user_attr(
            "fidelity",
            {
                "strategy": "hyperband",
                "eta": 3,
                "resume_key": None,
                "rungs": [
                    {"name": n, "overrides": {"train.epochs": e}, "cost": c}
                    for n, c, e in rung_defs
                ],
            },
        )
        self.last_number: dict[int, int] = {}  # config_id -> number of its latest trial
        self.clock = T0
        self.count = 0  # trial numbers are given in add order

    def add(
        self,
        config_id: int,
        rung: int,
        bracket: int,
        lr: float,
        value: float | None,
        state: TrialState = TrialState.COMPLETE,
    ) -> None:
        name, cost, epochs = self.rungs[rung]
        trial = optuna.trial.create_trial(
            state=state,
            value=value if state == TrialState.COMPLETE else None,
            params={"optim.lr": lr},
            distributions={"optim.lr": LR},
            user_attrs={
                "config": {"optim.lr": lr, "train.epochs": epochs},
                "status": {
                    TrialState.COMPLETE: "complete",
                    TrialState.FAIL: "diverged",
                    TrialState.PRUNED: "stopped",
                }[state],
                "reason": "",
                "rung": rung,
                "rung_name": name,
                "config_id": config_id,
                "bracket": bracket,
                "parent_trial": self.last_number.get(config_id),
                "job_cost": cost,
                "source": "promotion" if config_id in self.last_number else "random",
            },
        )
        # Wall time proportional to cost: 90 s for a full run.
        trial.datetime_start = self.clock
        trial.datetime_complete = self.clock + timedelta(seconds=90 * cost)
        self.clock = trial.datetime_complete
        self.last_number[config_id] = self.count
        self.count += 1
        self.study.add_trial(trial)

    def save(self, storage: str | BaseStorage | None) -> optuna.Study:
        """Copy the study to ``storage`` and load it from there; None keeps it in memory."""
        if storage is None:
            return self.study
        name = self.study.study_name
        optuna.copy_study(from_study_name=name, from_storage=self.memory, to_storage=storage)
        return optuna.load_study(study_name=name, storage=storage)


def make_mf_study(
    storage: str | BaseStorage | None,
    name: str = "mf",
    *,
    seed: int = 0,
    tiny_faithful: bool = False,
    top_configs: int = 12,
) -> optuna.Study:
    """A finished Hyperband-like study with two brackets.

    Bracket 0: 36 configs at ``tiny`` (2 fail, 1 is pruned), the best 24 by their tiny value go to
    ``small``, the best ``top_configs`` of those by their small value go to ``full``.
    Bracket 1: 8 configs start at ``small`` and all go to ``full``.
    ``full`` = the true WER t; ``small`` = 0.5 t + N(0, 0.005) (monotone, and SMALLER than full);
    ``tiny`` = uniform noise, or t + 0.3 + N(0, 0.002) with ``tiny_faithful``.
    """
    rng = np.random.default_rng(seed)
    b = _Builder(name, RUNGS)
    lr = {c: float(10 ** rng.uniform(-4, -2)) for c in range(44)}
    truth = {c: float(0.1 + 0.5 * rng.random()) for c in range(44)}
    small = {c: 0.5 * truth[c] + float(rng.normal(0, 0.005)) for c in range(44)}
    tiny = {
        c: (truth[c] + 0.3 + float(rng.normal(0, 0.002)))
        if tiny_faithful
        else float(rng.uniform(0.3, 0.9))
        for c in range(36)
    }
    for c in range(36):
        state = (
            TrialState.FAIL
            if c in FAILED
            else TrialState.PRUNED
            if c in PRUNED
            else TrialState.COMPLETE
        )
        b.add(c, 0, 0, lr[c], tiny[c], state)
    finished = [c for c in range(36) if c not in FAILED + PRUNED]
    to_small = sorted(finished, key=lambda c: tiny[c])[:24]
    for c in to_small:
        b.add(c, 1, 0, lr[c], small[c])
    for c in range(36, 44):
        b.add(c, 1, 1, lr[c], small[c])
    to_full = sorted(to_small, key=lambda c: small[c])[:top_configs] + list(range(36, 44))
    for c in to_full:
        b.add(c, TOP, 0 if c < 36 else 1, lr[c], truth[c])
    return b.save(storage)


def _mf_run_dir(root: Path, name: str = "mf", **kw: Any) -> Path:
    """A run directory holding the study in ``journal.log``.

    The engine's other run-dir storage: writing these 88 trials to SQLite takes 7-9 s on the
    shared test machine (one query per user attr), the journal about 0.5 s. The smaller studies
    below are in SQLite.
    """
    run_dir = root / name
    run_dir.mkdir(parents=True, exist_ok=True)
    make_mf_study(JournalStorage(JournalFileBackend(str(run_dir / "journal.log"))), name, **kw)
    return run_dir


def _pairs(study: optuna.Study, rung: int) -> tuple[np.ndarray, np.ndarray]:
    """(lower, top) values by config id, gathered independently of the code under test."""
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    top = {t.user_attrs["config_id"]: t.value for t in done if t.user_attrs["rung"] == TOP}
    low = {t.user_attrs["config_id"]: t.value for t in done if t.user_attrs["rung"] == rung}
    keys = sorted(set(top) & set(low))
    return np.array([low[k] for k in keys]), np.array([top[k] for k in keys])


@pytest.fixture(scope="module")
def mf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MF run directory whose report was rebuilt once (report.html, trials.csv, best.yaml)."""
    run_dir = _mf_run_dir(tmp_path_factory.mktemp("runs"))
    report_command(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def faithful() -> optuna.Study:
    """The same study design, but the tiny rung tracks the top rung (in memory: only values matter)."""
    return make_mf_study(None, "f", tiny_faithful=True)


# --------------------------------------------------------------------------- statistics


def test_vectorised_rank_correlations_equal_scipy_with_ties_and_constant_rows() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, size=(40, 9)).astype(float)  # many ties, as in bootstrap resamples
    y = x + rng.integers(-2, 3, size=(40, 9))
    x[0] = 1.0  # a constant row: undefined
    s, k = spearman_rows(x, y), kendall_rows(x, y)
    assert math.isnan(s[0]) and math.isnan(k[0])
    for row in range(1, 40):
        assert s[row] == pytest.approx(scipy.stats.spearmanr(x[row], y[row]).statistic, abs=1e-12)
        assert k[row] == pytest.approx(scipy.stats.kendalltau(x[row], y[row]).statistic, abs=1e-12)
    # Above 100 configs Kendall goes through scipy per resample: same numbers.
    wide = rng.integers(0, 30, size=(3, 150)).astype(float)
    wide_y = wide + rng.integers(-5, 6, size=(3, 150))
    expected = [scipy.stats.kendalltau(wide[r], wide_y[r]).statistic for r in range(3)]
    assert kendall_rows(wide, wide_y) == pytest.approx(expected, abs=1e-12)


def test_rank_correlation_intervals_are_seeded_and_need_three_pairs() -> None:
    rng = np.random.default_rng(0)
    top = rng.random(30)
    lower = top + rng.normal(0, 0.05, 30)
    a = rank_correlation(lower, top, n_bootstrap=300, rng=np.random.default_rng(1))
    b = rank_correlation(lower, top, n_bootstrap=300, rng=np.random.default_rng(1))
    assert a == b
    assert a.spearman == pytest.approx(scipy.stats.spearmanr(lower, top).statistic)
    assert a.kendall == pytest.approx(scipy.stats.kendalltau(lower, top).statistic)
    assert a.spearman_ci[0] < a.spearman < a.spearman_ci[1] and a.spearman_ci[0] > 0.8
    assert a.kendall_ci[0] < a.kendall < a.kendall_ci[1]
    two = rank_correlation(lower[:2], top[:2], n_bootstrap=100, rng=np.random.default_rng(1))
    assert two.n == 2 and two.spearman is None and two.spearman_ci is None
    none = rank_correlation(lower, top, n_bootstrap=0, rng=np.random.default_rng(1))
    assert none.spearman == a.spearman and none.spearman_ci is None
    with pytest.raises(ValueError, match="equal length"):
        rank_correlation(lower, top[:-1], n_bootstrap=10, rng=np.random.default_rng(1))


# --------------------------------------------------------------------------- multi-fidelity


def test_rung_correlations_and_recommendation_on_a_multi_fidelity_study(
    mf_run: Path, faithful: optuna.Study
) -> None:
    study = load_study(mf_run)
    report = correlate_study(study, n_bootstrap=500, seed=0)
    assert report.mode == "fidelity" and report.metric == "wer" and report.top_name == "full"
    assert report.n_top == 20 and [rc.name for rc in report.rungs] == ["tiny", "small"]
    for rung, rc in enumerate(report.rungs):
        lower, top = _pairs(study, rung)
        assert rc.n_pairs == len(lower)
        assert rc.stats.spearman == pytest.approx(scipy.stats.spearmanr(lower, top).statistic)
        assert rc.stats.kendall == pytest.approx(scipy.stats.kendalltau(lower, top).statistic)
        lo, hi = rc.stats.spearman_ci
        assert lo <= rc.stats.spearman <= hi
    tiny, small = report.rungs
    assert tiny.n_pairs == 12 and small.n_pairs == 20
    assert (
        small.stats.spearman > 0.9 and small.stats.spearman_ci[0] >= 0.7 and small.trustworthy(0.7)
    )
    # Pure noise: the interval straddles 0 and the rung is not trusted.
    assert tiny.stats.spearman_ci[0] < 0 < tiny.stats.spearman_ci[1] and not tiny.trustworthy(0.7)
    assert tiny.cost == pytest.approx(1 / 9) and tiny.mean_job_cost == pytest.approx(1 / 9)
    assert report.recommendation.kind == "rung" and report.recommendation.name == "small"
    # Same seed, same intervals; the seed matters.
    assert correlate_study(study, n_bootstrap=500, seed=0) == report
    assert (
        correlate_study(study, n_bootstrap=500, seed=1).rungs[1].stats.spearman_ci
        != small.stats.spearman_ci
    )
    # With a faithful tiny rung the cheapest rung wins.
    assert correlate_study(faithful, n_bootstrap=300).recommendation.name == "tiny"


def test_too_few_top_rung_configs_recommends_collecting_more(tmp_path: Path) -> None:
    builder = _Builder("thin", RUNGS)
    rng = np.random.default_rng(5)
    for c in range(10):
        builder.add(c, 0, 0, 1e-3, float(rng.random()))
    for c in range(3):  # only three configs reach the top: no rung can be checked
        builder.add(c, 1, 0, 1e-3, float(rng.random()))
        builder.add(c, TOP, 0, 1e-3, float(rng.random()))
    study = builder.save(f"sqlite:///{tmp_path / 's.db'}")
    report = correlate_study(study, n_bootstrap=100)
    assert all(rc.n_pairs == 3 and not rc.enough_pairs for rc in report.rungs)
    assert report.recommendation.kind == "collect_more" and report.recommendation.name is None
    assert (
        "collect more" in report.recommendation.text
        and f"at least {MIN_PAIRS}" in report.recommendation.text
    )


def test_correlate_cli_writes_json_and_png_and_prints_the_table(
    mf_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["correlate", str(mf_run), "--bootstrap", "300", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "rank correlation with rung 'full'" in out and "recommendation: use rung 'small'" in out
    lines = {
        line.split()[0]: line for line in out.splitlines() if line.startswith(("tiny ", "small "))
    }
    assert lines["small"].rstrip().endswith("yes") and lines["tiny"].rstrip().endswith("no")
    data = json.loads((mf_run / "correlation.json").read_text())
    assert data["mode"] == "fidelity" and data["bootstrap"] == 300 and data["seed"] == 2
    assert [r["name"] for r in data["rungs"]] == ["tiny", "small"]
    assert data["rungs"][1]["trustworthy"] and not data["rungs"][0]["trustworthy"]
    assert len(data["rungs"][1]["pairs"]) == data["rungs"][1]["n_pairs"] == 20
    assert data["recommendation"]["name"] == "small"
    png = (mf_run / "correlation.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    # A stricter threshold than the small rung reaches: nothing is recommended.
    assert main(["correlate", str(mf_run), "--bootstrap", "300", "--threshold", "0.999"]) == 0
    assert "no lower rung ranks configs like the top rung" in capsys.readouterr().out


def test_report_of_a_multi_fidelity_study(mf_run: Path) -> None:
    study = load_study(mf_run)
    page = (mf_run / "report.html").read_text()
    assert 'id="multi-fidelity"' in page and 'id="plot-rung-correlation"' in page
    # The warning names the noise rung that promotions relied on and the trustworthy one.
    (box,) = [part for part in page.split('<div class="warning">')[1:]]
    box = box.split("</div>")[0]
    assert (
        "WARNING" in box and "rung &#x27;tiny&#x27;" in box and "use rung &#x27;small&#x27;" in box
    )
    assert "&#x27;small&#x27; (" not in box.split("Recommendation")[0]  # only tiny is flagged
    # Rung table: configs run, promoted, pruned/failed, compute, wall time.
    assert (
        "<tr><td>0</td><td>tiny</td><td>0.111</td><td>36</td><td>36</td><td>24</td><td>3</td><td>4</td><td>360.0</td></tr>"
        in page
    )
    assert (
        "<tr><td>1</td><td>small</td><td>0.333</td><td>32</td><td>32</td><td>20</td><td>0</td><td>10.7</td><td>960.0</td></tr>"
        in page
    )
    assert (
        "<tr><td>2</td><td>full</td><td>1</td><td>20</td><td>20</td><td>0</td><td>0</td><td>20</td><td>1800.0</td></tr>"
        in page
    )
    # Brackets: bracket 1 started at the small rung.
    assert "<tr><td>0</td><td>36 / 4</td><td>24 / 8</td><td>12 / 12</td><td>24</td></tr>" in page
    assert "<tr><td>1</td><td>-</td><td>8 / 2.67</td><td>8 / 8</td><td>10.7</td></tr>" in page
    # 44 configs x 1 full run = 44 units; spent 4 + 32/3 + 20.
    savings = compute_savings(study)
    assert savings.configs == 44 and savings.spent == pytest.approx(4 + 32 / 3 + 20)
    assert savings.percent == pytest.approx(100 * (44 - savings.spent) / 44)
    assert f"({savings.percent:.1f}%)" in page and "21.2%" in page
    assert (mf_run / "plots" / "correlation.png").read_bytes().startswith(PNG_MAGIC)


def test_best_trial_is_chosen_at_the_top_rung_only(mf_run: Path) -> None:
    study = load_study(mf_run)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    overall = min(done, key=lambda t: t.value)
    assert overall.user_attrs["rung"] == 1  # the small rung's values are about half the top's
    best = min((t for t in done if t.user_attrs["rung"] == TOP), key=lambda t: t.value)
    assert select_best(study).trial.number == best.number
    text = (mf_run / "best.yaml").read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert f"trial {best.number}," in header[0] and "top rung 'full'" in header[1]
    assert yaml.safe_load(text) == best.user_attrs["config"]
    page = (mf_run / "report.html").read_text()
    assert f"<b>Best trial #{best.number}</b>" in page
    top_rows = page.split("<h3>Top trials</h3>")[1].split("</table>")[0]
    assert (
        f"<td>{overall.number}</td>" not in top_rows
    )  # lower-rung values are not ranked with the top's


def test_trials_csv_has_the_fidelity_columns(mf_run: Path) -> None:
    with (mf_run / "trials.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 36 + 32 + 20
    for key in ["rung", "rung_name", "config_id", "bracket", "parent_trial", "source", "job_cost"]:
        assert key in rows[0], key
    last = rows[-1]
    assert (
        last["rung"] == "2"
        and last["rung_name"] == "full"
        and last["bracket"] == "1"
        and float(last["job_cost"]) == 1.0
    )
    # Its parent is the same config's run at the small rung.
    parent = rows[int(last["parent_trial"])]
    assert parent["config_id"] == last["config_id"] and parent["rung"] == "1"


def test_no_warning_when_promotions_relied_on_faithful_rungs(
    mf_run: Path, faithful: optuna.Study
) -> None:
    report = correlate_study(faithful, n_bootstrap=300)
    summaries = rung_summaries(faithful)
    assert [s.promoted for s in summaries] == [24, 20, 0]
    assert rung_warnings(summaries, report) == []
    noisy = load_study(mf_run)
    (warning,) = rung_warnings(rung_summaries(noisy), correlate_study(noisy, n_bootstrap=300))
    assert "'tiny'" in warning and "'small'" in warning.split("Recommendation")[1]


# --------------------------------------------------------------------------- epochs of ordinary studies


def _epoch_study(storage: str, seed: int = 0) -> optuna.Study:
    """A non-MF study: epoch 1 is noise, epoch 2 tracks the final value closely, 4 epochs in all."""
    rng = np.random.default_rng(seed)
    memory = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=memory, study_name="epochs")
    for number in range(16):
        final = float(0.1 + 0.5 * rng.random())
        curve = {
            1: float(rng.uniform(0.5, 1.0)),
            2: final + 0.2 + float(rng.normal(0, 0.01)),
            3: final + 0.05,
            4: final,
        }
        pruned = number in (3, 7)
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
                value=None if pruned else final,
                params={"optim.lr": 1e-3},
                distributions={"optim.lr": LR},
                intermediate_values={e: v for e, v in curve.items() if not pruned or e <= 2},
            )
        )
    optuna.copy_study(from_study_name="epochs", from_storage=memory, to_storage=storage)
    return optuna.load_study(study_name="epochs", storage=storage)


def test_epoch_mode_on_a_study_without_fidelity(tmp_path: Path) -> None:
    study = _epoch_study(f"sqlite:///{tmp_path / 's.db'}")
    report = correlate_study(study, n_bootstrap=300)
    assert report.mode == "epochs" and report.top_name == "final" and report.n_top == 14
    # The last epoch costs a full run, so it is no proxy.
    assert [rc.name for rc in report.rungs] == ["epoch 1", "epoch 2", "epoch 3"]
    assert [rc.n_pairs for rc in report.rungs] == [14, 14, 14]  # complete trials only
    assert [rc.cost for rc in report.rungs] == pytest.approx([0.25, 0.5, 0.75])
    assert report.rungs[1].stats.spearman > 0.9 and report.rungs[
        2
    ].stats.spearman == pytest.approx(1.0)
    assert not report.rungs[0].trustworthy(0.7)
    assert (
        report.recommendation.name == "epoch 2"
        and "pruner may act from epoch 2" in report.recommendation.text
    )
    # Its trials.csv has no multi-fidelity columns.
    with write_trials_csv(study, tmp_path / "t.csv").open(newline="") as fh:
        header = next(csv.reader(fh))
    assert "wer" not in header and "value" in header
    assert not {"rung", "config_id", "bracket", "job_cost"} & set(header)


def test_epoch_mode_reads_the_history_attr_of_a_multi_objective_study(tmp_path: Path) -> None:
    # Multi-objective studies have no intermediate values: per-epoch WER is in `history`.
    study = make_study(f"sqlite:///{tmp_path / 's.db'}", "mo", multi=True)
    report = correlate_study(study, n_bootstrap=200)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert (
        report.mode == "epochs" and report.metric == "wer" and report.n_top == len(complete) == 8
    )
    assert [rc.name for rc in report.rungs] == ["epoch 1", "epoch 2", "epoch 3"]
    assert all(rc.stats.spearman > 0.9 for rc in report.rungs)
    # Another metric from the history rows: loss, final value from its last epoch.
    loss = correlate_study(study, metric="loss", n_bootstrap=0)
    assert loss.metric == "loss" and loss.rungs[0].pairs[0].top == pytest.approx(
        2 * complete[0].user_attrs["history"][-1]["wer"]
    )


# --------------------------------------------------------------------------- errors


def test_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["correlate", str(empty)]) == 1
    assert "no study storage in run directory" in capsys.readouterr().err
    assert main(["correlate", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err

    # An MF study whose configs never reached the top rung.
    low = tmp_path / "low"
    low.mkdir()
    builder = _Builder("low", RUNGS)
    for c in range(6):
        builder.add(c, 0, 0, 1e-3, 0.5 + c / 10)
    builder.save(f"sqlite:///{low / 'study.db'}")
    assert main(["correlate", str(low)]) == 1
    err = capsys.readouterr().err
    assert "no complete trial with a 'wer' value at its top rung 'full'" in err
    with pytest.raises(ValueError, match="no complete trial at its top rung 'full'"):
        write_best_yaml(load_study(low), low / "best.yaml")
    # The report still builds and says why there are no correlations.
    page = report_command(low).read_text()
    assert "No rung correlations" in page and not (low / "best.yaml").exists()

    # A plain study without per-epoch values, and bad options.
    plain = tmp_path / "plain"
    plain.mkdir()
    optuna.create_study(storage=f"sqlite:///{plain / 'study.db'}", study_name="plain").optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=3
    )
    assert main(["correlate", str(plain)]) == 1
    assert "is not a multi-fidelity study" in capsys.readouterr().err
    assert main(["correlate", str(low), "--threshold", "2"]) == 1
    assert "threshold: expected a Spearman correlation in [-1, 1]" in capsys.readouterr().err
    assert main(["correlate", str(low), "--study", "other"]) == 1
    assert "the storage holds: low" in capsys.readouterr().err
