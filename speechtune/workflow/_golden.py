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
from pathlib import Path
from typing import TYPE_CHECKING

from speechtune.data import (
    GoldenSetAccessError,
    Manifest,
    golden_guard,
    guard_env,
    load_manifest,
    replace_utt,
    synthesize_configured,
)

if TYPE_CHECKING:
    from speechtune.workflow._context import Context

__all__ = [
    "GoldenSetAccessError",
    "Leakage",
    "golden_guard",
    "golden_paths",
    "golden_synthetic_root",
    "guard_env",
    "leakage",
    "load_golden",
]


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
    shared = sorted(
        u.id for u in golden if u.audio is not None and str(golden.resolve(u)) in seen_paths
    )
    speakers = sorted({u.speaker for u in golden} & seen_speakers)
    return Leakage(shared_audio=shared, shared_speakers=speakers)


def load_golden(ctx: Context) -> tuple[Manifest, str]:
    """The golden manifest (split ``golden``) and where it came from. Only stage 7 calls this."""

    g = ctx.spec.golden
    if g.manifest is not None:
        return load_manifest(g.manifest).with_split("golden"), str(g.manifest)
    s = g.synthetic
    assert s is not None
    manifest = synthesize_configured(golden_synthetic_root(ctx), s, ctx.progress)
    # Another seed draws other voices, but the generator names speakers by accent and index
    # (en-us_s00): prefixed, they cannot be mistaken for the training corpus's speakers.
    renamed = [
        replace_utt(u, id=f"golden-{u.id}", speaker=f"golden-{u.speaker}") for u in manifest
    ]
    return Manifest(renamed, "golden", manifest.root), f"synthetic corpus {manifest.root}"


def golden_synthetic_root(ctx: Context) -> Path:
    """Where a synthetic golden corpus is generated: its own cache directory, never the training one."""
    return Path(ctx.cache_dir) / "golden"


def golden_paths(ctx: Context) -> list[tuple[Path, bool]]:
    """What the guard refuses before gating: the golden manifest, or the golden corpus directory."""
    g = ctx.spec.golden
    if g.manifest is not None:
        return [(g.manifest, g.manifest.is_dir())]
    return [(golden_synthetic_root(ctx), True)]
