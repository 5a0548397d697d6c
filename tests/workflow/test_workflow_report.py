"""The workflow report (report.md + report.html) rendered from realistic state.json dicts: a full
8-stage run, a partial run (stages 1-3, the third failed), escaping of hostile text, cost totals."""

from __future__ import annotations

import copy
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from speechtune.metrics import CostModel, estimate_cost, sum_costs
from speechtune.workflow import STAGES, write_workflow_report
from speechtune.workflow._report import render_html, render_markdown

MODEL = CostModel(
    grid_g_per_kwh=480.0, gpu_price_per_hour=2.5, cpu_price_per_hour=0.05, currency="USD"
)


def _cost(
    wall_s: float, cpu_h: float, gpu_h: float, gpu_kwh: float | None = None
) -> dict[str, Any]:
    return estimate_cost(
        MODEL, wall_s=wall_s, cpu_core_hours=cpu_h, gpu_hours=gpu_h, gpu_energy_kwh=gpu_kwh
    ).as_dict()


def _stage(
    number: int,
    result: dict[str, Any] | None,
    cost: dict[str, Any],
    status: str = "done",
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "number": number,
        "status": status,
        "started": "2026-11-26T06:40:00+00:00",
        "finished": "2026-11-26T07:10:00+00:00",
        "attempts": 1,
        "error": error,
        "cost": cost,
        "result": result,
    }


def _dataset(utts: int, hours: float, speakers: int, fp: str) -> dict[str, Any]:
    return {
        "utterances": utts,
        "hours": hours,
        "speakers": speakers,
        "groups": ["en-us", "en-gb-scotland"],
        "fingerprint": fp,
    }


