"""``state.json``: what each stage of a workflow run has done, so that a rerun resumes.

The file holds a :class:`WorkflowRecord` (frozen: every change is a copy) and is rewritten
atomically after every change (a crash never leaves half a state). A stage is ``done`` only once
its result is recorded; a stage that was ``running`` when the process died is picked up again,
and the stage itself continues its own partial work (the studies resume, trainings continue from
``last.pt``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TypeVar

from speechtune.metrics import CostModel, CostRecord, sum_costs
from speechtune.workflow._config import STAGES
from speechtune.workflow._record import OPTIONAL, RawResult, Record, RecordError
from speechtune.workflow._results import StageResult, parse_result

STATE_FILE = "state.json"

R = TypeVar("R", bound=StageResult)


def now() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, kw_only=True)
class StageRecord(Record):
    """One stage's entry in ``state.json``: its last attempt, the cost of all attempts, its result.

    ``result`` is kept from an earlier successful attempt when a rerun fails.
    """

    number: int | None = None
    status: str
    started: str | None = None
    finished: str | None = None
    error: str | None = None
    attempts: int = 0
    cost: CostRecord | None = field(default=None, metadata=OPTIONAL)
    result: StageResult | RawResult | None = field(default=None, metadata=OPTIONAL)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], stage: str = "") -> Self:
        """The entry of stage ``stage`` (its name picks the result's type; see :func:`parse_result`).

        Raises:
            RecordError: an entry field of the wrong type (a malformed result does not raise).
        """
        if not isinstance(data, Mapping):
            raise RecordError(f"expected an object, got {type(data).__name__}")
        record = super().from_dict({k: v for k, v in data.items() if k != "result"})
        if "result" not in data:
            return record
        if data["result"] is None:
            return replace(record, nulls=record.nulls | {"result"})
        return replace(record, result=parse_result(stage, data["result"]))


@dataclass(frozen=True, kw_only=True)
class CodeVersion(Record):
    """The speechtune code that ran (:func:`speechtune.track.code_version`)."""

    package: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None


@dataclass(frozen=True, kw_only=True)
class WorkflowRecord(Record):
    """The whole of ``state.json``: the run's identity, its stages and their costs.

    ``cost_total`` is the sum of the stages' costs (set on every save); ``cost_superseded`` the
    cost of stage runs that were reset (``--from-stage``) and run again, kept out of the total.
    """

    stages: Mapping[str, StageRecord] = field(default_factory=dict)
    run_uid: str | None = field(default=None, metadata=OPTIONAL)
    started: str | None = field(default=None, metadata=OPTIONAL)
    name: str | None = field(default=None, metadata=OPTIONAL)
    run_dir: str | None = field(default=None, metadata=OPTIONAL)
    config: str | None = field(default=None, metadata=OPTIONAL)
    config_hash: str | None = field(default=None, metadata=OPTIONAL)
    spec: Mapping[str, Any] | None = field(default=None, metadata=OPTIONAL)
    code_version: CodeVersion | None = field(default=None, metadata=OPTIONAL)
    metric: str | None = field(default=None, metadata=OPTIONAL)
    cost_model: CostModel | None = field(default=None, metadata=OPTIONAL)
    updated: str | None = field(default=None, metadata=OPTIONAL)
    cost_total: CostRecord | None = field(default=None, metadata=OPTIONAL)
    cost_superseded: CostRecord | None = field(default=None, metadata=OPTIONAL)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkflowRecord:
        """The record of a ``state.json`` object (any key may be missing).

        Raises:
            RecordError: a field of the wrong type (a malformed stage result does not raise).
        """
        if not isinstance(data, Mapping):
            raise RecordError(f"expected an object, got {type(data).__name__}")
        stages = data.get("stages", {})
        if not isinstance(stages, Mapping):
            raise RecordError(f"expected an object, got {type(stages).__name__}", "stages")
        parsed = {}
        for name, entry in stages.items():
            try:
                parsed[str(name)] = StageRecord.from_dict(entry, str(name))
            except RecordError as exc:
                raise exc.within(f"stages.{name}") from None
        return replace(
            cls.from_dict({k: v for k, v in data.items() if k != "stages"}), stages=parsed
        )

    def to_json(self) -> dict[str, Any]:
        """The ``state.json`` object (what :meth:`from_json` read, key for key)."""
        return self.to_dict()

    @property
    def metric_name(self) -> str:
        """The tuned metric (``wer`` when the state does not say)."""
        return self.metric or "wer"

    def stage(self, name: str) -> StageRecord | None:
        """The entry of stage ``name``; None when it never started."""
        return self.stages.get(name)

    def result_of(self, name: str, kind: type[R]) -> R | None:
        """Stage ``name``'s result when it is a ``kind`` (whatever the stage's status), else None."""
        entry = self.stages.get(name)
        return entry.result if entry is not None and isinstance(entry.result, kind) else None

    def with_stage(self, name: str, entry: StageRecord) -> WorkflowRecord:
        """A copy with stage ``name``'s entry set (a new stage goes last, as in the file)."""
        return replace(self, stages={**self.stages, name: entry})


