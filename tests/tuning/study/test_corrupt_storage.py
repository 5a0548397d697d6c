"""A ``study.db`` that is not a readable SQLite database is refused with one line naming it.

``tune --resume`` and ``report`` used to end with ``sqlite3.DatabaseError`` tracebacks ("file is
not a database", "database disk image is malformed"). The damaged files here are made from a
real ``study.db`` of a tiny study (a function of one float, three trials).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest

from speechtune.tuning.study import load_study, make_storage
from speechtune.tuning.study._sqlite import UnreadableStudyError, check_sqlite_file

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def study_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study.db of a finished three-trial study, checkpointed (no -wal file beside it)."""
    run = tmp_path_factory.mktemp("real_study")
    storage = make_storage(None, run)
    study = optuna.create_study(
        study_name="tiny", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.optimize(lambda t: (t.suggest_float("x", 0.0, 1.0) - 0.3) ** 2, n_trials=3)
    storage.engine.dispose()  # type: ignore[attr-defined]
    db = run / "study.db"
    assert db.stat().st_size > 8 * 4096 and not db.with_name("study.db-wal").exists()
    return db


def _run_dir(tmp_path: Path, content: bytes) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "study.db").write_bytes(content)
    return run


def _assert_refused(run: Path, reason: str) -> None:
    for open_it in (lambda: load_study(run), lambda: make_storage(None, run)):
        with pytest.raises(UnreadableStudyError) as err:
            open_it()
        message = str(err.value)
        assert message.startswith(f"study database {run / 'study.db'}: "), message
        assert "is not a readable SQLite study database" in message and reason in message
        assert "aside to start a fresh study" in message and "\n" not in message


def test_the_real_study_db_opens(study_db: Path) -> None:
    assert len(load_study(study_db.parent).trials) == 3
    check_sqlite_file(f"sqlite:///{study_db}")


@pytest.mark.parametrize("keep", ["header", "one-page", "half", "all-but-one-byte"])
def test_truncated_copies_are_refused(study_db: Path, tmp_path: Path, keep: str) -> None:
    data = study_db.read_bytes()
    cut = {
        "header": 100,
        "one-page": 4096,
        "half": len(data) // 2,
        "all-but-one-byte": len(data) - 1,
    }
    _assert_refused(_run_dir(tmp_path, data[: cut[keep]]), "truncated")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("text", "it does not start with the SQLite header"),
        ("random-bytes", "it does not start with the SQLite header"),
        ("header-then-garbage", "database disk image is malformed"),
    ],
)
def test_files_that_are_not_sqlite_are_refused(
    study_db: Path, tmp_path: Path, kind: str, reason: str
) -> None:
    data = study_db.read_bytes()
    rng = np.random.default_rng(7)
    content = {
        "text": b"this run dir's study.db is a note, not a database\n",
        "random-bytes": rng.bytes(8192),
        # The header survives (the page count matches), every page after it is noise.
        "header-then-garbage": data[:100] + rng.bytes(len(data) - 100),
    }[kind]
    _assert_refused(_run_dir(tmp_path, content), reason)


def test_a_database_being_checkpointed_is_not_judged_by_its_header(
    study_db: Path, tmp_path: Path
) -> None:
    """With a -wal file, a writer may have written page 1 before the pages it adds."""
    run = _run_dir(tmp_path, study_db.read_bytes()[: 4096 * 3])
    (run / "study.db-wal").write_bytes(b"")
    check_sqlite_file(f"sqlite:///{run / 'study.db'}")  # no verdict from the header


def test_an_empty_or_missing_file_is_a_new_study(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, b"")
    check_sqlite_file(f"sqlite:///{run / 'study.db'}")
    storage = make_storage(None, run)
    assert optuna.get_all_study_names(storage) == []
    storage.engine.dispose()  # type: ignore[attr-defined]
    shutil.rmtree(run)
    check_sqlite_file(f"sqlite:///{run / 'study.db'}")
