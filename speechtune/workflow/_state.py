"""``state.json``: what each stage of a workflow run has done, so that a rerun resumes.

The file is rewritten atomically after every change (a crash never leaves half a state). A
stage is ``done`` only once its result is recorded; a stage that was ``running`` when the
process died is picked up again, and the stage itself continues its own partial work (the
studies resume, trainings continue from ``last.pt``).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from speechtune.metrics import CostRecord, sum_costs
from speechtune.workflow._config import STAGES

STATE_FILE = "state.json"


def now() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class WorkflowState:
    """The state of one workflow run directory.

    Args:
        run_dir: the workflow's run directory (``state.json`` lives there).
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STATE_FILE
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except ValueError as exc:
                raise ValueError(f"{self.path} is not valid JSON ({exc}); move it away to start the workflow afresh") from exc
        self.data.setdefault("stages", {})

    # -- persistence ----------------------------------------------------------------------------
    def save(self) -> None:
        """Write the state atomically (temporary file, then rename)."""
        self.data["updated"] = now()
        self.data["cost_total"] = sum_costs(
            [s["cost"] for s in self.data["stages"].values() if s.get("cost")],
            currency=self.data.get("cost_model", {}).get("currency"),
        ).as_dict()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)

    # -- stages ---------------------------------------------------------------------------------
    def stage(self, name: str) -> dict[str, Any]:
        """The record of stage ``name`` (empty when it never started)."""
        return self.data["stages"].get(name, {})

    def result(self, name: str) -> dict[str, Any]:
        """The result of a finished stage.

        Raises:
            RuntimeError: the stage has not finished (a later stage needs it).
        """
        rec = self.stage(name)
        if rec.get("status") != "done":
            raise RuntimeError(
                f"stage {STAGES.index(name) + 1} ({name}) has not finished in {self.run_dir}; "
                f"run the workflow from it: --from-stage {name}"
            )
        return rec["result"]

    def is_done(self, name: str) -> bool:
        return self.stage(name).get("status") == "done"

    def start(self, name: str) -> None:
        """Mark ``name`` running (keeping the cost of earlier, interrupted attempts)."""
        rec = self.data["stages"].setdefault(name, {})
        rec.update(
            number=STAGES.index(name) + 1,
            status="running",
            started=rec.get("started") if rec.get("status") in ("running", "interrupted", "failed") else now(),
            finished=None,
            error=None,
            attempts=int(rec.get("attempts", 0)) + 1,
        )
        self.save()

    def finish(self, name: str, status: str, cost: CostRecord, result: dict[str, Any] | None = None, error: str | None = None) -> None:
        """Record how an attempt of ``name`` ended; its cost adds to the earlier attempts'."""
        rec = self.data["stages"].setdefault(name, {"number": STAGES.index(name) + 1})
        previous = rec.get("cost")
        rec["cost"] = sum_costs([previous, cost.as_dict()] if previous else [cost.as_dict()], currency=cost.currency).as_dict()
        rec.update(status=status, finished=now(), error=error)
        if result is not None:
            rec["result"] = result
        self.save()

    def reset_from(self, index: int) -> list[str]:
        """Forget stages ``index`` (0-based) and later: they run again. Returns their names."""
        dropped = [s for s in STAGES[index:] if s in self.data["stages"]]
        # Their compute was spent all the same: it stays on the books as superseded.
        spent = [self.data["stages"][s]["cost"] for s in dropped if self.data["stages"][s].get("cost")]
        if spent:
            earlier = self.data.get("cost_superseded")
            self.data["cost_superseded"] = sum_costs(([earlier] if earlier else []) + spent).as_dict()
        for s in dropped:
            del self.data["stages"][s]
        self.save()
        return dropped
