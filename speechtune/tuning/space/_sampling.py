"""Sampling a search space without Optuna's samplers: uniform, from priors, near an incumbent.

The multi-fidelity engine proposes configs itself (random, prior-guided, local moves around the
best config so far, warm starts from an earlier run). Every function here goes through
:meth:`SearchSpace.sample` with a small stand-in trial whose ``suggest_*`` draw from the
distribution asked for, so ``when`` conditions, derived values and constraint repair behave
exactly as in an Optuna study. Each returns ``(params, config)``:

* ``params``: the RAW values Optuna would store for the suggested (active) params: categorical
  values as Optuna sees them (a list choice is its YAML text). ``optuna.trial.FixedTrial(params)``
  or ``study.enqueue_trial(params)`` reproduces ``config``.
* ``config``: the flat config (suggested, fixed and derived values; constraints repaired).

All randomness comes from the numpy ``Generator`` passed in: the same seed gives the same configs.

Densities (:func:`prior_log_density`) are taken in the coordinate each param is searched in:
log space for ``log: true`` params, the value itself otherwise; a param on a grid (ints, floats
with ``step``) has a probability mass per grid value. The uniform reference uses the same
coordinates, so ``prior_log_density(s, p) - prior_log_density(s, p, uniform=True)`` is the log
likelihood ratio of the prior against uniform sampling for the params that carry a prior.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from speechtune.config import ConfigError, ConfigProblem
from speechtune.tuning.space._params import (
    CategoricalParam,
    ConstraintViolation,
    FloatParam,
    IntParam,
    Param,
    Prior,
    param_with_prior,
    prior_problems,
    same_value,
)
from speechtune.tuning.space._space import SearchSpace

log = logging.getLogger(__name__)


MAX_TRIES = 100  # fresh draws before an unrepairable constraint violation is given up on


_STD_NORMAL = NormalDist()


_P_MIN = 1e-300  # inverse-CDF arguments are kept inside (0, 1)


Params = dict[str, Any]


Config = dict[str, Any]


_Draw = Callable[[Param], Any]  # a tunable param -> its raw (Optuna) value


@dataclass(frozen=True)
class _Axis:
    """A numeric param seen as a continuous coordinate (log space when ``log``) and its grid.

    A param on a grid (ints; floats with ``step``) is sampled continuously over the union of
    its grid cells, ``[low - step/2, high + step/2]``, then rounded to the nearest grid value:
    uniform sampling then gives every grid value the same chance (for log ints, Optuna's own
    log-uniform rounding), and a prior gives each grid value the mass of its cell.
    """

    param: FloatParam | IntParam

    @property
    def step(self) -> float | None:
        return None if self.param.step is None else float(self.param.step)

    def coord(self, x: float) -> float:
        if self.param.log:
            if x <= 0:
                raise ValueError(f"{self.param.name}: log-scaled value must be > 0 (got {x})")
            return math.log(x)
        return float(x)

    def natural(self, y: float) -> float:
        return math.exp(y) if self.param.log else y

    @property
    def domain(self) -> tuple[float, float]:
        """Where the continuous coordinate lives (grid cells included)."""
        low, high, step = self.param.low, self.param.high, self.step
        if step is None:
            return self.coord(low), self.coord(high)
        return self.coord(low - step / 2), self.coord(high + step / 2)

    @property
    def span(self) -> float:
        """``high - low`` in the coordinate: the unit of prior widths."""
        return self.coord(self.param.high) - self.coord(self.param.low)

    def snap(self, x: float) -> int | float:
        """The value of the param nearest to ``x`` (on its grid, inside ``[low, high]``)."""
        low, high, step = self.param.low, self.param.high, self.step
        if step is None:
            value = min(max(float(x), low), high)
            return float(value)
        n = int(round((high - low) / step))
        k = min(max(math.floor((x - low) / step + 0.5), 0), n)
        if isinstance(self.param, IntParam):
            return int(self.param.low + k * self.param.step)
        return float(min(low + k * step, high))

    def cell(self, value: float) -> tuple[float, float]:
        """The coordinate interval that rounds to grid value ``value``."""
        step = self.step
        assert step is not None
        lo, hi = self.domain
        return max(self.coord(value - step / 2), lo), min(self.coord(value + step / 2), hi)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a value the param can take (within float tolerance)."""
        if not (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
        ):
            return False
        tol = 1e-9 * max(1.0, abs(value))
        if not self.param.low - tol <= value <= self.param.high + tol:
            return False
        return abs(self.snap(value) - value) <= tol if self.step is not None else True

    # -- sampling

    def uniform(self, rng: np.random.Generator) -> int | float:
        lo, hi = self.domain
        return self.snap(self.natural(lo + (hi - lo) * float(rng.random())))

    def normal(self, centre: float, width: float, rng: np.random.Generator) -> int | float:
        """A normal around ``centre`` (std ``width x span``) truncated to the domain, snapped."""
        lo, hi = self.domain
        mu, sigma = self.coord(centre), width * self.span
        if sigma <= 0:  # a one-value range
            return self.snap(centre)
        pa, pb = _STD_NORMAL.cdf((lo - mu) / sigma), _STD_NORMAL.cdf((hi - mu) / sigma)
        u = pa + (pb - pa) * float(rng.random())
        z = _STD_NORMAL.inv_cdf(min(max(u, _P_MIN), 1.0 - 1e-16))
        return self.snap(self.natural(min(max(mu + sigma * z, lo), hi)))

    # -- densities

    def uniform_log_density(self, value: float) -> float:
        lo, hi = self.domain
        if self.step is None:
            return -math.log(hi - lo) if hi > lo else 0.0
        c_lo, c_hi = self.cell(value)
        return math.log((c_hi - c_lo) / (hi - lo))

    def normal_log_density(self, value: float, centre: float, width: float) -> float:
        lo, hi = self.domain
        mu, sigma = self.coord(centre), width * self.span
        if sigma <= 0:
            return 0.0
        z_lo, z_hi = (lo - mu) / sigma, (hi - mu) / sigma
        norm = _mass(z_lo, z_hi)
        if self.step is None:
            z = (self.coord(value) - mu) / sigma
            return -0.5 * z * z - math.log(sigma * math.sqrt(2 * math.pi)) - math.log(norm)
        c_lo, c_hi = self.cell(value)
        mass = _mass((c_lo - mu) / sigma, (c_hi - mu) / sigma)
        return math.log(mass / norm) if mass > 0 else -math.inf


