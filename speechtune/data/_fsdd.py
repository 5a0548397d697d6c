"""Importer for the Free Spoken Digit Dataset (FSDD): English digits, six speakers, 8 kHz.

Layout (the dataset's repository): ``recordings/{digit}_{speaker}_{index}.wav`` (or ``.flac``)
and ``metadata.py``, a Python file holding one dict literal, speaker -> {gender, accent,
language}. The transcript of a file is the word of its leading digit (``ZERO`` ... ``NINE``).
Recordings 0-4 of each speaker and digit are FSDD's official test part; 5-49 are training data.

``metadata.py`` is data here, not code: it is parsed with :mod:`ast` and only its dict literal is
read (``ast.literal_eval``), so nothing in it runs.
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path
from typing import Any

from speechtune.data._audio import AudioError, audio_info
from speechtune.data._importers import load_manifest
from speechtune.data._manifest import Manifest, Utterance, outside_root
from speechtune.data._validate import (
    DEFAULT_MAX_DURATION,
    SKIPPED_FILE,
    BadUtterance,
    validate_manifest,
    write_skipped,
)

log = logging.getLogger(__name__)

#: The transcript of each digit.
DIGIT_WORDS = ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")
#: Recording indices of FSDD's official test part (never trained or tuned on).
TEST_INDICES = range(5)
AUDIO_EXTENSIONS = (".wav", ".flac")
_NAME = re.compile(r"^(?P<digit>[0-9])_(?P<speaker>[A-Za-z0-9]+)_(?P<index>[0-9]+)$")
_METADATA = "metadata.py"


class FSDDError(ValueError):
    """The FSDD source is missing or not in the FSDD layout."""


def _find_root(base: Path) -> Path:
    """The directory holding ``recordings/`` and ``metadata.py``: ``base`` or one subdir."""
    if not base.is_dir():
        raise FSDDError(f"FSDD source not found: {base} (expected a directory with recordings/)")
    for c in [base, *sorted(p for p in base.iterdir() if p.is_dir())]:
        if (c / "recordings").is_dir():
            return c
    raise FSDDError(f"{base}: not an FSDD tree (expected recordings/ and metadata.py)")


def _literal_dict(path: Path) -> dict[Any, Any]:
    """The one dict literal assigned in ``path`` (``metadata = {...}``), read without running it."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError) as exc:  # ValueError: null bytes
        raise FSDDError(f"{path}: cannot be parsed as Python ({exc})") from exc
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            try:
                value = ast.literal_eval(node.value)
            except ValueError as exc:  # a call, a name...: anything but plain literals
                raise FSDDError(
                    f"{path} line {node.lineno}: the speaker dict must hold literals only ({exc})"
                ) from exc
            if isinstance(value, dict):
                return value
    raise FSDDError(f"{path}: no speaker dict found (expected `metadata = {{...}}`)")


def group_name(accent: str) -> str:
    """A group name from an FSDD accent: ``"USA/neutral"`` -> ``"usa-neutral"``."""
    return re.sub(r"[^a-z0-9]+", "-", accent.strip().lower()).strip("-") or "unknown"


def read_accents(path: Path) -> dict[str, str]:
    """Speaker -> group (its accent, as :func:`group_name` writes it) from FSDD's ``metadata.py``.

    Raises:
        FSDDError: the file is missing, not Python, or holds no speaker dict of literals with an
            ``accent`` per speaker.
    """
    if not path.is_file():
        raise FSDDError(
            f"{path}: FSDD speaker metadata missing (speakers' accents are the groups)"
        )
    accents = {}
    for speaker, meta in _literal_dict(path).items():
        if not isinstance(meta, dict) or not isinstance(meta.get("accent"), str):
            raise FSDDError(f"{path}: speaker {speaker!r} has no 'accent' string")
        accents[str(speaker)] = group_name(meta["accent"])
    return accents


def parse_name(path: Path) -> tuple[int, str, int]:
    """(digit, speaker, index) of ``{digit}_{speaker}_{index}.wav``.

    Raises:
        FSDDError: naming the file, when its name is not in that form.
    """
    m = _NAME.match(path.stem)
    if m is None or path.suffix.lower() not in AUDIO_EXTENSIONS:
        raise FSDDError(
            f"{path}: not an FSDD recording name (expected {{digit}}_{{speaker}}_{{index}} with "
            f"a digit 0-9 and extension {' or '.join(AUDIO_EXTENSIONS)}, e.g. 3_theo_17.wav)"
        )
    return int(m["digit"]), m["speaker"], int(m["index"])


