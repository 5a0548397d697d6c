"""Transcript normalisation shared by the importers and the validator, and UTF-8 decoding of
the files transcripts come in."""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path

#: Characters the built-in recipes model: upper-case letters, apostrophe and space.
DEFAULT_CHARSET: frozenset[str] = frozenset(string.ascii_uppercase + "' ")


def normalize_text(text: str) -> str:
    """Upper-case a transcript, collapse runs of whitespace to one space and strip the ends.

    Args:
        text: a raw transcript.

    Returns:
        The normalised transcript (possibly empty).
    """
    return " ".join(text.upper().split())


def first_field(line: str) -> str | None:
    """The first whitespace-separated field of a line (a Kaldi key), or None for a blank line."""
    fields = line.split(maxsplit=1)
    return fields[0] if fields else None


def decode_utf8(
    data: bytes,
    source: str | Path,
    *,
    utt_id_of: Callable[[str], str | None] | None = None,
    error: type[Exception] = ValueError,
) -> str:
    """Decode a transcript or manifest file's bytes as UTF-8, naming the first bad line.

    Files are always read as UTF-8, whatever the locale: the same corpus must read the same on
    every machine. A latin-1 file fails here rather than being silently misread.

    Args:
        data: the file's bytes.
        source: the file, named in the error.
        utt_id_of: given the offending line (bad bytes replaced), the utterance id it holds, if
            any, so that the error can name it.
        error: the exception class to raise (the importer's own error type).

    Returns:
        The text.

    Raises:
        error: one line naming the file, the line number, the utterance id when known and the
            offending byte.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        end = data.find(b"\n", exc.start)
        line = data[start : end if end >= 0 else len(data)].decode("utf-8", errors="replace")
        uid = None
        if utt_id_of is not None:
            try:
                uid = utt_id_of(line)
            except ValueError:  # the line is malformed as well: the line number must do
                uid = None
        utt = f" (utterance {uid!r})" if uid else ""
        raise error(
            f"{source} line {lineno}{utt}: byte 0x{data[exc.start]:02x} at column "
            f"{exc.start - start + 1} is not valid UTF-8; transcripts and manifests must be "
            "UTF-8 (convert the file, e.g. iconv -f latin1 -t utf-8)"
        ) from exc
