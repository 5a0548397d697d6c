"""Word and character error rates, overall and per group.

Edit distances come from ``rapidfuzz.distance.Levenshtein`` (C implementation) on token lists.
Tokenisation follows jiwer's defaults so the numbers agree with it (tests check this):

* words: whitespace-separated tokens (``str.split()``);
* characters: the string with leading/trailing whitespace stripped; inner spaces count as
  characters (``jiwer.cer``'s convention).

Rates are corpus-level: total edits over total reference tokens, not a mean of per-utterance
rates. An empty reference is allowed: its hypothesis tokens all count as insertions and it adds
nothing to the reference length. If *every* reference is empty the rate is undefined and a
``ValueError`` is raised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

__all__ = ["ErrorCounts", "cer", "error_counts", "group_wer", "wer", "worst_group"]


@dataclass(frozen=True)
class ErrorCounts:
    """Edit counts over a set of utterances.

    Attributes:
        errors: Total edits (substitutions + deletions + insertions).
        ref_len: Total reference tokens.
        substitutions: Substituted tokens (one optimal alignment).
        deletions: Reference tokens missing from the hypothesis.
        insertions: Hypothesis tokens not in the reference.
    """

    errors: int
    ref_len: int
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def rate(self) -> float:
        """``errors / ref_len``.

        Raises:
            ValueError: If there are no reference tokens.
        """
        if self.ref_len == 0:
            raise ValueError(
                f"error rate is undefined with no reference tokens (errors={self.errors})."
            )
        return self.errors / self.ref_len

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        if not isinstance(other, ErrorCounts):
            return NotImplemented
        return ErrorCounts(
            self.errors + other.errors,
            self.ref_len + other.ref_len,
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
        )


def _words(text: str) -> list[str]:
    return text.split()


def _chars(text: str) -> str:
    return text.strip()


_UNITS: dict[str, Callable[[str], Sequence[str]]] = {"word": _words, "char": _chars}


def _utterance_counts(ref: Sequence[str], hyp: Sequence[str]) -> ErrorCounts:
    ops = Levenshtein.editops(ref, hyp)
    kinds = [op[0] for op in ops]
    return ErrorCounts(
        errors=len(kinds),
        ref_len=len(ref),
        substitutions=kinds.count("replace"),
        deletions=kinds.count("delete"),
        insertions=kinds.count("insert"),
    )


def error_counts(refs: Sequence[str], hyps: Sequence[str], unit: str = "word") -> ErrorCounts:
    """Corpus-level edit counts between references and hypotheses.

    Args:
        refs: Reference transcripts.
        hyps: Hypotheses, one per reference.
        unit: ``"word"`` or ``"char"``.

    Returns:
        The summed counts (its ``rate`` is the corpus WER/CER).

    Raises:
        ValueError: On an unknown unit or different numbers of references and hypotheses.
    """
    tokenize = _UNITS.get(unit)
    if tokenize is None:
        raise ValueError(f"unit must be one of {sorted(_UNITS)}, but got {unit!r}.")
    if isinstance(refs, str) or isinstance(hyps, str):
        raise ValueError("refs and hyps must be sequences of transcripts, not single strings.")
    if len(refs) != len(hyps):
        raise ValueError(
            f"refs and hyps must have the same length, but got {len(refs)} refs "
            f"and {len(hyps)} hyps."
        )
    total = ErrorCounts(0, 0)
    for ref, hyp in zip(refs, hyps):
        total = total + _utterance_counts(tokenize(ref), tokenize(hyp))
    return total


def _rate(refs: Sequence[str], hyps: Sequence[str], unit: str) -> float:
    counts = error_counts(refs, hyps, unit)
    if counts.ref_len == 0:
        raise ValueError(
            f"all {len(refs)} reference(s) are empty, so the {unit} error rate is undefined."
        )
    return counts.rate


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus word error rate (total word edits / total reference words).

    Raises:
        ValueError: If the lengths differ or every reference is empty.
    """
    return _rate(refs, hyps, "word")


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus character error rate (spaces inside a transcript count as characters).

    Raises:
        ValueError: If the lengths differ or every reference is empty.
    """
    return _rate(refs, hyps, "char")


def group_wer(refs: Sequence[str], hyps: Sequence[str], groups: Sequence[str]) -> dict[str, float]:
    """Corpus WER of each group (accent, speaker, noise condition...).

    Args:
        refs: Reference transcripts.
        hyps: Hypotheses, one per reference.
        groups: Group name of each utterance.

    Returns:
        ``{group: wer}``, sorted by group name.

    Raises:
        ValueError: If the lengths differ, or every reference of some group is empty (the
            message names the group).
    """
    if len(groups) != len(refs):
        raise ValueError(
            f"groups must have one entry per reference, but got {len(groups)} groups "
            f"and {len(refs)} refs."
        )
    if len(refs) != len(hyps):
        raise ValueError(
            f"refs and hyps must have the same length, but got {len(refs)} refs "
            f"and {len(hyps)} hyps."
        )
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(str(group), []).append(i)
    rates: dict[str, float] = {}
    for group in sorted(members):
        idx = members[group]
        counts = error_counts([refs[i] for i in idx], [hyps[i] for i in idx], "word")
        if counts.ref_len == 0:
            raise ValueError(f"group {group!r}: all {len(idx)} reference(s) are empty.")
        rates[group] = counts.rate
    return rates


def worst_group(group_rates: Mapping[str, float]) -> tuple[str, float]:
    """The group with the highest error rate (ties: the first name in sorted order).

    Args:
        group_rates: ``{group: rate}``, e.g. from :func:`group_wer`.

    Returns:
        ``(group, rate)``.

    Raises:
        ValueError: If ``group_rates`` is empty.
    """
    if not group_rates:
        raise ValueError("worst_group needs at least one group, but got none.")
    name = min(sorted(group_rates), key=lambda g: -group_rates[g])
    return name, group_rates[name]
