"""Study storage: SQLite in the run directory, a journal file, or PostgreSQL that rides out restarts.

* The default storage is SQLite in the run directory with a heartbeat: a trial whose process was
  killed stops beating, it is failed, and its parameters are re-queued (at most
  ``study.max_retries`` times per config, see :mod:`._retry`), so ``--resume`` re-runs it.
* ``n_jobs > 1`` on SQLite runs trials in *threads of one process*; SQLite serialises the
  writes, which is fine at a few writes per epoch. Several *processes* sharing one study should
  use PostgreSQL (or the journal file backend), not SQLite.
* A PostgreSQL/MySQL storage survives a database restart: connections are pinged before use
  (``pool_pre_ping``) and a storage call that fails with a connection error
  (``OperationalError``/``InterfaceError``) is retried with backoff for up to ``reconnect_s``
  seconds (default 60). The heartbeat thread retries too and never dies of an outage. Past the
  bound the call raises :class:`StorageUnavailableError`, naming the URL (password masked).
  Everything committed before the outage is in the database; a trial whose write was lost is
  failed by the heartbeat and retried.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypedDict

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from speechtune._urls import mask_url, scrub
from speechtune.tuning.study._retry import DEFAULT_MAX_RETRIES, RetryKilledTrials
from speechtune.tuning.study._sqlite import SQLiteStudyStorage, readable_sqlite

log = logging.getLogger("speechtune.tuning")


#: Environment variable overriding :data:`DEFAULT_HEARTBEAT_S` (whole seconds, >= 1).
HEARTBEAT_ENV = "SPEECHTUNE_HEARTBEAT_S"


def _default_heartbeat() -> int:
    text = os.environ.get(HEARTBEAT_ENV)
    if not text:
        return 30
    try:
        value = int(text)
    except ValueError:
        raise ValueError(
            f"{HEARTBEAT_ENV} must be a whole number of seconds >= 1, got {text!r}"
        ) from None
    if value < 1:
        raise ValueError(f"{HEARTBEAT_ENV} must be a whole number of seconds >= 1, got {text!r}")
    return value


# Seconds between heartbeats of a running trial; a trial is stale after twice that.
# SPEECHTUNE_HEARTBEAT_S sets it for `speechtune tune` too (a killed driver's trial is re-queued
# by `--resume` once it is stale, so a short heartbeat re-queues sooner).
DEFAULT_HEARTBEAT_S = _default_heartbeat()


#: Seconds a storage call keeps retrying through a database outage before giving up.
DEFAULT_RECONNECT_S = 60.0


#: Environment variable overriding :data:`DEFAULT_RECONNECT_S` (read when a storage is opened).
RECONNECT_ENV = "SPEECHTUNE_RECONNECT_S"

#: The environment variable that carries a storage URL to ``speechtune worker`` when ``--storage``
#: is not given (the packed backend always uses it), and to a run directory whose ``spec.yaml``
#: records the URL masked: a password on a command line is readable by every user of the machine
#: (``ps``), a process's environment only by its owner.
STORAGE_ENV = "SPEECHTUNE_STORAGE"


def reconnect_bound() -> float:
    """Seconds of retrying through a database outage: ``$SPEECHTUNE_RECONNECT_S`` or 60."""
    text = os.environ.get(RECONNECT_ENV)
    if not text:
        return DEFAULT_RECONNECT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ValueError(f"{RECONNECT_ENV} must be a number of seconds >= 0, got {text!r}")
    return value


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


#: The scheme of a journal file storage.
JOURNAL_SCHEME = "journal://"


def journal_file(url: str) -> str:
    """The file of a journal URL, read as SQLite URLs are: ``journal:///rel.log`` is relative to
    the working directory, ``journal:////abs.log`` absolute.

    One exception keeps the common spelling ``journal:///tmp/study.log`` working: a
    three-slash path whose directory exists from the root but not from the working directory is
    read as absolute. ``study.storage``, ``tune --storage``, ``worker --storage``, ``report`` and
    ``dashboard`` all read journal URLs through this one function, so that a URL names the same
    file everywhere.

    Raises:
        ValueError: ``url`` is not ``journal:///PATH`` (e.g. ``journal://host/x``: a journal
            storage is a file, it has no host).
    """
    if not url.startswith(JOURNAL_SCHEME + "/") or len(url) <= len(JOURNAL_SCHEME) + 1:
        raise ValueError(
            f"storage {mask_url(url)!r}: expected journal:///relative/path.log or journal:////absolute/path.log"
        )
    path = url[len(JOURNAL_SCHEME) + 1 :]
    if path.startswith("/"):
        return path
    relative, absolute = Path(path), Path("/", path)
    if not relative.parent.is_dir() and absolute.parent.is_dir():
        return str(absolute)
    return path


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


class _Heartbeat(TypedDict):
    """The heartbeat settings every RDB storage of a study gets."""

    heartbeat_interval: int
    grace_period: int
    heartbeat_stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None]


def _rdb(
    url: str,
    heartbeat_s: int,
    reconnect_s: float = DEFAULT_RECONNECT_S,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> BaseStorage:
    from sqlalchemy import event

    sqlite = url.startswith("sqlite")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryKilledTrials(max_retries)
        common = _Heartbeat(
            heartbeat_interval=heartbeat_s,
            grace_period=2 * heartbeat_s,
            heartbeat_stale_trial_callback=retry,
        )
        storage: optuna.storages.RDBStorage
        if sqlite:
            with readable_sqlite(url):  # a corrupt study.db: one line naming it, no traceback
                storage = SQLiteStudyStorage(url, **common)
        else:
            engine_kwargs: dict[str, Any] = {
                "pool_pre_ping": True
            }  # a restarted server's dead connections
            if url.startswith("postgresql"):
                # A connect to a down or unreachable server must fail fast so that the retry loop decides.
                engine_kwargs["connect_args"] = {"connect_timeout": 10}
            storage = _open_resilient(url, engine_kwargs, reconnect_s, common)
    if sqlite:
        event.listen(storage.engine, "connect", _sqlite_fast_commits)
        storage.engine.dispose()  # connections opened during set-up reconnect with the pragmas
    return storage


def _open_resilient(
    url: str, engine_kwargs: dict[str, Any], reconnect_s: float, common: _Heartbeat
) -> ResilientRDBStorage:
    """Open a server database; several workers creating its tables at once is not an error."""
    from sqlalchemy import exc as sa_exc

    for attempt in range(5):
        try:
            return ResilientRDBStorage(
                url, engine_kwargs=engine_kwargs, reconnect_s=reconnect_s, **common
            )
        except (sa_exc.IntegrityError, sa_exc.ProgrammingError):
            # Two processes ran CREATE TABLE/TYPE on a fresh database together; the loser retries
            # and finds the schema in place.
            if attempt == 4:
                raise
            time.sleep(0.2 + random.random() * 0.5)
        except Exception as exc:
            if is_connection_error(exc):
                raise StorageUnavailableError(
                    f"cannot connect to the study storage {mask_url(url)}: {_root_message(exc, url)}"
                ) from exc
            raise
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# surviving a database restart
# ---------------------------------------------------------------------------------------------
class StorageUnavailableError(RuntimeError):
    """The study's database stayed unreachable longer than the reconnect bound."""


