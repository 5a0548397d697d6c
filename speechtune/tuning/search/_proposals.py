"""Where the engine's new configs come from: uniform draws, BOHB's TPE, or speechtune's mix.

:class:`Proposer` sees what the engine has measured (each config's value per rung, and which
rungs are trusted to rank configs like the top one) and returns a new config with its source.

``speechtune`` mixes four sources, each weighted by the evidence behind it:

* the **model**: a random forest with expected improvement (:mod:`._surrogate`; in a
  conditional space refined by a one-param-at-a-time local search), fitted on the
  highest trusted rung with at least ``d + 1`` values; its share grows with the observations
  (``1 - 10 / (10 + n)`` of what random draws leave);
* the **incumbent's neighbourhood**: small moves around the best config so far, which lead while
  the model has little data;
* the space's **priors** (PriorBand-style, Mallik et al., 2023), weighted by how well the prior
  has ranked the configs seen so far, so that a misleading prior fades; the priors' own config
  (every default) is the first proposal, as in PriorBand and piBO, and while it is the incumbent
  the moves around it count as prior draws (weighted the same way, the rest drawn uniformly);
* **uniform** draws: 20 % before there is a model, 10 % after.

Measured on the synthetic functions and the YAHPO rbv2_rpart instances (docs/benchmarks.md): the
forest beat multivariate TPE as the model, the incumbent's neighbourhood helped while data are
few, and 10 % uniform draws beat 5 % and 20 %.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from speechtune.tuning.search._jobs import _Config, _optuna_quiet
from speechtune.tuning.search._surrogate import ForestModel
from speechtune.tuning.space import (
    ConstraintViolation,
    SearchSpace,
    prior_log_density,
    prior_mode,
    sample_near,
    sample_neighbour,
    sample_prior,
    sample_uniform,
)

log = logging.getLogger(__name__)

#: Strategies whose new configs come from a model of the measurements.
MODEL_STRATEGIES = ("bohb", "speechtune")

#: Incumbent-neighbourhood draws: std as a fraction of each param's range (0.05 beat 0.1 and 0.2
#: on the synthetic benchmarks of benchmarks/search_efficiency.py).
LOCAL_SCALE = 0.05
#: The widest move tried when smaller ones only find configs already seen.
MAX_LOCAL_SCALE = 0.8

#: In a conditional space the forest's candidates are refined by a local search on expected
#: improvement (SMAC's: one-exchange moves, one param at a time; ForestModel._climb); a numeric
#: move's std as a fraction of the param's range (SMAC's neighbourhood uses 0.2 too). Measured
#: (docs/benchmarks.md, "A local search on expected improvement"): on the conditional YAHPO
#: rbv2_xgboost space it lowered the final regret on unseen seeds (/1501: 0.049 -> 0.038), but
#: on the synthetic functions and rbv2_rpart (no conditions) it was worse (synthetic final
#: 0.025 -> 0.032), so spaces without conditions keep the one-step candidates.
NEIGHBOUR_SCALE = 0.2

#: Uniform draws before there is a model, and once there is one.
P_RANDOM_EARLY = 0.2
P_RANDOM = 0.1

#: Proposals taken from one ranked candidate list before the forest is refitted (SMAC retrains
#: after 8 configs too): a Hyperband bracket asks for many configs before its rung has values.
FOREST_REFRESH = 8

#: Values at a rung before the prior's ranking of them is believed.
PRIOR_MIN_OBS = 6

#: Draws tried for a config the engine has not seen before a repeat is accepted. Speech spaces
#: are often mostly categorical (layer counts, widths, on/off switches): there a small move
#: around the incumbent usually changes nothing, and each repeat would pay for training the
#: same config again (on the AN4 table 30 % of proposals were repeats).
MAX_REPEAT_TRIES = 25

_MAX_SAMPLE_TRIES = 50

Proposal = tuple[dict[str, Any], dict[str, Any], str]  # (params, config, source)


class Proposer:
    """New configs for :class:`~speechtune.tuning.search.MultiFidelitySearch`.

    Args:
        space: the search space.
        strategy: the engine's strategy (decides the sources, see the module docstring).
        use_priors: draw from the space's priors (``speechtune`` only).
        warm_start: raw params of configs to propose first.
        base: flat values for names outside the space.
        seed: seeds the draws of params without a prior in the priors' own config.
        prior_first: propose the priors' own config first (``speechtune`` with priors).
    """

    def __init__(
        self,
        space: SearchSpace,
        strategy: str,
        *,
        use_priors: bool,
        warm_start: Sequence[Mapping[str, Any]] = (),
        base: Mapping[str, Any] | None = None,
        seed: int = 0,
        prior_first: bool = True,
    ) -> None:
        self.space = space
        self.strategy = strategy
        self.use_priors = use_priors
        self.base = dict(base) if base is not None else None
        self._warm = [dict(p) for p in warm_start]
        # The forest's ranked candidates: (model rung, observations it was fitted on, list).
        self._ranked: tuple[int, int, list[tuple[float, dict[str, Any], dict[str, Any]]]] | None
        self._ranked = None
        self._ranked_used = 0
        self._seen: set[tuple[tuple[str, str], ...]] = set()  # configs the engine has
        # A conditional space (a choice that gates other params) gets the model's local search
        # (see NEIGHBOUR_SCALE).
        self._conditional = any(
            getattr(space.params[name], "when", None) for name in space.tunable_names()
        )
        # The priors' own config comes first (PriorBand, piBO): see prior_mode.
        self._mode_pending = (
            prior_first
            and strategy == "speechtune"
            and use_priors
            and any(getattr(p, "prior", None) is not None for p in space.params.values())
        )
        # Its own generator: drawing it must not shift the engine's other draws.
        self._mode_rng = np.random.default_rng([seed, 7])

    # ------------------------------------------------------------------ the choice
    def propose(
        self,
        rng: np.random.Generator,
        configs: Mapping[int, _Config],
        top: int,
        trusted: Callable[[int], bool],
    ) -> Proposal:
        """A new config: ``(params, config, source)``.

        Args:
            rng: the source of randomness (the engine seeds one per ask).
            configs: every config the engine has, with its values per rung (inf: failed).
            top: the top rung's index.
            trusted: whether a rung ranks configs like the top one.
        """
        if self._warm:
            params = self._warm.pop(0)
            p, config = self._draw(
                rng, optuna.samplers.RandomSampler(seed=int(rng.integers(2**31))), enqueue=params
            )
            return p, config, "warm_start"
        self._seen = {params_key(c.params) for c in configs.values()}
        mode = self.take_prior_mode()
        if mode is not None and params_key(mode[0]) not in self._seen:
            # (Skipped when already run, e.g. as a recipe study's baseline.)
            return (*mode, "prior_default")
        for _ in range(MAX_REPEAT_TRIES):
            proposal = self._propose_new(rng, configs, top, trusted)
            if params_key(proposal[0]) not in self._seen:
                return proposal
        # A small discrete space can be nearly exhausted: repeat rather than stall.
        return proposal

    def take_prior_mode(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """``(params, config)`` of the priors' own config (:func:`prior_mode`) once, then None;
        None without priors."""
        if not self._mode_pending:
            return None
        self._mode_pending = False
        try:
            return prior_mode(self.space, self._mode_rng, self.base)
        except ConstraintViolation:
            log.debug("the priors' defaults break a constraint: not proposed")
            return None

    def draw_given(
        self, rng: np.random.Generator, params: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(params, config)`` of the config ``params`` names (derived values filled in)."""
        sampler = optuna.samplers.RandomSampler(seed=int(rng.integers(2**31)))
        return self._draw(rng, sampler, enqueue=params)

    def _propose_new(
        self,
        rng: np.random.Generator,
        configs: Mapping[int, _Config],
        top: int,
        trusted: Callable[[int], bool],
    ) -> Proposal:
        if self.strategy not in MODEL_STRATEGIES:
            return (*self._uniform(rng), "random")
        model_rung = self.model_rung(configs, top, trusted)
        if self.strategy == "bohb":
            if model_rung is None or rng.random() < 1 / 3:
                return (*self._uniform(rng), "random")
            return (*self._tpe(rng, configs, model_rung), "model")
        return self._mix(rng, configs, top, trusted, model_rung)

    def _mix(
        self,
        rng: np.random.Generator,
        configs: Mapping[int, _Config],
        top: int,
        trusted: Callable[[int], bool],
        model_rung: int | None,
    ) -> Proposal:
        incumbent = incumbent_of(configs, top, trusted)
        if model_rung is None and incumbent is None and not self.use_priors:
            return (*self._uniform(rng), "random")
        n_obs = 0 if model_rung is None else len(_finite_at(configs, model_rung))
        rest = 1.0 - (P_RANDOM_EARLY if model_rung is None else P_RANDOM)
        # The prior and the incumbent's neighbourhood lead early; the model takes over as
        # evidence grows.
        w_local = 1.0 if model_rung is None else 10.0 / (10.0 + n_obs)
        p_model = 0.0 if model_rung is None else rest * (1.0 - w_local)
        local = rest - p_model
        p_prior = q = 0.0
        if self.use_priors:
            # 0 for a prior that ranks at chance or worse; before evidence the prior is trusted
            # (PriorBand starts the same way).
            q = max(0.0, 2.0 * self.prior_score(configs, top, trusted) - 1.0)
            p_prior = local * q if incumbent is not None else local * max(q, 0.25)
        p_inc = local - p_prior if incumbent is not None else 0.0
        if self.use_priors and incumbent is not None and incumbent.source == "prior_default":
            # Until the search beats it, the incumbent is the priors' own config (evaluated
            # first, `prior_first`), so moves around it are draws from the prior's region too:
            # believe them as much as the prior (q of what the prior's draws leave) and give the
            # rest to uniform draws. Otherwise the share a fading prior loses goes to moves
            # around its mode and the prior cannot fade: with a misleading prior on hartmann3
            # seed 2 only 2 of the first bracket's 27 new configs were uniform draws and the
            # search never left the prior's basin (regret 0.99; docs/benchmarks.md).
            # PriorBand (Mallik et al., 2023) and piBO (Hvarfner et al., 2022) are built so that
            # a misleading prior's influence vanishes; here it has to vanish from both sources.
            p_inc = local * q * (1.0 - q)
        u = rng.random()
        try:
            if u < p_model and model_rung is not None:
                return (*self._forest(rng, configs, model_rung), "model")
            u -= p_model
            if u < p_prior:
                return (*sample_prior(self.space, rng, self.base), "prior")
            u -= p_prior
            if u < p_inc and incumbent is not None:
                return (*self._near(rng, incumbent.params), "incumbent")
        except ConstraintViolation:
            log.debug("prior/local draw broke a constraint; drawing uniformly instead")
        # Whatever is left (e.g. no incumbent yet) explores.
        return (*self._uniform(rng), "random")

    # ------------------------------------------------------------------ evidence
    def model_rung(
        self, configs: Mapping[int, _Config], top: int, trusted: Callable[[int], bool]
    ) -> int | None:
        """The highest (trusted, for ``speechtune``) rung with enough values to fit a model on."""
        n_min = max(len(self.space.tunable_names()) + 1, 5)
        for rung in range(top, -1, -1):
            if self.strategy == "speechtune" and not trusted(rung):
                continue
            if len(_finite_at(configs, rung)) >= n_min:
                return rung
        return None

    def prior_score(
        self, configs: Mapping[int, _Config], top: int, trusted: Callable[[int], bool]
    ) -> float:
        """How well the prior ranks the configs seen so far: an AUC in [0, 1] (0.5: chance).

        At the highest trusted rung with at least :data:`PRIOR_MIN_OBS` finite values, the
        probability that a config from the better half has a higher prior density than one from
        the worse half. 1.0 before there is evidence.
        """
        for rung in range(top, -1, -1):
            if not trusted(rung):
                continue
            scored = sorted((c.values[rung], c.config_id) for c in _finite_at(configs, rung))
            if len(scored) < PRIOR_MIN_OBS:
                continue
            half = len(scored) // 2
            dens = {cid: prior_log_density(self.space, configs[cid].params) for _, cid in scored}
            good = [dens[cid] for _, cid in scored[:half]]
            bad = [dens[cid] for _, cid in scored[-half:]]
            wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
            return wins / (len(good) * len(bad))
        return 1.0

    # ------------------------------------------------------------------ the sources
    def _forest(
        self, rng: np.random.Generator, configs: Mapping[int, _Config], rung: int
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The next config by the forest's expected improvement at ``rung``: one fit ranks many
        candidates, and proposals take from the list until :data:`FOREST_REFRESH` were taken or
        the rung has new values."""
        history = [c for c in configs.values() if rung in c.values]
        if (
            self._ranked is None
            or self._ranked[:2] != (rung, len(history))
            or self._ranked_used >= FOREST_REFRESH
            or not self._ranked[2]
        ):
            model = ForestModel(self.space, int(rng.integers(2**31)))
            model.fit([c.params for c in history], [c.values[rung] for c in history])
            base = self.base
            ranked = model.ranked_candidates(
                rng,
                lambda r: sample_uniform(self.space, r, base),
                lambda centre, r, scale: sample_near(self.space, centre, r, scale, base),
                (
                    (lambda c, r: sample_neighbour(self.space, c, r, NEIGHBOUR_SCALE, base))
                    if self._conditional
                    else None
                ),
            )
            self._ranked = (rung, len(history), ranked)
            self._ranked_used = 0
        self._ranked_used += 1
        ranked = self._ranked[2]
        # Local candidates in a discrete space are often the same config many times over, or
        # one already trained: take the best-ranked one that is new.
        while len(ranked) > 1 and params_key(ranked[0][1]) in self._seen:
            ranked.pop(0)
        _, params, config = ranked.pop(0)
        return params, config

    def _near(
        self, rng: np.random.Generator, centre: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A small move around ``centre``, widened while it lands on a config already seen (in a
        mostly categorical space the smallest move often changes nothing)."""
        scale = LOCAL_SCALE
        while True:
            move = sample_near(self.space, centre, rng, scale, self.base)
            if params_key(move[0]) not in self._seen or scale >= MAX_LOCAL_SCALE:
                return move
            scale *= 2

    def _tpe(
        self, rng: np.random.Generator, configs: Mapping[int, _Config], rung: int
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """BOHB's model: multivariate TPE fitted on the values at ``rung``."""
        history = [c for c in configs.values() if rung in c.values]
        with warnings.catch_warnings():
            # multivariate/group TPE is flagged experimental: noise to users.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=int(rng.integers(2**31)), n_startup_trials=0, multivariate=True, group=True
            )
        return self._draw(rng, sampler, history, rung)

    def _uniform(self, rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
        return self._draw(rng, optuna.samplers.RandomSampler(seed=int(rng.integers(2**31))))

    def _draw(
        self,
        rng: np.random.Generator,
        sampler: optuna.samplers.BaseSampler,
        history: Sequence[_Config] = (),
        rung: int | None = None,
        enqueue: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Sample (params, config) with an Optuna sampler on a throwaway study holding ``history``."""
        with warnings.catch_warnings(), _optuna_quiet():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(sampler=sampler)
            if history and rung is not None:
                study.add_trials(self._frozen(history, rung))
            for _ in range(_MAX_SAMPLE_TRIES):
                if enqueue is not None:
                    study.enqueue_trial(dict(enqueue), skip_if_exists=False)
                trial = study.ask()
                try:
                    config = (
                        self.space.sample(trial)
                        if self.base is None
                        else self.space.sample(trial, base=self.base)
                    )
                except ConstraintViolation:
                    study.tell(trial, state=TrialState.FAIL)
                    enqueue = None
                    continue
                return dict(trial.params), config
        raise ConstraintViolation(
            f"no config satisfying the space's constraints in {_MAX_SAMPLE_TRIES} draws"
        )

    def _frozen(self, history: Sequence[_Config], rung: int) -> list[optuna.trial.FrozenTrial]:
        dists = self.space.distributions()
        finite = [c.values[rung] for c in history if math.isfinite(c.values[rung])]
        worst = (max(finite) + (max(finite) - min(finite) + 1.0)) if finite else 1.0
        trials = []
        for c in history:
            params = {k: v for k, v in c.params.items() if k in dists}
            value = c.values[rung] if math.isfinite(c.values[rung]) else worst
            trials.append(
                optuna.trial.create_trial(
                    params=params, distributions={k: dists[k] for k in params}, value=value
                )
            )
        return trials


def params_key(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """A hashable identity of raw params: equal for the same config however the dict is ordered."""
    return tuple(sorted((name, repr(value)) for name, value in params.items()))


def _finite_at(configs: Mapping[int, _Config], rung: int) -> list[_Config]:
    return [c for c in configs.values() if math.isfinite(c.values.get(rung, math.inf))]


def incumbent_of(
    configs: Mapping[int, _Config], top: int, trusted: Callable[[int], bool]
) -> _Config | None:
    """The best config at the highest rung (the top, or a trusted one) with a finite value."""
    for rung in range(top, -1, -1):
        scored = [(c.values[rung], c.config_id) for c in _finite_at(configs, rung)]
        if scored and (rung == top or trusted(rung)):
            return configs[min(scored)[1]]
    return None