def full_state() -> dict[str, Any]:
    """A finished 8-stage run where the challenger beat the champion and was promoted."""
    group = {"en-us": 0.181, "en-gb-scotland": 0.243}
    top_coarse = [
        {"trial": 7, "value": 0.2311, "params": {"optim.lr": 0.0021, "model.dropout": 0.1}},
        {"trial": 3, "value": 0.2398, "params": {"optim.lr": 0.0009, "model.dropout": 0.2}},
    ]
    stages = {
        "proxy": _stage(
            1,
            {
                "fraction": 0.5,
                "hours": None,
                "seed": 0,
                "train_full": _dataset(360, 0.41, 8, "a1b2c3d4e5f6a7b8c9d0"),
                "proxy": _dataset(180, 0.205, 8, "0f9e8d7c6b5a49382716"),
                "dev": _dataset(120, 0.14, 8, "deadbeefcafe00112233"),
                "manifests": {
                    "train_full": "/runs/wf/proxy/train_full.jsonl",
                    "proxy": "/runs/wf/proxy/proxy.jsonl",
                    "dev": "/runs/wf/proxy/dev.jsonl",
                },
            },
            _cost(12.0, 0.003, 0.0),
        ),
        "baseline": _stage(
            2,
            {
                "run_dir": "/runs/wf/baseline",
                "seed": 1,
                "value": 0.2874,
                "dev": {
                    "wer": 0.2874,
                    "cer": 0.1312,
                    "worst_group_wer": 0.3311,
                    "group_wer": {"en-us": 0.2437, "en-gb-scotland": 0.3311},
                },
            },
            _cost(300.0, 0.08, 0.0833, gpu_kwh=0.021),
        ),
        "coarse": _stage(
            3,
            {
                "run_dir": "/runs/wf/coarse",
                "study": "wf-coarse",
                "storage": "postgresql://tuner:hunter2@db:5432/optuna",
                "sampler": "random",
                "pruner": "none",
                "n_trials": 20,
                "n_complete": 17,
                "n_pruned": 0,
                "n_failed": 3,
                "best": top_coarse[0],
                "top": top_coarse,
            },
            _cost(5400.0, 1.6, 1.5, gpu_kwh=0.39),
        ),
        "fine": _stage(
            4,
            {
                "run_dir": "/runs/wf/fine",
                "study": "wf-fine",
                "storage": "sqlite:////runs/wf/fine/study.db",
                "sampler": "tpe",
                "pruner": "median",
                "n_trials": 30,
                "n_complete": 21,
                "n_pruned": 8,
                "n_failed": 1,
                "best": {
                    "trial": 12,
                    "value": 0.2176,
                    "params": {"optim.lr": 0.0018, "model.dropout": 0.08},
                },
                "top": [
                    {
                        "trial": 12,
                        "value": 0.2176,
                        "params": {"optim.lr": 0.0018, "model.dropout": 0.08},
                    }
                ],
                "narrowed": {
                    "optim.lr": {"before": "[1e-05, 0.01] log", "after": "[0.0007, 0.0025] log"},
                    "model.dropout": {"before": "[0.0, 0.5]", "after": "[0.05, 0.25]"},
                },
                "warm_started": 5,
            },
            _cost(7200.0, 2.1, 2.0, gpu_kwh=0.52),
        ),
        "validate": _stage(
            5,
            {
                "seeds": [1, 2, 3],
                "alpha": 0.05,
                "winner": "fine-12",
                "candidates": [
                    {
                        "name": "baseline",
                        "params": {},
                        "values": [0.2874, 0.2911, 0.2852],
                        "mean": 0.28790,
                        "std": 0.0030,
                    },
                    {
                        "name": "coarse-7",
                        "params": top_coarse[0]["params"],
                        "values": [0.2311, 0.2350, 0.2290],
                        "mean": 0.23170,
                        "std": 0.0030,
                    },
                    {
                        "name": "fine-12",
                        "params": {"optim.lr": 0.0018, "model.dropout": 0.08},
                        "values": [0.2176, 0.2210, 0.2151],
                        "mean": 0.21790,
                        "std": 0.0030,
                    },
                ],
                "test": {
                    "method": "Welch t-test, one-sided",
                    "statistic": 5.71,
                    "p_value": 0.0023,
                    "alpha": 0.05,
                    "significant": True,
                    "statement": "fine-12 beats coarse-7 by 1.38 pp over 3 seeds (p = 0.0023 < 0.05): the gain is larger than seed noise.",
                },
            },
            _cost(1800.0, 0.5, 0.75, gpu_kwh=0.2),
        ),
        "full": _stage(
            6,
            {
                "run_dir": "/runs/wf/full",
                "params": {"optim.lr": 0.0018, "model.dropout": 0.08},
                "seed": 1,
                "epochs": 25,
                "dev": {
                    "wer": 0.2012,
                    "cer": 0.0871,
                    "worst_group_wer": 0.2433,
                    "group_wer": {"en-us": 0.1601, "en-gb-scotland": 0.2433},
                },
                "value": 0.2012,
                "model": "/runs/wf/full/model.pt",
            },
            _cost(3600.0, 1.0, 1.0, gpu_kwh=0.28),
        ),
        "gate": _stage(
            7,
            {
                "golden": {
                    "source": "/data/golden.jsonl",
                    "utterances": 200,
                    "hours": 0.25,
                    "fingerprint": "feedface0123456789",
                },
                "gate_metric": "wer",
                "margin": 0.005,
                "challenger": {
                    "wer": 0.2105,
                    "cer": 0.0902,
                    "worst_group_wer": 0.243,
                    "worst_group": "en-gb-scotland",
                    "group_wer": group,
                },
                "champion": {
                    "version": "2",
                    "wer": 0.2231,
                    "cer": 0.0977,
                    "worst_group_wer": 0.2611,
                    "worst_group": "en-gb-scotland",
                    "group_wer": {"en-us": 0.1902, "en-gb-scotland": 0.2611},
                },
                "model_name": "speechtune-asr",
                "tracking_uri": "sqlite:///runs/registry/mlflow.db",
                "registered_version": "3",
                "promoted": True,
                "decision": "Promoted: the challenger's golden WER 21.05% beats the champion's 22.31% by 1.26 pp, more than the 0.50 pp margin.",
            },
            _cost(40.0, 0.011, 0.011, gpu_kwh=0.003),
        ),
        "export": _stage(
            8,
            {"format": "torchscript", "path": "/runs/wf/export/model.ts", "bytes": 4_812_345},
            _cost(5.0, 0.0014, 0.0),
        ),
    }
    return {
        "name": "synthetic-workflow",
        "run_dir": "/runs/wf",
        "config_hash": "ab12cd34ef56ab78",
        "started": "2026-11-26T06:40:00+00:00",
        "updated": "2026-11-26T12:02:11+00:00",
        "code_version": {
            "package": "0.1.0",
            "git_commit": "e5edd7c0123456789abcdef0123456789abcdef0",
            "git_dirty": True,
        },
        "metric": "wer",
        "cost_model": {
            "grid_g_per_kwh": 480.0,
            "gpu_price_per_hour": 2.5,
            "cpu_price_per_hour": 0.05,
            "currency": "USD",
            "gpu_tdp_w": 300.0,
            "cpu_tdp_w_per_core": 10.0,
        },
        "stages": stages,
        "cost_total": sum_costs(s["cost"] for s in stages.values()).as_dict(),
    }


