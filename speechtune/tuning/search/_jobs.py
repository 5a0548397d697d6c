"""The records of the multi-fidelity engine: a job (a config at a rung), a config's values, a bracket."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Job:
    """One config to evaluate at one fidelity rung.

    Attributes:
        number: ask order (0, 1, 2, ...).
        config_id: the config's id, kept across rungs.
        rung: index into ``fidelity.rungs``.
        params: raw values of the tunable params (Optuna names and values).
        config: the full flat config: sampled and derived values, then the rung's overrides.
        bracket: the Hyperband bracket (-1 for probes and bracket-free strategies).
        parent: number of the job this one continues from (same config, lower rung), or None
            for a run from scratch.
        cost: compute of this job in full-training units (for a continuation, only what it adds).
        source: how the config was chosen: random, model, prior, incumbent, warm_start,
            baseline, promotion or probe.
        parent_rung: the rung of ``parent`` (None without a parent).
        resume_key: the config key a continuation grows (``train.epochs``), or None when the
            ladder never continues a run.
        resume_from: the value of ``resume_key`` the job starts from: the parent's epochs for a
            continuation, 0 for a run from scratch.
    """

    number: int
    config_id: int
    rung: int
    params: dict[str, Any]
    config: dict[str, Any]
    bracket: int
    parent: int | None
    cost: float
    source: str
    parent_rung: int | None = None
    resume_key: str | None = None
    resume_from: float = 0.0

    @property
    def adds(self) -> float | None:
        """Units of ``resume_key`` this job trains (e.g. 6 epochs from 3 to 9); None without one."""
        if self.resume_key is None or not isinstance(
            self.config.get(self.resume_key), (int, float)
        ):
            return None
        return float(self.config[self.resume_key]) - self.resume_from


@dataclass
class _Config:
    config_id: int
    params: dict[str, Any]
    config: dict[str, Any]  # without rung overrides
    source: str
    values: dict[int, float] = field(default_factory=dict)  # rung -> value (inf: failed)
    last_job: dict[int, int] = field(default_factory=dict)  # rung -> job number that measured it
    promoted_from: set[int] = field(default_factory=set)  # rungs it has been promoted from


@dataclass
class _Bracket:
    index: int
    start: int
    sizes: list[int]  # configs per rung, from start to top
    members: dict[int, list[int]] = field(default_factory=dict)  # rung -> config ids issued there
    queue: list[int] = field(default_factory=list)  # config ids waiting for promotion to `rung`
    rung: int = 0

    def size_at(self, rung: int) -> int:
        return self.sizes[rung - self.start]


@contextlib.contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Silence Optuna's INFO lines ("A new study created in memory...") for throwaway studies."""
    logger = logging.getLogger("optuna")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(a)) < 2 or len(set(b)) < 2:
        return 0.0
    rho = spearmanr(a, b).statistic
    return float(rho) if math.isfinite(rho) else 0.0
