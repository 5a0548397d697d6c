"""Checking a manifest before training: every bad utterance is reported, none dropped silently.

Only audio headers are read (``soundfile.info``), so a thousand files take about a second.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from speechtune.data._audio import AudioError, AudioInfo, audio_info, is_raw
from speechtune.data._manifest import Manifest, Utterance, replace_utt
from speechtune.data._text import DEFAULT_CHARSET, normalize_text

log = logging.getLogger(__name__)

#: How many offending utterances an error message lists before "and N more".
MAX_LISTED = 50

#: Longest utterance (seconds) the importers accept unless told otherwise: longer ones are
#: usually unsegmented recordings, and one of them can exhaust memory in a training batch.
DEFAULT_MAX_DURATION = 30.0

#: The list of skipped utterances an import writes beside its manifest(s).
SKIPPED_FILE = "skipped.tsv"


@dataclass(frozen=True)
class BadUtterance:
    """One utterance that failed validation.

    Attributes:
        id: the utterance id.
        problem: the kind(s) of problem, e.g. ``"missing audio"``, ``"empty transcript"``
            (several joined by ``", "`` when an utterance has more than one).
        detail: what exactly is wrong (path, characters, rates...).
    """

    id: str
    problem: str
    detail: str

    def __str__(self) -> str:
        return f"{self.id}: {self.problem} ({self.detail})"


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_manifest`.

    Attributes:
        kept: how many utterances passed.
        skipped: the utterances left out, one entry each, with their problems.
    """

    kept: int
    skipped: list[BadUtterance] = field(default_factory=list)

    @property
    def skipped_ids(self) -> list[str]:
        return [b.id for b in self.skipped]

    def summary(self) -> str:
        """One line, then one line per skipped utterance (capped at ``MAX_LISTED``)."""
        head = f"kept {self.kept} utterance(s), skipped {len(self.skipped)}"
        if not self.skipped:
            return head
        return head + ":\n" + _listing(self.skipped)


class BadInputError(ValueError):
    """The manifest has bad utterances; the message lists every one of them (capped)."""

    def __init__(self, bad: list[BadUtterance]):
        self.bad = list(bad)
        how = (
            "--skip-bad on the command line, data.skip_bad: true in a recipe, skip_bad=True in "
            "Python"
        )
        if len(self.bad) == 1:  # one line, as every other input error
            super().__init__(f"bad utterance {self.bad[0]} (to leave it out: {how})")
            return
        super().__init__(
            f"{len(self.bad)} bad utterance(s) in the manifest (to leave them out and get a "
            f"report: {how}):\n{_listing(self.bad)}"
        )


