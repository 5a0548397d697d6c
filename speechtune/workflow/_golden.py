"""The golden set: held out from every stage before gating, and the guard that enforces it.

The golden set decides whether a model reaches production, so nothing that shaped the model
(data sampling, search, selection, final training) may have seen it. Two checks enforce that:

* :class:`GoldenGuard` — while stages 1 to 6 run, an audit hook (PEP 578) refuses any Python
  ``open`` of the golden manifest or of anything under the golden corpus directory, raising
  :class:`GoldenSetAccessError`. The manifest is the only way to the golden audio, so guarding
  it guards the set. Audit hooks cannot be removed; the guard is a flag the hook reads.
* :func:`leakage` — at gating, golden utterances whose audio file is also in the training or dev
  data are an error (the set is not held out), and shared speakers are reported.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import Manifest


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


@dataclass(frozen=True)
class Leakage:
    """Golden utterances that are not held out."""

    shared_audio: list[str]
    shared_speakers: list[str]

    @property
    def ok(self) -> bool:
        return not self.shared_audio


def leakage(golden: Manifest, *seen: Manifest) -> Leakage:
    """Golden utterances whose audio file is also in ``seen`` (train/dev), and speakers in both."""
    seen_paths = {str(m.resolve(u)) for m in seen for u in m if u.audio is not None}
    seen_speakers = {u.speaker for m in seen for u in m}
    shared = sorted(u.id for u in golden if u.audio is not None and str(golden.resolve(u)) in seen_paths)
    speakers = sorted({u.speaker for u in golden} & seen_speakers)
    return Leakage(shared_audio=shared, shared_speakers=speakers)
