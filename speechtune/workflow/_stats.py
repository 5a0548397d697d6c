"""Does the winner beat the baseline beyond seed noise? (the validate stage's test)

After the search, the top configs and the baseline are each trained with a few seeds (3 by
default). The metric is an error rate: LOWER IS BETTER. The winner beats the baseline "beyond seed
noise" when Welch's one-sided t-test (unequal variances; H1: the candidate's mean is lower)
rejects at ``alpha``. Welch's rather than Student's test because a narrowly tuned config and the
baseline need not vary equally across seeds. Cases where the test cannot run are decided as
stated in :func:`seed_noise_test`, and every result says in one sentence what was decided and why.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

__all__ = [
    "METHOD_MEANS",
    "METHOD_NONE",
    "METHOD_WELCH",
    "SeedTest",
    "mean_std",
    "seed_noise_test",
]

METHOD_WELCH = "welch_t_one_sided"  # scipy.stats.ttest_ind(equal_var=False, alternative="less")
METHOD_MEANS = "means_zero_variance"  # both groups identical across seeds: the means decide
METHOD_NONE = "none_too_few_seeds"  # a group with one value has no spread to test against


@dataclass(frozen=True)
class SeedTest:
    """The outcome of :func:`seed_noise_test`.

    Attributes:
        method: :data:`METHOD_WELCH`, :data:`METHOD_MEANS` or :data:`METHOD_NONE`.
        statistic: Welch's t (candidate minus baseline; negative = candidate lower), else None.
        p_value: one-sided p for "the candidate's mean is lower", else None.
        alpha: the significance level.
        significant: whether the candidate beats the baseline beyond seed noise.
        candidate_mean, candidate_std, baseline_mean, baseline_std: per group, std with ddof=1.
        n_candidate, n_baseline: seeds per group.
        statement: one plain sentence saying what was found and decided.
        df: Welch-Satterthwaite degrees of freedom when the t-test ran, else None.
    """

    method: str
    statistic: float | None
    p_value: float | None
    alpha: float
    significant: bool
    candidate_mean: float
    candidate_std: float
    baseline_mean: float
    baseline_std: float
    n_candidate: int
    n_baseline: int
    statement: str
    df: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        return dataclasses.asdict(self)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value).

    Raises:
        ValueError: no values, or a value that is not a finite number.
    """
    xs = _checked("values", values)
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1 or min(xs) == max(xs):
        # Seeds that agree exactly have no spread; fsum(3 * [0.2]) / 3 is 0.2 + 4e-17, and that
        # rounding must not read as noise (nor a mean that differs from every value).
        return xs[0], 0.0
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))


