"""Importer for the CMU AN4 (Census) database, in any of its distributed forms.

Layout: ``etc/an4_{train,test}.fileids`` and ``etc/an4_{train,test}.transcription``; audio
under ``wav/<fileid>.<ext>`` with ext among .flac/.wav/.sph/.raw (optionally all inside a
top-level ``an4/`` folder). Transcription lines look like ``<s> YES </s> (an251-fash-b)``.
"""

from __future__ import annotations

import logging
import re
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from speechtune.data._audio import AudioError, audio_info
from speechtune.data._importers import load_manifest
from speechtune.data._manifest import Manifest, Utterance, outside_root
from speechtune.data._text import decode_utf8
from speechtune.data._validate import (
    DEFAULT_MAX_DURATION,
    SKIPPED_FILE,
    BadUtterance,
    validate_manifest,
    write_skipped,
)

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".flac", ".wav", ".sph", ".raw")
_MARKERS = {"<s>", "</s>", "<sil>"}
_ID_AT_END = re.compile(r"\(([^()]*)\)\s*$")


class AN4Error(ValueError):
    """The AN4 source is missing, unreachable or not in the AN4 layout."""


# -- fetching -------------------------------------------------------------------------------
def _is_url(source: str | Path) -> bool:
    return urllib.parse.urlparse(str(source)).scheme in ("http", "https", "file")


