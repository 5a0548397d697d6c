"""Log-mel front end (against librosa), global CMVN, and the feature cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from speechtune.config import FeaturesConfig
from speechtune.data import Manifest, Utterance
from speechtune.features import FeatureCache, GlobalCMVN, LogMel
from speechtune.features._cache import cache_key

# Max |ours - librosa| in the log domain, over bins whose librosa power is above 1e-6
# (below that, float32 rounding of tiny powers dominates and the log magnifies it).
LOG_TOL = 1e-3


def _audio(sr: int, seconds: float, seed: int) -> np.ndarray:
    """A chirp, a tone and a little noise: energy across the whole band."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    chirp = 0.4 * np.sin(2 * np.pi * (100 + 0.2 * sr * t / seconds) * t)
    tone = 0.2 * np.sin(2 * np.pi * 440 * t)
    return (chirp + tone + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize(
    ("sr", "window_ms", "hop_ms", "n_mels", "f_min", "f_max"),
    [
        (16000, 25.0, 10.0, 80, 0.0, None),
        (16000, 20.0, 5.0, 64, 20.0, 7600.0),
        (8000, 25.0, 10.0, 40, 0.0, None),
        (8000, 32.0, 12.0, 23, 60.0, 3800.0),
    ],
)
def test_logmel_matches_librosa(
    sr: int, window_ms: float, hop_ms: float, n_mels: int, f_min: float, f_max: float | None
) -> None:
    wave = _audio(sr, 1.23, seed=sr + n_mels)
    front = LogMel(sr, window_ms, hop_ms, n_mels, f_min, f_max)
    feats, frames = front(torch.from_numpy(wave)[None], torch.tensor([wave.size]))
    ref = librosa.feature.melspectrogram(
        y=wave,
        sr=sr,
        n_fft=front.n_fft,
        hop_length=front.hop_length,
        win_length=front.win_length,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=2.0,
        n_mels=n_mels,
        fmin=f_min,
        fmax=f_max,
        htk=False,
        norm="slaney",
    ).T
    assert front.n_fft >= front.win_length and front.n_fft & (front.n_fft - 1) == 0
    assert front.n_fft < 2 * front.win_length
    assert feats.shape == (1, ref.shape[0], n_mels)
    assert frames.tolist() == [1 + wave.size // front.hop_length] == [ref.shape[0]]
    big = ref > 1e-6
    assert big.mean() > 0.5
    diff = np.abs(feats[0].numpy() - np.log(np.maximum(ref, 1e-10)))
    assert diff[big].max() < LOG_TOL


def test_mel_filterbank_matches_librosa() -> None:
    front = LogMel(16000, 25.0, 10.0, 80, 0.0, None)
    ref = librosa.filters.mel(sr=16000, n_fft=front.n_fft, n_mels=80)
    np.testing.assert_allclose(front.mel_fb.T.numpy(), ref, rtol=1e-5, atol=1e-8)


def test_logmel_batch_equals_single_utterances() -> None:
    front = LogMel(16000, 25.0, 10.0, 40)
    waves = [_audio(16000, s, seed=i) for i, s in enumerate((0.5, 1.1, 0.013))]
    lengths = torch.tensor([w.size for w in waves])
    padded = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        padded[i, : w.size] = torch.from_numpy(w)
    batch, frames = front(padded, lengths)
    assert frames.tolist() == [1 + w.size // 160 for w in waves]
    for i, w in enumerate(waves):
        single, _ = front(torch.from_numpy(w)[None], torch.tensor([w.size]))
        n = int(frames[i])
        torch.testing.assert_close(batch[i, :n], single[0], rtol=1e-4, atol=1e-4)
        assert torch.all(batch[i, n:] == 0.0)


def test_logmel_from_config_and_bad_window() -> None:
    cfg = FeaturesConfig(sample_rate=8000, window_ms=25.0, hop_ms=10.0, n_mels=30)
    front = LogMel.from_config(cfg)
    assert (front.win_length, front.hop_length, front.n_fft, front.n_mels) == (200, 80, 256, 30)
    assert "mel_fb" in front.state_dict()
    with pytest.raises(ValueError, match="f_max"):
        LogMel(8000, 25.0, 10.0, 30, f_max=6000.0)
    with pytest.raises(ValueError, match="hop"):
        LogMel(8000, 25.0, 0.01, 30)


# -- CMVN ----------------------------------------------------------------------------------
def test_cmvn_fit_matches_numpy_and_normalises() -> None:
    gen = torch.Generator().manual_seed(0)
    # A large offset makes naive sum-of-squares accumulation in float32 lose the variance.
    feats = [
        1000.0 + torch.randn(n, 6, generator=gen) * torch.arange(1, 7) for n in (50, 1, 200, 0, 31)
    ]
    cmvn = GlobalCMVN.fit(feats)
    allx = torch.cat(feats).double().numpy()
    np.testing.assert_allclose(cmvn.mean.numpy(), allx.mean(0), rtol=1e-6)
    np.testing.assert_allclose(cmvn.std.numpy(), allx.std(0), rtol=1e-5)
    out = cmvn(torch.cat(feats))
    assert out.mean(0).abs().max() < 1e-3 and (out.std(0, unbiased=False) - 1).abs().max() < 1e-3


def test_cmvn_unfitted_raises_and_state_dict_round_trip() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        GlobalCMVN(4)(torch.zeros(2, 4))
    fitted = GlobalCMVN.fit([torch.arange(12.0).reshape(3, 4)])
    loaded = GlobalCMVN(4)
    loaded.load_state_dict(fitted.state_dict())
    x = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded(x), fitted(x))
    with pytest.raises(ValueError, match="no feature frames"):
        GlobalCMVN.fit([])
    with pytest.raises(ValueError, match="feature 1"):
        GlobalCMVN.fit([torch.zeros(2, 4), torch.zeros(2, 5)])
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        fitted(torch.zeros(3, 5))


# -- cache ---------------------------------------------------------------------------------
def _corpus(tmp_path: Path, sr: int, n: int) -> Manifest:
    tmp_path.mkdir(parents=True, exist_ok=True)
    utts = []
    for i in range(n):
        wave = _audio(sr, 0.3 + 0.05 * i, seed=i)
        path = tmp_path / f"u{i}.flac"
        sf.write(path, wave, sr)
        utts.append(
            Utterance(
                id=f"u{i}",
                audio=path.name,
                duration=wave.size / sr,
                text="A B",
                speaker=f"s{i % 2}",
            )
        )
    return Manifest(utts, split="train", root=tmp_path)


class CountingLoader:
    """Reads an utterance's file; counts calls so tests see whether features were recomputed."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.calls = 0

    def __call__(self, utt: Utterance) -> np.ndarray:
        self.calls += 1
        wave, _ = sf.read(self.manifest.resolve(utt), dtype="float32")
        return wave


@pytest.fixture(autouse=True)
def _fresh_memo():
    FeatureCache.clear_memory()
    yield
    FeatureCache.clear_memory()


def test_cache_computes_once_then_hits_memory_and_disk(tmp_path: Path) -> None:
    manifest = _corpus(tmp_path / "audio", 16000, 7)
    cfg = FeaturesConfig(n_mels=40)
    load = CountingLoader(manifest)
    cache = FeatureCache(tmp_path / "cache")
    feats = cache.get(manifest, cfg, load, batch_size=3)
    assert (load.calls, cache.misses, cache.hits) == (7, 1, 0)
    assert list(feats) == [u.id for u in manifest]
    front = LogMel.from_config(cfg)
    for utt in manifest:
        wave = torch.from_numpy(load(utt))
        ref, frames = front(wave[None], torch.tensor([wave.numel()]))
        assert feats[utt.id].dtype == torch.float32 and feats[utt.id].device.type == "cpu"
        assert feats[utt.id].shape == (int(frames[0]), 40)
        torch.testing.assert_close(feats[utt.id], ref[0], rtol=1e-4, atol=1e-4)
    load.calls = 0

    # A new cache object in the same process: the memo answers, no file read, no audio read.
    again = FeatureCache(tmp_path / "cache")
    assert again.get(manifest, cfg, load).keys() == feats.keys()
    assert (load.calls, again.memory_hits, again.disk_hits, again.misses) == (0, 1, 0, 0)

    # Another process (simulated by clearing the memo) loads the file instead of recomputing.
    FeatureCache.clear_memory()
    from_disk = FeatureCache(tmp_path / "cache").get(manifest, cfg, load)
    assert load.calls == 0
    for key, value in feats.items():
        assert torch.equal(from_disk[key], value)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [
        f"feats-{cache_key(manifest, cfg)}.pt"
    ]


def test_cache_key_depends_on_features_and_manifest(tmp_path: Path) -> None:
    manifest = _corpus(tmp_path, 8000, 3)
    cfg = FeaturesConfig(sample_rate=8000, n_mels=23)
    base = cache_key(manifest, cfg)
    assert cache_key(manifest, dataclasses.replace(cfg, normalize=not cfg.normalize)) == base
    for change in (
        {"n_mels": 24},
        {"hop_ms": 12.5},
        {"window_ms": 20.0},
        {"f_min": 20.0},
        {"f_max": 3000.0},
    ):
        assert cache_key(manifest, dataclasses.replace(cfg, **change)) != base, change
    assert cache_key(manifest[:2], cfg) != base

    load = CountingLoader(manifest)
    cache = FeatureCache(tmp_path / "cache")
    cache.get(manifest, cfg, load)
    other = cache.get(manifest, dataclasses.replace(cfg, n_mels=24), load)
    assert cache.misses == 2 and load.calls == 6
    assert next(iter(other.values())).shape[1] == 24


def test_cache_recovers_from_corrupt_file_and_rejects_bad_audio(tmp_path: Path) -> None:
    manifest = _corpus(tmp_path, 16000, 2)
    cfg = FeaturesConfig(n_mels=20)
    cache = FeatureCache(tmp_path / "cache")
    path = cache.path_for(manifest, cfg)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a torch file")
    load = CountingLoader(manifest)
    with pytest.warns(UserWarning, match="unreadable feature cache"):
        feats = cache.get(manifest, cfg, load)
    assert cache.misses == 1 and len(feats) == 2
    assert not list(path.parent.glob("*.tmp"))

    stereo = FeatureCache(tmp_path / "other")
    with pytest.raises(ValueError, match="'u0'"):
        stereo.get(manifest, cfg, lambda u: np.zeros((100, 2), dtype=np.float32))
