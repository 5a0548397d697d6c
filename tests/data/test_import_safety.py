"""Import safety: the duration limit, audio confined to the corpus root, UTF-8 transcripts."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from speechtune.data import (
    DEFAULT_MAX_DURATION,
    SKIPPED_FILE,
    AN4Error,
    BadInputError,
    ManifestFormatError,
    export_lhotse,
    import_an4,
    import_corpus,
    load_manifest,
)
from speechtune.data._text import decode_utf8
from tests.helpers.audio import noise_wav, short_and_long_corpus


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _rec(uid: str, audio: str, text: str = "YES", **kw: object) -> dict:
    return {"id": uid, "audio": audio, "text": text, "speaker": "s", **kw}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """tmp_path/corpus with a 1 s and a 31 s file (over the default limit)."""
    return short_and_long_corpus(tmp_path / "corpus")


# -- duration limit -------------------------------------------------------------------------
def test_over_long_utterance_is_one_line_naming_id_file_and_limit(corpus: Path) -> None:
    src = _jsonl(corpus / "m.jsonl", [_rec("ok", "wav/short.wav"), _rec("big", "wav/long.wav")])
    with pytest.raises(BadInputError) as info:
        import_corpus(src, corpus.parent / "out")
    msg = str(info.value)
    assert "\n" not in msg
    assert "big: too long" in msg and str(corpus / "wav" / "long.wav") in msg
    assert f"{DEFAULT_MAX_DURATION:g} s limit" in msg and "31.00 s" in msg
    assert not (corpus.parent / "out" / "manifest.jsonl").exists()
    m, report = import_corpus(src, corpus.parent / "out", max_duration=60.0)
    assert [u.id for u in m] == ["ok", "big"] and report.skipped == []


def test_declared_duration_cannot_hide_a_long_file(corpus: Path) -> None:
    src = _jsonl(corpus / "m.jsonl", [_rec("liar", "wav/long.wav", duration=2.0)])
    with pytest.raises(BadInputError, match=r"liar: too long .*31\.00 s"):
        import_corpus(src, corpus.parent / "out")


def test_non_finite_and_zero_durations_are_bad(corpus: Path) -> None:
    src = _jsonl(
        corpus / "m.jsonl",
        [_rec("nan", "wav/short.wav", duration="nan"), _rec("zero", "wav/short.wav", duration=0)],
    )
    with pytest.raises(BadInputError) as info:
        import_corpus(src, corpus.parent / "out")
    msg = str(info.value)
    assert "nan: invalid duration" in msg and "zero: zero duration" in msg


def test_skip_bad_lists_skipped_in_out_dir_and_clears_a_stale_list(corpus: Path) -> None:
    (corpus / "wav" / "corrupt.wav").write_bytes(b"RIFF not audio")
    records = [
        _rec("ok", "wav/short.wav"),
        _rec("big", "wav/long.wav"),
        _rec("broken", "wav/corrupt.wav"),
    ]
    out = corpus.parent / "out"
    m, report = import_corpus(_jsonl(corpus / "m.jsonl", records), out, skip_bad=True)
    assert [u.id for u in m] == ["ok"] and report.skipped_ids == ["big", "broken"]
    rows = [line.split("\t") for line in (out / SKIPPED_FILE).read_text().splitlines()]
    assert rows[0] == ["id", "split", "problem", "detail"]
    assert [(r[0], r[2].split(",")[0]) for r in rows[1:]] == [
        ("big", "too long"),
        ("broken", "unreadable audio"),
    ]
    assert str(corpus / "wav" / "corrupt.wav") in rows[2][3]
    import_corpus(_jsonl(corpus / "m.jsonl", records[:1]), out, skip_bad=True)
    assert not (out / SKIPPED_FILE).exists()  # never describes an earlier import


def test_an_empty_or_all_bad_corpus_is_refused(corpus: Path) -> None:
    out = corpus.parent / "out"
    with pytest.raises(ManifestFormatError, match=r"m\.jsonl: no utterances"):
        import_corpus(_jsonl(corpus / "m.jsonl", []), out)
    src = _jsonl(corpus / "m.jsonl", [_rec("big", "wav/long.wav")])
    with pytest.raises(ManifestFormatError, match="every utterance was bad"):
        import_corpus(src, out, skip_bad=True)
    assert (out / SKIPPED_FILE).read_text().count("big") == 1
    assert not (out / "manifest.jsonl").exists()


# -- audio confined to the manifest's directory ---------------------------------------------
@pytest.mark.parametrize(
    "audio",
    ["../../../../etc/passwd", "../outside.wav", "wav/../../outside.wav", "ABSOLUTE"],
)
def test_audio_outside_the_manifest_dir_is_refused(corpus: Path, audio: str) -> None:
    outside = noise_wav(corpus.parent / "outside.wav", 0.5)
    audio = str(outside) if audio == "ABSOLUTE" else audio
    src = _jsonl(corpus / "m.jsonl", [_rec("ok", "wav/short.wav"), _rec("evil", audio)])
    with pytest.raises(ManifestFormatError) as info:
        import_corpus(src, corpus.parent / "out")
    msg = str(info.value)
    assert "\n" not in msg and "line 2" in msg and "'evil'" in msg and repr(audio) in msg
    assert "outside the manifest's directory" in msg and "--allow-outside-root" in msg
    assert not (corpus.parent / "out").exists()


def test_symlink_out_of_the_root_is_refused_and_allowed_on_request(corpus: Path) -> None:
    outside = noise_wav(corpus.parent / "elsewhere" / "x.wav", 0.5)
    (corpus / "wav" / "link.wav").symlink_to(outside)
    src = _jsonl(corpus / "m.jsonl", [_rec("linked", "wav/link.wav")])
    with pytest.raises(ManifestFormatError, match=rf"'linked'.*resolves to {outside}"):
        import_corpus(src, corpus.parent / "out")
    m, _ = import_corpus(src, corpus.parent / "out", allow_outside_root=True)
    assert m.resolve(m[0]).resolve() == outside.resolve()


def test_inside_paths_pass_even_through_a_linked_root(corpus: Path, tmp_path: Path) -> None:
    # The manifest is reached through a symlinked directory; its relative paths stay inside.
    (tmp_path / "alias").symlink_to(corpus)
    records = [_rec("a", "wav/short.wav"), _rec("b", "wav/../wav/short.wav")]
    records.append(_rec("c", str(corpus / "wav" / "short.wav")))  # absolute, but inside
    src = _jsonl(corpus / "m.jsonl", records)
    m, _ = import_corpus(tmp_path / "alias" / "m.jsonl", tmp_path / "out")
    assert len(m) == 3 and len(load_manifest(src, allow_outside_root=False)) == 3


def test_csv_kaldi_and_lhotse_are_confined_too(corpus: Path) -> None:
    outside = noise_wav(corpus.parent / "outside.wav", 0.5)
    csv = corpus / "m.csv"
    csv.write_text(f"id,audio,text\nok,wav/short.wav,YES\nevil,{outside},NO\n")
    with pytest.raises(ManifestFormatError, match=r"m\.csv line 3: utterance 'evil'"):
        load_manifest(csv, allow_outside_root=False)

    kaldi = corpus / "data" / "train"
    kaldi.mkdir(parents=True)
    (kaldi / "wav.scp").write_text(f"evil {outside}\n")
    (kaldi / "text").write_text("evil NO\n")
    (kaldi / "utt2spk").write_text("evil s\n")
    with pytest.raises(ManifestFormatError, match=r"wav\.scp: utterance 'evil'"):
        load_manifest(kaldi, allow_outside_root=False)
    assert len(load_manifest(kaldi)) == 1  # reading for training: as before

    # export_lhotse writes absolute paths: corpus/wav is outside corpus/lhotse.
    export_lhotse(
        load_manifest(_jsonl(corpus / "m.jsonl", [_rec("u", "wav/short.wav")])), corpus / "lhotse"
    )
    with pytest.raises(ManifestFormatError, match=r"utterance 'u'.*outside"):
        load_manifest(corpus / "lhotse", allow_outside_root=False)
    assert len(load_manifest(corpus / "lhotse")) == 1


def _an4(base: Path, fileid: str = "an4_clstk/fash/an1-fash-b", text: bytes = b"YES") -> Path:
    """A one-utterance AN4 tree under base/an4; returns base."""
    root = base / "an4"
    (root / "etc").mkdir(parents=True)
    (root / "wav").mkdir()
    (root / "etc" / "an4_train.fileids").write_text(fileid + "\n")
    (root / "etc" / "an4_train.transcription").write_bytes(
        b"<s> " + text + b" </s> (" + Path(fileid).name.encode() + b")\n"
    )
    return base


def test_an4_root_is_the_directory_it_was_given(tmp_path: Path) -> None:
    src = _an4(tmp_path / "src")
    noise_wav(src / "an4" / "wav" / "an4_clstk" / "fash" / "an1-fash-b.wav", 0.5)
    assert len(import_an4(src, tmp_path / "out")["train"]) == 1  # reads outside the out dir

    escape = _an4(tmp_path / "src2", fileid="../../../outside/an2-fash-b")
    noise_wav(tmp_path / "outside" / "an2-fash-b.wav", 0.5)
    with pytest.raises(AN4Error, match=r"'an2-fash-b'.*outside the AN4 directory"):
        import_an4(escape, tmp_path / "out2")
    assert len(import_an4(escape, tmp_path / "out2", allow_outside_root=True)["train"]) == 1


def test_an4_max_duration_and_skipped_list(tmp_path: Path) -> None:
    src = _an4(tmp_path / "src")
    noise_wav(src / "an4" / "wav" / "an4_clstk" / "fash" / "an1-fash-b.wav", 31.0)
    with pytest.raises(BadInputError, match=r"an1-fash-b: too long"):
        import_an4(src, tmp_path / "out")
    out = import_an4(src, tmp_path / "out", skip_bad=True)
    assert len(out["train"]) == 0
    assert "an1-fash-b\ttrain\ttoo long" in (tmp_path / "out" / SKIPPED_FILE).read_text()
    assert len(import_an4(src, tmp_path / "out", max_duration=40.0)["train"]) == 1


# -- UTF-8 ----------------------------------------------------------------------------------
LATIN1 = "CAF\u00c9".encode("latin-1")  # b"CAF\xc9": not UTF-8


def test_latin1_jsonl_names_file_line_and_utterance(corpus: Path) -> None:
    path = corpus / "m.jsonl"
    good = json.dumps(_rec("ok", "wav/short.wav")).encode()
    bad = json.dumps(_rec("u2", "wav/short.wav", text="@")).encode().replace(b"@", LATIN1)
    path.write_bytes(good + b"\n" + bad + b"\n")
    with pytest.raises(ManifestFormatError) as info:
        import_corpus(path, corpus.parent / "out")
    msg = str(info.value)
    assert msg.startswith(f"{path} line 2 (utterance 'u2'): byte 0xc9") and "UTF-8" in msg
    assert "\n" not in msg


def test_latin1_csv_kaldi_and_an4_transcripts(corpus: Path, tmp_path: Path) -> None:
    csv = corpus / "m.csv"
    csv.write_bytes(b"audio,id,text\nwav/short.wav,u7," + LATIN1 + b"\n")
    with pytest.raises(ManifestFormatError, match=r"m\.csv line 2 \(utterance 'u7'\).*UTF-8"):
        load_manifest(csv)

    kaldi = corpus / "data"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text("a wav/short.wav\nb wav/short.wav\n")
    (kaldi / "text").write_bytes(b"a YES\nb " + LATIN1 + b"\n")
    (kaldi / "utt2spk").write_text("a s\nb s\n")
    with pytest.raises(ManifestFormatError, match=r"text line 2 \(utterance 'b'\).*UTF-8"):
        load_manifest(kaldi)

    src = _an4(tmp_path / "an4src", text=LATIN1)
    with pytest.raises(
        AN4Error, match=r"an4_train\.transcription line 1 \(utterance 'an1-fash-b'\)"
    ):
        import_an4(src, tmp_path / "out")


def test_latin1_lhotse_supervision_is_named(corpus: Path) -> None:
    m = load_manifest(_jsonl(corpus / "m.jsonl", [_rec("u0", "wav/short.wav", text="ZZZ")]))
    _, sup_path = export_lhotse(m, corpus / "lhotse")
    data = gzip.decompress(sup_path.read_bytes()).replace(b"ZZZ", LATIN1)
    sup_path.write_bytes(gzip.compress(data, mtime=0))
    with pytest.raises(
        ManifestFormatError, match=r"supervisions\.jsonl\.gz line 1 \(utterance 'u0'\)"
    ):
        load_manifest(corpus / "lhotse")


def test_decode_utf8_without_a_known_id() -> None:
    with pytest.raises(ValueError, match=r"^f\.txt line 3: byte 0xff at column 2 is not valid"):
        decode_utf8(b"a\nb\nx\xffy\n", "f.txt")
    assert decode_utf8("caf\u00e9\n".encode(), "f.txt") == "caf\u00e9\n"
