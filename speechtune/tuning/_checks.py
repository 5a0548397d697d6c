"""Small value checks shared by the tuning-YAML validators (``_spec`` and ``_ladder``)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

__all__ = ["close_matches", "is_int", "is_num"]


def is_int(v: Any) -> bool:
    """An int that is not a bool (YAML ``true`` must not pass as 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def close_matches(key: str, valid: Sequence[str]) -> str:
    """`` (did you mean: a, b?)`` for a misspelt ``key``, or an empty string."""
    matches = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""
