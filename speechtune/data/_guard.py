"""A guard that refuses any Python ``open()`` of held-out data (the workflow's golden set).

While a guarded block runs, an audit hook (PEP 578) raises :class:`GoldenSetAccessError` on an
``open`` of a guarded file, or of anything under a guarded directory. Audit hooks cannot be
removed, so the hook is installed once and reads a list that the guard fills and empties.
Worker processes inherit the guard through :data:`GUARD_ENV` (see :func:`guard_from_env`).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Environment variable carrying the guarded paths to child processes: JSON ``[[path, is_dir], ...]``.
GUARD_ENV = "SPEECHTUNE_GOLDEN_GUARD"


class GoldenSetAccessError(RuntimeError):
    """A stage before gating tried to read the golden set."""


_lock = threading.Lock()
_guarded: list[tuple[Path, bool, str]] = []  # (path, is a directory, the stage guarding it)
_installed = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    # Hot path: every open() in the process goes through here, so bail out fast.
    if event != "open" or not _guarded or not args:
        return
    target = args[0]
    if isinstance(target, int) or target is None:
        return
    try:
        path = Path(os.fsdecode(target)).resolve()
    except (TypeError, ValueError, OSError):
        return
    for guarded, is_dir, stage in list(_guarded):
        if path == guarded or (is_dir and guarded in path.parents):
            raise GoldenSetAccessError(
                f"stage {stage!r} tried to read {path}, which belongs to the golden set; the golden set is read only "
                "by the gate stage (7). Point training data elsewhere, or use a different golden set."
            )


def _install() -> None:
    global _installed
    with _lock:
        if not _installed:
            sys.addaudithook(_audit)
            _installed = True


@contextmanager
def golden_guard(paths: list[tuple[Path, bool]], stage: str) -> Iterator[None]:
    """Refuse Python-level opens of the golden ``paths`` while the block runs.

    Args:
        paths: (path, is a directory) pairs; a directory guards everything beneath it.
        stage: the running stage, named in the error.
    """
    _install()
    entries = [(Path(p).resolve(), is_dir, stage) for p, is_dir in paths]
    with _lock:
        _guarded.extend(entries)
    try:
        yield
    finally:
        with _lock:
            for entry in entries:
                _guarded.remove(entry)


def guard_env(paths: list[tuple[Path, bool]]) -> dict[str, str]:
    """The environment that makes a child process (``speechtune worker``) guard ``paths`` too."""
    return {GUARD_ENV: json.dumps([[str(Path(p).resolve()), bool(d)] for p, d in paths])}


@contextmanager
def guard_from_env(stage: str) -> Iterator[None]:
    """Guard the paths :data:`GUARD_ENV` names (nothing when it is unset) while the block runs.

    Raises:
        ValueError: the variable is set but is not the JSON list :func:`guard_env` writes.
    """
    raw = os.environ.get(GUARD_ENV)
    if not raw:
        yield
        return
    try:
        entries = [(Path(p), bool(d)) for p, d in json.loads(raw)]
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{GUARD_ENV} must be a JSON list of [path, is_dir] pairs, got {raw!r}"
        ) from exc
    with golden_guard(entries, stage):
        yield