def _mass(z1: float, z2: float) -> float:
    """``P(z1 < Z < z2)`` for a standard normal, taken on the side that keeps precision."""
    if z1 >= 0:  # both in the upper tail: difference of survival functions
        return _STD_NORMAL.cdf(-z1) - _STD_NORMAL.cdf(-z2)
    return _STD_NORMAL.cdf(z2) - _STD_NORMAL.cdf(z1)


def _encode(param: CategoricalParam, value: Any) -> tuple[bool, Any]:
    """``(found, raw)``: the Optuna value of a choice given as the choice or its encoded form."""
    for raw, enc in zip(param.choices, param.encoded()):
        if same_value(raw, value) or (same_value(enc, value) and type(enc) is type(value)):
            return True, enc
    return False, None


def _categorical_probs(param: CategoricalParam, favoured: Any, width: float) -> list[float]:
    """``favoured`` (encoded) gets ``max(1/k, 1 - width)``; the other choices share the rest."""
    encoded = param.encoded()
    k = len(encoded)
    top = max(1.0 / k, 1.0 - width)
    rest = (1.0 - top) / (k - 1) if k > 1 else 0.0
    return [
        top if same_value(e, favoured) and type(e) is type(favoured) else rest for e in encoded
    ]


def _choose(param: CategoricalParam, probs: list[float] | None, rng: np.random.Generator) -> Any:
    encoded = param.encoded()
    if probs is None:
        return encoded[int(rng.integers(len(encoded)))]
    # Inverse CDF on one uniform draw: the same number of draws whatever the probabilities.
    u, acc = float(rng.random()), 0.0
    for enc, p in zip(encoded, probs):
        acc += p
        if u < acc:
            return enc
    return encoded[-1]


def _uniform_draw(rng: np.random.Generator) -> _Draw:
    def draw(param: Param) -> Any:
        if isinstance(param, CategoricalParam):
            return _choose(param, None, rng)
        return _Axis(param).uniform(rng)  # type: ignore[arg-type]

    return draw


