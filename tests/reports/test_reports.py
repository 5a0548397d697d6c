"""Reports of a study read from real SQLite storage: trials.csv, best.yaml, report.html, PNGs."""

from __future__ import annotations

import csv
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import plotly.offline
import pytest
import yaml

from speechtune.config import (
    ConfigError,
    config_from_dict,
    load_config,
    merge,
    unflatten,
)
from speechtune.reports import build_report, report_command, write_best_yaml
from speechtune.tuning.study import load_study, resolve_storage
from tests.helpers.reports import (
    BASE_RECIPE,
    FAILED,
    PRUNED,
    SEEDS,
    make_run_dir,
    make_study,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SINGLE_PLOTS = ["history", "importance", "parallel", "learning-curves", "group-wer", "seeds"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two run dirs (single- and two-objective), each with its report rebuilt once."""
    root = tmp_path_factory.mktemp("runs")
    out = {
        "single": make_run_dir(root, "single"),
        "multi": make_run_dir(root, "multi", multi=True),
    }
    for run_dir in out.values():
        report_command(run_dir)
    return out


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_trials_csv_has_one_row_per_trial_with_records(runs: dict[str, Path]) -> None:
    rows = _csv_rows(runs["single"] / "trials.csv")
    assert [int(r["number"]) for r in rows] == list(range(12))
    for key in [
        "number",
        "state",
        "status",
        "reason",
        "wer",
        "duration_s",
        "objective_std",
        "config.optim.lr",
        "config.model.num_layers",
        "config.model.dropout",
        "config.schedule.warmup_steps",
        "metrics.wer",
        "metrics.worst_group_wer",
    ]:
        assert key in rows[0], key
    pruned = [int(r["number"]) for r in rows if r["state"] == "PRUNED"]
    assert pruned == sorted(PRUNED)
    assert all(
        rows[n]["reason"] == "pruned-by-median" and rows[n]["status"] == "stopped" for n in pruned
    )
    (failed,) = [r for r in rows if r["state"] == "FAIL"]
    assert (
        int(failed["number"]) in FAILED and failed["status"] == "diverged" and failed["wer"] == ""
    )
    # The conditional key is blank exactly where the encoder is not a conformer.
    for row in rows:
        assert (row["config.model.conv_kernel"] != "") == (
            row["config.model.encoder"] == "conformer"
        )
    multi_rows = _csv_rows(runs["multi"] / "trials.csv")
    assert "latency_ms_per_audio_s" in multi_rows[0] and len(multi_rows) == 12


def test_best_yaml_is_the_complete_recipe_of_the_best_trial(runs: dict[str, Path]) -> None:
    study = load_study(runs["single"])
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value)
    path = runs["single"] / "best.yaml"
    text = path.read_text()
    assert f"trial {best.number}" in text.splitlines()[0] and "'single'" in text.splitlines()[0]
    loaded = load_config(path)
    expected = merge(BASE_RECIPE, unflatten(best.user_attrs["config"]))
    expected["seed"] = SEEDS[0]
    assert loaded == config_from_dict(expected)
    assert loaded.optim.lr == pytest.approx(best.params["optim.lr"])


def test_best_yaml_of_a_multi_objective_study_picks_the_pareto_trial(
    runs: dict[str, Path],
) -> None:
    study = load_study(runs["multi"])
    front = study.best_trials
    assert len(front) >= 2, "the fixture should have a real trade-off"
    chosen = min(front, key=lambda t: t.values[0])
    header = [
        line
        for line in (runs["multi"] / "best.yaml").read_text().splitlines()
        if line.startswith("#")
    ]
    assert f"trial {chosen.number}" in header[0]
    assert "Pareto" in " ".join(header)
    assert "mean over 2 seeds" in " ".join(header)  # seed_values holds objective vectors here
    assert (
        load_config(runs["multi"] / "best.yaml").model.num_layers
        == chosen.params["model.num_layers"]
    )


def test_best_yaml_without_a_recipe_is_the_flat_config_and_bad_recipes_are_refused(
    tmp_path: Path,
) -> None:
    study = make_study(f"sqlite:///{tmp_path / 's.db'}", "cmd", n_trials=3, recipe=False)
    path = write_best_yaml(study, tmp_path / "best.yaml")
    flat = yaml.safe_load(path.read_text())
    assert flat == study.best_trial.user_attrs["config"]
    with pytest.raises(ConfigError, match="train.epochs"):
        write_best_yaml(study, tmp_path / "bad.yaml", base_recipe={"train": {"epochs": 0}})


def test_report_html_is_self_contained_with_every_plot(runs: dict[str, Path]) -> None:
    page = (runs["single"] / "report.html").read_text()
    for key in SINGLE_PLOTS:
        assert f'id="plot-{key}"' in page, key
    assert 'id="plot-pareto"' not in page
    assert page.count(plotly.offline.get_plotlyjs()[:300]) == 1
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.IGNORECASE)
    assert "pruned-by-median" in page and "loss is nan at epoch 2" in page
    assert "Optimisation history" in page and "Parameter importance" in page
    assert "<td>pruned</td><td>3</td>" in page and "<td>failed</td><td>1</td>" in page
    multi = (runs["multi"] / "report.html").read_text()
    assert 'id="plot-pareto"' in multi and "Pareto front" in multi
    assert 'id="plot-seeds"' in multi and 'id="plot-learning-curves"' in multi
    assert multi.count(plotly.offline.get_plotlyjs()[:300]) == 1


def test_pngs_are_written(runs: dict[str, Path]) -> None:
    for name in ["history", "importance", "learning_curves"]:
        data = (runs["single"] / "plots" / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    assert not (runs["single"] / "plots" / "pareto.png").exists()
    assert (runs["multi"] / "plots" / "pareto.png").read_bytes().startswith(PNG_MAGIC)
    # Multi-objective studies have no intermediate values: curves come from the history attr.
    assert (runs["multi"] / "plots" / "learning_curves.png").stat().st_size > 5000


def test_report_escapes_user_text_and_explains_skipped_importance(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    study = make_study(f"sqlite:///{tmp_path / 's.db'}", evil, n_trials=1)
    page = build_report(study, tmp_path / "out").read_text()
    assert evil not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "importance needs at least 2" in page
    assert not (tmp_path / "out" / "plots" / "importance.png").exists()


def test_storage_resolution(runs: dict[str, Path], tmp_path: Path) -> None:
    assert (
        resolve_storage(runs["single"]) == f"sqlite:///{(runs['single'] / 'study.db').resolve()}"
    )
    assert resolve_storage("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    journal_path = tmp_path / "journal.log"
    journal = resolve_storage(f"journal://{journal_path}")
    optuna.create_study(storage=journal, study_name="j").optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2
    )
    assert len(load_study(tmp_path).trials) == 2
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        resolve_storage(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds: j"):
        load_study(tmp_path, study_name="other")


def test_dashboard_serves_the_study_on_loopback(runs: dict[str, Path]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = f"from speechtune.reports import dashboard_command; dashboard_command({str(runs['single'])!r}, port={port})"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        body = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/studies", timeout=2
                ) as resp:
                    body = resp.read()
                break
            except OSError:
                time.sleep(0.2)
        assert b'"study_name": "single"' in body.replace(b'":"', b'": "'), body[:300]
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install chromium")
def test_report_renders_in_headless_chromium(runs: dict[str, Path], tmp_path: Path) -> None:
    report = runs["multi"] / "report.html"
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        "--dump-dom",
        report.resolve().as_uri(),
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Uncaught" not in done.stderr, [l for l in done.stderr.splitlines() if "Uncaught" in l]
    # Plotly replaces each empty figure div with its rendered container and SVG.
    for key in [*SINGLE_PLOTS, "pareto"]:
        assert re.search(rf'id="plot-{key}"[^>]*class="[^"]*js-plotly-plot', done.stdout), key
    assert done.stdout.count('class="plot-container plotly"') == len(SINGLE_PLOTS) + 1
    assert "main-svg" in done.stdout


def test_an_empty_study_still_gets_a_report_but_no_best_yaml(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="empty")
    page = build_report(study, tmp_path).read_text()
    assert "No trial completed yet" in page and 'id="plot-history"' not in page
    with pytest.raises(ValueError, match="no complete trial"):
        write_best_yaml(study, tmp_path / "best.yaml")