def is_connection_error(exc: BaseException) -> bool:
    """Does ``exc`` (or what caused it) say the database connection failed?

    Optuna wraps SQLAlchemy errors in ``StorageInternalError``; the cause chain is searched.
    ``OperationalError`` covers a refused/closed connection, a server shutting down, and
    deadlock/serialisation failures, all of which are safe to retry (the transaction was rolled back).
    """
    from sqlalchemy import exc as sa_exc

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


def _root_message(exc: BaseException, url: str) -> str:
    """The first line of the root cause, without ``url``'s secrets (driver messages quote parts of it)."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    text = str(root).strip().splitlines()
    return scrub(f"{type(root).__name__}: {text[0] if text else ''}", [url])


# Storage methods retried through an outage (reads, idempotent upserts, and the few writes whose
# retry is made safe below). Private helpers are left alone: the public call that uses them retries.
_RETRIED = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_param",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial",
    "get_all_trials",
    "get_n_trials",
    "get_best_trial",
    "_get_stale_trial_ids",
    "check_trial_is_updatable",
    # Optuna wraps an RDBStorage in its _CachedStorage, which calls these private methods directly.
    "_create_new_trial",
    "_get_trials",
    "_get_best_trial_id",
    "_set_trial_param",
)


class ResilientRDBStorage(optuna.storages.RDBStorage):
    """An Optuna ``RDBStorage`` whose calls ride out a database restart (see the module docstring).

    Args:
        url, heartbeat_interval, grace_period, heartbeat_stale_trial_callback, engine_kwargs:
            as for ``optuna.storages.RDBStorage``.
        reconnect_s: how long one call keeps retrying connection errors before raising
            :class:`StorageUnavailableError`.

    A retried ``create_new_trial`` whose first commit did reach the server before the connection
    dropped leaves one extra RUNNING trial without a heartbeat; it never counts as complete or
    pruned. ``set_trial_state_values`` checks, before retrying, whether its first attempt landed.
    """

    def __init__(
        self, url: str, *, reconnect_s: float = DEFAULT_RECONNECT_S, **kwargs: object
    ) -> None:
        self._reconnect_s = float(reconnect_s)
        self._masked_url = mask_url(url)
        self._depth = threading.local()
        # Set once a call has given up: later calls try once and fail fast instead of each waiting
        # out the bound again (the process is on its way out); a success clears it.
        self._gave_up = False
        super().__init__(url, **kwargs)  # type: ignore[arg-type]

    def __setstate__(self, state: dict[object, object]) -> None:
        super().__setstate__(state)
        self._depth = threading.local()  # thread-locals do not pickle

    def __getstate__(self) -> dict[object, object]:
        state = super().__getstate__()
        state.pop("_depth", None)
        return state

    def _retrying(
        self,
        name: str,
        call: Callable[[], object],
        before_retry: Callable[[], object] | None = None,
    ) -> object:
        depth = getattr(self._depth, "value", 0)
        if depth:  # an outer storage call already retries: do not multiply the bound
            return call()
        self._depth.value = 1
        try:
            deadline = time.monotonic() + self._reconnect_s
            attempt = 0
            while True:
                try:
                    if attempt and before_retry is not None:
                        done = before_retry()
                        if done is not None:
                            return done
                    result = call()
                    self._gave_up = False
                    return result
                except Exception as exc:
                    if not is_connection_error(exc):
                        raise
                    attempt += 1
                    left = deadline - time.monotonic()
                    if left <= 0 or self._gave_up:
                        self._gave_up = True
                        raise StorageUnavailableError(
                            f"the study storage {self._masked_url} is unreachable: {name} failed {attempt} times "
                            f"over {self._reconnect_s:g} s; last error: {_root_message(exc, self.url)}. "
                            "Trials completed so far are safe in the database; "
                            "restart this process once the server is back"
                        ) from exc
                    if attempt == 1:
                        log.warning(
                            "study storage %s: %s lost its connection (%s); reconnecting for up to %g s",
                            self._masked_url,
                            name,
                            _root_message(exc, self.url),
                            self._reconnect_s,
                        )
                    time.sleep(min(left, min(2.0, 0.1 * 2**attempt) * (0.5 + random.random())))
        finally:
            self._depth.value = 0

    def set_trial_state_values(
        self, trial_id: int, state: optuna.trial.TrialState, values: Sequence[float] | None = None
    ) -> bool:
        """As RDBStorage's, retried; a retry first checks whether the lost attempt already landed."""
        parent = super().set_trial_state_values

        def landed() -> bool | None:
            current = optuna.storages.RDBStorage.get_trial(self, trial_id)
            if state.is_finished() and current.state == state:
                return True
            return None

        return self._retrying(
            "set_trial_state_values", lambda: parent(trial_id, state, values), landed
        )  # type: ignore[return-value]

    def record_heartbeat(self, trial_id: int) -> None:
        """As RDBStorage's, retried; never raises, so that Optuna's heartbeat thread lives on."""
        parent = super().record_heartbeat
        try:
            self._retrying("record_heartbeat", lambda: parent(trial_id))
        except (
            Exception
        ) as exc:  # the next beat tries again; the trial's own calls report the outage
            log.warning(
                "study storage %s: heartbeat of trial id %d not recorded: %s",
                self._masked_url,
                trial_id,
                scrub(exc, [self.url]),
            )


