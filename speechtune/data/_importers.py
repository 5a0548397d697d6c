"""Importers from common corpus formats into a :class:`Manifest` (export to lhotse: ``_export``).

Formats (auto-detected by :func:`load_manifest`):

* JSONL (``.jsonl``/``.json``): one record per line with ``id, audio, duration, text,
  speaker, group`` (``duration``, ``speaker`` and ``group`` optional).
* CSV/TSV (``.csv``/``.tsv``): a header row naming the same columns.
* a Kaldi data directory: ``wav.scp`` + ``text`` + ``utt2spk`` (optional ``utt2group``,
  ``spk2gender``, ``utt2dur``). Piped ``wav.scp`` entries and ``segments`` files are refused:
  speechtune never runs a shell command found in a data file.
* lhotse manifests: a directory or file with recordings + supervisions (``.jsonl[.gz]``),
  or a CutSet ``.jsonl[.gz]``; read with lhotse's own loaders.

Relative audio paths are relative to the manifest file's directory (``Manifest.root``).
Text files are read as UTF-8 whatever the locale; anything else is an error naming the line.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from speechtune.data._audio import AudioError, audio_info
from speechtune.data._manifest import Manifest, Utterance, outside_root
from speechtune.data._text import decode_utf8, first_field
from speechtune.data._validate import (
    DEFAULT_MAX_DURATION,
    SKIPPED_FILE,
    ValidationReport,
    validate_manifest,
    write_skipped,
)

log = logging.getLogger(__name__)

_REQUIRED_COLUMNS = ("id", "audio", "text")
# A supervision must start within this many seconds of its recording's start to count as
# covering the whole recording (our Utterance has no offset).
_OFFSET_TOLERANCE_S = 0.01
_COVER_TOLERANCE_S = 0.05


class ManifestFormatError(ValueError):
    """A manifest file or directory cannot be read as any supported format."""


def _confine(root: Path, uid: str, audio: str, where: str | Path) -> None:
    """Refuse an audio path that resolves outside the corpus root (before anything opens it)."""
    real = outside_root(audio, root)
    if real is not None:
        raise ManifestFormatError(
            f"{where}: utterance {uid!r} has audio {audio!r}, which resolves to {real}, outside "
            f"the manifest's directory {root.resolve()}; if that is intended, pass "
            "--allow-outside-root (allow_outside_root=True in Python)"
        )


# -- records -> utterances ------------------------------------------------------------------
def _header_duration(root: Path, audio: str) -> float:
    """Duration from the audio header; 0.0 when unreadable (validation then reports the file)."""
    path = Path(audio)
    if not path.is_absolute():
        path = root / path
    try:
        return audio_info(path).duration
    except AudioError:
        return 0.0


def _optional_float(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return float(value)


def _record_to_utt(
    record: dict[str, Any], root: Path, where: str, confine: bool = False
) -> Utterance:
    """One record (from JSONL/CSV) as an Utterance; ``where`` names it in errors.

    ``confine``: refuse audio outside ``root`` (checked before the header is read).
    """
    missing = [k for k in _REQUIRED_COLUMNS if record.get(k) is None]
    if missing:
        raise ManifestFormatError(
            f"{where}: missing required field(s) {missing}; got fields {sorted(record)}"
        )
    audio = str(record["audio"])
    if confine:
        _confine(root, str(record["id"]), audio, where)
    try:
        duration = _optional_float(record.get("duration"))
        rate = _optional_float(record.get("sample_rate"))
    except ValueError as exc:
        raise ManifestFormatError(f"{where}: duration/sample_rate must be numbers: {exc}") from exc
    return Utterance(
        id=str(record["id"]),
        audio=audio,
        duration=duration if duration is not None else _header_duration(root, audio),
        text=str(record["text"]),
        speaker=str(record.get("speaker") or "unknown"),
        group=str(record.get("group") or "default"),
        sample_rate=int(rate) if rate is not None else None,
    )


def _make_manifest(utts: list[Utterance], split: str, root: Path, source: Path) -> Manifest:
    try:
        return Manifest(utts, split, root)
    except ValueError as exc:
        raise ManifestFormatError(f"{source}: {exc}") from exc


# -- JSONL / CSV ----------------------------------------------------------------------------
def _open_text(path: Path):
    # Only sniffed here (the format of the first record): bad bytes are reported by the loader
    # that reads the whole file, with their line.
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


def _json_id(line: str) -> str | None:
    """The ``id`` of a JSONL line, for naming it in an encoding error."""
    rec = json.loads(line)
    return str(rec["id"]) if isinstance(rec, dict) and "id" in rec else None


def _read_text(path: Path, utt_id_of: Callable[[str], str | None] | None = None) -> str:
    """A (possibly gzipped) text file, decoded as UTF-8 (an error names the bad line)."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    else:
        data = path.read_bytes()
    return decode_utf8(data, path, utt_id_of=utt_id_of, error=ManifestFormatError)