def partial_state() -> dict[str, Any]:
    """Stages 1-2 done, stage 3 failed; 4-8 never started."""
    state = full_state()
    for name in STAGES[3:]:
        del state["stages"][name]
    coarse = state["stages"]["coarse"]
    coarse.update(
        status="failed",
        attempts=2,
        result=None,
        error="RuntimeError: all 20 trials failed\n  first: CUDA out of memory <allocating 2.1 GiB>",
    )
    state["cost_total"] = sum_costs(s["cost"] for s in state["stages"].values()).as_dict()
    return state


class _TagChecker(HTMLParser):
    """Collect the tags of a page and check that they nest."""

    VOID = {"meta", "br", "hr", "img", "input", "link"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [k for k, _ in attrs]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [k for k, _ in attrs]

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()


def _check_html(page: str) -> _TagChecker:
    checker = _TagChecker()
    checker.feed(page)
    checker.close()
    assert not checker.errors, checker.errors[:5]
    assert not checker.stack, checker.stack
    # Self-contained and inert: no script, nothing loaded from anywhere, no event handlers.
    assert (
        "script" not in checker.tags
        and "link" not in checker.tags
        and "iframe" not in checker.tags
    )
    assert not [a for a in checker.attrs if a in ("src", "href") or a.startswith("on")]
    return checker


def _md_table(md: str, *columns: str) -> dict[str, list[str]]:
    """The first Markdown table whose header has ``columns``: its rows by first cell (cells stripped)."""
    for block in md.split("\n\n"):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if not lines:
            continue
        cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
        if all(c in cells[0] for c in columns):
            return {row[0]: row for row in cells[2:]}
    raise AssertionError(f"no table with columns {columns}")


def _md_tables_are_rectangular(md: str) -> None:
    """Every GFM table row has as many cells as its header (an unescaped | would add one)."""
    for block in md.split("\n\n"):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if not lines:
            continue
        counts = {len(re.findall(r"(?<!\\)\|", line)) for line in lines}
        assert len(counts) == 1, block


# ---------------------------------------------------------------------------------------------
def test_full_run_both_formats_carry_the_key_facts() -> None:
    state = full_state()
    md, page = render_markdown(state), render_html(state)
    _check_html(page)
    _md_tables_are_rectangular(md)
    for text in (md, page):
        assert "synthetic-workflow" in text and "0.1.0" in text and "e5edd7c01234" in text
        assert "uncommitted changes" in text
        # Promotion, prominently: in the summary and in the gate section.
        assert text.count("Promoted: YES.") == 2
        assert "Promoted: NO" not in text
        assert "beats the champion&#x27;s 22.31%" in text or "beats the champion's 22.31%" in text
        # The WER path, each value as a percentage with its split.
        for value in ("28.74%", "23.11%", "21.76%", "21.79%", "20.12%", "21.05%"):
            assert value in text, value
        assert "21.79% ± 0.30 pp" in text  # the validation winner, mean ± std
        for split in ("proxy dev", "full dev", "golden"):
            assert split in text
        assert "-6.95 pp" in text  # the validated winner vs the baseline on the same split
        assert "not run" not in text
        # Per-stage facts.
        assert "20 trials: 17 complete, 0 pruned, 3 failed" in text
        assert "30 trials: 21 complete, 8 pruned, 1 failed" in text
        assert "[0.0007, 0.0025] log" in text and "[1e-05, 0.01] log" in text
        assert "p = 0.0023 &lt; 0.05" in text or "p = 0.0023 < 0.05" in text  # the test statement
        assert "hunter2" not in text and "tuner:***@db" in text  # storage password masked
        assert "-1.26 pp" in text  # challenger - champion on golden WER
        assert "4.8 MB (4,812,345 bytes)" in text and "torchscript" in text
        assert "480 g CO2e/kWh" in text and "$2.50 per GPU-hour" in text
        assert "GPU energy measured by NVML" in text or "mixed" in text
    # The winner is marked in the validation table (and only the winner).
    assert "| **fine-12** (winner)" in md and md.count("(winner)") == 1
    assert "<b>fine-12</b> (winner)" in page
    # The gate's verdict is a prominent call-out: a block quote / a boxed paragraph.
    assert "> **Promoted: YES.**" in md
    assert '<p class="ok"><b>Promoted: YES.</b>' in page
    # The chart: inline SVG, one bar per value of the WER path.
    assert page.count("<svg") == 1 and page.count("<rect") == 6 + 3  # 6 bars + 3 legend swatches


def test_totals_add_up_to_the_per_stage_sum() -> None:
    state = full_state()
    md, page = render_markdown(state), render_html(state)
    costs = [s["cost"] for s in state["stages"].values()]
    co2 = sum(c["co2e_g"] for c in costs)
    money = sum(c["money"] for c in costs)
    gpu_h = sum(c["gpu_hours"] for c in costs)
    assert 10 < co2 < 1000  # shown in whole grams
    total_row = _md_table(md, "stage", "share of CO2e")["**total**"]
    assert total_row[1] == f"**{gpu_h:.2f}**"
    assert total_row[6] == f"**{co2:.0f} g**"
    assert total_row[7] == "**100%**"
    assert total_row[8] == f"**${money:.2f}**"
    # Each stage's row shows that stage's figures, and the rows add up to the total (to rounding).
    table = _md_table(md, "stage", "share of CO2e")
    for column, key in ((1, "gpu_hours"), (2, "cpu_core_hours"), (6, "co2e_g")):
        shown = [float(table[name][column].split()[0]) for name in STAGES]
        assert shown == pytest.approx(
            [s["cost"][key] for s in state["stages"].values()],
            abs=0.5 if key == "co2e_g" else 0.005,
        )
        total = float(total_row[column].strip("*").split()[0])
        assert sum(shown) == pytest.approx(
            total, abs=len(shown) * (0.5 if key == "co2e_g" else 0.005)
        )
    # The overview table's total row shows the same sum, and so does the HTML.
    overview_total = _md_table(md, "#", "stage", "status")[""]
    assert overview_total[7] == f"**{co2:.0f} g**" and overview_total[8] == f"**${money:.2f}**"
    assert f"<b>{co2:.0f} g</b>" in page and f"<b>${money:.2f}</b>" in page
    # Compute spent on stage runs that were reset and rerun is reported beside the totals, not in them.
    state["cost_superseded"] = state["stages"]["coarse"]["cost"]
    md = render_markdown(state)
    assert (
        "Not in the totals: 1.50 GPU-h, 1.60 CPU core-h, 0.41 kWh (nvml), 195 g CO2e, $3.83" in md
    )
    assert _md_table(md, "stage", "share of CO2e")["**total**"] == total_row
    # A stored cost_total that disagrees with the stages is flagged, not silently shown.
    state["cost_total"]["co2e_g"] = co2 + 500
    assert "differs from the sum of the stages" in render_markdown(state)


def test_partial_run_shows_not_run_and_the_failure() -> None:
    state = partial_state()
    md, page = render_markdown(state), render_html(state)
    _check_html(page)
    _md_tables_are_rectangular(md)
    for text in (md, page):
        assert "failed (2 attempts)" in text
        assert "RuntimeError: all 20 trials failed" in text
        assert "Not gated yet" in text and "Promoted: YES" not in text
        # Stages 4-8 in the overview and in their own sections, plus the WER path rows of 4-6.
        assert text.count("not run") >= 5 + 5 + 3
        assert "28.74%" in text  # the baseline still shows
        assert "2 of 8" in text
    # Stage 3's row in the stage table: failed, with its cost.
    overview = _md_table(md, "#", "stage", "status")
    assert overview["3"][2] == "failed (2 attempts)" and overview["3"][7].endswith(" g")
    assert [overview[str(n)][2] for n in range(4, 9)] == ["not run"] * 5
    assert overview["8"][7] == "—"
    # The coarse best is not on the path: the stage failed, and the path says so.
    path = _md_table(md, "step", "data split")
    assert path["Coarse best"][1] == "failed" and path["Fine best"][1] == "not run"
    # The error's second line is kept verbatim in the error block, escaped in HTML.
    assert "CUDA out of memory <allocating 2.1 GiB>" in md
    assert "CUDA out of memory &lt;allocating 2.1 GiB&gt;" in page
    # The summary repeats the first line of the error, as an error call-out.
    assert "> **Stage 3 (coarse) failed:** RuntimeError: all 20 trials failed" in md


def test_not_promoted_and_no_champion() -> None:
    state = full_state()
    gate = state["stages"]["gate"]["result"]
    gate.update(
        promoted=False,
        decision="Not promoted: 0.20 pp better than the champion, less than the 0.50 pp margin.",
    )
    md = render_markdown(state)
    assert md.count("Promoted: NO.") == 2 and "The champion (version 2) stays." in md
    gate.update(champion=None, promoted=True)
    md, page = render_markdown(state), render_html(state)
    _check_html(page)
    assert "first model registered under this name" in md and "no champion" in md


def test_hostile_text_is_escaped() -> None:
    evil = '<script>alert("x")</script>'
    state = full_state()
    state["name"] = evil
    state["stages"]["fine"]["result"]["best"]["params"] = {evil: evil, "a|b": "c|d"}
    state["stages"]["validate"]["result"]["candidates"][2]["name"] = evil
    state["stages"]["validate"]["result"]["winner"] = evil
    state["stages"]["full"]["result"]["dev"]["group_wer"] = {evil: 0.3, "x|y": 0.2}
    state["stages"]["export"]["result"]["path"] = "/tmp/<img src=x onerror=alert(1)>.ts"
    state["stages"]["gate"]["result"]["decision"] = evil
    page = render_html(state)
    checker = _check_html(page)
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "img" not in checker.tags
    md = render_markdown(state)
    _md_tables_are_rectangular(md)  # a | in a name does not break a table
    # Raw HTML in rendered Markdown is inert too: escaped as text, or inside a code span.
    assert not re.search(r"(?<!\\)<(script|img)", re.sub(r"`[^`]*`", "", md))
    assert "\\<script>" in md


def test_stage_result_that_cannot_be_rendered_does_not_break_the_report() -> None:
    state = full_state()
    state["stages"]["validate"]["result"]["candidates"] = [{"name": "x", "values": "not a list"}]
    state["stages"]["export"]["result"] = {"format": "none"}
    md = render_markdown(state)
    assert "Seed validation" in md and "Export" in md and "Nothing exported" in md


def test_write_workflow_report_writes_both_files(tmp_path: Path) -> None:
    state = full_state()
    out = tmp_path / "reports" / "wf"
    html_path, md_path = write_workflow_report(state, out)
    assert (html_path, md_path) == (out / "report.html", out / "report.md")
    assert html_path.read_text(encoding="utf-8") == render_html(state)
    assert md_path.read_text(encoding="utf-8") == render_markdown(state)
    assert sorted(p.name for p in out.iterdir()) == [
        "report.html",
        "report.md",
    ]  # no temporary file left
    # Rewritten in place after the next stage.
    later = copy.deepcopy(partial_state())
    write_workflow_report(later, out)
    assert "Not gated yet" in md_path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("grams", "shown"),
    [
        (0.0042, "0.0042 g"),
        (4.26, "4.3 g"),
        (480.4, "480 g"),
        (1234.5, "1.23 kg"),
        (98_765.0, "98.77 kg"),
    ],
)
def test_co2_shown_in_g_or_kg(grams: float, shown: str) -> None:
    state = {
        "name": "w",
        "stages": {"proxy": _stage(1, None, {**_cost(1.0, 0.0, 0.0), "co2e_g": grams})},
    }
    assert shown in render_markdown(state)


def test_stage_order_matches_the_workflow_config() -> None:
    from speechtune.workflow import STAGES as CONFIG_STAGES

    assert STAGES == CONFIG_STAGES
