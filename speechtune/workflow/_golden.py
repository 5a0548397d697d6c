"""The golden set: held out from every stage before gating, and the checks that enforce it.

The golden set decides whether a model reaches production, so nothing that shaped the model
(data sampling, search, selection, final training) may have seen it. Two checks enforce that:

* :func:`golden_guard` (:mod:`speechtune.data._guard`) — while stages 1 to 6 run, in this
  process and in any worker process it starts, any Python ``open`` of the golden manifest or of
  anything under the golden corpus directory raises :class:`GoldenSetAccessError`. The manifest
  is the only way to the golden audio, so guarding it guards the set.
* :func:`leakage` — at gating, golden utterances whose audio file is also in the training or dev
  data are an error (the set is not held out), and shared speakers are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from speechtune.data import GoldenSetAccessError, Manifest, golden_guard, guard_env

__all__ = ["GoldenSetAccessError", "Leakage", "golden_guard", "guard_env", "leakage"]


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
