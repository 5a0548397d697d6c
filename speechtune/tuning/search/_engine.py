"""Multi-fidelity search with an ask/tell interface: Hyperband, ASHA, BOHB and speechtune's strategy.

The engine is storage-free and deterministic: ``ask()`` returns a :class:`Job` (a config at a
fidelity rung), the caller runs it however it likes and ``tell()`` s the value. Same seed, same
sequence of jobs (when used sequentially). :mod:`speechtune.tuning.backends` runs it as an Optuna
study (one Optuna trial per job) so that it is stored, resumable and reported. Where new configs
come from is :mod:`._proposals`' business; this module schedules them (brackets, promotions,
probes) and keeps the books.

Strategies
----------
``random``
    Random configs at full fidelity (a baseline).
``hyperband``
    Synchronous successive halving in Hyperband's brackets (Li et al., 2018), random configs.
``asha``
    Asynchronous successive halving (Li et al., 2020): promote a config as soon as it is in the
    top ``1/eta`` of its rung, otherwise start a new one at the lowest rung. For parallel workers.
``bohb``
    Hyperband whose new configs come from a TPE model fitted on the highest rung with enough
    observations (Falkner et al., 2018), one third random.
``speechtune``
    Hyperband brackets (ASHA promotion with several workers) whose new configs mix a random-forest
    model with expected improvement (SMAC's surrogate, fitted on the highest *trusted* rung with
    enough observations; :mod:`._proposals`, :mod:`._surrogate`), the space's priors
    (PriorBand-style, Mallik et al., 2023: weighted by how well the prior has ranked the configs
    seen so far, so a misleading prior fades), the incumbent's neighbourhood and random draws.
    It measures how faithfully each cheap rung ranks configs like the full-fidelity rung
    (Spearman over configs seen at both; full-fidelity configs are "probed" at the cheap rungs
    while that is unknown) and stops starting brackets at, or modelling from, a rung that ranks
    poorly (on real learning curves the first epoch often ranks configs almost at random), while
    hedging over the rungs it trusts as Hyperband does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from speechtune.tuning.search._fidelity import Fidelity
from speechtune.tuning.search._jobs import Job, _Bracket, _Config, _spearman
from speechtune.tuning.search._proposals import Proposer
from speechtune.tuning.space import SearchSpace

log = logging.getLogger(__name__)


STRATEGIES = ("random", "hyperband", "asha", "bohb", "speechtune")


# A cheap rung whose Spearman correlation with the top rung is below this ranks configs too
# unfaithfully to decide promotions or to feed the model.
TRUST_THRESHOLD = 0.5


# Configs seen at both a rung and the top before its correlation is believed.
MIN_PAIRS = 5


class MultiFidelitySearch:
    """Ask/tell multi-fidelity search over a :class:`SearchSpace` and a :class:`Fidelity` ladder.

    Example::

        search = MultiFidelitySearch(space, Fidelity.from_budgets("epochs", [1, 3, 9]), seed=0)
        while search.budget_used < 20:
            job = search.ask()
            search.tell(job, train_and_score(job.config))   # job.config["epochs"] is the budget
        config, value = search.best()

    Args:
        space: the search space (priors on its params are used by ``speechtune``).
        fidelity: the rungs, cheapest first.
        strategy: one of :data:`STRATEGIES`.
        seed: same seed, same decisions.
        use_priors: let the space's priors guide new configs (``speechtune`` only).
        warm_start: params of configs to try first (e.g. the top configs of a previous study).
        baseline: params of a config run first, at the top rung, so that it competes for
            :meth:`best` whatever the cheap rungs think of it: the recipe's defaults, which a
            study should only replace with something better measured the same way.
        prior_first: ``speechtune`` with priors tries the priors' own config (every param at its
            prior's default) first: with no ``baseline`` and no ``warm_start`` at the top rung
            (the user's best guess, known at full fidelity from the start: PriorBand's "default
            at the target fidelity"; a misleading prior costs one full evaluation), otherwise as
            the first new config.
        base: flat values for names outside the space (conditions and derived values read them).
        n_workers: jobs run at once; above 1 the bracket strategies promote asynchronously.
        direction: ``"minimize"`` (a WER, a loss) or ``"maximize"`` (an accuracy): what
            :meth:`tell` receives and :meth:`best` returns are in the caller's direction.
    """

    def __init__(
        self,
        space: SearchSpace,
        fidelity: Fidelity,
        *,
        strategy: str = "speechtune",
        seed: int = 0,
        use_priors: bool = True,
        warm_start: Sequence[Mapping[str, Any]] = (),
        baseline: Mapping[str, Any] | None = None,
        prior_first: bool = True,
        base: Mapping[str, Any] | None = None,
        n_workers: int = 1,
        direction: str = "minimize",
    ) -> None:
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"direction must be 'minimize' or 'maximize' (got {direction!r})")
        if strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}"
            )
        self.space = space
        self.fidelity = fidelity
        self.strategy = strategy
        self.seed = int(seed)
        self.base = dict(base) if base is not None else None
        self.n_workers = max(1, int(n_workers))
        self.direction = direction
        # Values are kept as losses (lower is better) inside; a maximised one is negated.
        self._sign = -1.0 if direction == "maximize" else 1.0
        self.use_priors = (
            bool(use_priors)
            and strategy == "speechtune"
            and any(getattr(p, "prior", None) is not None for p in space.params.values())
        )
        self.asynchronous = strategy == "asha" or (strategy == "speechtune" and self.n_workers > 1)
        self.budget_used = 0.0
        self._configs: dict[int, _Config] = {}
        self._jobs: dict[int, Job] = {}
        self._pending: set[int] = set()
        self._told: set[int] = set()
        self._n_asked = 0
        self._brackets: list[_Bracket] = []
        self._probes: list[tuple[int, int]] = []  # (config_id, rung) waiting to be probed
        self._proposer = Proposer(
            space,
            strategy,
            use_priors=self.use_priors,
            warm_start=warm_start,
            base=base,
            seed=self.seed,
            prior_first=prior_first,
        )
        self._baseline = dict(baseline) if baseline is not None else None
        self._baseline_source = "baseline"
        if self._baseline is None and not warm_start:
            mode = self._proposer.take_prior_mode()
            self._baseline = mode[0] if mode is not None else None
            self._baseline_source = "prior_default"

    # ------------------------------------------------------------------ public API
    def ask(self) -> Job | None:
        """The next job, or None when a synchronous bracket waits for running jobs."""
        rng = np.random.default_rng([self.seed, self._n_asked])
        job: Job | None = None
        if self._baseline is not None:
            job = self._baseline_job(rng, self._baseline)
            self._baseline = None
        if job is None and self.strategy == "random":
            job = self._new_job(rng, self.fidelity.top, bracket=-1)
        elif job is None:
            job = self._next_probe()
            if job is None:
                job = self._ask_async(rng) if self.asynchronous else self._ask_sync(rng)
        if job is not None:
            self._pending.add(job.number)
        return job

    def tell(
        self,
        job: Job,
        value: float | None,
        *,
        intermediate: Mapping[int, float] | None = None,
        cost: float | None = None,
    ) -> None:
        """Record a finished job.

        Args:
            job: a job from :meth:`ask` (or one rebuilt with :meth:`restore` when resuming).
            value: the objective at the job's rung; None or NaN for a failed or pruned job,
                which ranks last and is never promoted.
            intermediate: values the same run measured on the way at LOWER rungs that it
                continues through (e.g. the dev WER at the epochs of cheaper epoch rungs): free
                observations of how the cheap rungs rank configs.
            cost: the compute the job actually used, in the units of ``job.cost`` (full
                trainings), when it differs from the plan: less for a job pruned after a few of
                its epochs, more for one that had to restart; default ``job.cost``.
        """
        if job.number in self._told:
            raise ValueError(f"job {job.number} was already told")
        if cost is not None and not (math.isfinite(float(cost)) and float(cost) >= 0):
            raise ValueError(f"job {job.number}: cost must be a finite number >= 0 (got {cost!r})")
        self._pending.discard(job.number)
        self._told.add(job.number)
        self.budget_used += job.cost if cost is None else float(cost)
        cfg = self._configs[job.config_id]
        v = (
            self._sign * float(value)
            if value is not None and math.isfinite(float(value))
            else math.inf
        )
        cfg.values[job.rung] = v
        cfg.last_job[job.rung] = job.number
        for rung, iv in (intermediate or {}).items():
            rung = int(rung)
            if (
                rung < job.rung
                and rung not in cfg.values
                and iv is not None
                and math.isfinite(float(iv))
            ):
                cfg.values[rung] = self._sign * float(iv)
        if self.strategy == "speechtune" and job.rung == self.fidelity.top:
            self._queue_probes(cfg)

    def best(self) -> tuple[dict[str, Any], float] | None:
        """The best config measured at the top rung (its config without rung overrides) and its value
        (as told: the highest when maximising)."""
        top = self.fidelity.top
        scored = [
            (c.values[top], c.config_id)
            for c in self._configs.values()
            if math.isfinite(c.values.get(top, math.inf))
        ]
        if not scored:
            return None
        value, cid = min(scored)
        return dict(self._configs[cid].config), self._sign * value

    def promote_best(self) -> Job | None:
        """A job that takes the most promising config to the top rung, when none has a value there.

        A budget can run out before any config reaches the top (a small budget, a bracket that
        starts low, or an asynchronous schedule whose first promotion to the top falls due just
        as the budget ends): the study then has no result it can compare or ship. This is its
        last job: the config with the best value at the highest rung any config finished,
        continued (or restarted) at the top. None when the top rung has a value or a job there
        is running, or nothing has a finite value yet.
        """
        top = self.fidelity.top
        if self.best() is not None or any(j.rung == top for j in self.pending):
            return None
        for rung in range(top - 1, -1, -1):
            scored = [
                (c.values[rung], c.config_id)
                for c in self._configs.values()
                if math.isfinite(c.values.get(rung, math.inf))
            ]
            if scored:
                job = self._promote(min(scored)[1], rung, top, -1)
                self._pending.add(job.number)
                return job
        return None

    def rung_correlation(self) -> dict[int, tuple[float, int]]:
        """Spearman correlation of each lower rung with the top rung, and the number of pairs."""
        top = self.fidelity.top
        out: dict[int, tuple[float, int]] = {}
        for rung in range(top):
            pairs = [
                (c.values[rung], c.values[top])
                for c in self._configs.values()
                if math.isfinite(c.values.get(rung, math.inf))
                and math.isfinite(c.values.get(top, math.inf))
            ]
            out[rung] = (
                _spearman([p[0] for p in pairs], [p[1] for p in pairs])
                if len(pairs) >= 3
                else math.nan,
                len(pairs),
            )
        return out

    def trusted(self, rung: int) -> bool:
        """Whether ``rung`` is believed to rank configs like the top rung (unknown counts as trusted)."""
        if rung >= self.fidelity.top or self.strategy != "speechtune":
            return True
        rho, n = self.rung_correlation().get(rung, (math.nan, 0))
        return n < MIN_PAIRS or rho >= TRUST_THRESHOLD

    @property
    def pending(self) -> list[Job]:
        """Jobs asked and not yet told."""
        return [self._jobs[n] for n in sorted(self._pending)]

    def restore(self, job: Job) -> None:
        """Re-register a job asked by an earlier process (resuming a stored study) before telling it."""
        if job.number in self._jobs:
            return
        self._jobs[job.number] = job
        if job.config_id not in self._configs:
            base_config = {
                k: v
                for k, v in job.config.items()
                if k not in self.fidelity.rungs[job.rung].overrides
            }
            self._configs[job.config_id] = _Config(
                job.config_id, dict(job.params), base_config, job.source
            )
        self._n_asked = max(self._n_asked, job.number + 1)
        self._pending.add(job.number)

    # ------------------------------------------------------------------ new configs
    def prior_score(self) -> float:
        """How well the space's priors rank the configs measured so far: an AUC in [0, 1], 0.5
        for no better than chance, 1.0 before there is evidence (see :class:`._proposals.Proposer`)."""
        return self._proposer.prior_score(self._configs, self.fidelity.top, self.trusted)

    # ------------------------------------------------------------------ jobs
    def _register(self, params: dict[str, Any], config: dict[str, Any], source: str) -> _Config:
        cid = len(self._configs)
        cfg = _Config(cid, params, config, source)
        self._configs[cid] = cfg
        return cfg

    def _make_job(
        self, cfg: _Config, rung: int, bracket: int, source: str, parent_rung: int | None
    ) -> Job:
        parent = cfg.last_job.get(parent_rung) if parent_rung is not None else None
        if parent is not None and not self.fidelity.continues(parent_rung, rung):  # type: ignore[arg-type]
            parent = None  # a restart: the job does not build on the lower rung's run
        from_rung = parent_rung if parent is not None else None
        cost = self.fidelity.job_cost(rung, from_rung)
        key = self.fidelity.resume_key
        start = 0.0
        if key is not None and from_rung is not None:
            start = float(self.fidelity.rungs[from_rung].overrides.get(key, 0.0))
        job = Job(
            number=self._n_asked,
            config_id=cfg.config_id,
            rung=rung,
            params=dict(cfg.params),
            config={**cfg.config, **self.fidelity.rungs[rung].overrides},
            bracket=bracket,
            parent=parent,
            cost=cost,
            source=source,
            parent_rung=from_rung,
            resume_key=key,
            resume_from=start,
        )
        self._n_asked += 1
        self._jobs[job.number] = job
        return job

    def _new_job(self, rng: np.random.Generator, rung: int, bracket: int) -> Job:
        params, config, source = self._proposer.propose(
            rng, self._configs, self.fidelity.top, self.trusted
        )
        cfg = self._register(params, config, source)
        return self._make_job(cfg, rung, bracket, source, None)

    def _baseline_job(self, rng: np.random.Generator, params: Mapping[str, Any]) -> Job | None:
        """The baseline config at the top rung, or None when the space cannot represent it."""
        got, config = self._proposer.draw_given(rng, params)
        if any(got.get(k) != v for k, v in params.items()):
            # A constraint refused it: a different config would run under the baseline's name.
            log.warning("the baseline config %s breaks the space's constraints: not run", params)
            return None
        cfg = self._register(got, config, self._baseline_source)
        return self._make_job(cfg, self.fidelity.top, -1, self._baseline_source, None)

    def _promote(self, cid: int, from_rung: int, to_rung: int, bracket: int) -> Job:
        cfg = self._configs[cid]
        cfg.promoted_from.add(from_rung)
        return self._make_job(cfg, to_rung, bracket, "promotion", from_rung)

    # -- probes: full-fidelity configs measured at cheap rungs whose faithfulness is unknown
    def _queue_probes(self, cfg: _Config) -> None:
        corr = self.rung_correlation()
        for rung in range(self.fidelity.top):
            if rung in cfg.values or corr[rung][1] >= MIN_PAIRS + 3:
                continue
            if self.fidelity.continues(rung, self.fidelity.top):
                # A run to the top passes through this rung: its caller passes the value on the
                # way as `intermediate` (the study driver does), so a probe would pay twice.
                continue
            if any(c == cfg.config_id and r == rung for c, r in self._probes):
                continue
            self._probes.append((cfg.config_id, rung))

    def _next_probe(self) -> Job | None:
        while self._probes:
            cid, rung = self._probes.pop(0)
            cfg = self._configs[cid]
            if rung in cfg.values or any(
                j.config_id == cid and j.rung == rung for j in self.pending
            ):
                continue
            return self._make_job(cfg, rung, -1, "probe", None)
        return None

    # -- synchronous successive halving in Hyperband brackets
    def _bracket_starts(self) -> list[int]:
        """Starting rungs of the brackets to cycle through, most aggressive first.

        Hyperband hedges over every rung because it cannot know how faithfully a cheap rung
        ranks configs. ``speechtune`` measures it and never starts a bracket at a rung known to
        rank poorly, but keeps hedging over the rungs it trusts: a correlation estimated from a
        handful of configs is uncertain, and a cheap rung that ranks the whole space well can
        still misorder the best configs. Starting every bracket at the cheapest "faithful" rung
        once its Spearman passed 0.8 (an earlier rule) lost on YAHPO's rbv2_xgboost/1501: final
        regret 0.055 against 0.042 with hedging (docs/benchmarks.md).
        """
        top = self.fidelity.top
        if self.strategy != "speechtune":
            return list(range(top + 1))
        starts = [r for r in range(top + 1) if self.trusted(r)]
        return starts or [top]

    def _open_bracket(self) -> _Bracket:
        top, eta = self.fidelity.top, self.fidelity.eta
        starts = self._bracket_starts()
        # Cycle through the starting rungs in Hyperband order across brackets.
        start = starts[len(self._brackets) % len(starts)]
        s = top - start
        n = math.ceil((top + 1) / (s + 1) * eta**s)
        sizes = [max(1, int(n * eta ** (-i))) for i in range(s + 1)]
        bracket = _Bracket(index=len(self._brackets), start=start, sizes=sizes, rung=start)
        self._brackets.append(bracket)
        return bracket

    def _ask_sync(self, rng: np.random.Generator) -> Job | None:
        for _ in range(1000):
            bracket = self._brackets[-1] if self._brackets else self._open_bracket()
            rung = bracket.rung
            issued = bracket.members.setdefault(rung, [])
            if len(issued) < bracket.size_at(rung):
                if rung == bracket.start:
                    job = self._new_job(rng, rung, bracket.index)
                else:
                    job = self._promote(bracket.queue.pop(0), rung - 1, rung, bracket.index)
                issued.append(job.config_id)
                return job
            if any(self._configs[c].values.get(rung) is None for c in issued):
                return None  # wait for this rung to finish before promoting
            if rung == self.fidelity.top:
                self._open_bracket()
                continue
            ranked = sorted(issued, key=lambda c: (self._configs[c].values[rung], c))
            k = bracket.size_at(rung + 1)
            bracket.queue = [c for c in ranked[:k] if math.isfinite(self._configs[c].values[rung])]
            # Failed configs are not promoted; the next rung is then smaller.
            bracket.sizes[rung + 1 - bracket.start] = len(bracket.queue) or 0
            bracket.rung = rung + 1
            if not bracket.queue:
                self._open_bracket()
        raise RuntimeError("multi-fidelity search: no job could be scheduled (internal error)")

    # -- asynchronous successive halving
    def _ask_async(self, rng: np.random.Generator) -> Job:
        top, eta = self.fidelity.top, self.fidelity.eta
        starts = self._bracket_starts()
        lowest = starts[0]
        for rung in range(top - 1, lowest - 1, -1):
            done = [
                c
                for c in self._configs.values()
                if rung in c.values and c.last_job.get(rung) in self._told
            ]
            k = len(done) // eta
            if k == 0:
                continue
            ranked = sorted(done, key=lambda c: (c.values[rung], c.config_id))[:k]
            for cfg in ranked:
                if (
                    rung not in cfg.promoted_from
                    and math.isfinite(cfg.values[rung])
                    and (rung + 1) not in cfg.values
                ):
                    if any(j.config_id == cfg.config_id for j in self.pending):
                        continue
                    return self._promote(cfg.config_id, rung, rung + 1, -1)
        return self._new_job(rng, lowest, -1)