def _retried_method(name: str) -> Callable[..., object]:
    parent = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(parent)
    def method(self: ResilientRDBStorage, *args: object, **kwargs: object) -> object:
        return self._retrying(name, lambda: parent(self, *args, **kwargs))

    return method


for _name in _RETRIED:
    if hasattr(optuna.storages.RDBStorage, _name):
        setattr(ResilientRDBStorage, _name, _retried_method(_name))


def make_storage(
    storage: str | None,
    run_dir: Path,
    *,
    heartbeat_s: int = DEFAULT_HEARTBEAT_S,
    reconnect_s: float | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> BaseStorage:
    """Open the study storage named by ``study.storage``.

    Args:
        storage: None (SQLite ``<run_dir>/study.db``), ``"journal"`` (``<run_dir>/journal.log``),
            ``"memory"`` (in memory, for :func:`speechtune.tune` without a run directory),
            ``journal:///path.log``, or an RDB URL (``sqlite:///x.db``, ``postgresql+psycopg://...``).
        run_dir: the study's run directory (created if missing).
        heartbeat_s: heartbeat interval of RDB storages; a trial silent for twice that is stale.
        reconnect_s: PostgreSQL/MySQL: how long a storage call retries connection errors
            (None: :func:`reconnect_bound`).
        max_retries: re-runs of a config whose trial went stale (``study.max_retries``).

    Returns:
        An Optuna storage. RDB storages carry a heartbeat and re-queue a stale trial's config
        up to ``max_retries`` times;
        server databases are a :class:`ResilientRDBStorage`.

    Raises:
        ValueError: for a URL scheme Optuna cannot open.
        StorageUnavailableError: a database server that cannot be reached.
    """
    if storage == "memory":  # speechtune.tune() without a run directory
        return optuna.storages.InMemoryStorage()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(storage, run_dir)
    if url.startswith(JOURNAL_SCHEME):
        return _journal(journal_file(url))
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme in ("sqlite", "postgresql", "mysql"):
        bound = reconnect_bound() if reconnect_s is None else reconnect_s
        return _rdb(url, heartbeat_s, bound, max_retries)
    raise ValueError(
        f"study.storage: cannot open {mask_url(storage)!r}; expected null, 'journal', journal:///path.log, "
        "sqlite:///path.db, postgresql://... or mysql://..."
    )