def _load_jsonl(path: Path, split: str, confine: bool = False) -> Manifest:
    root = path.parent
    text = _read_text(path, _json_id)
    if text.lstrip().startswith("["):  # a .json file holding one array of records
        try:
            records = [(f"{path} record {i + 1}", r) for i, r in enumerate(json.loads(text))]
        except json.JSONDecodeError as exc:
            raise ManifestFormatError(f"{path}: invalid JSON: {exc}") from exc
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((f"{path} line {lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ManifestFormatError(f"{path} line {lineno}: invalid JSON: {exc}") from exc
    utts = []
    for where, rec in records:
        if not isinstance(rec, dict):
            raise ManifestFormatError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        utts.append(_record_to_utt(rec, root, where, confine))
    return _make_manifest(utts, split, root, path)


def _csv_id(header: list[str], delimiter: str) -> Callable[[str], str | None]:
    """The ``id`` column of a CSV line, for naming it in an encoding error."""

    def utt_id(line: str) -> str | None:
        row = next(csv.reader([line], delimiter=delimiter), [])
        if "id" not in header or row == header:
            return None
        i = header.index("id")
        return row[i] if i < len(row) else None

    return utt_id


def _load_csv(path: Path, split: str, confine: bool = False) -> Manifest:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    data = path.read_bytes()
    head = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")
    header = next(csv.reader([head], delimiter=delimiter), [])
    text = decode_utf8(data, path, utt_id_of=_csv_id(header, delimiter), error=ManifestFormatError)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns = reader.fieldnames or []
    missing = [c for c in _REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ManifestFormatError(
            f"{path}: header row lacks column(s) {missing}; expected id, audio, duration, text, "
            f"speaker, group (duration, speaker, group optional); got {columns}"
        )
    utts = [
        _record_to_utt(row, path.parent, f"{path} line {i + 2}", confine)
        for i, row in enumerate(reader)
    ]
    return _make_manifest(utts, split, path.parent, path)


# -- Kaldi ----------------------------------------------------------------------------------
def _read_kaldi_map(path: Path, allow_empty_value: bool = False) -> dict[str, str]:
    """``key value...`` lines as a dict (value = rest of line)."""
    out: dict[str, str] = {}
    text = decode_utf8(path.read_bytes(), path, utt_id_of=first_field, error=ManifestFormatError)
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) < 2 and not allow_empty_value:
            raise ManifestFormatError(
                f"{path} line {lineno}: expected '<key> <value>', got {line!r}"
            )
        out[parts[0]] = parts[1] if len(parts) > 1 else ""
    return out


def _read_optional_map(path: Path) -> dict[str, str]:
    return _read_kaldi_map(path) if path.is_file() else {}


def _gender_group(gender: str | None) -> str | None:
    if not gender:
        return None
    g = gender.strip().lower()
    return {"f": "female", "female": "female", "m": "male", "male": "male"}.get(g, g)


def _kaldi_audio_path(data_dir: Path, utt_id: str, entry: str) -> str:
    if entry.endswith("|"):
        raise ManifestFormatError(
            f"{data_dir / 'wav.scp'}: utterance {utt_id!r} is a piped command ({entry!r}); speechtune "
            "never runs shell commands from data files. Convert the audio to files (e.g. with "
            "sph2pipe or sox) and list their paths in wav.scp."
        )
    # Kaldi resolves relative paths against the recipe directory it runs in: try the data
    # directory first, then the current directory.
    p = Path(entry)
    if not p.is_absolute() and not (data_dir / p).exists() and p.exists():
        return str(p.resolve())
    return entry


def _load_kaldi(data_dir: Path, split: str, confine: bool = False) -> Manifest:
    if (data_dir / "segments").exists():
        raise ManifestFormatError(
            f"{data_dir}: has a 'segments' file (utterances cut from longer recordings); speechtune "
            "needs one audio file per utterance. Extract the segments first (e.g. extract-segments)."
        )
    for name in ("wav.scp", "text", "utt2spk"):
        if not (data_dir / name).is_file():
            raise ManifestFormatError(
                f"{data_dir}: Kaldi data directory lacks {name!r} (needs wav.scp, text, utt2spk)"
            )
    wavs = _read_kaldi_map(data_dir / "wav.scp")
    texts = _read_kaldi_map(data_dir / "text", allow_empty_value=True)
    spk = _read_kaldi_map(data_dir / "utt2spk")
    groups, genders, durs = (
        _read_optional_map(data_dir / n) for n in ("utt2group", "spk2gender", "utt2dur")
    )
    problems = [
        f"{u}: no entry in {f}"
        for f, m in (("text", texts), ("utt2spk", spk))
        for u in wavs
        if u not in m
    ]
    problems += [f"{u}: in text but not in wav.scp" for u in texts if u not in wavs]
    if problems:
        listing = "\n  ".join(problems[:50]) + (
            f"\n  and {len(problems) - 50} more" if len(problems) > 50 else ""
        )
        raise ManifestFormatError(f"{data_dir}: inconsistent Kaldi data directory:\n  {listing}")
    utts = []
    for uid, entry in wavs.items():
        audio = _kaldi_audio_path(data_dir, uid, entry)
        if confine:
            _confine(data_dir, uid, audio, data_dir / "wav.scp")
        speaker = spk[uid]
        dur = float(durs[uid]) if uid in durs else _header_duration(data_dir, audio)
        group = groups.get(uid) or _gender_group(genders.get(speaker)) or "default"
        utts.append(Utterance(uid, audio, dur, texts[uid], speaker, group))
    return _make_manifest(utts, split, data_dir, data_dir)


# -- lhotse ---------------------------------------------------------------------------------
def _lhotse_kind(path: Path) -> str | None:
    """``recordings``, ``supervisions``, ``cuts`` or None, from the first record."""
    try:
        with _open_text(path) as fh:
            first = next((line for line in fh if line.strip()), "")
        rec = json.loads(first) if first else {}
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(rec, dict):
        return None
    if "sources" in rec and "sampling_rate" in rec:
        return "recordings"
    if "recording_id" in rec and "start" in rec:
        return "supervisions"
    if "type" in rec and "supervisions" in rec:
        return "cuts"
    return None


def _lhotse_files_in(directory: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(directory.iterdir()):
        if p.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
            kind = _lhotse_kind(p)
            if kind and kind not in found:
                found[kind] = p
    return found


def _sibling(path: Path, kind: str, other: str) -> Path:
    candidate = path.with_name(path.name.replace(kind, other))
    if candidate != path and candidate.is_file():
        return candidate
    found = _lhotse_files_in(path.parent)
    if other not in found:
        raise ManifestFormatError(
            f"{path}: lhotse {kind} manifest found, but no {other} manifest beside it"
        )
    return found[other]


def _recording_audio(rec: Any, where: Path) -> str:
    if len(rec.sources) != 1 or rec.sources[0].type != "file":
        kinds = [s.type for s in rec.sources]
        raise ManifestFormatError(
            f"{where}: recording {rec.id!r} has sources {kinds}; speechtune reads exactly one source "
            "of type 'file' per recording (never commands or URLs)"
        )
    return str(rec.sources[0].source)


def _utt_from_lhotse(rec: Any, sup: Any, where: Path) -> Utterance:
    if sup.start > _OFFSET_TOLERANCE_S or sup.duration + _COVER_TOLERANCE_S < rec.duration:
        raise ManifestFormatError(
            f"{where}: supervision {sup.id!r} covers {sup.start:.2f}-{sup.end:.2f} s of recording "
            f"{rec.id!r} ({rec.duration:.2f} s); speechtune needs one whole recording per utterance"
        )
    custom = sup.custom or {}
    group = custom.get("group") or _gender_group(sup.gender) or "default"
    return Utterance(
        id=sup.id,
        audio=_recording_audio(rec, where),
        duration=float(sup.duration),
        text=sup.text or "",
        speaker=sup.speaker or "unknown",
        group=str(group),
        sample_rate=int(rec.sampling_rate),
    )


def _pairs_to_utts(pairs: Iterable[tuple[Any, Any]], where: Path) -> list[Utterance]:
    pairs = list(pairs)
    per_rec: dict[str, int] = {}
    for rec, _ in pairs:
        per_rec[rec.id] = per_rec.get(rec.id, 0) + 1
    multi = sorted(r for r, n in per_rec.items() if n > 1)
    if multi:
        raise ManifestFormatError(
            f"{where}: recordings with several supervisions (segments) are not supported: {multi[:10]}"
        )
    return [_utt_from_lhotse(rec, sup, where) for rec, sup in pairs]


def _load_lhotse(
    recordings: Path | None,
    supervisions: Path | None,
    cuts: Path | None,
    split: str,
    confine: bool = False,
) -> Manifest:
    try:
        utts, where = _read_lhotse(recordings, supervisions, cuts)
    except ManifestFormatError:
        raise
    except (UnicodeDecodeError, ValueError):
        # lhotse decodes the files itself and reports bad bytes as an "unknown type of
        # manifest": when that is the cause, name the offending line instead.
        for p in (recordings, supervisions, cuts):
            if p is not None:
                _read_text(p, _json_id)
        raise
    if confine:
        for u in utts:
            _confine(where.parent, u.id, str(u.audio), where)
    return _make_manifest(utts, split, where.parent, where)


def _read_lhotse(
    recordings: Path | None, supervisions: Path | None, cuts: Path | None
) -> tuple[list[Utterance], Path]:
    """The utterances of lhotse manifests, and the file that names them (for errors and root)."""
    from lhotse import CutSet, RecordingSet, SupervisionSet
    from lhotse import load_manifest as lhotse_load

    if cuts is not None:
        cutset = lhotse_load(cuts, manifest_cls=CutSet)
        pairs = []
        for cut in cutset:
            if cut.recording is None or len(cut.supervisions) != 1:
                raise ManifestFormatError(
                    f"{cuts}: cut {cut.id!r} needs a recording and exactly one supervision"
                )
            if cut.start > _OFFSET_TOLERANCE_S:
                raise ManifestFormatError(
                    f"{cuts}: cut {cut.id!r} starts {cut.start:.2f} s into its recording"
                )
            pairs.append((cut.recording, cut.supervisions[0]))
        utts, where = _pairs_to_utts(pairs, cuts), cuts
    elif recordings is not None and supervisions is not None:
        # A plain dict: lookups by id in a lazily loaded lhotse set are slow or unsupported.
        recs = {r.id: r for r in lhotse_load(recordings, manifest_cls=RecordingSet)}
        sups = list(lhotse_load(supervisions, manifest_cls=SupervisionSet))
        missing = sorted({s.recording_id for s in sups if s.recording_id not in recs})
        if missing:
            raise ManifestFormatError(
                f"{supervisions}: supervisions refer to recordings not in {recordings}: {missing[:10]}"
            )
        utts, where = (
            _pairs_to_utts([(recs[s.recording_id], s) for s in sups], supervisions),
            supervisions,
        )
    else:
        raise ManifestFormatError("lhotse import needs recordings and supervisions, or cuts")
    return utts, where


def _load_lhotse_path(path: Path, kind: str, split: str, confine: bool) -> Manifest:
    if kind == "cuts":
        return _load_lhotse(None, None, path, split, confine)
    if kind == "recordings":
        sups = _sibling(path, "recordings", "supervisions")
        return _load_lhotse(path, sups, None, split, confine)
    return _load_lhotse(_sibling(path, "supervisions", "recordings"), path, None, split, confine)


# -- entry points ---------------------------------------------------------------------------
def load_manifest(
    path: str | Path, split: str = "all", *, allow_outside_root: bool = True
) -> Manifest:
    """Load a corpus manifest, detecting its format (see the module docstring).

    Missing durations are read from the audio headers (0.0 when the audio is unreadable:
    :func:`validate_manifest` then reports it).

    Args:
        path: a JSONL/JSON/CSV/TSV file, a Kaldi data directory, or lhotse manifest(s).
        split: the split name given to the manifest.
        allow_outside_root: False refuses any audio path that resolves (symlinks followed)
            outside the manifest's directory, before any audio file is opened. True by default:
            this reads a manifest someone chose to train or evaluate on, and the manifests
            speechtune writes itself hold absolute paths into the corpus they were imported
            from; :func:`import_corpus`, where foreign corpora come in, checks by default.

    Returns:
        The manifest, with ``root`` set to the manifest's directory.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ManifestFormatError: the format is not recognised, the content is inconsistent or not
            UTF-8, or an audio path is outside the root (``allow_outside_root=False``).
    """
    path = Path(path)
    confine = not allow_outside_root
    if not path.exists():
        raise FileNotFoundError(f"manifest not found: {path}")
    if path.is_dir():
        if (path / "wav.scp").exists():
            return _load_kaldi(path, split, confine)
        found = _lhotse_files_in(path)
        if "recordings" in found and "supervisions" in found:
            return _load_lhotse(found["recordings"], found["supervisions"], None, split, confine)
        if "cuts" in found:
            return _load_lhotse(None, None, found["cuts"], split, confine)
        raise ManifestFormatError(
            f"{path}: directory is neither a Kaldi data dir (wav.scp, text, utt2spk) nor holds lhotse "
            "manifests (recordings + supervisions, or cuts, as .jsonl[.gz])"
        )
    name = path.name.lower()
    if name.endswith((".csv", ".tsv")):
        return _load_csv(path, split, confine)
    if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        kind = _lhotse_kind(path)
        if kind is not None:
            return _load_lhotse_path(path, kind, split, confine)
        return _load_jsonl(path, split, confine)
    raise ManifestFormatError(
        f"{path}: unknown manifest format; expected .jsonl/.json, .csv/.tsv, a Kaldi data dir or lhotse manifests"
    )


def import_corpus(
    src: str | Path,
    out_dir: str | Path,
    *,
    sample_rate: int | None = None,
    charset: frozenset[str] | None = None,
    max_duration: float | None = DEFAULT_MAX_DURATION,
    skip_bad: bool = False,
    allow_outside_root: bool = False,
) -> tuple[Manifest, ValidationReport]:
    """Load a corpus in any supported format, validate it and write ``out_dir/manifest.jsonl``.

    With ``skip_bad``, the utterances left out are also listed in ``out_dir/skipped.tsv``
    (id, split, problem, detail); a stale list from an earlier import is removed.

    Args:
        src: anything :func:`load_manifest` reads.
        out_dir: where to write ``manifest.jsonl``.
        sample_rate: the recipe's sample rate (files below it are refused); None skips the check.
        charset: allowed transcript characters; None skips the check.
        max_duration: longest allowed utterance in seconds; None for no limit.
        skip_bad: leave bad utterances out (reported) instead of raising.
        allow_outside_root: accept audio paths that resolve outside ``src``'s directory (by
            default they are refused: a corpus from elsewhere must not read arbitrary files).

    Returns:
        The manifest reloaded from ``out_dir/manifest.jsonl``, and the validation report.

    Raises:
        BadInputError: bad utterances were found and ``skip_bad`` is False.
        ManifestFormatError: see :func:`load_manifest`.
    """
    loaded = load_manifest(src, allow_outside_root=allow_outside_root)
    if not len(loaded):
        raise ManifestFormatError(f"{src}: no utterances in it (expected at least one record)")
    good, report = validate_manifest(
        loaded,
        charset=charset,
        sample_rate=sample_rate,
        max_duration=max_duration,
        skip_bad=skip_bad,
    )
    out = Path(out_dir) / "manifest.jsonl"
    write_skipped(Path(out_dir) / SKIPPED_FILE, {loaded.split: report.skipped})
    if not len(good):  # --skip-bad skipped everything: an empty corpus trains nothing
        raise ManifestFormatError(
            f"{src}: every utterance was bad, none imported (listed in {out_dir}/{SKIPPED_FILE})"
        )
    good.to_jsonl(out)
    log.info("imported %s: %s", src, report.summary())
    return load_manifest(out, split=loaded.split), report