def _around(param: Param, centre: Any, width: float, rng: np.random.Generator) -> Any:
    """A draw concentrated on ``centre`` (a prior default or an incumbent's value)."""
    if isinstance(param, CategoricalParam):
        _, enc = _encode(param, centre)
        return _choose(param, _categorical_probs(param, enc, width), rng)
    return _Axis(param).normal(centre, width, rng)  # type: ignore[arg-type]


def _prior_draw(rng: np.random.Generator) -> _Draw:
    uniform = _uniform_draw(rng)

    def draw(param: Param) -> Any:
        prior = getattr(param, "prior", None)
        if prior is None:
            return uniform(param)
        return _around(param, prior.default, prior.width, rng)

    return draw


class _DrawTrial:
    """The part of an Optuna trial that :meth:`SearchSpace.sample` uses, drawing values itself.

    ``params`` collects the raw values in suggestion order, as ``FrozenTrial.params`` would.
    """

    def __init__(self, space: SearchSpace, draw: _Draw) -> None:
        self._space = space
        self._draw = draw
        self.params: Params = {}
        self.user_attrs: dict[str, Any] = {}

    def _suggest(self, name: str) -> Any:
        if name not in self.params:  # Optuna returns the first value for a repeated name
            self.params[name] = self._draw(self._space.params[name])
        return self.params[name]

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return self._suggest(name)

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        return self._suggest(name)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._suggest(name)

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


def _sample(
    space: SearchSpace, draw: _Draw, base: Mapping[str, Any] | None, what: str
) -> tuple[Params, Config]:
    """Sample define-by-run with ``draw``; an unrepairable constraint gets fresh draws."""
    last: ConstraintViolation | None = None
    for _ in range(MAX_TRIES):
        trial = _DrawTrial(space, draw)
        try:
            config = space.sample(trial, base)  # type: ignore[arg-type]
        except ConstraintViolation as exc:
            last = exc
            continue
        return dict(trial.params), config
    assert last is not None
    raise ConstraintViolation(
        f"{what}: no config satisfied the constraints in {MAX_TRIES} draws; last: {last}",
        last.constraint,
    )


def sample_uniform(
    space: SearchSpace, rng: np.random.Generator, base: Mapping[str, Any] | None = None
) -> tuple[Params, Config]:
    """A config drawn uniformly, as Optuna's RandomSampler would (priors ignored).

    Floats are uniform in ``[low, high]`` (log-uniform when ``log``); grid params and
    categoricals give each value the same chance (log ints: log-uniform, then rounded).

    Args:
        space: the search space.
        rng: the source of randomness.
        base: flat values for names outside the space; default ``space.base``.

    Returns:
        ``(params, config)``: raw Optuna values of the active tunable params, and the config.

    Raises:
        ConstraintViolation: no draw in :data:`MAX_TRIES` satisfied the constraints.
    """
    return _sample(space, _uniform_draw(rng), base, "uniform sampling")


def sample_prior(
    space: SearchSpace, rng: np.random.Generator, base: Mapping[str, Any] | None = None
) -> tuple[Params, Config]:
    """A config whose params with a prior are drawn from it; the others uniformly.

    Args and returns as :func:`sample_uniform`.

    Raises:
        ConstraintViolation: no draw in :data:`MAX_TRIES` satisfied the constraints.
    """
    return _sample(space, _prior_draw(rng), base, "prior sampling")


def prior_mode(
    space: SearchSpace, rng: np.random.Generator, base: Mapping[str, Any] | None = None
) -> tuple[Params, Config]:
    """The priors' own config: every param with a prior at its default, the others uniform.

    PriorBand and piBO evaluate it first: with a good prior (a recipe's tuned defaults) it is
    the best single guess there is, and with a misleading one it costs one config.

    Args and returns as :func:`sample_uniform`.

    Raises:
        ConstraintViolation: no draw in :data:`MAX_TRIES` satisfied the constraints.
    """
    uniform = _uniform_draw(rng)

    def draw(param: Param) -> Any:
        prior = getattr(param, "prior", None)
        if prior is None:
            return uniform(param)
        if isinstance(param, CategoricalParam):
            return _encode(param, prior.default)[1]
        return prior.default

    return _sample(space, draw, base, "the priors' defaults")


