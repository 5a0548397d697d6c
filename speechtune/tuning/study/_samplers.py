"""Optuna samplers and pruners named in the tuning YAML.

Each YAML name maps to one small factory in an explicit table (no if/elif ladders); an unknown
name raises a ``ValueError`` listing the valid ones.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

ConstraintsFunc = Callable[[FrozenTrial], Sequence[float]]


def _quiet(factory: Callable[[], object]) -> object:
    # multivariate/group TPE, GP, QMC... are flagged "experimental": the warning is noise to users.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return factory()


def _tpe(seed: int | None, n_jobs: int, constraints: ConstraintsFunc | None) -> BaseSampler:
    # constant_liar keeps parallel workers from proposing the same point while trials run.
    return optuna.samplers.TPESampler(
        multivariate=True,
        group=True,
        seed=seed,
        constant_liar=n_jobs > 1,
        constraints_func=constraints,
    )


def _gp(seed: int | None, n_jobs: int, constraints: ConstraintsFunc | None) -> BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, constraints_func=constraints)


def _random(seed: int | None, n_jobs: int, constraints: ConstraintsFunc | None) -> BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _cmaes(seed: int | None, n_jobs: int, constraints: ConstraintsFunc | None) -> BaseSampler:
    # CMA-ES models only the continuous/int joint space; conditional and categorical params fall
    # back to its independent (random) sampler, silently.
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def _qmc(seed: int | None, n_jobs: int, constraints: ConstraintsFunc | None) -> BaseSampler:
    return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)


def _nsga2(seed: int | None, n_jobs: int, constraints: ConstraintsFunc | None) -> BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints)


SAMPLERS: dict[str, Callable[[int | None, int, ConstraintsFunc | None], BaseSampler]] = {
    "tpe": _tpe,
    "gp": _gp,
    "random": _random,
    "cmaes": _cmaes,
    "qmc": _qmc,
    "nsga2": _nsga2,
}


#: Samplers that use ``constraints_func`` (the others ignore objective.constraints).
CONSTRAINED_SAMPLERS = ("tpe", "gp", "nsga2")


def _unknown(kind: str, name: str, valid: Iterable[str]) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; expected one of: {', '.join(sorted(valid))}")


def make_sampler(
    name: str,
    *,
    seed: int | None = 0,
    n_jobs: int = 1,
    constraints_func: ConstraintsFunc | None = None,
) -> BaseSampler:
    """Build the sampler named in ``study.sampler``.

    Args:
        name: one of :data:`SAMPLERS` (tpe, gp, random, cmaes, qmc, nsga2).
        seed: sampler seed; the same seed proposes the same configurations.
        n_jobs: parallel trials in this process (TPE then uses the constant liar).
        constraints_func: feasibility of a finished trial (values <= 0 are feasible); used by
            the samplers that support constraints (tpe, gp, nsga2).

    Returns:
        A fresh sampler.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    factory = SAMPLERS.get(name)
    if factory is None:
        raise _unknown("sampler", name, SAMPLERS)
    return _quiet(lambda: factory(seed, n_jobs, constraints_func))  # type: ignore[return-value]


#: Samplers that keep their place in the study's storage (QMC stores the index of its next
#: point), so a resumed study continues their sequence with the study's own seed.
_SEQUENCE_SAMPLERS = ("qmc",)


def resume_seed(name: str, seed: int | None, n_trials: int) -> int | None:
    """The seed of sampler ``name`` resuming a study that already holds ``n_trials`` trials.

    A sampler rebuilt with the study's own seed starts its random stream afresh, so it would
    propose again the configs of the run that was interrupted (the random sampler, and the
    random start-up trials of TPE, GP, CMA-ES and NSGA-II). Mixing the trial count into the seed
    gives new proposals while a resumed study stays reproducible: the same seed and the same
    stored trials give the same seed.

    Args:
        name: the sampler (``study.sampler``).
        seed: ``study.seed``; None stays None (unseeded samplers do not replay).
        n_trials: the trials in the study when it is resumed, every state included.

    Returns:
        The seed to build the sampler with: ``seed`` itself for a new study and for samplers
        that continue a stored sequence (QMC).
    """
    if seed is None or n_trials <= 0 or name in _SEQUENCE_SAMPLERS:
        return seed
    return zlib.crc32(f"{seed}:resume:{n_trials}".encode()) & 0x7FFFFFFF


def _median(max_resource: int | None) -> BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)


def _percentile(max_resource: int | None) -> BasePruner:
    return optuna.pruners.PercentilePruner(25.0, n_startup_trials=3, n_warmup_steps=1)


def _sha(max_resource: int | None) -> BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner()


def _hyperband(max_resource: int | None) -> BasePruner:
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_resource or "auto")


def _wilcoxon(max_resource: int | None) -> BasePruner:
    return optuna.pruners.WilcoxonPruner()


def _none(max_resource: int | None) -> BasePruner:
    return optuna.pruners.NopPruner()


PRUNERS: dict[str, Callable[[int | None], BasePruner]] = {
    "median": _median,
    "percentile": _percentile,
    "sha": _sha,
    "hyperband": _hyperband,
    "wilcoxon": _wilcoxon,
    "none": _none,
}


def make_pruner(name: str, *, max_resource: int | None = None) -> BasePruner:
    """Build the pruner named in ``study.pruner``.

    Args:
        name: one of :data:`PRUNERS` (median, percentile, sha, hyperband, wilcoxon, none).
        max_resource: epochs of a full trial (Hyperband's ``max_resource``); None = "auto".

    Returns:
        A fresh pruner.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    factory = PRUNERS.get(name)
    if factory is None:
        raise _unknown("pruner", name, PRUNERS)
    return _quiet(lambda: factory(max_resource))  # type: ignore[return-value]
