"""The manifest: speechtune's one representation of a speech corpus.

Every corpus (synthetic, AN4, Kaldi dirs, lhotse manifests, JSONL/CSV) is imported into a
:class:`Manifest` of :class:`Utterance` records. Records are frozen; updates are copies
(``dataclasses.replace``), as lhotse does with its cuts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

#: Split names. ``test`` is for final evaluation only (see :func:`require_tunable`).
SPLITS = ("train", "dev", "test", "golden", "all")


class TestSplitError(RuntimeError):
    """Raised when a code path that tunes or selects models is handed the test split."""

    __test__ = False  # not a pytest test class, despite its name


@dataclass(frozen=True)
class Utterance:
    """One utterance.

    Attributes:
        id: unique utterance id.
        audio: path of the audio file (absolute, or relative to the manifest's directory),
            or None when ``samples`` holds the audio in memory.
        duration: seconds.
        text: the reference transcript (upper-case words for the built-in corpora).
        speaker: speaker id (splits are speaker-disjoint).
        group: accent/demographic bucket used for per-group and worst-group WER.
        samples: in-memory mono float32 audio, when there is no file.
        sample_rate: sample rate of ``samples`` (or of the file, when known).
    """

    id: str
    audio: str | None
    duration: float
    text: str
    speaker: str
    group: str = "default"
    samples: np.ndarray | None = field(default=None, compare=False, repr=False)
    sample_rate: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record (in-memory audio is not serialised)."""
        d = {
            "id": self.id,
            "audio": self.audio,
            "duration": round(float(self.duration), 4),
            "text": self.text,
            "speaker": self.speaker,
            "group": self.group,
        }
        if self.sample_rate is not None:
            d["sample_rate"] = self.sample_rate
        return d


class Manifest(Sequence[Utterance]):
    """An ordered, immutable collection of utterances with a split name.

    Args:
        utterances: the records; ids must be unique.
        split: which split this is (``train``, ``dev``, ``test``, ``golden`` or ``all``).
        root: directory that relative audio paths are resolved against.
    """

    def __init__(
        self, utterances: Iterable[Utterance], split: str = "all", root: str | Path | None = None
    ):
        self._utts = tuple(utterances)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.root = Path(root) if root is not None else None
        seen: set[str] = set()
        dups = [u.id for u in self._utts if u.id in seen or seen.add(u.id)]  # type: ignore[func-returns-value]
        if dups:
            raise ValueError(f"duplicate utterance ids in manifest: {sorted(set(dups))[:10]}")

    def __len__(self) -> int:
        return len(self._utts)

    @overload
    def __getitem__(self, i: int) -> Utterance: ...

    @overload
    def __getitem__(self, i: slice) -> Manifest: ...

    def __getitem__(self, i: int | slice) -> Utterance | Manifest:
        if isinstance(i, slice):
            return Manifest(self._utts[i], self.split, self.root)
        return self._utts[i]

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self._utts)

    def __repr__(self) -> str:
        return f"Manifest(split={self.split!r}, utterances={len(self)}, hours={self.hours:.3f})"

    # -- views -----------------------------------------------------------------------------
    @property
    def hours(self) -> float:
        return sum(u.duration for u in self._utts) / 3600.0

    @property
    def speakers(self) -> list[str]:
        return sorted({u.speaker for u in self._utts})

    @property
    def groups(self) -> list[str]:
        return sorted({u.group for u in self._utts})

    def by_id(self) -> dict[str, Utterance]:
        return {u.id: u for u in self._utts}

    def filter(self, pred: Callable[[Utterance], bool]) -> Manifest:
        return Manifest([u for u in self._utts if pred(u)], self.split, self.root)

    def with_split(self, split: str) -> Manifest:
        return Manifest(self._utts, split, self.root)

    def resolve(self, utt: Utterance) -> Path | None:
        """Absolute path of an utterance's audio file (None for in-memory audio)."""
        if utt.audio is None:
            return None
        p = Path(utt.audio)
        if not p.is_absolute() and self.root is not None:
            p = self.root / p
        return p

    def fingerprint(self) -> str:
        """Stable hash of the records (ids, paths, durations, texts): used as a cache key."""
        h = hashlib.sha256()
        for u in self._utts:
            path = self.resolve(u)
            h.update(
                json.dumps(
                    [u.id, str(path) if path else None, round(u.duration, 4), u.text]
                ).encode()
            )
            if u.samples is not None:
                h.update(np.ascontiguousarray(u.samples).tobytes())
        return h.hexdigest()[:16]

    # -- io --------------------------------------------------------------------------------
    def to_jsonl(self, path: str | Path) -> None:
        """Write one JSON record per line; audio paths are written relative to ``path``'s dir."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        base = path.parent.resolve()
        # Written beside the target and renamed: concurrent trials (worker processes) re-import
        # a corpus into the same cache, and a reader must never see a half-written manifest.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with tmp.open("w") as fh:
                for u in self._utts:
                    if u.audio is None:
                        raise ValueError(
                            f"utterance {u.id!r} has in-memory audio only; cannot write it to a manifest"
                        )
                    d = u.to_dict()
                    abs_path = self.resolve(u)
                    assert abs_path is not None
                    try:
                        d["audio"] = str(abs_path.resolve().relative_to(base))
                    except ValueError:
                        d["audio"] = str(abs_path.resolve())
                    fh.write(json.dumps(d) + "\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def from_records(
        cls, records: Iterable[dict[str, Any]], split: str = "all", root: str | Path | None = None
    ) -> Manifest:
        utts = []
        for r in records:
            utts.append(
                Utterance(
                    id=str(r["id"]),
                    audio=r.get("audio"),
                    duration=float(r.get("duration", 0.0)),
                    text=str(r.get("text", "")),
                    speaker=str(r.get("speaker", "unknown")),
                    group=str(r.get("group") or "default"),
                    sample_rate=r.get("sample_rate"),
                )
            )
        return cls(utts, split, root)

    def replace(self, **changes: Any) -> Manifest:
        """Copy with a different split/root."""
        return Manifest(
            self._utts, changes.get("split", self.split), changes.get("root", self.root)
        )


def outside_root(path: str | Path, root: str | Path) -> Path | None:
    """Where ``path`` really points when that is outside ``root``; None when it is inside.

    Relative paths are taken relative to ``root``. Both are resolved, symlinks included, so
    neither ``..`` nor a link out of the tree gets past; the file itself need not exist.

    Args:
        path: an audio path from a manifest.
        root: the directory the corpus is confined to.

    Returns:
        The resolved path when it lies outside the resolved ``root``, else None.
    """
    root_real = Path(root).resolve()
    real = (root_real / path).resolve()  # an absolute ``path`` replaces root_real here
    return None if real.is_relative_to(root_real) else real


def replace_utt(utt: Utterance, **changes: Any) -> Utterance:
    """Copy of an utterance with some fields changed."""
    return dataclasses.replace(utt, **changes)


def require_tunable(manifest: Manifest, purpose: str) -> Manifest:
    """Refuse the test (and golden) split on code paths that train, tune or select models.

    Args:
        manifest: the data about to be used.
        purpose: what it is about to be used for, named in the error.

    Raises:
        TestSplitError: when ``manifest.split`` is ``test`` or ``golden``.
    """
    if manifest.split in ("test", "golden"):
        raise TestSplitError(
            f"refusing to use the {manifest.split!r} split for {purpose}: it is held out for final "
            "evaluation only. Tune and select on the dev split (speechtune carves it from train)."
        )
    return manifest