def write_skipped(path: Path, skipped: dict[str, list[BadUtterance]]) -> None:
    """List skipped utterances in a TSV file (id, split, problem, detail), one per line.

    With nothing skipped the file is removed, so that it never describes an earlier import.

    Args:
        path: the file to write.
        skipped: split name -> the utterances left out of it.
    """
    rows = [(split, b) for split, bad in skipped.items() for b in bad]
    if not rows:
        path.unlink(missing_ok=True)
        return

    def cell(value: str) -> str:
        return value.replace("\t", " ").replace("\n", " ")

    lines = ["id\tsplit\tproblem\tdetail"]
    lines += [f"{cell(b.id)}\t{split}\t{cell(b.problem)}\t{cell(b.detail)}" for split, b in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _listing(bad: list[BadUtterance]) -> str:
    lines = [f"  {b}" for b in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        lines.append(f"  and {len(bad) - MAX_LISTED} more")
    return "\n".join(lines)


def _audio_problems(
    manifest: Manifest, utt: Utterance, sample_rate: int | None
) -> tuple[list[tuple[str, str]], AudioInfo | None]:
    """Problems with an utterance's audio, and its header when readable."""
    if utt.samples is not None:
        if utt.samples.size == 0:
            return [("zero-length audio", "in-memory samples are empty")], None
        if utt.sample_rate is None:
            return [("sample-rate problem", "in-memory samples have no sample_rate")], None
        return [], None
    path = manifest.resolve(utt)
    if path is None:
        return [("missing audio", "no audio path and no in-memory samples")], None
    if not path.is_file():
        return [("missing audio", f"file not found: {path}")], None
    try:
        info = audio_info(path)
    except AudioError as exc:
        return [("unreadable audio", str(exc))], None
    problems = []
    if info.num_frames <= 0:
        problems.append(("zero-length audio", f"header of {path} says 0 frames"))
    if utt.sample_rate is not None and int(utt.sample_rate) != info.sample_rate:
        problems.append(
            (
                "sample-rate mismatch",
                f"declared {utt.sample_rate} Hz, file {path} is {info.sample_rate} Hz",
            )
        )
    # Upsampling invents no information; a raw file's rate is assumed, not read, so it is exempt.
    if sample_rate is not None and info.sample_rate < sample_rate and not is_raw(path):
        problems.append(
            (
                "sample rate too low",
                f"file {path} is {info.sample_rate} Hz, the recipe needs {sample_rate} Hz",
            )
        )
    return problems, info


def _text_problems(text: str, charset: frozenset[str] | None) -> list[tuple[str, str]]:
    if not text:
        return [("empty transcript", "transcript is empty after normalisation")]
    if charset is not None:
        outside = sorted(set(text) - charset)
        if outside:
            named = ", ".join(repr(c) for c in outside)
            return [("characters outside charset", f"{named} in {text!r}")]
    return []


def check_utterance(
    manifest: Manifest,
    utt: Utterance,
    *,
    charset: frozenset[str] | None = DEFAULT_CHARSET,
    sample_rate: int | None = None,
    max_duration: float | None = None,
) -> BadUtterance | None:
    """Check one utterance (see :func:`validate_manifest`); None when it is fine."""
    problems, info = _audio_problems(manifest, utt, sample_rate)
    path = manifest.resolve(utt)
    audio = f"file {path}" if path is not None else "in-memory audio"
    if not math.isfinite(utt.duration):
        problems.append(("invalid duration", f"duration of {audio} is {utt.duration}"))
    elif utt.duration <= 0 and not (path is not None and info is None):
        # (A missing or unreadable file is reported as such: its 0 s is no separate problem.)
        problems.append(("zero duration", f"duration of {audio} is {utt.duration}"))
    # The header's length is what gets decoded, so a manifest that understates a duration
    # (by mistake or on purpose) does not get a long file past the limit.
    longest = max(utt.duration, info.duration) if info is not None else utt.duration
    if max_duration is not None and math.isfinite(longest) and longest > max_duration:
        problems.append(
            (
                "too long",
                f"{audio} is {longest:.2f} s, over the {max_duration:g} s limit set by "
                "--max-duration / data.max_duration",
            )
        )
    problems += _text_problems(normalize_text(utt.text), charset)
    if not problems:
        return None
    return BadUtterance(
        utt.id, ", ".join(p for p, _ in problems), "; ".join(d for _, d in problems)
    )


def validate_manifest(
    manifest: Manifest,
    *,
    charset: frozenset[str] | None = DEFAULT_CHARSET,
    sample_rate: int | None = None,
    max_duration: float | None = None,
    skip_bad: bool = False,
) -> tuple[Manifest, ValidationReport]:
    """Check every utterance of a manifest and normalise its transcripts.

    Checks: missing, unreadable or corrupt audio; zero-length audio (header says 0 frames);
    duration 0 or not a number; empty transcript (after :func:`normalize_text`); characters outside
    ``charset`` (named); a declared ``sample_rate`` that disagrees with the file; a file
    rate below ``sample_rate`` (headerless ``.raw`` exempt); duration (declared, or the header's
    when longer) above ``max_duration``.

    Args:
        manifest: the manifest to check.
        charset: allowed transcript characters; None skips that check.
        sample_rate: the rate the recipe will load audio at; None skips that check.
        max_duration: longest allowed utterance in seconds; None for no limit.
        skip_bad: leave bad utterances out (and report them) instead of raising.

    Returns:
        The manifest of good utterances with normalised texts, and the report.

    Raises:
        BadInputError: listing every bad utterance, unless ``skip_bad``.
    """
    good: list[Utterance] = []
    bad: list[BadUtterance] = []
    for utt in manifest:
        problem = check_utterance(
            manifest, utt, charset=charset, sample_rate=sample_rate, max_duration=max_duration
        )
        if problem is None:
            good.append(replace_utt(utt, text=normalize_text(utt.text)))
        else:
            bad.append(problem)
    if bad and not skip_bad:
        raise BadInputError(bad)
    report = ValidationReport(kept=len(good), skipped=bad)
    if bad:
        log.warning("validation skipped bad utterances: %s", report.summary())
    return Manifest(good, manifest.split, manifest.root), report
