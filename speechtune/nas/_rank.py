"""Weight-sharing ranking: sample architectures, score them with shared weights, and measure
how well that ranking agrees with training each one alone (Spearman, with its uncertainty)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any


def sample_architectures(
    ops: Sequence[str], num_blocks: int, n: int, seed: int
) -> list[list[str]]:
    """``n`` distinct architectures drawn uniformly (fewer when the space is smaller).

    Architectures made only of ``zero`` are skipped: they have no encoder at all. Two that
    differ only in where their ``zero`` blocks sit (``zero,conv7`` and ``conv7,zero``) are the
    same network, built with the same initial weights, so only the first drawn is kept: a
    stand-alone training would pay twice for one model.
    """
    rng = random.Random(seed)
    size = len(ops) ** num_blocks
    seen: set[tuple[str, ...]] = set()
    networks: set[tuple[str, ...]] = set()
    out: list[list[str]] = []
    # The space may be small (tests): stop once every architecture has been drawn.
    while len(out) < n and len(seen) < size:
        arch = tuple(rng.choice(list(ops)) for _ in range(num_blocks))
        if arch in seen:
            continue
        seen.add(arch)
        network = tuple(op for op in arch if op != "zero")
        if not network or network in networks:
            continue
        networks.add(network)
        out.append(list(arch))
    return out


def spearman(xs: Sequence[float], ys: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """Spearman's rho between two score lists, its p-value and a bootstrap 90% interval.

    With fewer than 3 pairs (or constant scores) rho is undefined and reported as ``None``: a
    correlation must say how uncertain it is, and on 2 points it says nothing.
    """
    from scipy.stats import spearmanr

    n = len(xs)
    out: dict[str, Any] = {"n": n, "rho": None, "p_value": None, "ci90": None}
    if n < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return out
    res = spearmanr(xs, ys)
    rho, p = float(res.statistic), float(res.pvalue)
    out.update(rho=None if math.isnan(rho) else rho, p_value=None if math.isnan(p) else p)
    rng = random.Random(seed)
    boots: list[float] = []
    for _ in range(1000):
        idx = [rng.randrange(n) for _ in range(n)]
        bx, by = [xs[i] for i in idx], [ys[i] for i in idx]
        if len(set(bx)) < 2 or len(set(by)) < 2:
            continue
        r = float(spearmanr(bx, by).statistic)
        if not math.isnan(r):
            boots.append(r)
    if len(boots) >= 100:
        boots.sort()
        out["ci90"] = [boots[int(0.05 * len(boots))], boots[int(0.95 * len(boots)) - 1]]
    return out
