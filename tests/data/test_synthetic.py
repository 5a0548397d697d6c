"""The built-in synthetic corpus (espeak-ng): content, determinism, caching, noise, errors."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("espeakng_loader", reason="the synthetic corpus needs the `synth` extra")

from speechtune.data import _espeak, _synthetic, synthesize_corpus
from speechtune.data._synthetic import (
    add_noise,
    an4_style_text,
    draw_speakers,
    spoken_form,
)

ACCENTS = ("en-us", "en-gb-scotland")
SMALL = dict(num_utterances=24, seed=0, accents=ACCENTS, num_voices=2)


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="module")
def corpus(corpus_root: Path):
    return synthesize_corpus(corpus_root, **SMALL)


def _records(manifest) -> list[dict]:
    return [u.to_dict() for u in manifest]


def test_files_durations_and_format(corpus) -> None:
    assert len(corpus) == 24
    assert corpus.split == "all"
    for utt in corpus:
        path = corpus.resolve(utt)
        assert path is not None and path.is_file(), utt.id
        info = sf.info(str(path))
        assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
        assert utt.duration == pytest.approx(info.frames / info.samplerate, abs=1e-4)
        assert 0.3 < utt.duration < 10.0
    # The manifest on disk is what was returned.
    manifest_path = corpus.root / "manifest.jsonl"
    assert manifest_path.is_file() and len(manifest_path.read_text().splitlines()) == 24


def test_texts_speakers_and_groups(corpus) -> None:
    for utt in corpus:
        assert re.fullmatch(r"[A-Z']+( [A-Z']+)*", utt.text), utt.text
    assert corpus.groups == sorted(ACCENTS)
    assert len(corpus.speakers) == len(ACCENTS) * 2
    for utt in corpus:
        assert utt.speaker.startswith(utt.group + "_s") and utt.id.startswith(utt.speaker)
    counts = [sum(u.speaker == s for u in corpus) for s in corpus.speakers]
    assert max(counts) - min(counts) <= 1


def test_audio_is_speech_like(corpus) -> None:
    for utt in corpus:
        audio, sr = sf.read(str(corpus.resolve(utt)), dtype="float32")
        rms = float(np.sqrt(np.mean(audio**2)))
        assert rms > 0.01, f"{utt.id} is (nearly) silent: rms={rms:.4f}"
        # Speech has syllables: its 20 ms frame energy varies a lot, unlike a tone or noise.
        frames = audio[: audio.size // 320 * 320].reshape(-1, 320)
        energy_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-10)
        assert np.ptp(energy_db) > 20, utt.id


def test_breathy_voice_does_not_depend_on_the_clock_or_history() -> None:
    # espeak-ng seeds its noise generator from time(NULL) and keeps static state between
    # calls; synthesize() must hide both. Wait for the clock's second to change in between.
    first, _ = _espeak.synthesize("H I N I C H", "en-us+f2", 160, 50, seed=1)
    _espeak.synthesize("SEVEN HUNDRED TWELVE", "en-us+m3", 190, 30)
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.02)
    again, _ = _espeak.synthesize("H I N I C H", "en-us+f2", 160, 50, seed=1)
    other, _ = _espeak.synthesize("H I N I C H", "en-us+f2", 160, 50, seed=2)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_speakers_are_distinct_and_deterministic() -> None:
    a = draw_speakers(ACCENTS, 5, seed=3)
    assert a == draw_speakers(ACCENTS, 5, seed=3)
    assert a != draw_speakers(ACCENTS, 5, seed=4)
    for accent in ACCENTS:
        mine = [(s.variant, s.rate, s.pitch) for s in a if s.accent == accent]
        assert len(mine) == 5 and len(set(mine)) == 5
    assert all(130 <= s.rate <= 200 and 30 <= s.pitch <= 70 for s in a)
    assert [s.id for s in a[:2]] == ["en-us_s00", "en-us_s01"]


def test_same_seed_same_bytes_other_seed_other_texts(corpus, tmp_path: Path) -> None:
    again = synthesize_corpus(tmp_path / "a", **SMALL)
    assert _records(again) == _records(corpus)
    for u, v in zip(corpus, again):
        assert corpus.resolve(u).read_bytes() == again.resolve(v).read_bytes(), u.id
    other = synthesize_corpus(tmp_path / "b", **{**SMALL, "seed": 1})
    assert [u.text for u in other] != [u.text for u in corpus]


def test_cached_second_call_does_not_synthesise(corpus, corpus_root: Path) -> None:
    wavs = sorted(corpus.root.glob("wav/*.wav"))
    mtimes = [p.stat().st_mtime_ns for p in wavs]
    again = synthesize_corpus(corpus_root, **SMALL)
    assert again.root == corpus.root
    assert _records(again) == _records(corpus)
    assert [p.stat().st_mtime_ns for p in wavs] == mtimes
    # No temporary directories are left behind next to the finished corpus.
    assert [p.name for p in corpus_root.iterdir()] == [corpus.root.name]


def test_interrupted_generation_leaves_no_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _synthetic._synthesize_one
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(_synthetic, "_synthesize_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthesize_corpus(tmp_path, **{**SMALL, "num_utterances": 6})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(_synthetic, "_synthesize_one", real)
    assert len(synthesize_corpus(tmp_path, **{**SMALL, "num_utterances": 6})) == 6


def test_add_noise_hits_the_requested_snr() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    clean = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(
        np.float32
    )
    for snr in (0.0, 10.0, 25.0):
        noisy = add_noise(clean, snr, rng)
        noise = noisy.astype(np.float64) - clean
        measured = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))
        assert measured == pytest.approx(snr, abs=0.05)
    a = add_noise(clean, 10.0, np.random.default_rng(7))
    assert np.array_equal(a, add_noise(clean, 10.0, np.random.default_rng(7)))
    assert np.array_equal(add_noise(np.zeros(100, np.float32), 10.0, rng), np.zeros(100))


def test_noisy_corpus_snr_matches(corpus, tmp_path: Path) -> None:
    noisy = synthesize_corpus(tmp_path, **{**SMALL, "num_utterances": 8, "noise_snr_db": 15.0})
    assert noisy.root != corpus.root
    for u, v in zip(corpus, noisy):  # the first 8 utterances are the same speech
        assert (u.id, u.text) == (v.id, v.text)
        clean, _ = sf.read(str(corpus.resolve(u)), dtype="float64")
        dirty, _ = sf.read(str(noisy.resolve(v)), dtype="float64")
        measured = 10 * np.log10(np.mean(clean**2) / np.mean((dirty - clean) ** 2))
        assert measured == pytest.approx(15.0, abs=0.3), u.id


def test_spelled_letters_are_spoken_as_letter_names() -> None:
    rng = np.random.default_rng(0)
    letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)]

    def strip(phonemes: str) -> list[str]:
        # Drop stress/length marks and linking-r, which vary with the neighbours.
        return re.sub(r"[',;_:|]|r-", "", phonemes).replace("I#", "I").replace("I2", "I").split()

    for accent in ACCENTS:
        name = {l: strip(_espeak.text_to_phonemes(spoken_form(l), accent)) for l in letters}
        assert name["A"] == ["eI"] and name["H"] == ["eItS"]
        for _ in range(10):
            seq = list(rng.choice(letters, 6))
            got = strip(_espeak.text_to_phonemes(spoken_form(" ".join(seq)), accent))
            assert got == [p for l in seq for p in name[l]], (accent, seq)
    assert strip(_espeak.text_to_phonemes(spoken_form("RUBOUT"), "en-us")) == ["rVb", "aUt"]


def test_an4_style_texts_cover_the_kinds() -> None:
    rng = np.random.default_rng(0)
    texts = [an4_style_text(rng) for _ in range(300)]
    assert texts == [an4_style_text(r) for r in [np.random.default_rng(0)] for _ in range(300)]
    assert any(all(len(w) == 1 for w in t.split()) for t in texts)  # spelled letters
    assert any(
        t.split()[0] in {"ENTER", "ERASE", "RUBOUT", "REPEAT"} and len(t.split()) > 1
        for t in texts
    )
    assert any("HUNDRED" in t or "TY" in t for t in texts)
    assert any(t in {"STOP", "YES", "NO", "GO", "HELP", "START"} for t in texts)
    assert _synthetic._number_words(712) == ["SEVEN", "HUNDRED", "TWELVE"]
    assert _synthetic._number_words(25) == ["TWENTY", "FIVE"]
    assert _synthetic._number_words(3040) == ["THREE", "THOUSAND", "FORTY"]


def test_bad_arguments_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown accent.*'en-xx'.*en-gb-scotland"):
        synthesize_corpus(tmp_path, num_utterances=2, accents=("en-us", "en-xx"))
    with pytest.raises(ValueError, match=r"num_utterances.*>= 1.*\n.*num_voices"):
        synthesize_corpus(tmp_path, num_utterances=0, num_voices=0)
    with pytest.raises(ValueError, match="no voice 'en-us\\+nosuch'"):
        _espeak.synthesize("YES", "en-us+nosuch", 170, 50)
    assert list(tmp_path.iterdir()) == []


def test_missing_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # makes `import` raise ImportError
    with pytest.raises(ImportError, match=r"speechtune\[synth\]"):
        _espeak.synthesize("YES", "en-us", 170, 50)