def seed_noise_test(
    candidate: Sequence[float],
    baseline: Sequence[float],
    *,
    alpha: float = 0.05,
    candidate_name: str = "winner",
    baseline_name: str = "baseline",
) -> SeedTest:
    """Whether ``candidate`` beats ``baseline`` beyond seed noise (lower is better).

    Args:
        candidate: the metric of the candidate config, one value per seed.
        baseline: the metric of the baseline, one value per seed.
        alpha: significance level, in (0, 1).
        candidate_name, baseline_name: how the statement names the two groups.

    Returns:
        A :class:`SeedTest`. The decision, by case:

        * both groups have >= 2 values and some spread: Welch's one-sided t-test; significant
          iff ``p < alpha``;
        * both groups have >= 2 values and zero spread (every seed gave the same value): no
          t-test is possible, but there is no seed noise either, so significant iff the
          candidate's mean is lower (:data:`METHOD_MEANS`);
        * either group has a single value: its seed noise is unknown, so no test is possible and
          the result is not significant (:data:`METHOD_NONE`).

    Raises:
        ValueError: an empty group, a value that is NaN, infinite or not a number (the message
            names it), or ``alpha`` outside (0, 1).
    """
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    cand = _checked(candidate_name, candidate)
    base = _checked(baseline_name, baseline)
    c_mean, c_std = mean_std(cand)
    b_mean, b_std = mean_std(base)
    nc, nb = len(cand), len(base)
    diff = c_mean - b_mean
    c_text, b_text = (
        f"{candidate_name} {_num(c_mean)} ± {_num(c_std)}",
        f"{baseline_name} {_num(b_mean)} ± {_num(b_std)}",
    )
    if nc == nb:
        summary = f"{c_text} vs {b_text} ({nc} {_seeds(nc)}{' each' if nc > 1 else ''})"
    else:
        summary = f"{c_text} ({nc} {_seeds(nc)}) vs {b_text} ({nb} {_seeds(nb)})"
    direction = (
        "equal means" if diff == 0 else f"{'lower' if diff < 0 else 'higher'} by {_num(abs(diff))}"
    )
    common: dict[str, Any] = {
        "alpha": float(alpha),
        "candidate_mean": c_mean,
        "candidate_std": c_std,
        "baseline_mean": b_mean,
        "baseline_std": b_std,
        "n_candidate": nc,
        "n_baseline": nb,
    }
    if nc < 2 or nb < 2:
        short = " and ".join(n for n, k in ((candidate_name, nc), (baseline_name, nb)) if k < 2)
        statement = (
            f"{summary}: {direction}, but {short} has a single seed, so seed noise cannot be estimated "
            f"and no test is possible: not shown to beat the {baseline_name} beyond seed noise."
        )
        return SeedTest(METHOD_NONE, None, None, significant=False, statement=statement, **common)
    if c_std == 0 and b_std == 0:
        significant = diff < 0
        verdict = (
            f"beats the {baseline_name} beyond seed noise (the seeds show none)"
            if significant
            else f"does not beat the {baseline_name}"
        )
        statement = (
            f"{summary}: {direction}; every seed gave the same value in both groups, so no t-test is "
            f"possible and the means decide: {verdict}."
        )
        return SeedTest(
            METHOD_MEANS, None, None, significant=significant, statement=statement, **common
        )
    with warnings.catch_warnings():
        # One group whose seeds agree exactly: scipy's variance of it is ~1e-33, not 0, and it
        # warns of precision loss; against the other group's spread that rounding is immaterial.
        warnings.filterwarnings(
            "ignore", message="Precision loss occurred", category=RuntimeWarning
        )
        result = stats.ttest_ind(cand, base, equal_var=False, alternative="less")
    t, p, df = float(result.statistic), float(result.pvalue), float(result.df)
    significant = p < alpha
    verdict = (
        f"p = {_p(p)} < {alpha:g}: beats the {baseline_name} beyond seed noise"
        if significant
        else f"p = {_p(p)} >= {alpha:g}: does not beat the {baseline_name} beyond seed noise"
    )
    statement = (
        f"{summary}: {direction}, Welch's one-sided t-test t = {t:.3g}, df = {df:.3g}, {verdict}."
    )
    return SeedTest(
        METHOD_WELCH, t, p, significant=significant, statement=statement, df=df, **common
    )


def _checked(name: str, values: Sequence[float]) -> list[float]:
    """The values as floats; refuses an empty group and NaN, inf or non-numbers, naming the bad one."""
    xs = list(values)
    if not xs:
        raise ValueError(f"{name}: no values (need one per seed)")
    out = []
    for i, v in enumerate(xs):
        if isinstance(v, bool):
            # The same error as any other non-number below (callers catch ValueError).
            raise ValueError(f"{name}[{i}] = {v!r} is not a number")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name}[{i}] = {v!r} is not a number") from None
        if not math.isfinite(f):
            raise ValueError(f"{name}[{i}] = {v!r} is not finite (a failed or diverged run?)")
        out.append(f)
    return out


def _seeds(n: int) -> str:
    return "seed" if n == 1 else "seeds"


def _num(x: float) -> str:
    return f"{x:.3g}"


def _p(p: float) -> str:
    return f"{p:.2g}"