def _download_and_extract(url: str, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    name = Path(urllib.parse.urlparse(url).path).name or "an4.tar.gz"
    archive = out_dir / name
    # Download beside the target and rename, so a file: URL pointing at the target survives.
    partial = out_dir / f"{name}.part"
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, partial.open("wb") as fh:
            shutil.copyfileobj(resp, fh)
        partial.replace(archive)
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise AN4Error(
            f"could not download AN4 from {url}: {exc}. Download the archive by other means, extract "
            "it, and pass the local directory instead."
        ) from exc
    dest = out_dir / "an4_extracted"
    try:
        with tarfile.open(archive) as tar:
            # The 'data' filter refuses absolute paths, links out of the tree and device files.
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise AN4Error(f"could not extract {archive} (expected a .tar.gz of AN4): {exc}") from exc
    return dest


def _find_root(base: Path) -> Path:
    """The directory holding ``etc/`` and ``wav/`` (``base``, ``base/an4`` or a single subdir)."""
    candidates = (
        [base, base / "an4", *sorted(p for p in base.iterdir() if p.is_dir())]
        if base.is_dir()
        else []
    )
    for c in candidates:
        if (c / "etc").is_dir() and (c / "wav").is_dir():
            return c
    raise AN4Error(
        f"{base}: not an AN4 tree (expected etc/an4_train.transcription and wav/, maybe under an4/)"
    )


# -- parsing --------------------------------------------------------------------------------
def _id_at_end(line: str) -> str | None:
    m = _ID_AT_END.search(line)
    return m.group(1).strip() if m else None


def _read_utf8(path: Path, utt_id_of: Callable[[str], str | None]) -> str:
    return decode_utf8(path.read_bytes(), path, utt_id_of=utt_id_of, error=AN4Error)


def _parse_transcription(path: Path) -> list[tuple[str | None, str]]:
    """(utterance id or None, words) per non-empty line."""
    out = []
    for line in _read_utf8(path, _id_at_end).splitlines():
        if not line.strip():
            continue
        m = _ID_AT_END.search(line)
        uid = m.group(1).strip() if m else None
        words = line[: m.start()] if m else line
        out.append((uid, " ".join(w for w in words.split() if w.lower() not in _MARKERS)))
    return out


def _speaker_group(speaker: str) -> str:
    if speaker.startswith("f"):
        return "female"
    if speaker.startswith("m"):
        return "male"
    return "unknown"


def _speaker_of(fileid: str) -> str:
    """The fileid's directory (``an4_clstk/fash/an251-fash-b`` -> ``fash``), else the id's middle part."""
    parent = Path(fileid).parent.name
    if parent:
        return parent
    parts = Path(fileid).name.split("-")
    return parts[1] if len(parts) >= 3 else "unknown"


def _find_audio(wav_dir: Path, fileid: str) -> Path | None:
    for ext in AUDIO_EXTENSIONS:
        p = wav_dir / f"{fileid}{ext}"
        if p.is_file():
            return p
    return None


def _read_split(root: Path, split: str, confine_to: Path | None) -> Manifest:
    """One split's utterances; ``confine_to``: refuse audio outside it (None: no check)."""
    fileids_path = root / "etc" / f"an4_{split}.fileids"
    trans_path = root / "etc" / f"an4_{split}.transcription"
    text = _read_utf8(fileids_path, lambda line: Path(line.strip()).name or None)
    fileids = [line.strip() for line in text.splitlines() if line.strip()]
    trans = _parse_transcription(trans_path)
    by_id = {uid: words for uid, words in trans if uid is not None}
    if len(by_id) < len(trans):  # lines without an "(id)": pair with the fileids in order
        if len(trans) != len(fileids):
            raise AN4Error(
                f"{trans_path}: lines lack '(id)' and their count ({len(trans)}) differs from "
                f"{fileids_path} ({len(fileids)})"
            )
        by_id = {Path(f).name: words for f, (_, words) in zip(fileids, trans)}
    utts, problems = [], []
    for fileid in fileids:
        uid = Path(fileid).name
        if uid not in by_id:
            problems.append(f"{uid}: no transcription in {trans_path.name}")
            continue
        # A missing file keeps its expected path so that validation reports (or skips) it.
        audio = (
            _find_audio(root / "wav", fileid) or root / "wav" / f"{fileid}{AUDIO_EXTENSIONS[0]}"
        )
        # A fileid with "..", or a link out of the corpus.
        if confine_to is not None and (real := outside_root(audio, confine_to)) is not None:
            raise AN4Error(
                f"{fileids_path}: utterance {uid!r} has audio {audio}, which resolves to {real}, "
                f"outside the AN4 directory {confine_to.resolve()}; if that is intended, pass "
                "--allow-outside-root (allow_outside_root=True in Python)"
            )
        speaker = _speaker_of(fileid)
        try:
            duration = audio_info(audio).duration
        except AudioError:
            duration = 0.0  # reported by validation below
        utts.append(
            Utterance(
                uid, str(audio.resolve()), duration, by_id[uid], speaker, _speaker_group(speaker)
            )
        )
    if problems:
        listing = "\n  ".join(problems[:50]) + (
            f"\n  and {len(problems) - 50} more" if len(problems) > 50 else ""
        )
        raise AN4Error(f"AN4 {split} split under {root} is incomplete:\n  {listing}")
    return Manifest(utts, split, root)


# -- entry point ----------------------------------------------------------------------------
def import_an4(
    source: str | Path,
    out_dir: Path,
    *,
    skip_bad: bool = False,
    max_duration: float | None = DEFAULT_MAX_DURATION,
    allow_outside_root: bool = False,
) -> dict[str, Manifest]:
    """Import CMU AN4 from a local directory or a ``.tar.gz`` URL.

    Speakers are the fileid directories (e.g. ``fash``); the group is ``female``/``male``
    from the speaker id's first letter (``unknown`` otherwise). Transcripts are validated
    and normalised; ``out_dir/train.jsonl`` (and ``test.jsonl``) are written, and with
    ``skip_bad`` the utterances left out are listed in ``out_dir/skipped.tsv``.

    Args:
        source: an AN4 directory, or an http(s)/file URL of a ``.tar.gz`` (downloaded into
            and extracted under ``out_dir``).
        out_dir: where manifests (and any download) go.
        skip_bad: leave bad utterances out (logged) instead of raising.
        max_duration: longest allowed utterance in seconds; None for no limit.
        allow_outside_root: accept audio that resolves (symlinks followed) outside the AN4
            directory given (the extracted archive for a URL); refused by default.

    Returns:
        ``{"train": ..., "test": ...}``; only ``"train"`` when the test split is absent
        (logged as a warning).

    Raises:
        AN4Error: the source cannot be fetched, has no train split, is inconsistent, is not
            UTF-8, or has audio outside it (unless ``allow_outside_root``).
        BadInputError: bad utterances and not ``skip_bad``.
    """
    out_dir = Path(out_dir)
    base = _download_and_extract(str(source), out_dir) if _is_url(source) else Path(source)
    if not base.exists():
        raise AN4Error(f"AN4 source not found: {base}")
    root = _find_root(base)
    result: dict[str, Manifest] = {}
    skipped: dict[str, list[BadUtterance]] = {}
    for split in ("train", "test"):
        present = all(
            (root / "etc" / f"an4_{split}.{k}").is_file() for k in ("fileids", "transcription")
        )
        if not present:
            if split == "train":
                raise AN4Error(
                    f"{root}: AN4 train split missing (need etc/an4_train.fileids and etc/an4_train.transcription)"
                )
            log.warning("%s: no AN4 test split (etc/an4_test.*); importing train only", root)
            continue
        manifest, report = validate_manifest(
            _read_split(root, split, None if allow_outside_root else base),
            max_duration=max_duration,
            skip_bad=skip_bad,
        )
        if report.skipped:
            log.warning("AN4 %s: %s", split, report.summary())
        skipped[split] = report.skipped
        out_path = out_dir / f"{split}.jsonl"
        manifest.to_jsonl(out_path)
        result[split] = load_manifest(out_path, split=split)
    write_skipped(out_dir / SKIPPED_FILE, skipped)
    return result
