"""``speechtune data import`` / ``data an4`` on unsafe input: exit codes, one-line errors,
``--max-duration``, ``--skip-bad``'s list, ``--allow-outside-root``; nothing written outside
the output directory."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from speechtune.cli import data as data_cli
from speechtune.cli import main
from speechtune.data import DEFAULT_MAX_DURATION, SKIPPED_FILE
from tests.helpers.audio import noise_wav, short_and_long_corpus
from tests.helpers.paths import REPO
from tests.helpers.workers import speechtune_argv


def _manifest(root: Path, *records: tuple[str, str], name: str = "m.jsonl") -> Path:
    lines = [json.dumps({"id": i, "audio": a, "text": "YES", "speaker": "s"}) for i, a in records]
    path = root / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _snapshot(tree: Path, out: Path) -> dict[Path, tuple[int, int]]:
    """Every file under ``tree`` but outside ``out``, with its size and mtime."""
    return {
        p: (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in tree.rglob("*")
        if not p.is_relative_to(out)
    }


def _error_line(err: str) -> str:
    """The one ``error:`` line of a failed command (and no traceback)."""
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return short_and_long_corpus(tmp_path / "corpus")


def test_cli_default_limit_is_the_library_one() -> None:
    assert data_cli.DEFAULT_MAX_DURATION == DEFAULT_MAX_DURATION == 30.0


def test_over_long_utterance_and_max_duration(corpus: Path, tmp_path: Path, capsys) -> None:
    src = _manifest(corpus, ("ok", "wav/short.wav"), ("big", "wav/long.wav"))
    out = tmp_path / "out"
    before = _snapshot(tmp_path, out)
    assert main(["data", "import", str(src), "--out", str(out)]) == 1
    line = _error_line(capsys.readouterr().err)
    assert line.startswith("error: BadInputError: bad utterance big: too long")
    assert str(corpus / "wav" / "long.wav") in line and "30 s limit" in line
    assert not out.exists() and _snapshot(tmp_path, out) == before

    assert main(["data", "import", str(src), "--out", str(out), "--max-duration", "40"]) == 0
    assert "imported 2 utterances" in capsys.readouterr().out

    assert main(["data", "import", str(src), "--out", str(out), "--max-duration", "0"]) == 1
    assert "--max-duration must be > 0" in _error_line(capsys.readouterr().err)


def test_skip_bad_counts_and_lists_in_out_dir(corpus: Path, tmp_path: Path, capsys) -> None:
    (corpus / "wav" / "corrupt.wav").write_bytes(b"RIFF not audio")
    src = _manifest(
        corpus, ("ok", "wav/short.wav"), ("big", "wav/long.wav"), ("broken", "wav/corrupt.wav")
    )
    out = tmp_path / "out"
    before = _snapshot(tmp_path, out)
    assert main(["data", "import", str(src), "--out", str(out), "--skip-bad"]) == 0
    stdout = capsys.readouterr().out
    assert "imported 1 utterances" in stdout
    assert f"skipped 2 bad utterance(s), listed in {out / SKIPPED_FILE}" in stdout
    rows = (out / SKIPPED_FILE).read_text().splitlines()
    assert [r.split("\t")[0] for r in rows] == ["id", "big", "broken"]
    assert _snapshot(tmp_path, out) == before
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl", SKIPPED_FILE]


def test_path_traversal_is_one_line_exit_1(corpus: Path, tmp_path: Path) -> None:
    """Run as a user would: a separate process, its whole stderr checked."""
    src = _manifest(corpus, ("ok", "wav/short.wav"), ("evil", "../../../../etc/passwd"))
    out = tmp_path / "out"
    proc = subprocess.run(
        speechtune_argv("data", "import", str(src), "--out", str(out)),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: ManifestFormatError: {src} line 2: utterance 'evil'")
    assert "'../../../../etc/passwd'" in lines[0] and "--allow-outside-root" in lines[0]
    assert not out.exists()


def test_allow_outside_root(corpus: Path, tmp_path: Path, capsys) -> None:
    outside = noise_wav(tmp_path / "shared_audio" / "x.wav", 0.5)
    src = _manifest(corpus, ("ok", "wav/short.wav"), ("far", str(outside)))
    out = tmp_path / "out"
    assert main(["data", "import", str(src), "--out", str(out)]) == 1
    assert "'far'" in _error_line(capsys.readouterr().err)
    assert main(["data", "import", str(src), "--out", str(out), "--allow-outside-root"]) == 0
    assert "imported 2 utterances" in capsys.readouterr().out


def test_latin1_transcript_is_one_line(corpus: Path, tmp_path: Path, capsys) -> None:
    src = corpus / "m.jsonl"
    rec = json.dumps({"id": "u1", "audio": "wav/short.wav", "text": "@", "speaker": "s"})
    src.write_bytes(rec.encode().replace(b"@", "NO\u00cbL".encode("latin-1")) + b"\n")
    assert main(["data", "import", str(src), "--out", str(tmp_path / "out")]) == 1
    line = _error_line(capsys.readouterr().err)
    assert f"{src} line 1 (utterance 'u1'): byte 0xcb" in line and "UTF-8" in line


def _an4(base: Path, utts: dict[str, float]) -> Path:
    """An AN4 train split of the given utterances (id -> seconds) under base/an4."""
    root = base / "an4"
    (root / "etc").mkdir(parents=True)
    fileids = [f"an4_clstk/fash/{u}" for u in utts]
    (root / "etc" / "an4_train.fileids").write_text("".join(f + "\n" for f in fileids))
    (root / "etc" / "an4_train.transcription").write_text(
        "".join(f"<s> YES </s> ({u})\n" for u in utts)
    )
    for i, (f, secs) in enumerate(zip(fileids, utts.values())):
        noise_wav(root / "wav" / f"{f}.wav", secs, seed=i)
    return base


def test_an4_flags(tmp_path: Path, capsys) -> None:
    src = _an4(tmp_path / "src", {"an1-fash-b": 0.5, "an2-fash-b": 31.0})
    out = tmp_path / "out"
    before = _snapshot(tmp_path, out)
    argv = ["data", "an4", "--source", str(src), "--out", str(out)]
    assert main(argv) == 1
    assert "bad utterance an2-fash-b: too long" in _error_line(capsys.readouterr().err)
    assert main([*argv, "--skip-bad"]) == 0
    stdout = capsys.readouterr().out
    assert "train: 1 utterances" in stdout
    assert f"skipped 1 bad utterance(s), listed in {out / SKIPPED_FILE}" in stdout
    assert main([*argv, "--max-duration", "40"]) == 0
    assert "skipped" not in capsys.readouterr().out and not (out / SKIPPED_FILE).exists()
    assert _snapshot(tmp_path, out) == before  # the corpus dir is read, never written

    # A link out of the AN4 directory is refused, or followed with --allow-outside-root.
    link = src / "an4" / "wav" / "an4_clstk" / "fash" / "an1-fash-b.wav"
    link.unlink()
    link.symlink_to(noise_wav(tmp_path / "elsewhere.wav", 0.5))
    assert main(argv) == 1
    assert "outside the AN4 directory" in _error_line(capsys.readouterr().err)
    assert main([*argv, "--max-duration", "40", "--allow-outside-root"]) == 0
