"""Find and open the Optuna storage of a run directory (or a storage URL / file)."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import yaml
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage

from speechtune._urls import MASK, has_password, mask_url
from speechtune.tuning.study._sqlite import readable_sqlite
from speechtune.tuning.study._storage import JOURNAL_SCHEME, STORAGE_ENV, journal_file

_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_JOURNAL_SUFFIXES = (".log", ".jsonl")


def _journal(path: str | Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def _spec_study(run_dir: Path) -> dict:
    spec_path = run_dir / "spec.yaml"
    if not spec_path.is_file():
        return {}
    spec = yaml.safe_load(spec_path.read_text()) or {}
    study = spec.get("study") if isinstance(spec, dict) else None
    return study if isinstance(study, dict) else {}


def _run_dir_storage(run_dir: Path) -> str | BaseStorage:
    if (run_dir / "study.db").is_file():
        return f"sqlite:///{(run_dir / 'study.db').resolve()}"
    if (run_dir / "journal.log").is_file():
        return _journal(run_dir / "journal.log")
    url = _spec_study(run_dir).get("storage")
    if isinstance(url, str) and MASK in url and has_password(url.replace(MASK, "x")):
        # spec.yaml records the URL with its password masked; the environment may hold the real one.
        real = os.environ.get(STORAGE_ENV, "")
        if real == url or mask_url(real) != url:
            raise ValueError(
                f"run directory {run_dir}: spec.yaml records the study storage {url} with its "
                f"password hidden; set ${STORAGE_ENV} to the storage URL, or give the URL itself "
                "instead of the run directory"
            )
        url = real
    if isinstance(url, str) and url not in ("", "journal"):
        return resolve_storage(url)
    raise FileNotFoundError(
        f"no study storage in run directory {run_dir}: expected study.db, journal.log, "
        "or spec.yaml with study.storage set to a storage URL"
    )


def resolve_storage(target: str | Path) -> str | BaseStorage:
    """Turn a run directory, a storage file or a storage URL into something Optuna opens.

    Args:
        target: A run directory (``study.db`` / ``journal.log`` / ``spec.yaml``'s
            ``study.storage``), a ``.db`` SQLite or ``.log`` journal file, ``journal:///rel.log``
            or ``journal:////abs.log`` (as ``study.storage`` reads them),
            or any Optuna/SQLAlchemy storage URL (``sqlite:///x.db``, ``postgresql+psycopg://...``).

    Returns:
        A storage URL or storage object.

    Raises:
        FileNotFoundError: When a run directory holds no storage or a path does not exist.
    """
    text = str(target)
    if text.startswith(JOURNAL_SCHEME):
        return _journal(journal_file(text))
    if "://" in text:
        return text
    path = Path(text)
    if path.is_dir():
        return _run_dir_storage(path)
    if path.is_file() and path.suffix in _SQLITE_SUFFIXES:
        return f"sqlite:///{path.resolve()}"
    if path.is_file() and path.suffix in _JOURNAL_SUFFIXES:
        return _journal(path)
    raise FileNotFoundError(
        f"{mask_url(text)!r} is not a run directory, a study file ({', '.join(_SQLITE_SUFFIXES + _JOURNAL_SUFFIXES)}) "
        "or a storage URL"
    )


def load_study(target: str | Path, study_name: str | None = None) -> optuna.Study:
    """Load the study of a run directory or storage.

    The study is ``study_name`` when given, else the only study in the storage, else the one
    named in the run directory's ``spec.yaml`` or after the run directory.

    Raises:
        FileNotFoundError: No storage found.
        ValueError: The study cannot be told apart, or does not exist; the message lists the
            studies the storage holds.
    """
    storage = resolve_storage(target)
    with readable_sqlite(storage):  # a corrupt study.db: one line naming it, no traceback
        names = optuna.get_all_study_names(storage)
    if study_name is None:
        path = Path(str(target))
        candidates = [str(_spec_study(path).get("name", "")), path.name] if path.is_dir() else []
        if len(names) == 1:
            study_name = names[0]
        else:
            study_name = next((c for c in candidates if c in names), None)
    if study_name is None or study_name not in names:
        held = ", ".join(names) or "none"
        raise ValueError(
            f"cannot pick a study in {mask_url(target)}: asked for {study_name!r}; the storage holds: {held}"
        )
    with readable_sqlite(storage):
        return optuna.load_study(study_name=study_name, storage=storage)
