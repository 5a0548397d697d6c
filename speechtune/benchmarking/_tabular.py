"""A tabular benchmark problem: replays recorded learning curves of real training runs.

File format (JSON lines)::

    {"meta": {"corpus": "an4", "device": "...", "epochs": E, "metric": "wer",
              "space": {"model.d_model": [144, 256], "optim.lr": [0.0005, 0.001, 0.002], ...}}}
    {"config_id": 0, "params": {"model.d_model": 144, ...}, "num_params": 1234567,
     "status": "complete", "epochs": [{"epoch": 1, "wer": 0.9, "cer": 0.5, "dev_loss": 2.1, "time_s": 30.2}, ...]}
    ...

Replay rules (the curve of each recorded config is filled for epochs 1..E once, at load time):

* a recorded finite metric at epoch e is the value at e;
* a missing epoch takes the last recorded value before it (a run that stopped early, or a
  failed one, keeps its last score); epochs before the first recorded one take the worst value;
* a diverged run (a non-finite or null metric, ``"status": "diverged"``, ``"diverged": true``,
  or a ``reason`` that mentions divergence) takes the worst value from the epoch after its last
  finite one; a failed run (``oom``, ``error``, ...) with no epochs is worst everywhere. The
  worst value is ``meta["worst"]``, 1.0 (100% WER) by default.
* an unterminated last line (the recorder appends while it trains) is ignored.

Budget b means "epoch b of an E-epoch run" (the learning-rate schedule spans all E epochs), not
"a run of b epochs"; that is what a multi-fidelity search sees when it continues a run.

A config that was not recorded is answered by the NEAREST recorded config: each tunable param is
mapped to [0, 1] (a categorical value to its ordinal position ``index / (k - 1)`` in the space's
choice list, a numeric one linearly, or in log space when ``log: true``), the distance is
Euclidean over the params, a param present in one config but not the other counts 1, and ties
go to the smallest ``config_id``. The default budget axis is epochs; :meth:`elapsed` gives the
recorded training time for a time-based cost axis.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from speechtune.tuning.space import (
    CategoricalParam,
    FloatParam,
    IntParam,
    SearchSpace,
    parse_space,
)

__all__ = ["TabularProblem", "TabularRecord"]


class TabularRecord:
    """One recorded config: its params and its filled curve (epochs 1..E)."""

    def __init__(
        self,
        config_id: int,
        params: dict[str, Any],
        curve: np.ndarray,
        times: np.ndarray,
        status: str,
    ) -> None:
        self.config_id = config_id
        self.params = params
        self.curve = curve  # curve[e - 1] = value after epoch e
        self.times = times  # times[e - 1] = seconds spent on epoch e (0 when unknown)
        self.status = status

    def __repr__(self) -> str:
        return f"TabularRecord(config_id={self.config_id}, final={self.curve[-1]:.4g}, status={self.status!r})"


def _diverged_flag(record: Mapping[str, Any]) -> bool:
    return (
        record.get("diverged") is True
        or record.get("status") == "diverged"
        or "diverg" in str(record.get("reason", "")).lower()
    )


class TabularProblem:
    """Replays a learning-curve table (see the module docstring for the rules).

    Build it with :meth:`load`; ``evaluate(config, budget)`` is then a table lookup.
    """

    continues = True
    incumbent_any_fidelity = False
    suite = "tabular"

    def default_budget(self) -> float:
        """A sixth of the table's configs at full fidelity (at least 10): enough to separate
        strategies, too few for a full-fidelity search to sweep the table."""
        return float(max(10, round(len(self.records) / 6)))

    def __init__(
        self,
        name: str,
        meta: Mapping[str, Any],
        records: list[TabularRecord],
        source: str = "<memory>",
    ) -> None:
        if not records:
            raise ValueError(f"{source}: the table has no config records")
        self.name = name
        self.meta = dict(meta)
        self.source = source
        self.records = sorted(records, key=lambda r: r.config_id)
        self.max_budget: int = int(meta["epochs"])
        self.metric: str = str(meta.get("metric", "wer"))
        self.worst: float = float(meta.get("worst", 1.0))
        self.space: SearchSpace = parse_space(meta["space"])
        self.names: list[str] = self.space.tunable_names()
        self._positions = np.array(
            [self._encode(r.params) for r in self.records]
        )  # (N, d), NaN = absent
        self._ids = np.array([r.config_id for r in self.records])
        self._cache: dict[tuple[Any, ...], TabularRecord] = {}

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, name: str | None = None) -> TabularProblem:
        """Read a JSON-lines table.

        Raises:
            FileNotFoundError: no such file.
            ValueError: a line is not JSON, the meta line or a record lacks a required key.
        """
        path = Path(path)
        text = path.read_text()
        lines = text.splitlines()
        if lines and not text.endswith("\n"):
            # The recorder appends whole lines while training: an unterminated last line is a
            # record being written (or torn by a kill), not part of the table yet.
            lines.pop()
        rows = []
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not valid JSON ({exc.msg})") from exc
        if not rows:
            raise ValueError(f"{path}: empty file (expected a meta line and config lines)")
        meta = rows[0].get("meta") if isinstance(rows[0], dict) else None
        if not isinstance(meta, dict):
            raise ValueError(f'{path}:1: the first line must be {{"meta": {{...}}}}')
        for key in ("epochs", "space"):
            if key not in meta:
                raise ValueError(f"{path}:1: meta lacks {key!r}")
        epochs = meta["epochs"]
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise ValueError(f"{path}:1: meta.epochs must be an int >= 1 (got {epochs!r})")
        metric = str(meta.get("metric", "wer"))
        worst = float(meta.get("worst", 1.0))
        records = []
        seen: set[int] = set()
        for i, row in enumerate(rows[1:], start=2):
            for key in ("config_id", "params"):
                if key not in row:
                    raise ValueError(f"{path}:{i}: config record lacks {key!r}")
            cid = row["config_id"]
            if not isinstance(cid, int) or cid in seen:
                raise ValueError(f"{path}:{i}: config_id must be a unique int (got {cid!r})")
            seen.add(cid)
            curve, times = cls._fill(row, epochs, metric, worst, f"{path}:{i}")
            records.append(
                TabularRecord(
                    cid, dict(row["params"]), curve, times, str(row.get("status", "complete"))
                )
            )
        return cls(
            name or str(meta.get("name") or meta.get("corpus") or path.stem),
            meta,
            records,
            str(path),
        )

    @staticmethod
    def _fill(
        row: Mapping[str, Any], epochs: int, metric: str, worst: float, where: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """The curve over epochs 1..E under the replay rules of the module docstring."""
        recorded: dict[int, float] = {}
        times = np.zeros(epochs)
        for entry in row.get("epochs") or []:
            e = entry.get("epoch")
            if not isinstance(e, int) or not 1 <= e <= epochs:
                raise ValueError(f"{where}: epoch must be an int in [1, {epochs}] (got {e!r})")
            value = entry.get(metric)
            recorded[e] = (
                float(value)
                if isinstance(value, (int, float)) and not isinstance(value, bool)
                else math.nan
            )
            t = entry.get("time_s")
            if isinstance(t, (int, float)) and math.isfinite(t):
                times[e - 1] = float(t)
        curve = np.full(epochs, worst)
        last: float | None = None
        diverged = False
        for e in range(1, epochs + 1):
            if e in recorded:
                if not math.isfinite(recorded[e]):
                    diverged = True
                else:
                    last = recorded[e]
            if diverged:
                break  # worst from here on (already filled)
            if last is not None:
                curve[e - 1] = last
        if _diverged_flag(row) and recorded:
            # Divergence reported by the trainer: values up to the last finite epoch stand, then worst.
            finite = [e for e, v in recorded.items() if math.isfinite(v)]
            stop = max(finite) if finite else 0
            curve[stop:] = worst
        return curve, times

    # -- lookups ------------------------------------------------------------------------------

    def _encode(self, params: Mapping[str, Any]) -> list[float]:
        """Params -> positions in [0, 1] per tunable param (NaN when absent or unknown)."""
        out = []
        for name in self.names:
            p = self.space.params[name]
            if name not in params:
                out.append(math.nan)
                continue
            v = params[name]
            if isinstance(p, CategoricalParam):
                k = len(p.choices)
                idx = next(
                    (
                        i
                        for i, (raw, enc) in enumerate(zip(p.choices, p.encoded()))
                        if v == raw or v == enc
                    ),
                    None,
                )
                out.append(math.nan if idx is None else (idx / (k - 1) if k > 1 else 0.0))
            elif isinstance(p, (FloatParam, IntParam)):
                lo, hi, x = float(p.low), float(p.high), float(v)
                if p.log:
                    lo, hi, x = math.log(lo), math.log(hi), math.log(max(x, 1e-300))
                out.append(0.0 if hi == lo else (x - lo) / (hi - lo))
            else:
                out.append(math.nan)
        return out

    def lookup(self, config: Mapping[str, Any]) -> TabularRecord:
        """The recorded config equal to ``config`` on the tunable params, else the nearest one."""
        key = tuple(repr(config.get(n, "<absent>")) for n in self.names)
        hit = self._cache.get(key)
        if hit is None:
            q = np.array(self._encode(config))
            diff = np.abs(self._positions - q[None])
            both_absent = np.isnan(self._positions) & np.isnan(q)[None]
            diff = np.where(both_absent, 0.0, np.where(np.isnan(diff), 1.0, diff))
            dist = np.sqrt(np.sum(diff**2, axis=1))
            # Records are sorted by config_id, so argmin's first-index rule breaks ties by id.
            hit = self.records[int(np.argmin(np.round(dist, 12)))]
            self._cache[key] = hit
        return hit

    def _epoch(self, budget: Any) -> int:
        if isinstance(budget, bool) or not isinstance(
            budget, (int, float, np.integer, np.floating)
        ):
            raise TypeError(
                f"{self.name}: budget must be a number of epochs in [1, {self.max_budget}] (got {budget!r})"
            )
        e = int(round(float(budget)))
        if not 1 <= e <= self.max_budget:
            raise ValueError(
                f"{self.name}: budget must be in [1, {self.max_budget}] epochs (got {budget!r})"
            )
        return e

    def evaluate(self, config: Mapping[str, Any], budget: float) -> float:
        """The recorded metric after ``round(budget)`` epochs of ``config`` (or its nearest recorded config)."""
        return float(self.lookup(config).curve[self._epoch(budget) - 1])

    def elapsed(self, config: Mapping[str, Any], budget: float) -> float:
        """Recorded training seconds of ``config`` up to epoch ``round(budget)`` (an alternative cost axis)."""
        return float(np.sum(self.lookup(config).times[: self._epoch(budget)]))

    # -- benchmark metadata -------------------------------------------------------------------

    @cached_property
    def finals(self) -> np.ndarray:
        """Full-budget value of every record, in config_id order."""
        return np.array([r.curve[-1] for r in self.records])

    @property
    def optimum(self) -> float:
        """Best full-budget value in the table."""
        return float(np.min(self.finals))

    @property
    def reference(self) -> float:
        """Mean full-budget value over the table (regret 1.0 = an average recorded config)."""
        return float(np.mean(self.finals))

    def _prior_from(self, record: TabularRecord) -> dict[str, tuple[Any, float]]:
        out: dict[str, tuple[Any, float]] = {}
        for name in self.names:
            if name in record.params:
                # Categorical width 0.3: the default gets probability 0.7 (contract of _priors).
                width = 0.3 if isinstance(self.space.params[name], CategoricalParam) else 0.15
                out[name] = (record.params[name], width)
        return out

    @property
    def prior_good(self) -> dict[str, tuple[Any, float]]:
        """An oracle prior: the best recorded config's values."""
        return self._prior_from(self.records[int(np.argmin(self.finals))])

    @property
    def prior_bad(self) -> dict[str, tuple[Any, float]]:
        """A misleading prior: the worst recorded config's values."""
        return self._prior_from(self.records[int(np.argmax(self.finals))])

    def __repr__(self) -> str:
        return (
            f"TabularProblem({self.name!r}, configs={len(self.records)}, "
            f"epochs={self.max_budget}, metric={self.metric!r})"
        )
