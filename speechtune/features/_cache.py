"""On-disk and in-process cache of log-mel features, keyed by feature config and manifest.

Trials of a study vary the model and the optimiser far more often than the front end, so
features are computed once per (feature config, manifest) and shared: on disk across
processes, and in a small in-process LRU so trials in one worker never reload a file.
SpecAugment is not part of the key: it is applied on the fly in training. Speed perturbation
(``data.speed_perturb``) is: the copies of the training set at each factor are one cache entry
per factor, keyed by the factor and the resampler's version, beside the originals' own entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from speechtune.config import FeaturesConfig
from speechtune.data import Manifest, Utterance
from speechtune.features._speed import SPEED_VERSION, speed_perturb
from speechtune.features._waveform import build_frontend

#: Bump when the feature computation changes, so stale cache files are never reused.
FEATURE_VERSION = 1

#: FeaturesConfig fields that change the cached log-mels (``normalize`` does not: CMVN is
#: applied after the cache).
KEY_FIELDS = ("sample_rate", "window_ms", "hop_ms", "n_mels", "f_min", "f_max")

FeatureDict = dict[str, Tensor]


def cache_key(manifest: Manifest, cfg: FeaturesConfig, speed: float = 1.0) -> str:
    """sha256 of the feature-relevant config fields and the manifest's fingerprint.

    Args:
        manifest: the utterances whose features are cached.
        cfg: the front-end settings.
        speed: the speed-perturbation factor the audio is played at (1.0: as recorded; the
            key is then the same as without perturbation).

    Returns:
        a hex digest naming the cache file.
    """
    payload: dict[str, Any] = {
        "version": FEATURE_VERSION,
        "features": {name: getattr(cfg, name) for name in KEY_FIELDS},
        "manifest": manifest.fingerprint(),
    }
    if cfg.kind != "logmel":
        # Only then: the keys of existing log-mel caches stay what they were.
        payload["kind"] = cfg.kind
    if speed != 1.0:
        payload["speed"] = {"factor": float(speed), "resampler": SPEED_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class _Memo:
    """A small thread-safe LRU shared by every FeatureCache of the process."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, FeatureDict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> FeatureDict | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: FeatureDict) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class FeatureCache:
    """Log-mel features by utterance id, computed once per (feature config, manifest).

    Features are stored and returned as CPU float32 ``[F, n_mels]`` tensors (un-normalised;
    CMVN comes after). Callers must not modify the returned tensors in place: they are
    shared with the in-process memo.

    Attributes:
        memory_hits: ``get`` calls answered from the in-process memo.
        disk_hits: ``get`` calls answered by loading the cache file.
        misses: ``get`` calls that computed the features.

    Args:
        cache_dir: directory of the cache files (created on first write).
    """

    #: Entries (feature sets) kept in memory across all instances of the process.
    memo = _Memo(max_entries=4)

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.memory_hits = 0
        self.disk_hits = 0
        self.misses = 0

    @property
    def hits(self) -> int:
        """Calls that did not compute (memory or disk)."""
        return self.memory_hits + self.disk_hits

    @classmethod
    def clear_memory(cls) -> None:
        """Forget the in-process memo (files on disk stay)."""
        cls.memo.clear()

    def path_for(self, manifest: Manifest, cfg: FeaturesConfig, speed: float = 1.0) -> Path:
        """The file that holds (or will hold) these features."""
        return self.cache_dir / f"feats-{cache_key(manifest, cfg, speed)}.pt"

    def get(
        self,
        manifest: Manifest,
        cfg: FeaturesConfig,
        load_audio: Callable[[Utterance], np.ndarray],
        device: torch.device | str = "cpu",
        batch_size: int = 32,
        progress: bool = False,
        speed: float = 1.0,
    ) -> FeatureDict:
        """Features of every utterance in ``manifest``, from memory, disk, or computed.

        Args:
            manifest: the utterances.
            cfg: front-end settings.
            load_audio: returns an utterance's mono float32 samples at ``cfg.sample_rate``.
            device: where to compute the features (results come back to the CPU).
            batch_size: waveforms per LogMel call.
            progress: show a progress bar while computing.
            speed: play every utterance's audio at this speed factor first
                (:func:`~speechtune.features._speed.speed_perturb`); part of the cache key.

        Returns:
            ``{utterance id: float32 CPU tensor [F, n_mels]}``.

        Raises:
            ValueError: when ``load_audio`` returns something other than non-empty 1-D audio.
        """
        if batch_size < 1:
            raise ValueError(f"FeatureCache.get: batch_size must be >= 1, got {batch_size}")
        path = self.path_for(manifest, cfg, speed)
        memo_key = str(path.resolve())
        feats = self.memo.get(memo_key)
        if feats is not None:
            self.memory_hits += 1
            return dict(feats)
        feats = self._load(path, manifest)
        if feats is not None:
            self.disk_hits += 1
        else:
            self.misses += 1
            feats = compute_features(
                manifest, cfg, load_audio, device, batch_size, progress, speed
            )
            self._save(path, manifest, feats)
        self.memo.put(memo_key, feats)
        return dict(feats)

    def get_perturbed(
        self,
        manifest: Manifest,
        cfg: FeaturesConfig,
        load_audio: Callable[[Utterance], np.ndarray],
        speeds: Mapping[str, float],
        device: torch.device | str = "cpu",
        batch_size: int = 32,
        progress: bool = False,
    ) -> FeatureDict:
        """:meth:`get` for a manifest that mixes speed-perturbed copies with originals.

        The utterances are grouped by factor and each group is one cache entry (the originals'
        is the same as without perturbation), so that turning perturbation on or changing the
        factors recomputes only the copies that are new.

        Args:
            speeds: utterance id -> speed factor; ids not in it are played at 1.0.
            manifest, cfg, load_audio, device, batch_size, progress: as :meth:`get`.

        Returns:
            ``{utterance id: float32 CPU tensor [F, n_mels]}``, in the manifest's order.
        """
        groups: dict[float, list[Utterance]] = {}
        for utt in manifest:
            groups.setdefault(float(speeds.get(utt.id, 1.0)), []).append(utt)
        feats: FeatureDict = {}
        for factor, utts in sorted(groups.items()):
            part = Manifest(utts, manifest.split, manifest.root)
            feats.update(
                self.get(part, cfg, load_audio, device, batch_size, progress, speed=factor)
            )
        return {u.id: feats[u.id] for u in manifest}

    # -- files -------------------------------------------------------------------------
    def _save(self, path: Path, manifest: Manifest, feats: FeatureDict) -> None:
        ids = [u.id for u in manifest]
        # One flat tensor saves and loads far faster than thousands of small ones.
        payload = {
            "version": FEATURE_VERSION,
            "ids": ids,
            "frames": torch.tensor([feats[i].shape[0] for i in ids], dtype=torch.long),
            "feats": torch.cat([feats[i] for i in ids]) if ids else torch.zeros(0, 0),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a concurrent reader (another worker) never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(payload, fh)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _load(self, path: Path, manifest: Manifest) -> FeatureDict | None:
        if not path.is_file():
            return None
        try:
            payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
            ids, frames, flat = payload["ids"], payload["frames"], payload["feats"]
            if payload.get("version") != FEATURE_VERSION or list(ids) != [u.id for u in manifest]:
                raise ValueError("utterance ids or version do not match the manifest")
            parts = torch.split(flat, frames.tolist()) if ids else ()
        except Exception as err:  # a truncated or foreign file is recomputed, not fatal
            warnings.warn(f"ignoring unreadable feature cache file {path}: {err}", stacklevel=3)
            return None
        return dict(zip(ids, parts))


def _batches(items: Sequence[Utterance], size: int) -> Iterator[Sequence[Utterance]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _load_checked(
    utt: Utterance, load_audio: Callable[[Utterance], np.ndarray], speed: float = 1.0
) -> np.ndarray:
    wave = np.asarray(load_audio(utt), dtype=np.float32)
    if wave.ndim != 1 or wave.size == 0:
        raise ValueError(
            f"load_audio returned shape {wave.shape} for utterance {utt.id!r}; expected non-empty mono 1-D samples"
        )
    return wave if speed == 1.0 else speed_perturb(wave, speed)


def compute_features(
    manifest: Manifest,
    cfg: FeaturesConfig,
    load_audio: Callable[[Utterance], np.ndarray],
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    progress: bool = False,
    speed: float = 1.0,
) -> FeatureDict:
    """Log-mel features of every utterance, in padded batches on ``device`` (no caching).

    Utterances are batched in order of duration so that padding stays small.

    Args and Returns: as :meth:`FeatureCache.get`.
    """
    front_end = build_frontend(cfg).to(device)
    order = sorted(manifest, key=lambda u: u.duration)
    feats: FeatureDict = {}
    batches: Any = _batches(order, batch_size)
    if progress:
        from rich.progress import track

        batches = track(list(batches), description=f"{cfg.kind} features")
    # no_grad, not inference_mode: inference tensors could not be used in training later.
    with torch.no_grad():
        for batch in batches:
            waves = [_load_checked(u, load_audio, speed) for u in batch]
            lengths = torch.tensor([w.size for w in waves], dtype=torch.long)
            padded = np.zeros((len(waves), int(lengths.max())), dtype=np.float32)
            for row, w in zip(padded, waves):
                row[: w.size] = w
            out, frames = front_end(torch.from_numpy(padded).to(device), lengths.to(device))
            out = out.cpu()
            for utt, x, n in zip(batch, out, frames.tolist()):
                feats[utt.id] = x[:n].clone()
    return {u.id: feats[u.id] for u in manifest}
