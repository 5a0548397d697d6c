"""The validate stage's seed-noise test: Welch's one-sided t-test and its edge cases."""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats

from speechtune.workflow._stats import (
    METHOD_MEANS,
    METHOD_NONE,
    METHOD_WELCH,
    SeedTest,
    mean_std,
    seed_noise_test,
)


def test_mean_std_uses_sample_std_and_zero_for_one_value() -> None:
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # ddof=1: sqrt((1 + 0 + 1) / 2)
    assert mean_std([0.25]) == (0.25, 0.0)
    mean, std = mean_std([0.1, 0.4])
    assert mean == pytest.approx(0.25) and std == pytest.approx(math.sqrt(0.045))
    with pytest.raises(ValueError, match="no values"):
        mean_std([])


def test_clearly_separated_groups_are_significant() -> None:
    result = seed_noise_test([0.212, 0.204, 0.220], [0.305, 0.294, 0.316])
    assert result.method == METHOD_WELCH
    assert result.significant is True
    assert result.statistic is not None and result.statistic < 0  # candidate minus baseline
    assert result.p_value is not None and result.p_value < 0.001
    assert (result.n_candidate, result.n_baseline) == (3, 3)
    assert result.candidate_mean == pytest.approx(0.212) and result.baseline_mean == pytest.approx(
        0.305
    )
    text = result.statement
    assert text.startswith(
        "winner 0.212 ± 0.008 vs baseline 0.305 ± 0.011 (3 seeds each): lower by 0.093"
    )
    assert "Welch's one-sided t-test" in text and "< 0.05" in text
    assert text.endswith("beats the baseline beyond seed noise.")


def test_overlapping_noisy_groups_are_not_significant() -> None:
    result = seed_noise_test([0.30, 0.26, 0.33], [0.31, 0.27, 0.34], alpha=0.05)
    assert result.method == METHOD_WELCH
    assert result.significant is False
    assert (
        result.p_value is not None and 0.05 < result.p_value < 0.5
    )  # lower, but well within the noise
    assert "lower by 0.01" in result.statement
    assert ">= 0.05: does not beat the baseline beyond seed noise." in result.statement


def test_worse_candidate_is_not_significant_and_said_to_be_higher() -> None:
    result = seed_noise_test([0.35, 0.36, 0.34], [0.30, 0.31, 0.29])
    assert result.significant is False
    assert (
        result.p_value is not None and result.p_value > 0.99
    )  # one-sided: "lower" is implausible
    assert "higher by 0.05" in result.statement


def test_p_value_matches_hand_computed_welch_t_and_df() -> None:
    cand, base = [0.20, 0.22, 0.21, 0.19], [0.25, 0.21, 0.27]
    mc, mb = sum(cand) / 4, sum(base) / 3
    vc = sum((x - mc) ** 2 for x in cand) / 3
    vb = sum((x - mb) ** 2 for x in base) / 2
    se2c, se2b = vc / 4, vb / 3
    t = (mc - mb) / math.sqrt(se2c + se2b)
    df = (se2c + se2b) ** 2 / (se2c**2 / 3 + se2b**2 / 2)  # Welch-Satterthwaite
    p = stats.t.cdf(t, df)  # one-sided, H1: candidate lower
    result = seed_noise_test(cand, base)
    assert result.statistic == pytest.approx(t, rel=1e-12)
    assert result.df == pytest.approx(df, rel=1e-12)
    assert result.p_value == pytest.approx(p, rel=1e-10)
    # By hand: means 0.205 and 0.24333, variances 1.6667e-4 and 9.3333e-4, so t = -0.038333 /
    # sqrt(4.1667e-5 + 3.1111e-4) = -2.0409 and df = 1.2445e-7 / 4.8974e-8 = 2.5412.
    assert (round(t, 4), round(df, 4), round(float(p), 4)) == (-2.0409, 2.5412, 0.0751)
    assert result.significant is False  # p ~ 0.075: not at 0.05 ...
    assert seed_noise_test(cand, base, alpha=0.1).significant is True  # ... but at 0.1
    assert "(4 seeds) vs baseline" in result.statement and "(3 seeds)" in result.statement


def test_welch_runs_when_only_one_group_has_zero_spread() -> None:
    result = seed_noise_test([0.20, 0.20, 0.20], [0.30, 0.31, 0.29])
    assert result.method == METHOD_WELCH and result.significant is True
    assert result.candidate_std == 0.0


def test_too_few_seeds_means_no_test() -> None:
    result = seed_noise_test([0.10], [0.30, 0.31, 0.29])
    assert result.method == METHOD_NONE
    assert result.significant is False
    assert result.statistic is None and result.p_value is None and result.df is None
    assert result.n_candidate == 1 and result.candidate_std == 0.0
    assert (
        "winner has a single seed" in result.statement
        and "no test is possible" in result.statement
    )
    both = seed_noise_test([0.1], [0.3], candidate_name="fine-12")
    assert "fine-12 and baseline has a single seed" in both.statement
    assert both.statement.startswith("fine-12 0.1 ± 0 vs baseline 0.3 ± 0 (1 seed):")


def test_zero_variance_in_both_groups_is_decided_by_the_means() -> None:
    better = seed_noise_test([0.2, 0.2, 0.2], [0.3, 0.3, 0.3])
    assert better.method == METHOD_MEANS and better.significant is True
    assert better.p_value is None and better.statistic is None
    assert "the means decide" in better.statement and "lower by 0.1" in better.statement
    same = seed_noise_test([0.3, 0.3], [0.3, 0.3])
    assert same.method == METHOD_MEANS and same.significant is False
    assert "equal means" in same.statement
    worse = seed_noise_test([0.4, 0.4], [0.3, 0.3])
    assert worse.significant is False and "higher by 0.1" in worse.statement


@pytest.mark.parametrize(
    ("candidate", "baseline", "named"),
    [
        ([0.2, float("nan"), 0.21], [0.3, 0.3], r"winner\[1\] = nan"),
        ([0.2, 0.21], [0.3, float("inf")], r"baseline\[1\] = inf"),
        ([0.2, "x"], [0.3, 0.31], r"winner\[1\] = 'x' is not a number"),
        ([], [0.3, 0.31], "winner: no values"),
    ],
)
def test_bad_values_raise_and_name_the_value(candidate: list, baseline: list, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        seed_noise_test(candidate, baseline)


def test_alpha_must_be_a_probability() -> None:
    for alpha in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="alpha"):
            seed_noise_test([0.2, 0.21], [0.3, 0.31], alpha=alpha)


def test_as_dict_is_json_ready_and_complete() -> None:
    result = seed_noise_test([0.21, 0.2, 0.22], [0.3, 0.31, 0.29])
    d = json.loads(json.dumps(result.as_dict()))
    for key in (
        "method",
        "statistic",
        "p_value",
        "alpha",
        "significant",
        "candidate_mean",
        "candidate_std",
        "baseline_mean",
        "baseline_std",
        "n_candidate",
        "n_baseline",
        "statement",
    ):
        assert key in d
    assert d["significant"] is True and d["alpha"] == 0.05
    assert SeedTest(**d) == result  # nothing is lost on the way through JSON
