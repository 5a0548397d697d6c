"""Multi-fidelity synthetic problems with a learning-curve-like budget axis.

Every problem maps a config (a flat dict ``{"x0": .., "x1": .., ...}``) and a budget ``b`` in
``[1, max_budget]`` ("epochs") to a value to minimise. The budget enters through the fidelity

    z(b) = log(b) / log(max_budget)        (z = 0 after one epoch, 1 at full budget)

and the value at budget ``b`` is

    value(x, b) = f(x; z) + lc_scale * (1 - z)**2 * h(u) + noise_scale * (1 - z) * eps(x, b)

where

* ``f(x; z)`` is a published multi-fidelity function whose bias vanishes at ``z = 1``:
  - Hartmann 3 / Hartmann 6 with shifted weights (Kandasamy et al. 2017, "Multi-fidelity Bayesian
    optimisation with continuous approximations" (BOCA), Sec. 5: ``alpha'(z) = alpha - 0.1 (1 - z)``):
    ``f(x; z) = -sum_i alpha'_i(z) * exp(-sum_j A_ij (x_j - P_ij)**2)`` on ``[0, 1]^d``;
  - Branin with biased coefficients (same paper): ``b(z) = 5.1/(4 pi^2) - 0.01 (1 - z)``,
    ``c(z) = 5/pi - 0.1 (1 - z)``, ``t(z) = 1/(8 pi) + 0.05 (1 - z)`` in
    ``f = (x1 - b x0^2 + c x0 - 6)^2 + 10 (1 - t) cos(x0) + 10`` on ``[-5, 10] x [0, 15]``.
* ``h(u) = mean_j (u_j - c_j)**2`` over the config normalised to ``u in [0, 1]^d`` is a "slow
  starter" term: configs far from the point ``c`` learn slowly. The weight ``(1 - z)**2`` fades it
  out fast, like a learning curve. It exists because the published biases alone leave the ranking
  of random configs almost unchanged (Spearman > 0.99 at z = 0, measured), whereas in real
  training early epochs rank configs imperfectly (public learning-curve benchmarks: Spearman about
  0 to 0.5 after the first epoch, about 0.8 a few epochs later). ``c`` is placed in a poor region
  of ``f`` so that the cheapest budget misleads; ``lc_scale`` was chosen so that Spearman(b=1,
  b=max) over random configs is about 0.35-0.6 and Spearman(b=3, b=max) about 0.65-0.85.
* ``eps(x, b)`` is a standard normal drawn from a generator seeded by (problem seed, config,
  budget): the same evaluation always returns the same value, and the noise vanishes at full
  budget so the known global optimum is exact.

``prior_good`` sits near the global argmin; ``prior_bad`` sits at ``c``, a poor region at full
budget whose cheap budgets look no worse than average (the slow-starter term is zero there).
Priors are ``{param: (default, width)}`` with the width in units of the param's range (the
contract of :class:`speechtune.tuning.space.Prior`).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

import numpy as np

from speechtune.tuning.space import SearchSpace, parse_space

__all__ = [
    "Branin",
    "Hartmann3",
    "Hartmann6",
    "Problem",
    "SyntheticProblem",
    "fidelity_level",
]

# Number of uniform random configs behind each problem's `reference` value.
REFERENCE_SAMPLES = 20_000
REFERENCE_SEED = 12345


@runtime_checkable
class Problem(Protocol):
    """What the harness needs from a benchmark problem."""

    name: str
    space: SearchSpace
    max_budget: int
    optimum: float
    reference: float
    prior_good: dict[str, tuple[Any, float]]
    prior_bad: dict[str, tuple[Any, float]]
    #: True when a larger budget continues a smaller one (epochs); False when it is a new
    #: training (a larger share of the data), so every evaluation is paid in full.
    continues: bool
    #: True when an evaluation at any budget counts towards the best found (YAHPO's protocol);
    #: False when only full-budget values do (a value after 3 epochs is not a final score).
    incumbent_any_fidelity: bool
    #: The family the problem belongs to ("yahpo", "synthetic", "tabular"): the report averages
    #: each family's problems into one suite table.
    suite: str

    def evaluate(self, config: Mapping[str, Any], budget: float) -> float:
        """The value (lower is better) of ``config`` trained for ``budget`` epochs."""
        ...

    def default_budget(self) -> float:
        """The run budget in full-fidelity evaluations when the benchmark gives none."""
        ...


def fidelity_level(budget: float, max_budget: float) -> float:
    """``z(b) = log(b) / log(max_budget)``: 0 at one epoch, 1 at the full budget."""
    if max_budget <= 1:
        return 1.0
    return min(1.0, max(0.0, math.log(budget) / math.log(max_budget)))


def _check_budget(name: str, budget: Any, max_budget: int) -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: budget must be a number in [1, {max_budget}] (got {budget!r})")
    b = float(budget)
    if not (1.0 <= b <= max_budget * (1 + 1e-9)):
        raise ValueError(f"{name}: budget must be in [1, {max_budget}] (got {budget!r})")
    return min(b, float(max_budget))


class SyntheticProblem:
    """A multi-fidelity synthetic function over a box (see the module docstring).

    Subclasses set the class attributes and implement :meth:`base_values`.

    Args:
        max_budget: the full budget in "epochs" (27 = Hyperband's 1, 3, 9, 27 ladder).
        seed: seeds the evaluation noise; the same (seed, config, budget) gives the same value.
    """

    name: str = "synthetic"
    continues = True
    incumbent_any_fidelity = False
    suite = "synthetic"
    lower: tuple[float, ...] = ()
    upper: tuple[float, ...] = ()
    optimum: float = 0.0
    argmin: tuple[float, ...] = ()
    slow_center: tuple[float, ...] = ()  # `c` of the slow-starter term, normalised to [0, 1]
    lc_scale: float = 0.0
    noise_scale: float = 0.0
    good_default: tuple[float, ...] = ()
    good_width: float = 0.1
    bad_width: float = 0.1

    def default_budget(self) -> float:
        """40 full evaluations: the budget of the project's synthetic benchmark."""
        return 40.0

    def __init__(self, max_budget: int = 27, seed: int = 0) -> None:
        if not isinstance(max_budget, int) or max_budget < 1:
            raise ValueError(f"{self.name}: max_budget must be an int >= 1 (got {max_budget!r})")
        self.max_budget = max_budget
        self.seed = int(seed)
        self.names = tuple(f"x{i}" for i in range(len(self.lower)))
        self.space: SearchSpace = parse_space(
            {
                n: {"type": "float", "low": lo, "high": hi}
                for n, lo, hi in zip(self.names, self.lower, self.upper)
            }
        )
        self._lo = np.asarray(self.lower, dtype=float)
        self._span = np.asarray(self.upper, dtype=float) - self._lo

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_budget={self.max_budget}, seed={self.seed})"

    # -- the function -----------------------------------------------------------------------

    def base_values(self, x: np.ndarray, z: float) -> np.ndarray:
        """``f(x; z)`` for a batch ``x`` of shape (n, d) in the problem's own units."""
        raise NotImplementedError

    def values(self, x: np.ndarray, budget: float, noise: np.ndarray | None = None) -> np.ndarray:
        """Vectorised value at ``budget`` for a batch ``x`` (n, d); ``noise``: standard normals or None."""
        x = np.atleast_2d(np.asarray(x, dtype=float))
        z = fidelity_level(_check_budget(self.name, budget, self.max_budget), self.max_budget)
        u = (x - self._lo) / self._span
        slow = np.mean((u - np.asarray(self.slow_center)) ** 2, axis=1)
        out = self.base_values(x, z) + self.lc_scale * (1.0 - z) ** 2 * slow
        if noise is not None and z < 1.0:
            out = out + self.noise_scale * (1.0 - z) * noise
        return out

    def evaluate(self, config: Mapping[str, Any], budget: float) -> float:
        """The value of ``config`` after ``budget`` epochs (deterministic; lower is better).

        Raises:
            KeyError: ``config`` lacks one of the problem's params.
            ValueError: ``budget`` is outside ``[1, max_budget]``.
        """
        missing = [n for n in self.names if n not in config]
        if missing:
            raise KeyError(f"{self.name}: config lacks param(s) {missing} (has {sorted(config)})")
        x = np.array([[float(config[n]) for n in self.names]])
        b = _check_budget(self.name, budget, self.max_budget)
        return float(self.values(x, b, np.array([self._noise(x[0], b)]))[0])

    def _noise(self, x: np.ndarray, budget: float) -> float:
        # A digest of the exact float bits, not Python's hash(): the value must be the same in
        # every process (the harness runs seeds in worker processes).
        digest = hashlib.blake2b(
            struct.pack(f"<{len(x) + 1}d", *x, budget), digest_size=8
        ).digest()
        rng = np.random.default_rng([self.seed, int.from_bytes(digest, "little")])
        return float(rng.standard_normal())

    # -- benchmark metadata -----------------------------------------------------------------

    @cached_property
    def reference(self) -> float:
        """Mean full-budget value of uniform random configs (fixed seed): regret 1.0 means 'random'."""
        rng = np.random.default_rng(REFERENCE_SEED)
        x = self._lo + rng.random((REFERENCE_SAMPLES, len(self.names))) * self._span
        return float(np.mean(self.values(x, self.max_budget)))

    @property
    def prior_good(self) -> dict[str, tuple[Any, float]]:
        """A prior near the global argmin: ``{param: (default, width)}``."""
        return {n: (float(v), self.good_width) for n, v in zip(self.names, self.good_default)}

    @property
    def prior_bad(self) -> dict[str, tuple[Any, float]]:
        """A misleading prior: centred at ``c``, poor at full budget but unpenalised at cheap budgets."""
        c = self._lo + np.asarray(self.slow_center) * self._span
        return {n: (float(v), self.bad_width) for n, v in zip(self.names, c)}

    def sample_uniform(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` uniform random points of the box, shape (n, d)."""
        return self._lo + rng.random((n, len(self.names))) * self._span

    def config(self, x: Sequence[float]) -> dict[str, float]:
        """A config dict for a point ``x``."""
        return {n: float(v) for n, v in zip(self.names, x)}


def _hartmann(x: np.ndarray, a: np.ndarray, p: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    dist = np.sum(a[None] * (x[:, None, :] - p[None]) ** 2, axis=-1)
    return -np.sum(alpha[None] * np.exp(-dist), axis=-1)


_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
# BOCA (Kandasamy et al. 2017): alpha'(z) = alpha - 0.1 (1 - z).
_ALPHA_SHIFT = 0.1


class Hartmann3(SyntheticProblem):
    """Hartmann 3 on [0, 1]^3; global min -3.86278 at (0.114614, 0.555649, 0.852547)."""

    name = "hartmann3"
    lower = (0.0, 0.0, 0.0)
    upper = (1.0, 1.0, 1.0)
    optimum = -3.86278
    argmin = (0.114614, 0.555649, 0.852547)
    slow_center = (0.9, 0.1, 0.2)
    lc_scale = 7.0
    noise_scale = 0.1
    good_default = (0.15, 0.5, 0.8)
    A = np.array([[3.0, 10, 30], [0.1, 10, 35], [3.0, 10, 30], [0.1, 10, 35]])
    P = 1e-4 * np.array(
        [[3689, 1170, 2673], [4699, 4387, 7470], [1091, 8732, 5547], [381, 5743, 8828]]
    )

    def base_values(self, x: np.ndarray, z: float) -> np.ndarray:
        return _hartmann(x, self.A, self.P, _ALPHA - _ALPHA_SHIFT * (1.0 - z))


class Hartmann6(SyntheticProblem):
    """Hartmann 6 on [0, 1]^6; global min -3.32237 at (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573)."""

    name = "hartmann6"
    lower = (0.0,) * 6
    upper = (1.0,) * 6
    optimum = -3.32237
    argmin = (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573)
    slow_center = (0.8, 0.85, 0.5, 0.75, 0.7, 0.3)
    lc_scale = 5.0
    noise_scale = 0.04
    good_default = (0.25, 0.2, 0.45, 0.3, 0.3, 0.6)
    A = np.array(
        [
            [10, 3, 17, 3.5, 1.7, 8],
            [0.05, 10, 17, 0.1, 8, 14],
            [3, 3.5, 1.7, 10, 17, 8],
            [17, 8, 0.05, 10, 0.1, 14],
        ]
    )
    P = 1e-4 * np.array(
        [
            [1312, 1696, 5569, 124, 8283, 5886],
            [2329, 4135, 8307, 3736, 1004, 9991],
            [2348, 1451, 3522, 2883, 3047, 6650],
            [4047, 8828, 8732, 5743, 1091, 381],
        ]
    )

    def base_values(self, x: np.ndarray, z: float) -> np.ndarray:
        return _hartmann(x, self.A, self.P, _ALPHA - _ALPHA_SHIFT * (1.0 - z))


class Branin(SyntheticProblem):
    """Branin on [-5, 10] x [0, 15]; global min 0.397887 at (-pi, 12.275), (pi, 2.275), (9.42478, 2.475)."""

    name = "branin"
    lower = (-5.0, 0.0)
    upper = (10.0, 15.0)
    optimum = 0.397887
    argmin = (math.pi, 2.275)
    slow_center = (1 / 3, 0.0)  # (0, 0): full-budget value 55.6, about the mean of random configs
    lc_scale = 700.0
    noise_scale = 5.0  # about 0.1 x the std of f over random configs, as for the others
    good_default = (3.0, 2.6)

    def base_values(self, x: np.ndarray, z: float) -> np.ndarray:
        # BOCA's biased Branin: all three coefficient biases vanish at z = 1.
        b = 5.1 / (4 * math.pi**2) - 0.01 * (1.0 - z)
        c = 5 / math.pi - 0.1 * (1.0 - z)
        t = 1 / (8 * math.pi) + 0.05 * (1.0 - z)
        x0, x1 = x[:, 0], x[:, 1]
        return (x1 - b * x0**2 + c * x0 - 6) ** 2 + 10 * (1 - t) * np.cos(x0) + 10