class WorkflowState:
    """The state of one workflow run directory: its :class:`WorkflowRecord` and where it is saved.

    Args:
        run_dir: the workflow's run directory (``state.json`` lives there).

    Raises:
        ValueError: ``state.json`` is not valid JSON, or not a workflow state.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STATE_FILE
        self.record = WorkflowRecord()
        self._view: dict[str, Any] | None = None
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except ValueError as exc:
                raise ValueError(
                    f"{self.path} is not valid JSON ({exc}); move it away to start the workflow afresh"
                ) from exc
            try:
                self.record = WorkflowRecord.from_json(data)
            except RecordError as exc:
                raise ValueError(
                    f"{self.path} is not a workflow state ({exc}); move it away to start the workflow afresh"
                ) from exc

    @property
    def data(self) -> dict[str, Any]:
        """The state as its ``state.json`` dict, for scripts written against the file.

        The same dict is returned until the next :meth:`save`, which takes in any edits made to it.
        """
        if self._view is None:
            self._view = self.record.to_json()
        return self._view

    # -- persistence ----------------------------------------------------------------------------
    def update(self, **changes: Any) -> None:
        """Replace top-level fields of the record (not saved until :meth:`save`)."""
        self._take_in_edits()
        self.record = replace(self.record, **changes)

    def save(self) -> None:
        """Stamp the time and the total cost, and write the state atomically (temporary file, then rename)."""
        self._take_in_edits()
        rec = self.record
        costs = [s.cost for s in rec.stages.values() if s.cost is not None]
        currency = rec.cost_model.currency if rec.cost_model is not None else None
        self.record = rec = replace(
            rec, updated=now(), cost_total=sum_costs(costs, currency=currency)
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rec.to_json(), indent=2, default=str))
        os.replace(tmp, self.path)

    def _take_in_edits(self) -> None:
        if self._view is not None:
            self.record, self._view = WorkflowRecord.from_json(self._view), None

    # -- stages ---------------------------------------------------------------------------------
    def stage(self, name: str) -> StageRecord | None:
        """The entry of stage ``name`` (None when it never started)."""
        return self.record.stage(name)

    def result(self, name: str, kind: type[R]) -> R:
        """The result of a finished stage, which a later stage needs.

        Raises:
            RuntimeError: the stage has not finished, or its recorded result cannot be read as a ``kind``.
        """
        entry = self.record.stage(name)
        where = f"stage {STAGES.index(name) + 1} ({name})"
        if entry is None or entry.status != "done":
            raise RuntimeError(
                f"{where} has not finished in {self.run_dir}; run the workflow from it: --from-stage {name}"
            )
        result = entry.result
        if isinstance(result, kind):
            return result
        problem = result.problem if isinstance(result, RawResult) else "no result recorded"
        raise RuntimeError(
            f"{where} in {self.run_dir} has no usable result ({problem}); run the workflow from it: --from-stage {name}"
        )

    def is_done(self, name: str) -> bool:
        """Whether stage ``name`` finished (its result recorded)."""
        entry = self.record.stage(name)
        return entry is not None and entry.status == "done"

    def start(self, name: str) -> None:
        """Mark ``name`` running (keeping the cost of earlier, interrupted attempts)."""
        self._take_in_edits()
        entry = self.record.stage(name) or StageRecord(status="running")
        resumed = (
            entry.status in ("running", "interrupted", "failed") and entry.started is not None
        )
        entry = replace(
            entry,
            number=STAGES.index(name) + 1,
            status="running",
            started=entry.started if resumed else now(),
            finished=None,
            error=None,
            attempts=entry.attempts + 1,
        )
        self.record = self.record.with_stage(name, entry)
        self.save()

    def finish(
        self,
        name: str,
        status: str,
        cost: CostRecord,
        result: StageResult | None = None,
        error: str | None = None,
    ) -> None:
        """Record how an attempt of ``name`` ended; its cost adds to the earlier attempts'."""
        self._take_in_edits()
        entry = self.record.stage(name) or StageRecord(
            number=STAGES.index(name) + 1, status=status
        )
        total = sum_costs(
            [entry.cost, cost] if entry.cost is not None else [cost], currency=cost.currency
        )
        entry = replace(
            entry,
            cost=total,
            status=status,
            finished=now(),
            error=error,
            result=entry.result if result is None else result,
        )
        self.record = self.record.with_stage(name, entry)
        self.save()

    def reset_from(self, index: int) -> list[str]:
        """Forget stages ``index`` (0-based) and later: they run again. Returns their names."""
        self._take_in_edits()
        stages = self.record.stages
        dropped = [s for s in STAGES[index:] if s in stages]
        # Their compute was spent all the same: it stays on the books as superseded.
        spent = [c for c in (stages[s].cost for s in dropped) if c is not None]
        if spent:
            earlier = self.record.cost_superseded
            self.record = replace(
                self.record, cost_superseded=sum_costs(([earlier] if earlier else []) + spent)
            )
        self.record = replace(
            self.record, stages={k: v for k, v in stages.items() if k not in dropped}
        )
        self.save()
        return dropped
