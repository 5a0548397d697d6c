"""AN4 importer: the real training split (when present) and a tiny fake AN4 tree."""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechtune.data import (
    AN4Error,
    BadInputError,
    import_an4,
    load_audio,
    load_manifest,
)
from tests.helpers.paths import SHARED

REAL_AN4 = SHARED / "data" / "an4"


@pytest.mark.skipif(
    not (REAL_AN4 / "etc" / "an4_train.fileids").is_file(), reason="real AN4 copy not present"
)
def test_real_an4_train_split(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        out = import_an4(REAL_AN4, tmp_path)
    assert set(out) == {"train"} and "no AN4 test split" in caplog.text
    m = out["train"]
    assert m.split == "train" and len(m) == 948 and len(m.speakers) == 74
    assert set(m.groups) == {"female", "male"}
    assert all(u.duration > 0 for u in m)
    assert m.by_id()["an251-fash-b"].text == "YES"
    assert (tmp_path / "train.jsonl").is_file()
    assert load_audio(m, m[0], 16000).shape[0] == pytest.approx(m[0].duration * 16000, abs=1)


def _sig(seconds: float, seed: int) -> np.ndarray:
    return (
        (0.3 * np.random.default_rng(seed).standard_normal(int(16000 * seconds)))
        .clip(-1, 1)
        .astype(np.float32)
    )


# (split dir, speaker, utt, seconds, format, words as in the transcription file)
FAKE = [
    ("train", "an4_clstk", "fash", "an251-fash-b", 0.5, "raw", "<s> YES </s>"),
    ("train", "an4_clstk", "fash", "cen1-fash-b", 0.75, "wav", "<s> <sil> ERASE C Q </s>"),
    ("train", "an4_clstk", "mgah", "an1-mgah-b", 0.25, "raw", "<s> GO </s>"),
    ("train", "an4_clstk", "xyzz", "an9-xyzz-b", 0.4, "wav", "<s> TWO SIX </s>"),
    ("test", "an4test_clstk", "fcaw", "an406-fcaw-b", 0.6, "raw", "<s> RUBOUT G M E F </s>"),
    ("test", "an4test_clstk", "mmxg", "an441-mmxg-b", 0.3, "wav", "<s> NO </s>"),
]


def _fake_an4(base: Path, *, splits: tuple[str, ...] = ("train", "test")) -> Path:
    root = base / "an4"  # the distributed archives have a top-level an4/ folder
    (root / "etc").mkdir(parents=True)
    for split in splits:
        rows = [r for r in FAKE if r[0] == split]
        (root / "etc" / f"an4_{split}.fileids").write_text(
            "".join(f"{d}/{s}/{u}\n" for _, d, s, u, *_ in rows)
        )
        (root / "etc" / f"an4_{split}.transcription").write_text(
            "".join(f"{w} ({u})\n" for _, _, _, u, _, _, w in rows)
        )
        for i, (_, d, s, u, secs, fmt, _) in enumerate(rows):
            path = root / "wav" / d / s / f"{u}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            sig = _sig(secs, i)
            if fmt == "raw":  # AN4 raw: headerless 16-bit big-endian
                path.write_bytes((sig * 32767).astype(">i2").tobytes())
            else:
                sf.write(str(path), sig, 16000, subtype="PCM_16")
    return base


def test_fake_an4_both_splits(tmp_path: Path) -> None:
    out = import_an4(_fake_an4(tmp_path / "src"), tmp_path / "out")
    assert set(out) == {"train", "test"}
    train, test = out["train"], out["test"]
    assert train.split == "train" and test.split == "test"
    assert [u.id for u in train] == ["an251-fash-b", "cen1-fash-b", "an1-mgah-b", "an9-xyzz-b"]
    assert [u.text for u in train] == ["YES", "ERASE C Q", "GO", "TWO SIX"]
    assert [u.speaker for u in train] == ["fash", "fash", "mgah", "xyzz"]
    assert [u.group for u in train] == ["female", "female", "male", "unknown"]
    assert [u.duration for u in train] == pytest.approx([0.5, 0.75, 0.25, 0.4])
    assert [u.text for u in test] == ["RUBOUT G M E F", "NO"] and test.groups == ["female", "male"]
    assert (tmp_path / "out" / "test.jsonl").is_file()
    reloaded = load_manifest(tmp_path / "out" / "train.jsonl")
    assert [u.id for u in reloaded] == [u.id for u in train]
    # the big-endian raw file decodes to the signal that was written
    x = load_audio(train, train[0], 16000)
    np.testing.assert_allclose(x, (_sig(0.5, 0) * 32767).astype(np.int16) / 32768, atol=1e-6)


def test_fake_an4_from_tar_url(tmp_path: Path) -> None:
    src = _fake_an4(tmp_path / "src")
    archive = tmp_path / "an4_raw.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "an4", arcname="an4")
    out = import_an4(archive.as_uri(), tmp_path / "out")
    assert len(out["train"]) == 4 and len(out["test"]) == 2
    assert (tmp_path / "out" / "an4_raw.tar.gz").is_file()
    # an archive already in out_dir is read in place, not truncated
    again = import_an4((tmp_path / "out" / "an4_raw.tar.gz").as_uri(), tmp_path / "out")
    assert len(again["train"]) == 4


def test_unreachable_url_suggests_local_copy(tmp_path: Path) -> None:
    with pytest.raises(AN4Error, match="local directory"):
        import_an4("http://127.0.0.1:9/an4.tar.gz", tmp_path)


def test_missing_train_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AN4Error, match="train split missing"):
        import_an4(_fake_an4(tmp_path / "src", splits=("test",)), tmp_path / "out")
    with pytest.raises(AN4Error, match="not found"):
        import_an4(tmp_path / "nowhere", tmp_path / "out")


def test_bad_audio_reported_or_skipped(tmp_path: Path) -> None:
    src = _fake_an4(tmp_path / "src", splits=("train",))
    (src / "an4" / "wav" / "an4_clstk" / "mgah" / "an1-mgah-b.raw").write_bytes(b"")
    with pytest.raises(BadInputError, match="an1-mgah-b: zero-length audio"):
        import_an4(src, tmp_path / "out")
    out = import_an4(src, tmp_path / "out", skip_bad=True)
    assert [u.id for u in out["train"]] == ["an251-fash-b", "cen1-fash-b", "an9-xyzz-b"]


def test_missing_audio_file_named(tmp_path: Path) -> None:
    src = _fake_an4(tmp_path / "src", splits=("train",))
    (src / "an4" / "wav" / "an4_clstk" / "fash" / "cen1-fash-b.wav").unlink()
    with pytest.raises(
        BadInputError, match=r"cen1-fash-b: missing audio.*file not found: .*cen1-fash-b"
    ):
        import_an4(src, tmp_path / "out")
    assert len(import_an4(src, tmp_path / "out", skip_bad=True)["train"]) == 3


def test_transcription_without_entry_is_an_error(tmp_path: Path) -> None:
    src = _fake_an4(tmp_path / "src", splits=("train",))
    trans = src / "an4" / "etc" / "an4_train.transcription"
    trans.write_text(
        "".join(ln + "\n" for ln in trans.read_text().splitlines() if "an1-mgah-b" not in ln)
    )
    with pytest.raises(AN4Error, match="an1-mgah-b: no transcription"):
        import_an4(src, tmp_path / "out")