def _read(root: Path, confine_to: Path | None) -> dict[str, list[Utterance]]:
    """Utterances per split (``train``: indices 5 and up, ``test``: 0-4)."""
    accents = read_accents(root / _METADATA)
    splits: dict[str, list[Utterance]] = {"train": [], "test": []}
    for path in sorted((root / "recordings").iterdir()):
        if path.name.startswith("."):
            continue  # .DS_Store and the like
        digit, speaker, index = parse_name(path)
        if speaker not in accents:
            raise FSDDError(f"{path}: speaker {speaker!r} is not in {root / _METADATA}")
        # A link out of the corpus: refused unless asked for.
        if confine_to is not None and (real := outside_root(path, confine_to)) is not None:
            raise FSDDError(
                f"{path} resolves to {real}, outside the FSDD directory {confine_to.resolve()}; "
                "if that is intended, pass --allow-outside-root (allow_outside_root=True in Python)"
            )
        try:
            duration = audio_info(path).duration
        except AudioError:
            duration = 0.0  # reported by validation
        split = "test" if index in TEST_INDICES else "train"
        splits[split].append(
            Utterance(
                path.stem,
                str(path.resolve()),
                duration,
                DIGIT_WORDS[digit],
                speaker,
                accents[speaker],
            )
        )
    return splits


def import_fsdd(
    source: str | Path,
    out_dir: str | Path,
    *,
    skip_bad: bool = False,
    max_duration: float | None = DEFAULT_MAX_DURATION,
    allow_outside_root: bool = False,
) -> dict[str, Manifest]:
    """Import the Free Spoken Digit Dataset from a local directory.

    Each recording is an utterance with id its file stem (``3_theo_17``), transcript its digit's
    word (``THREE``), speaker the name in the file name, and group the speaker's accent from
    ``metadata.py`` (``usa-neutral``, ``bel-french``, ``deu-german``, ``grc-greek``). Groups are
    accents rather than speakers because the dev split is carved in whole speakers per group: a
    group of one speaker could never be in dev. Recordings 0-4 of each speaker and digit (FSDD's
    official test part) go to ``test.jsonl``, the rest to ``train.jsonl``.

    Args:
        source: the FSDD directory (holding ``recordings/`` and ``metadata.py``), or a directory
            with one such subdirectory.
        out_dir: where ``train.jsonl`` (and ``test.jsonl``) are written.
        skip_bad: leave bad utterances out (listed in ``out_dir/skipped.tsv``) instead of raising.
        max_duration: longest allowed utterance in seconds; None for no limit.
        allow_outside_root: accept recordings that resolve (symlinks followed) outside
            ``source``; refused by default.

    Returns:
        ``{"train": ..., "test": ...}``; only ``"train"`` when the test part is absent (as in
        ``../shared/data/fsdd``).

    Raises:
        FSDDError: the source is missing, not in the FSDD layout, has a file name out of the
            pattern or a speaker without metadata, no training recordings, or a recording
            outside it (unless ``allow_outside_root``).
        BadInputError: bad utterances and not ``skip_bad``.
    """
    out_dir = Path(out_dir)
    base = Path(source)
    root = _find_root(base)
    splits = _read(root, None if allow_outside_root else base)
    if not splits["train"]:
        raise FSDDError(f"{root / 'recordings'}: no training recordings (indices 5 and up)")
    if not splits["test"]:
        log.info("%s: no FSDD test part (recordings 0-4); importing train only", root)
    result: dict[str, Manifest] = {}
    skipped: dict[str, list[BadUtterance]] = {}
    for split, utts in splits.items():
        if not utts:
            continue
        manifest, report = validate_manifest(
            Manifest(utts, split, root), max_duration=max_duration, skip_bad=skip_bad
        )
        if report.skipped:
            log.warning("FSDD %s: %s", split, report.summary())
        skipped[split] = report.skipped
        out_path = out_dir / f"{split}.jsonl"
        manifest.to_jsonl(out_path)
        result[split] = load_manifest(out_path, split=split)
    write_skipped(out_dir / SKIPPED_FILE, skipped)
    return result
