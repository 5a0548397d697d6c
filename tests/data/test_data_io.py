"""Importers (JSONL, CSV/TSV, Kaldi, lhotse), lhotse export round-trip, audio loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechtune.data import (
    AudioError,
    BadInputError,
    Manifest,
    ManifestFormatError,
    Utterance,
    audio_info,
    export_lhotse,
    import_corpus,
    load_audio,
    load_manifest,
)


def _sine(freq: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write(path: Path, seconds: float = 0.5, rate: int = 16000, freq: float = 440.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), _sine(freq, rate, seconds), rate)
    return path


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Three wavs under tmp_path/audio/ (durations 0.5, 0.75, 1.0 s)."""
    for i, secs in enumerate((0.5, 0.75, 1.0)):
        _write(tmp_path / "audio" / f"u{i}.wav", secs)
    return tmp_path


RECORDS = [
    {
        "id": "u0",
        "audio": "audio/u0.wav",
        "duration": 0.5,
        "text": "HELLO",
        "speaker": "s0",
        "group": "female",
    },
    {"id": "u1", "audio": "audio/u1.wav", "text": "GOOD  day", "speaker": "s1", "group": "male"},
    {"id": "u2", "audio": "audio/u2.wav", "duration": 1.0, "text": "YES", "speaker": "s1"},
]


def _check_records(m: Manifest) -> None:
    assert [u.id for u in m] == ["u0", "u1", "u2"]
    assert [u.speaker for u in m] == ["s0", "s1", "s1"]
    assert [u.group for u in m] == ["female", "male", "default"]
    assert m[1].duration == pytest.approx(0.75)  # missing: read from the header
    assert all(m.resolve(u).is_file() for u in m)


def test_jsonl_import_relative_paths_and_header_duration(corpus: Path) -> None:
    path = corpus / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    m = load_manifest(path, split="train")
    assert m.split == "train" and m.root == corpus
    _check_records(m)


def test_json_array_import(corpus: Path) -> None:
    path = corpus / "m.json"
    path.write_text(json.dumps(RECORDS))
    _check_records(load_manifest(path))


