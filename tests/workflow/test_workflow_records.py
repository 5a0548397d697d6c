"""The typed records of the workflow's state.json and the report templates' escaping.

The state files under tests/workflow/fixtures were written by real workflow runs before the records
existed (``tests/test_workflow.py``'s module run: a finished run with a rerun from stage 6, a run
whose first stage failed, and a run with stages hand-edited to force the full-data baseline): an
old run directory must still load, resume, and be written back as it was.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from speechtune.metrics import CostRecord
from speechtune.workflow import WorkflowRecord, WorkflowState
from speechtune.workflow._config import STAGES
from speechtune.workflow._record import RawResult, RecordError
from speechtune.workflow._report import (
    _HTML_ENV,
    render_html,
    render_markdown,
    wer_path,
)
from speechtune.workflow._results import (
    ExportResult,
    FullResult,
    GateResult,
    Metrics,
    SearchResult,
    SeedTestResult,
    ValidateResult,
    parse_result,
)
from speechtune.workflow._state import StageRecord
from tests.workflow.test_workflow_report import (
    _check_html,
    _md_tables_are_rectangular,
    full_state,
)

DATA = Path(__file__).parent / "fixtures"


def _load(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


# ---------------------------------------------------------------------------------------------
# state.json <-> records
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["state_finished.json", "state_failed.json"])
def test_real_state_round_trips_byte_for_byte(name: str) -> None:
    data = _load(name)
    record = WorkflowRecord.from_json(data)
    assert record.to_json() == data
    # Key order too: a resumed run rewrites the file as the old code wrote it.
    assert json.dumps(record.to_json(), indent=2) == json.dumps(data, indent=2)


def test_real_state_reads_as_typed_records() -> None:
    record = WorkflowRecord.from_json(_load("state_finished.json"))
    assert [record.stages[s].status for s in STAGES] == ["done"] * 8
    assert all(not isinstance(s.result, RawResult) for s in record.stages.values())
    fine = record.result_of("fine", SearchResult)
    assert (
        fine is not None
        and fine.warm_started is not None
        and fine.narrowed
        and fine.multi_fidelity is False
    )
    coarse = record.result_of("coarse", SearchResult)
    assert coarse is not None and coarse.narrowed is None and "narrowed" not in coarse.to_dict()
    validate = record.result_of("validate", ValidateResult)
    assert (
        validate is not None
        and validate.winner_candidate() is not None
        and isinstance(validate.test, SeedTestResult)
    )
    gate = record.result_of("gate", GateResult)
    assert gate is not None and gate.champion is not None and gate.champion.version == "1"
    assert gate.challenger.value(gate.gate_metric) is not None
    export = record.result_of("export", ExportResult)
    assert export is not None and export.size > 0 and export.to_dict()["bytes"] == export.size
    assert isinstance(record.cost_total, CostRecord) and isinstance(
        record.cost_superseded, CostRecord
    )
    assert record.cost_model is not None and record.code_version is not None
    # The failed run: the stage's cost and error are recorded, and no result.
    failed = WorkflowRecord.from_json(_load("state_failed.json")).stages["proxy"]
    assert failed.status == "failed" and failed.result is None and "golden" in (failed.error or "")


def test_hand_edited_stages_load_and_the_real_ones_round_trip() -> None:
    data = _load("state_baseline_kept.json")
    record = WorkflowRecord.from_json(data)
    out = record.to_json()
    # The full stage ran for real (the tuned winner did worse, the baseline went on): exact.
    assert (
        out["stages"]["full"] == data["stages"]["full"]
        and out["stages"]["proxy"] == data["stages"]["proxy"]
    )
    full = record.result_of("full", FullResult)
    assert (
        full is not None
        and full.tuned is not None
        and full.baseline is not None
        and full.stage_warnings()
    )
    # The stages the test wrote by hand ({} results) stay as they were: no typed result, kept raw.
    for name in ("baseline", "coarse", "fine"):
        result = record.stages[name].result
        assert (
            isinstance(result, RawResult)
            and result.data == {}
            and out["stages"][name]["result"] == {}
        )
    # A validation result with only a winner and its params: the missing fields take their defaults.
    validate = record.result_of("validate", ValidateResult)
    assert (
        validate is not None
        and validate.winner == "coarse-0"
        and validate.candidates[0].values == ()
    )


def test_state_missing_optional_fields_loads() -> None:
    data = {
        "stages": {
            "proxy": {"status": "done"},
            "baseline": {"status": "running", "number": 2},
            "full": {
                "status": "done",
                "result": {"run_dir": "/r/full", "seed": 1, "model": "/r/full/model.pt"},
            },
            "export": {"status": "done", "result": {"format": "none"}},
        }
    }
    record = WorkflowRecord.from_json(data)
    assert record.name is None and record.cost_total is None and record.metric_name == "wer"
    proxy = record.stages["proxy"]
    assert (
        proxy.cost is None
        and proxy.result is None
        and proxy.attempts == 0
        and proxy.number is None
    )
    full = record.result_of("full", FullResult)
    assert (
        full is not None and full.dev == Metrics() and full.value is None and full.baseline is None
    )
    assert record.result_of("export", ExportResult) == ExportResult(format="none")
    # Optional keys stay absent when written back; the top level writes nothing it does not have.
    out = record.to_json()
    assert (
        list(out) == ["stages"]
        and "cost" not in out["stages"]["proxy"]
        and "result" not in out["stages"]["proxy"]
    )
    assert (
        "baseline" not in out["stages"]["full"]["result"]
        and "registry_uri" not in out["stages"]["export"]["result"]
    )
    # And the report renders it.
    assert "Not gated yet" in render_markdown(record)
    _check_html(render_html(data))


def test_unknown_keys_and_explicit_nulls_survive_a_rewrite() -> None:
    data = _load("state_finished.json")
    data["future_field"] = {"x": [1, 2]}
    data["stages"]["gate"]["result"]["champion"]["new_metric"] = 0.5
    data["stages"]["full"]["result"]["dev"]["dev_loss"] = (
        None  # a NaN loss, as _jsonable stores it
    )
    data["stages"]["fine"]["result"]["narrowed"] = None
    out = WorkflowRecord.from_json(data).to_json()
    assert out == data
    gate = WorkflowRecord.from_json(data).result_of("gate", GateResult)
    assert (
        gate is not None and gate.champion is not None and gate.champion.value("new_metric") == 0.5
    )


def test_a_malformed_result_is_kept_raw_and_named() -> None:
    data = _load("state_finished.json")
    data["stages"]["validate"]["result"]["candidates"][0]["values"] = "not a list"
    record = WorkflowRecord.from_json(data)
    result = record.stages["validate"].result
    assert (
        isinstance(result, RawResult)
        and result.problem == "candidates[0].values: expected a list, got str"
    )
    assert record.to_json() == data
    assert record.result_of("validate", ValidateResult) is None
    md = render_markdown(record)
    assert "could not be read (candidates[0].values: expected a list, got str)" in md
    # A field of the stage entry itself of the wrong type is refused, with where it is.
    data["stages"]["fine"]["attempts"] = "two"
    with pytest.raises(RecordError, match=r"stages\.fine\.attempts: expected int, got str"):
        WorkflowRecord.from_json(data)


def test_parse_result_of_unknown_or_empty() -> None:
    assert parse_result("extra", {"a": 1}) == RawResult(
        {"a": 1}, "no result type for stage 'extra'"
    )
    assert parse_result("gate", {}).problem == "empty"  # type: ignore[union-attr]
    assert isinstance(parse_result("gate", {"golden": None}), RawResult)


# ---------------------------------------------------------------------------------------------
# WorkflowState: the code paths that write state.json
# ---------------------------------------------------------------------------------------------
def test_an_old_run_directory_resumes(tmp_path: Path) -> None:
    data = _load("state_finished.json")
    (tmp_path / "state.json").write_text(json.dumps(data, indent=2))
    state = WorkflowState(tmp_path)
    assert state.is_done("export") and state.result("full", FullResult).model.endswith("model.pt")
    state.save()
    again = json.loads((tmp_path / "state.json").read_text())
    assert again.pop("updated") >= data.pop("updated")
    assert again == data  # cost_total recomputed from the stages: the same sum
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary file left


def test_start_and_finish_write_the_stage_schema(tmp_path: Path) -> None:
    real = _load("state_finished.json")
    state = WorkflowState(tmp_path)
    state.update(cost_model=WorkflowRecord.from_json(real).cost_model)
    for name in STAGES:
        state.start(name)
        entry = json.loads((tmp_path / "state.json").read_text())["stages"][name]
        assert list(entry) == ["number", "status", "started", "finished", "error", "attempts"]
        assert (entry["status"], entry["attempts"], entry["number"]) == (
            "running",
            1,
            STAGES.index(name) + 1,
        )
        result = parse_result(name, real["stages"][name]["result"])
        assert not isinstance(result, RawResult)
        cost = CostRecord.from_dict(real["stages"][name]["cost"])
        state.finish(name, "done", cost, result=result)
    written = json.loads((tmp_path / "state.json").read_text())
    for name in STAGES:
        entry, old = written["stages"][name], real["stages"][name]
        assert list(entry) == list(old)
        assert entry["result"] == old["result"] and entry["cost"] == old["cost"]
    assert written["cost_total"] == pytest.approx(real["cost_total"])


def test_interrupted_attempts_add_up_and_reset_keeps_their_cost(tmp_path: Path) -> None:
    state = WorkflowState(tmp_path)
    one = CostRecord(wall_s=10.0, cpu_core_hours=0.5, co2e_g=2.0)
    state.start("proxy")
    started = state.stage("proxy").started  # type: ignore[union-attr]
    state.finish("proxy", "interrupted", one, error="interrupted (Ctrl-C)")
    state.start("proxy")
    entry = state.stage("proxy")
    assert (
        entry is not None
        and entry.attempts == 2
        and entry.started == started
        and entry.error is None
    )
    state.finish("proxy", "failed", one, error="boom")
    with pytest.raises(RuntimeError, match="--from-stage proxy"):
        state.result("proxy", FullResult)
    entry = state.stage("proxy")
    assert entry is not None and entry.cost is not None and entry.cost.wall_s == 20.0
    assert state.reset_from(0) == ["proxy"]
    assert state.record.stages == {} and state.record.cost_superseded is not None
    assert state.record.cost_superseded.co2e_g == 4.0
    assert json.loads((tmp_path / "state.json").read_text())["cost_superseded"]["wall_s"] == 20.0


def test_a_done_stage_without_a_usable_result_says_how_to_redo_it(tmp_path: Path) -> None:
    state = WorkflowState(tmp_path)
    state.record = state.record.with_stage(
        "coarse", StageRecord(status="done", result=RawResult({}, "empty"))
    )
    with pytest.raises(RuntimeError, match=r"no usable result \(empty\).*--from-stage coarse"):
        state.result("coarse", SearchResult)


def test_edits_to_the_data_view_are_saved(tmp_path: Path) -> None:
    state = WorkflowState(tmp_path)
    state.data["stages"]["baseline"] = {
        "number": 2,
        "status": "done",
        "result": {"run_dir": "/r/b"},
    }
    assert state.data is state.data  # one dict until the next save
    state.save()
    assert state.is_done("baseline")
    assert WorkflowState(tmp_path).stage("baseline") == state.stage("baseline")


def test_a_state_file_that_is_not_a_state_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"stages": []}')
    with pytest.raises(ValueError, match="is not a workflow state"):
        WorkflowState(tmp_path)
    (tmp_path / "state.json").write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        WorkflowState(tmp_path)


def test_records_are_frozen_and_updated_by_copy() -> None:
    record = WorkflowRecord.from_json(_load("state_finished.json"))
    with pytest.raises(AttributeError):
        record.name = "x"  # type: ignore[misc]
    renamed = replace(record, name="x")
    assert renamed.name == "x" and record.name != "x" and renamed.stages is record.stages


def test_wer_path_reads_records_and_dicts() -> None:
    data = _load("state_finished.json")
    points = wer_path(data)
    assert points == wer_path(WorkflowRecord.from_json(data))
    assert [p.short for p in points][-1] == "gate" and all(p.value is not None for p in points)


# ---------------------------------------------------------------------------------------------
# the templates escape
# ---------------------------------------------------------------------------------------------
EVIL = '<script>alert("x")</script>'


def _hostile_state() -> dict[str, Any]:
    state = full_state()
    stages = state["stages"]
    state["run_dir"] = f"/runs/{EVIL}"
    state["config_hash"] = "`a|b`"
    state["code_version"]["git_commit"] = EVIL
    stages["coarse"]["result"]["study"] = EVIL
    stages["coarse"]["result"]["warnings"] = [f"weak proxy {EVIL}"]
    stages["coarse"]["error"] = f"Traceback\n{EVIL}\n```\nend"
    stages["fine"]["result"]["narrowed"]["optim.lr"]["after"] = EVIL
    stages["validate"]["result"]["test"]["statement"] = EVIL
    stages["validate"]["result"]["test"]["method"] = "*bold* _it_ [link](http://x)"
    stages["gate"]["result"]["golden"]["source"] = EVIL
    stages["gate"]["result"]["model_name"] = EVIL
    stages["gate"]["result"]["champion"]["version"] = EVIL
    stages["gate"]["result"]["challenger"]["worst_group"] = EVIL
    stages["proxy"]["result"]["train_full"]["groups"] = [EVIL, "x|y"]
    stages[EVIL] = {"number": 9, "status": "failed", "error": EVIL, "result": {EVIL: EVIL}}
    return state


def test_html_template_autoescapes_every_text() -> None:
    assert _HTML_ENV.autoescape is True
    page = render_html(_hostile_state())
    checker = _check_html(page)
    assert "<script" not in page and "script" not in checker.tags
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") >= 15
    # The chart's text is escaped too, and the page stays one inline SVG without script or links.
    assert page.count("<svg") == 1 and "javascript" not in page.lower()


def test_markdown_template_escapes_every_text() -> None:
    md = render_markdown(_hostile_state())
    _md_tables_are_rectangular(md)
    outside_code = re.sub(r"`[^`\n]*`", "", re.sub(r"(?s)(`{3,})text\n.*?\n\1", "", md))
    assert not re.search(r"(?<!\\)<script", outside_code)
    assert "\\*bold\\* \\_it\\_ [link]\\(http://x)" in md
    # The error block's fence is longer than any backtick run inside it.
    assert "````text\nTraceback\n" in md and "\n```\nend\n````" in md
    # The unknown stage: escaped heading, its raw values verbatim in a fenced block.
    assert '## 9. \\<script>alert("x")\\</script> (\\<script>alert("x")\\</script>)' in md


def test_rendering_does_not_change_the_record() -> None:
    state = full_state()
    before = copy.deepcopy(state)
    record = WorkflowRecord.from_json(state)
    render_html(record), render_markdown(state)
    assert state == before and record.to_json() == WorkflowRecord.from_json(before).to_json()
