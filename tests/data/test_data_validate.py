"""validate_manifest: every kind of bad input is named; skip_bad reports what it left out."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechtune.data import (
    DEFAULT_CHARSET,
    BadInputError,
    Manifest,
    Utterance,
    normalize_text,
    validate_manifest,
)
from speechtune.data._validate import MAX_LISTED


def _wav(path: Path, seconds: float = 0.25, rate: int = 16000) -> str:
    rng = np.random.default_rng(0)
    sf.write(str(path), (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32), rate)
    return path.name


def _utt(
    uid: str, audio: str | None, text: str = "HELLO", duration: float = 0.25, **kw
) -> Utterance:
    return Utterance(uid, audio, duration, text, "spk", **kw)


def test_normalize_text_and_charset() -> None:
    assert normalize_text("  it's\tgood \n day ") == "IT'S GOOD DAY"
    assert (
        set("AZ' ") <= DEFAULT_CHARSET
        and "a" not in DEFAULT_CHARSET
        and "1" not in DEFAULT_CHARSET
    )


def test_clean_manifest_passes_and_texts_normalised(tmp_path: Path) -> None:
    m = Manifest([_utt("a", _wav(tmp_path / "a.wav"), text=" hello   world ")], "train", tmp_path)
    good, report = validate_manifest(m, sample_rate=16000)
    assert good[0].text == "HELLO WORLD" and good.split == "train" and good.root == tmp_path
    assert report.kept == 1 and report.skipped == []
    assert "kept 1" in report.summary()


def _bad_cases(tmp_path: Path) -> tuple[list[Utterance], dict[str, str]]:
    """One good utterance and one of each bad kind; returns them and id -> expected problem."""
    good = _wav(tmp_path / "good.wav")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF garbage, not a wave file" * 4)
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, dtype=np.float32), 16000)
    low = _wav(tmp_path / "low.wav", rate=8000)
    utts = [
        _utt("ok", good),
        _utt("missing", "nope.wav"),
        _utt("noaudio", None),
        _utt("corrupt", "corrupt.wav"),
        _utt("zerolen", "empty.wav"),
        _utt("zerodur", good, duration=0.0),
        _utt("notext", good, text="  \t "),
        _utt("chars", good, text="caf\u00e9 42"),
        _utt("declared", good, sample_rate=22050),
        _utt("lowrate", low),
        _utt("long", good, duration=99.0),
    ]
    expected = {
        "missing": "missing audio",
        "noaudio": "missing audio",
        "corrupt": "unreadable audio",
        "zerolen": "zero-length audio",
        "zerodur": "zero duration",
        "notext": "empty transcript",
        "chars": "characters outside charset",
        "declared": "sample-rate mismatch",
        "lowrate": "sample rate too low",
        "long": "too long",
    }
    return utts, expected


def test_every_bad_kind_is_named_in_the_error(tmp_path: Path) -> None:
    utts, expected = _bad_cases(tmp_path)
    with pytest.raises(BadInputError) as info:
        validate_manifest(Manifest(utts, root=tmp_path), sample_rate=16000, max_duration=30.0)
    msg = str(info.value)
    assert f"{len(expected)} bad utterance(s)" in msg
    for uid, problem in expected.items():
        line = next(ln for ln in msg.splitlines() if ln.strip().startswith(f"{uid}:"))
        assert problem in line, (uid, line)
    assert "ok:" not in msg
    assert "nope.wav" in msg  # the path is named
    assert "'2', '4', '\u00c9'" in msg  # the offending characters are named
    assert {b.id for b in info.value.bad} == set(expected)


def test_skip_bad_returns_rest_and_reports(tmp_path: Path) -> None:
    utts, expected = _bad_cases(tmp_path)
    good, report = validate_manifest(
        Manifest(utts, root=tmp_path), sample_rate=16000, max_duration=30.0, skip_bad=True
    )
    assert [u.id for u in good] == ["ok"]
    assert report.kept == 1 and len(report.skipped) == len(expected)
    assert sorted(report.skipped_ids) == sorted(expected)
    summary = report.summary()
    assert f"skipped {len(expected)}" in summary and all(uid in summary for uid in expected)


def test_checks_can_be_switched_off(tmp_path: Path) -> None:
    low = _wav(tmp_path / "low.wav", rate=8000)
    m = Manifest([_utt("x", low, text="abc 123", duration=99.0)], root=tmp_path)
    good, _ = validate_manifest(m, charset=None)  # no sample_rate, no max_duration, no charset
    assert good[0].text == "ABC 123"


def test_raw_exempt_from_low_rate_check(tmp_path: Path) -> None:
    (tmp_path / "a.raw").write_bytes(np.zeros(4000, dtype=">i2").tobytes())
    good, _ = validate_manifest(Manifest([_utt("r", "a.raw")], root=tmp_path), sample_rate=48000)
    assert len(good) == 1
    (tmp_path / "z.raw").write_bytes(b"")
    with pytest.raises(BadInputError, match=r"z: zero-length audio"):
        validate_manifest(Manifest([_utt("z", "z.raw")], root=tmp_path))


def test_in_memory_audio(tmp_path: Path) -> None:
    ok = _utt("mem", None, samples=np.ones(100, dtype=np.float32), sample_rate=16000)
    norate = _utt("norate", None, samples=np.ones(100, dtype=np.float32))
    with pytest.raises(BadInputError, match="norate: sample-rate problem") as info:
        validate_manifest(Manifest([ok, norate]))
    assert [b.id for b in info.value.bad] == ["norate"]


def test_listing_is_capped(tmp_path: Path) -> None:
    utts = [_utt(f"u{i:03d}", f"missing{i}.wav") for i in range(MAX_LISTED + 7)]
    with pytest.raises(BadInputError) as info:
        validate_manifest(Manifest(utts, root=tmp_path))
    msg = str(info.value)
    assert f"{MAX_LISTED + 7} bad utterance(s)" in msg and "and 7 more" in msg
    assert "u049:" in msg and "u050:" not in msg


def test_thousand_files_quickly(tmp_path: Path) -> None:
    silence = np.zeros(1600, dtype=np.float32)
    for i in range(1000):
        sf.write(str(tmp_path / f"{i}.flac"), silence, 16000)
    m = Manifest([_utt(str(i), f"{i}.flac", duration=0.1) for i in range(1000)], root=tmp_path)
    start = time.perf_counter()
    good, report = validate_manifest(m, sample_rate=16000)
    assert time.perf_counter() - start < 2.0
    assert report.kept == 1000 == len(good)