def test_relative_paths_resolve_against_manifest_dir(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = corpus / "lists"
    sub.mkdir()
    (sub / "m.jsonl").write_text(json.dumps({**RECORDS[0], "audio": "../audio/u0.wav"}) + "\n")
    monkeypatch.chdir(tmp_path.parent)  # the working directory must not matter
    m = load_manifest(sub / "m.jsonl")
    assert m.resolve(m[0]).resolve() == (corpus / "audio" / "u0.wav").resolve()
    assert load_audio(m, m[0], 16000).shape == (8000,)


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_csv_tsv_import(corpus: Path, suffix: str, sep: str) -> None:
    cols = ["id", "audio", "duration", "text", "speaker", "group"]
    lines = [sep.join(cols)] + [sep.join(str(r.get(c, "")) for c in cols) for r in RECORDS]
    path = corpus / f"m{suffix}"
    path.write_text("\n".join(lines) + "\n")
    _check_records(load_manifest(path))


def test_csv_without_required_column_names_it(corpus: Path) -> None:
    path = corpus / "m.csv"
    path.write_text("id,audio,speaker\nu0,audio/u0.wav,s0\n")
    with pytest.raises(ManifestFormatError, match="text"):
        load_manifest(path)


def test_jsonl_missing_field_names_line(corpus: Path) -> None:
    path = corpus / "m.jsonl"
    path.write_text(
        json.dumps(RECORDS[0]) + "\n" + json.dumps({"id": "x", "audio": "a.wav"}) + "\n"
    )
    with pytest.raises(ManifestFormatError, match=r"line 2.*text"):
        load_manifest(path)


def _kaldi_dir(corpus: Path, **extra: str) -> Path:
    d = corpus / "data" / "train"
    d.mkdir(parents=True)
    root = corpus / "audio"
    (d / "wav.scp").write_text("".join(f"u{i} {root / f'u{i}.wav'}\n" for i in range(3)))
    (d / "text").write_text("u0 HELLO\nu1 GOOD DAY\nu2 YES\n")
    (d / "utt2spk").write_text("u0 s0\nu1 s1\nu2 s1\n")
    for name, content in extra.items():
        (d / name).write_text(content)
    return d


def test_kaldi_import_with_spk2gender(corpus: Path) -> None:
    m = load_manifest(_kaldi_dir(corpus, spk2gender="s0 f\ns1 m\n"))
    assert [u.text for u in m] == ["HELLO", "GOOD DAY", "YES"]
    assert [u.group for u in m] == ["female", "male", "male"]
    assert [u.duration for u in m] == pytest.approx([0.5, 0.75, 1.0])


def test_kaldi_utt2group_and_utt2dur_win(corpus: Path) -> None:
    d = _kaldi_dir(
        corpus,
        spk2gender="s0 f\ns1 m\n",
        utt2group="u0 a\nu1 b\nu2 c\n",
        utt2dur="u0 9.0\nu1 0.75\nu2 1.0\n",
    )
    m = load_manifest(d)
    assert [u.group for u in m] == ["a", "b", "c"]
    assert m[0].duration == 9.0


def test_kaldi_refuses_pipes_and_segments(corpus: Path) -> None:
    d = _kaldi_dir(corpus)
    (d / "wav.scp").write_text("u0 sph2pipe -f wav x.sph |\nu1 a.wav\nu2 b.wav\n")
    with pytest.raises(ManifestFormatError, match=r"u0.*piped command"):
        load_manifest(d)
    (d / "segments").write_text("u0 rec 0.0 1.0\n")
    with pytest.raises(ManifestFormatError, match="segments"):
        load_manifest(d)


def test_kaldi_inconsistent_files_listed(corpus: Path) -> None:
    d = _kaldi_dir(corpus)
    (d / "text").write_text("u0 HELLO\nu2 YES\nu9 STRAY\n")
    with pytest.raises(
        ManifestFormatError, match=r"(?s)u1: no entry in text.*u9: in text but not in wav.scp"
    ):
        load_manifest(d)


def _jsonl_manifest(corpus: Path) -> Manifest:
    path = corpus / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    return load_manifest(path)


def _same(a: Manifest, b: Manifest) -> None:
    assert [(u.id, u.text, u.speaker, u.group) for u in a] == [
        (u.id, u.text, u.speaker, u.group) for u in b
    ]
    assert [u.duration for u in a] == pytest.approx([u.duration for u in b])
    assert [a.resolve(u).resolve() for u in a] == [b.resolve(u).resolve() for u in b]


def test_lhotse_export_round_trip(corpus: Path) -> None:
    m = _jsonl_manifest(corpus)
    rec_path, sup_path = export_lhotse(m, corpus / "lhotse")
    assert rec_path.is_file() and sup_path.is_file()
    for src in (corpus / "lhotse", rec_path, sup_path):
        back = load_manifest(src)
        _same(m, back)
        assert all(u.sample_rate == 16000 for u in back)


def test_lhotse_files_readable_by_lhotse(corpus: Path) -> None:
    from lhotse import CutSet, RecordingSet, SupervisionSet

    rec_path, sup_path = export_lhotse(_jsonl_manifest(corpus), corpus / "lhotse")
    recs, sups = (
        RecordingSet.from_file(rec_path).to_eager(),
        SupervisionSet.from_file(sup_path).to_eager(),
    )
    assert recs["u1"].load_audio().shape == (1, 12000)
    assert sups["u0"].custom == {"group": "female"} and sups["u0"].speaker == "s0"
    cuts_path = corpus / "cuts" / "cuts.jsonl.gz"
    cuts_path.parent.mkdir()
    CutSet.from_manifests(recordings=recs, supervisions=sups).to_file(cuts_path)
    _same(_jsonl_manifest(corpus), load_manifest(cuts_path))
    _same(_jsonl_manifest(corpus), load_manifest(cuts_path.parent))


def test_lhotse_refuses_several_supervisions_per_recording(corpus: Path) -> None:
    from lhotse import SupervisionSegment, SupervisionSet

    m = _jsonl_manifest(corpus)
    rec_path, sup_path = export_lhotse(m, corpus / "lhotse")
    segs = [SupervisionSegment(f"s{i}", "u2", start=0.0, duration=1.0, text="A") for i in range(2)]
    SupervisionSet.from_segments(segs).to_file(sup_path)
    with pytest.raises(ManifestFormatError, match="several supervisions"):
        load_manifest(corpus / "lhotse")


def test_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ManifestFormatError, match="unknown manifest format"):
        load_manifest(tmp_path / "m.txt")
    with pytest.raises(ManifestFormatError, match="neither a Kaldi"):
        load_manifest(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_manifest(tmp_path / "nope.jsonl")


def test_import_corpus_writes_and_reloads(corpus: Path) -> None:
    # A Kaldi data dir names audio elsewhere (here corpus/audio, beside data/train).
    m, report = import_corpus(
        _kaldi_dir(corpus), corpus / "out", sample_rate=16000, allow_outside_root=True
    )
    assert (corpus / "out" / "manifest.jsonl").is_file()
    assert report.kept == 3 and report.skipped == []
    assert m.root == corpus / "out"
    assert [u.text for u in m] == ["HELLO", "GOOD DAY", "YES"]
    assert all(m.resolve(u).is_file() for u in m)


def test_import_corpus_bad_input(corpus: Path) -> None:
    d = _kaldi_dir(corpus)
    (corpus / "audio" / "u1.wav").unlink()
    with pytest.raises(BadInputError, match="u1"):
        import_corpus(d, corpus / "out", allow_outside_root=True)
    m, report = import_corpus(d, corpus / "out", skip_bad=True, allow_outside_root=True)
    assert [u.id for u in m] == ["u0", "u2"] and report.skipped_ids == ["u1"]


# -- audio ----------------------------------------------------------------------------------
@pytest.mark.parametrize("file_rate, want_rate", [(8000, 16000), (44100, 16000), (16000, 16000)])
def test_load_audio_resamples_and_keeps_frequency(
    tmp_path: Path, file_rate: int, want_rate: int
) -> None:
    path = _write(tmp_path / "s.flac", seconds=1.0, rate=file_rate, freq=440.0)
    m = Manifest([Utterance("s", str(path), 1.0, "A", "x")])
    x = load_audio(m, m[0], want_rate)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == want_rate
    assert abs(_peak_hz(x, want_rate) - 440.0) <= 2.0
    assert 0.3 < np.abs(x).max() < 0.7


def test_load_audio_mixes_down_stereo(tmp_path: Path) -> None:
    left, right = _sine(300, 16000, 0.5), np.zeros(8000, dtype=np.float32)
    sf.write(str(tmp_path / "st.wav"), np.stack([left, right], axis=1), 16000)
    assert audio_info(tmp_path / "st.wav").channels == 2
    m = Manifest([Utterance("st", "st.wav", 0.5, "A", "x")], root=tmp_path)
    np.testing.assert_allclose(load_audio(m, m[0], 16000), left / 2, atol=1e-4)


def test_load_audio_in_memory_resampled() -> None:
    utt = Utterance("mem", None, 1.0, "A", "x", samples=_sine(1000, 8000, 1.0), sample_rate=8000)
    x = load_audio(Manifest([utt]), utt, 16000)
    assert len(x) == 16000 and abs(_peak_hz(x, 16000) - 1000.0) <= 2.0


def test_raw_big_endian(tmp_path: Path) -> None:
    sig = (_sine(500, 16000, 0.25) * 32767).astype(">i2")
    (tmp_path / "a.raw").write_bytes(sig.tobytes())
    info = audio_info(tmp_path / "a.raw")
    assert (info.sample_rate, info.num_frames, info.channels) == (16000, 4000, 1)
    assert info.duration == pytest.approx(0.25)
    m = Manifest([Utterance("r", "a.raw", 0.25, "A", "x")], root=tmp_path)
    np.testing.assert_allclose(
        load_audio(m, m[0], 16000), sig.astype(np.float32) / 32768, atol=1e-6
    )


def test_load_audio_errors_name_utterance_and_path(tmp_path: Path) -> None:
    m = Manifest([Utterance("gone", "missing.wav", 1.0, "A", "x")], root=tmp_path)
    with pytest.raises(AudioError, match=r"'gone'.*missing\.wav"):
        load_audio(m, m[0], 16000)
    (tmp_path / "bad.wav").write_bytes(b"not audio at all" * 10)
    m = Manifest([Utterance("bad", "bad.wav", 1.0, "A", "x")], root=tmp_path)
    with pytest.raises(AudioError, match=r"'bad'.*bad\.wav"):
        load_audio(m, m[0], 16000)