def complete_params(
    space: SearchSpace,
    params: Mapping[str, Any],
    rng: np.random.Generator,
    base: Mapping[str, Any] | None = None,
) -> tuple[Params, Config]:
    """Keep the given params exactly and draw the missing active ones from their prior (or uniformly).

    For a warm-start config from a different space, which may lack params this space adds.
    Values are used as given (clip them first: see :func:`load_warm_start`); categorical
    values may be the choice itself or its encoded form.

    Raises:
        ConstraintViolation: no draw in :data:`MAX_TRIES` satisfied the constraints.
    """
    fallback = _prior_draw(rng)

    def draw(param: Param) -> Any:
        if param.name in params:
            if isinstance(param, CategoricalParam):
                found, enc = _encode(param, params[param.name])
                return enc if found else fallback(param)
            return params[param.name]
        return fallback(param)

    return _sample(space, draw, base, "completing a config")


def _tunable(param: Param | None) -> bool:
    return isinstance(param, (FloatParam, IntParam, CategoricalParam))


def prior_log_density(
    space: SearchSpace, params: Mapping[str, Any], *, uniform: bool = False
) -> float:
    """Log density of ``params`` under the priors of the space.

    The sum runs over the params present in ``params`` (the active ones, for raw params from a
    trial) that carry a prior; params without a prior contribute 0, as do names the space does
    not tune. Continuous params contribute a log density in their search coordinate (log space
    when ``log``), grid params and categoricals a log probability.

    Args:
        space: the search space.
        params: raw param values (categoricals as Optuna stores them, or the choice itself).
        uniform: give the log density of the same params under uniform sampling instead (the
            reference: ``prior_log_density(s, p) - prior_log_density(s, p, uniform=True)`` is the
            log likelihood ratio of prior sampling against uniform sampling).

    Returns:
        The log density; ``-inf`` when a value is one the param cannot take.
    """
    total = 0.0
    for name, value in params.items():
        param = space.params.get(name)
        if not _tunable(param) or param.prior is None:  # type: ignore[union-attr]
            continue
        prior: Prior = param.prior  # type: ignore[union-attr]
        if isinstance(param, CategoricalParam):
            found, enc = _encode(param, value)
            if not found:
                return -math.inf
            if uniform:
                total -= math.log(len(param.choices))
                continue
            _, favoured = _encode(param, prior.default)
            probs = _categorical_probs(param, favoured, prior.width)
            p = next(
                q
                for e, q in zip(param.encoded(), probs)
                if same_value(e, enc) and type(e) is type(enc)
            )
            if p <= 0:
                return -math.inf
            total += math.log(p)
            continue
        axis = _Axis(param)  # type: ignore[arg-type]
        if not axis.contains(value):
            return -math.inf
        value = axis.snap(value)
        total += (
            axis.uniform_log_density(value)
            if uniform
            else axis.normal_log_density(value, prior.default, prior.width)
        )
    return total


def uniform_log_density(space: SearchSpace, params: Mapping[str, Any]) -> float:
    """``prior_log_density(space, params, uniform=True)``: the uniform reference."""
    return prior_log_density(space, params, uniform=True)


def with_priors(space: SearchSpace, priors: Mapping[str, Prior | None]) -> SearchSpace:
    """A copy of ``space`` whose named params carry the given priors (None removes one).

    Raises:
        ConfigError: a name that is not a tunable param of the space, or a prior that does not
            fit its param (every problem listed, keyed ``space.<name>.prior``).
    """
    problems: list[ConfigProblem] = []
    params = dict(space.params)
    for name, prior in priors.items():
        param = params.get(name)
        if param is None:
            problems.append(
                ConfigProblem(f"space.{name}.prior", "is not a param of the search space", prior)
            )
            continue
        if prior is not None:
            found = prior_problems(param, prior)
            if found:
                problems.extend(found)
                continue
        elif not _tunable(param):
            continue  # removing a prior that cannot exist
        params[name] = param_with_prior(param, prior)
    if problems:
        raise ConfigError(problems, "priors")
    return SearchSpace(params, space.constraints, space.base)
