"""Speaker-disjoint dev splits and stratified proxy subsets (deterministic for a seed)."""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict

import numpy as np

from speechtune.data._manifest import Manifest, Utterance, require_tunable


def _speaker_groups(manifest: Manifest) -> dict[str, list[str]]:
    """Group name -> sorted speakers; a speaker belongs to its most frequent group."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for u in manifest:
        counts[u.speaker][u.group] += 1
    groups: dict[str, list[str]] = defaultdict(list)
    for spk in sorted(counts):
        # Ties go to the alphabetically first group, so the choice does not depend on order.
        group = min(counts[spk], key=lambda g: (-counts[spk][g], g))
        groups[group].append(spk)
    return dict(sorted(groups.items()))


def _pick_dev_speakers(
    speakers: list[str], n_utts: Counter[str], target: float, rng: np.random.Generator
) -> list[str]:
    """Speakers of one group whose utterance count best approaches ``target``.

    At least one speaker goes to dev and at least one stays in train when the group has
    two or more speakers; a lone speaker stays in train.
    """
    if len(speakers) < 2:
        return []
    order = [speakers[i] for i in rng.permutation(len(speakers))]
    chosen: list[str] = []
    total = 0
    for spk in order:
        if len(chosen) == len(speakers) - 1:
            break
        n = n_utts[spk]
        if not chosen or abs(total + n - target) < abs(total - target):
            chosen.append(spk)
            total += n
    return chosen


def split_dev(manifest: Manifest, fraction: float, seed: int) -> tuple[Manifest, Manifest]:
    """Carve a speaker-disjoint dev split from a training manifest.

    About ``fraction`` of the utterances of each group go to dev, in whole speakers; every
    group with two or more speakers has at least one speaker in dev (and one in train).

    Args:
        manifest: the training data (not test or golden).
        fraction: wanted share of utterances in dev, in (0, 1).
        seed: picks the speakers; the same seed gives the same split.

    Returns:
        (train manifest with split "train", dev manifest with split "dev").

    Raises:
        TestSplitError: ``manifest`` is the test or golden split.
        ValueError: ``fraction`` is outside (0, 1), or no speaker can be held out.
    """
    require_tunable(manifest, "carving a dev split")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    n_utts = Counter(u.speaker for u in manifest)
    dev_speakers: set[str] = set()
    for _, speakers in _speaker_groups(manifest).items():
        target = fraction * sum(n_utts[s] for s in speakers)
        dev_speakers.update(_pick_dev_speakers(speakers, n_utts, target, rng))
    if not dev_speakers:
        raise ValueError(
            f"cannot carve a speaker-disjoint dev split: no group has two or more speakers "
            f"(speakers: {manifest.speakers[:10]})"
        )
    train = manifest.filter(lambda u: u.speaker not in dev_speakers).with_split("train")
    dev = manifest.filter(lambda u: u.speaker in dev_speakers).with_split("dev")
    return train, dev


def _strata(manifest: Manifest, rng: np.random.Generator) -> list[list[Utterance]]:
    """Utterances per (group, speaker), each stratum in a seeded random order."""
    by_key: dict[tuple[str, str], list[Utterance]] = defaultdict(list)
    for u in manifest:
        by_key[(u.group, u.speaker)].append(u)
    strata = []
    for key in sorted(by_key):
        utts = by_key[key]
        strata.append([utts[i] for i in rng.permutation(len(utts))])
    return strata


def proxy_subset(
    manifest: Manifest, *, fraction: float | None = None, hours: float | None = None, seed: int = 0
) -> Manifest:
    """A deterministic subset stratified by (group, speaker), for cheap proxy trials.

    The budget is audio duration: ``fraction`` of the manifest's hours, or ``hours``. Each
    stratum first contributes one utterance (while the budget allows, strata in a seeded
    order), then utterances go to the stratum furthest below its proportional share.

    Args:
        manifest: the data to subsample (not test or golden).
        fraction: share of the total duration, in (0, 1].
        hours: duration budget in hours (> 0).
        seed: the same seed gives the same subset.

    Returns:
        The subset, in the manifest's order, with the same split and root.

    Raises:
        TestSplitError: ``manifest`` is the test or golden split.
        ValueError: not exactly one of ``fraction``/``hours``, or a value out of range.
    """
    require_tunable(manifest, "a proxy subset")
    if (fraction is None) == (hours is None):
        raise ValueError(
            f"give exactly one of fraction or hours, got fraction={fraction}, hours={hours}"
        )
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if hours is not None and hours <= 0:
        raise ValueError(f"hours must be positive, got {hours}")
    total = sum(u.duration for u in manifest)
    budget = fraction * total if fraction is not None else 3600.0 * (hours or 0.0)
    if budget >= total:
        return manifest[:]
    chosen = _fill_budget(
        _strata(manifest, np.random.default_rng(seed)),
        budget,
        total,
        np.random.default_rng(seed + 1),
    )
    return manifest.filter(lambda u: u.id in chosen)


def _fill_budget(
    strata: list[list[Utterance]], budget: float, total: float, rng: np.random.Generator
) -> set[str]:
    share = budget / total
    targets = [share * sum(u.duration for u in s) for s in strata]
    taken = [0.0] * len(strata)
    nxt = [0] * len(strata)
    chosen: set[str] = set()
    left = budget

    def take(i: int) -> None:
        nonlocal left
        u = strata[i][nxt[i]]
        chosen.add(u.id)
        taken[i] += u.duration
        left -= u.duration
        nxt[i] += 1

    # One utterance per speaker first, so small speakers are not rounded away.
    for i in rng.permutation(len(strata)):
        if strata[i][0].duration <= left:
            take(int(i))
    # Then the stratum with the largest deficit takes its next utterance, until the budget is spent.
    heap = [(-(targets[i] - taken[i]), i) for i in range(len(strata)) if nxt[i] < len(strata[i])]
    heapq.heapify(heap)
    while heap:
        neg_deficit, i = heapq.heappop(heap)
        if -neg_deficit <= 0:
            break
        if strata[i][nxt[i]].duration > left:
            continue  # its next utterance does not fit; others may
        take(i)
        if nxt[i] < len(strata[i]):
            heapq.heappush(heap, (-(targets[i] - taken[i]), i))
    return chosen
