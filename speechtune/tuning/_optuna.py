"""Optuna components named in the tuning YAML: samplers, pruners and study storage.

Each YAML name maps to one small factory in an explicit table (no if/elif ladders); an unknown
name raises a ``ValueError`` listing the valid ones.

Storage notes:

* The default storage is SQLite in the run directory with a heartbeat: a trial whose process was
  killed stops beating, :func:`optuna.storages.fail_stale_trials` marks it FAIL, and the retry
  callback re-queues its parameters, so ``--resume`` re-runs it.
* ``n_jobs > 1`` on SQLite runs trials in *threads of one process*; SQLite serialises the
  writes, which is fine at a few writes per epoch. Several *processes* sharing one study should
  use PostgreSQL (or the journal file backend), not SQLite.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

ConstraintsFunc = Callable[[FrozenTrial], Sequence[float]]

# Seconds between heartbeats of a running trial; a trial is stale after twice that.
DEFAULT_HEARTBEAT_S = 30


def _quiet(factory: Callable[[], object]) -> object:
    # multivariate/group TPE, GP, QMC... are flagged "experimental": the warning is noise to users.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return factory()


def _tpe(seed: int | None, n_jobs: int, constraints: ConstraintsFunc | None) -> BaseSampler:
    # constant_liar keeps parallel workers from proposing the same point while trials run.
    return optuna.samplers.TPESampler(
        multivariate=True, group=True, seed=seed, constant_liar=n_jobs > 1, constraints_func=constraints
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


def _unknown(kind: str, name: str, valid: Sequence[str]) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; expected one of: {', '.join(sorted(valid))}")


def make_sampler(
    name: str, *, seed: int | None = 0, n_jobs: int = 1, constraints_func: ConstraintsFunc | None = None
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


def storage_url(storage: str | None, run_dir: Path) -> str:
    """The storage URL a study uses: ``None`` => SQLite in ``run_dir``; ``journal`` => a journal file.

    Args:
        storage: ``study.storage`` from the YAML (None, "journal", or a URL).
        run_dir: the study's run directory.

    Returns:
        A URL (``sqlite:///...``, ``journal:///...`` or the URL given).
    """
    if storage is None:
        return f"sqlite:///{(Path(run_dir) / 'study.db').resolve()}"
    if storage == "journal":
        return f"journal:///{(Path(run_dir) / 'journal.log').resolve()}"
    return storage


def _journal(path: str) -> BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(path))


def _sqlite_fast_commits(dbapi_connection, _record) -> None:
    """WAL + synchronous=NORMAL: a commit no longer waits for an fsync.

    Optuna commits ~25 times per trial (each suggest, report and user attribute), and with
    SQLite's default rollback journal each commit fsyncs: that was most of the per-trial
    overhead. In WAL mode with synchronous=NORMAL a killed process loses nothing that was
    committed; only an OS crash or power cut can drop the last transactions.
    """
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _rdb(url: str, heartbeat_s: int) -> BaseStorage:
    from sqlalchemy import event

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        storage = optuna.storages.RDBStorage(
            url,
            heartbeat_interval=heartbeat_s,
            grace_period=2 * heartbeat_s,
            heartbeat_stale_trial_callback=retry,
        )
    if url.startswith("sqlite"):
        event.listen(storage.engine, "connect", _sqlite_fast_commits)
        storage.engine.dispose()  # connections opened during set-up reconnect with the pragmas
    return storage


def make_storage(storage: str | None, run_dir: Path, *, heartbeat_s: int = DEFAULT_HEARTBEAT_S) -> BaseStorage:
    """Open the study storage named by ``study.storage``.

    Args:
        storage: None (SQLite ``<run_dir>/study.db``), ``"journal"`` (``<run_dir>/journal.log``),
            ``"memory"`` (in memory, for :func:`speechtune.tune` without a run directory),
            ``journal:///path.log``, or an RDB URL (``sqlite:///x.db``, ``postgresql+psycopg://...``).
        run_dir: the study's run directory (created if missing).
        heartbeat_s: heartbeat interval of RDB storages; a trial silent for twice that is stale.

    Returns:
        An Optuna storage. RDB storages carry a heartbeat and re-queue a stale trial once.

    Raises:
        ValueError: for a URL scheme Optuna cannot open.
    """
    if storage == "memory":  # speechtune.tune() without a run directory
        return optuna.storages.InMemoryStorage()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(storage, run_dir)
    if url.startswith("journal://"):
        # Same convention as SQLite URLs: journal:///rel.log is relative, journal:////abs.log absolute.
        return _journal(url[len("journal:///") :])
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme in ("sqlite", "postgresql", "mysql"):
        return _rdb(url, heartbeat_s)
    raise ValueError(
        f"study.storage: cannot open {storage!r}; expected null, 'journal', journal:///path.log, "
        "sqlite:///path.db, postgresql://... or mysql://..."
    )
