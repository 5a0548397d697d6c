"""Small value checks shared by the tuning-YAML validators (``_spec``, ``_ladder``, ``_ray_spec``)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from speechtune.config import ConfigProblem

#: (predicate, rule shown when it fails) for one key of a YAML section.
Check = tuple[Callable[[Any], bool], str]


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


def checked_entries(
    data: Mapping[str, Any],
    key: str,
    checks: Mapping[str, Check],
    problems: list[ConfigProblem],
    valid: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The entries of section ``data`` (at dotted ``key``) that pass their check.

    An unknown entry (with did-you-mean) or one failing its check becomes a problem, so that a
    file reports every mistake at once. ``valid``: the keys to suggest (default: ``checks``'),
    when the section has keys checked elsewhere.
    """
    valid = list(valid if valid is not None else checks)
    out: dict[str, Any] = {}
    for name, value in data.items():
        if name not in checks:
            problems.append(
                ConfigProblem(
                    f"{key}.{name}",
                    f"unknown key{close_matches(str(name), valid)}; valid keys: {', '.join(valid)}",
                    value,
                )
            )
            continue
        ok, rule = checks[name]
        if not ok(value):
            problems.append(ConfigProblem(f"{key}.{name}", rule, value))
            continue
        out[name] = value
    return out
