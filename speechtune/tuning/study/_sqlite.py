"""A ``study.db`` that is not a readable SQLite database ends with one line, not SQLAlchemy's traceback.

A run directory's SQLite storage can be damaged (a copy cut short, a full disk) or replaced by
something else. SQLAlchemy reports that as ``sqlite3.DatabaseError: file is not a database`` or
``database disk image is malformed`` deep inside Optuna; these helpers name the file instead and
say how to start afresh. A truncated file whose first pages survive would only fail later, in
the middle of a resumed study, so the file's header is checked before it is opened.

:class:`SQLiteStudyStorage` is the SQLite storage itself: Optuna's, with the claim of an enqueued
trial made atomic (SQLite ignores the ``FOR UPDATE`` Optuna relies on).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import optuna
from optuna.trial import TrialState

_MAGIC = b"SQLite format 3\x00"


class UnreadableStudyError(ValueError):
    """A SQLite study storage that is not a readable SQLite database."""


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL; None for another scheme or an in-memory database."""
    from sqlalchemy.engine import make_url

    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _unreadable(path: Path, reason: str) -> UnreadableStudyError:
    return UnreadableStudyError(
        f"study database {path}: is not a readable SQLite study database ({reason}); move it, "
        "or its run directory, aside to start a fresh study"
    )


def check_sqlite_file(url: str) -> None:
    """Refuse the SQLite file of ``url`` when its header shows that it cannot be a whole database.

    Missing and empty files pass (SQLite creates the database), as does any non-SQLite URL.

    Raises:
        UnreadableStudyError: the file does not start with the SQLite header, or is shorter
            than the page count its header records (a truncated copy).
    """
    path = sqlite_file(url)
    if path is None or not path.is_file():
        return
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb") as fh:
        head = fh.read(100)
    if len(head) < 100 or not head.startswith(_MAGIC):
        raise _unreadable(path, "it does not start with the SQLite header")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    # The page count is valid when its version field matches the change counter (SQLite >=
    # 3.7). A -wal file means a connection may be checkpointing, which writes page 1 before
    # the pages it adds: the file is briefly shorter than its header says, so it is not judged.
    count_valid = head[24:28] == head[92:96]
    wal = path.with_name(path.name + "-wal")
    if count_valid and not wal.exists() and size < pages * page_size:
        raise _unreadable(
            path, f"{size} bytes where its header records {pages} pages of {page_size}: truncated"
        )


def _sqlite_database_error(exc: BaseException) -> BaseException | None:
    """The ``sqlite3.DatabaseError`` proper (not locked, not missing) in ``exc``'s causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        orig = getattr(current, "orig", None)
        for candidate in (current, orig):
            # Subclasses (OperationalError: locked, cannot open) are not about the file's content.
            if type(candidate) is sqlite3.DatabaseError:
                return candidate
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def readable_sqlite(storage: object) -> Iterator[None]:
    """Check the SQLite file of storage URL ``storage`` (see :func:`check_sqlite_file`), then run
    the block; an ``sqlite3.DatabaseError`` raised in it becomes :class:`UnreadableStudyError`.
    Other URLs and storage objects pass through untouched.

    Raises:
        UnreadableStudyError: one line naming the file.
    """
    url = storage if isinstance(storage, str) else ""
    check_sqlite_file(url)
    try:
        yield
    except Exception as exc:
        path = sqlite_file(url)
        found = _sqlite_database_error(exc) if path is not None else None
        if path is None or found is None:
            raise
        raise _unreadable(path, str(found) or type(found).__name__) from exc


class SQLiteStudyStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage on SQLite, where a waiting trial goes to exactly one runner.

    Optuna hands out an enqueued (WAITING) trial by reading it ``FOR UPDATE`` and then marking
    it RUNNING. SQLite ignores ``FOR UPDATE`` and pysqlite runs the read outside a
    transaction, so two threads of ``n_jobs`` (or two processes) that ask at once both read
    WAITING and both train the same trial; the second to finish then fails with "Cannot tell a
    COMPLETE trial". That is how a study's enqueued baseline trial was trained twice and the
    study ended with an error. Here the claim is one conditional UPDATE, which SQLite runs
    atomically: whoever changes the row has the trial, everybody else moves on.
    """

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        """As RDBStorage's; RUNNING (a claim of a waiting trial) is an atomic compare-and-set."""
        if state != TrialState.RUNNING or values is not None:
            return super().set_trial_state_values(trial_id, state, values)
        import sqlalchemy as sa

        trials = sa.table(
            "trials",
            sa.column("trial_id", sa.Integer),
            sa.column("state", sa.String),
            sa.column("datetime_start", sa.DateTime),
        )
        claim = (
            sa.update(trials)
            .where(trials.c.trial_id == trial_id, trials.c.state == TrialState.WAITING.name)
            .values(state=TrialState.RUNNING.name, datetime_start=datetime.now())
        )
        with self.engine.begin() as connection:
            claimed = connection.execute(claim).rowcount == 1
        if claimed:
            return True
        # As Optuna's: a finished trial raises, a trial another runner holds is not ours.
        self.check_trial_is_updatable(trial_id, self.get_trial(trial_id).state)
        return False
