"""Transcript normalisation shared by the importers and the validator."""

from __future__ import annotations

import string

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
