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

import matplotlib.image
import numpy as np
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
    WIDE_SPACE,
    make_run_dir,
    make_study,
    make_wide_study,
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
        # 16 trials: 12 complete, enough for parameter importance; multi's 8 are not.
        "single": make_run_dir(root, "single", n_trials=16),
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
    assert [int(r["number"]) for r in rows] == list(range(16))
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
    assert "knee (trial " in multi  # the trade-off point is marked on the front
    # 8 complete trials: importance is explained away, not drawn.
    assert 'id="plot-importance"' not in multi
    assert "this study has 8 finished trials with 8 different values" in multi
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
    assert "Parameter importance needs at least 10 finished trials" in page
    assert "this study has 1 finished trial with 1 different value." in page
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


def _chromium(page: Path, tmp_path: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    """Open ``page`` in headless Chromium with ``mode`` (``--dump-dom``, ``--screenshot=...``)."""
    assert CHROMIUM is not None
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        # Virtual time: plotly's drawing completes before the DOM is dumped or the page shot.
        "--virtual-time-budget=5000",
        *mode,
        page.resolve().as_uri(),
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Uncaught" not in done.stderr, [l for l in done.stderr.splitlines() if "Uncaught" in l]
    return done


def _rendered_sections(dom: str) -> dict[str, str]:
    """Each ``<section>`` of a rendered report by id, in page order."""
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', dom, re.DOTALL))


def _headings(dom: str) -> list[str]:
    return re.findall(r"<h2>([^<]*)</h2>", dom)


def _svg_texts(html: str, css_class: str | None = None) -> list[str]:
    """Text of the SVG ``<text>`` elements plotly drew (inside ``<g class=css_class>`` when given)."""
    prefix = rf'<g class="{css_class}">' if css_class else ""
    return re.findall(rf"{prefix}<text[^>]*>([^<]*)</text>", html)


def _axis_titles(html: str) -> list[str]:
    """The axis names a parallel-coordinates plot drew."""
    return re.findall(r'class="axis-title"[^>]*>([^<]*)<', html)


def _assert_whole_number_x_ticks(sections: dict[str, str], *keys: str) -> None:
    for key in keys:
        ticks = _svg_texts(sections[key], "xtick")
        assert ticks and all(re.fullmatch(r"\d+", t) for t in ticks), (key, ticks)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install chromium")
def test_report_renders_in_headless_chromium(runs: dict[str, Path], tmp_path: Path) -> None:
    dom = _chromium(runs["multi"] / "report.html", tmp_path, "--dump-dom").stdout
    # Plotly replaces each empty figure div with its rendered container and SVG.
    drawn = [key for key in [*SINGLE_PLOTS, "pareto"] if key != "importance"]
    for key in drawn:
        assert re.search(rf'id="plot-{key}"[^>]*class="[^"]*js-plotly-plot', dom), key
    assert dom.count('class="plot-container plotly"') == len(drawn)
    assert "main-svg" in dom
    assert _headings(dom) == [
        "Best trial",
        "Optimisation history",
        "Learning curves",
        "Pareto front",
        "Trials",
        "Parameter importance",
        "Parallel coordinates",
        "WER per group of the best trials",
        "Seeds: mean +/- std",
    ]
    sections = _rendered_sections(dom)
    assert "Parameter importance needs at least 10 finished trials" in sections["importance"]
    # The conditional conv_kernel: LSTM trials sit on a labelled slot, not on a "None" tick.
    parallel = _svg_texts(sections["parallel"])
    assert "not used" in parallel and "None" not in parallel
    assert _axis_titles(sections["parallel"])[0] == "wer"
    assert 2 <= len(_axis_titles(sections["parallel"])) <= 8
    _assert_whole_number_x_ticks(sections, "history", "learning-curves")
    # Two seeds per trial: the spread is shown.
    assert "<th>std over seeds</th>" in sections["trials"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install chromium")
def test_issue_14_study_renders_results_first_in_headless_chromium(tmp_path: Path) -> None:
    """The study a new user reported on: 4 tied trials, 16 parameters, one seed, cost records."""
    page = build_report(make_wide_study(4, tied=True), tmp_path / "out")
    dom = _chromium(page, tmp_path, "--dump-dom").stdout
    assert _headings(dom) == [
        "Best trial",
        "Optimisation history",
        "Learning curves",
        "Trials",
        "Parameter importance",
        "Parallel coordinates",
        "Cost and carbon",
    ]
    sections = _rendered_sections(dom)
    assert list(sections)[:3] == ["best", "history", "learning-curves"]
    assert "Best trial #0" in sections["best"] and "optim.lr" in sections["best"]
    importance = sections["importance"]
    assert "plot-importance" not in importance
    assert (
        "Parameter importance needs at least 10 finished trials with at least 5 different values"
        " of wer; this study has 4 finished trials with 1 different value." in importance
    )
    axes = _axis_titles(sections["parallel"])
    assert len(axes) == 8 and axes[0] == "wer", axes
    drawn = _svg_texts(sections["parallel"])
    assert "None" not in drawn
    assert len(set(drawn) & set(WIDE_SPACE)) == 7  # of the 16 parameters
    _assert_whole_number_x_ticks(sections, "history", "learning-curves", "cost")
    assert "std over seeds" not in dom  # one seed: no empty column

    shot = tmp_path / "report.png"
    _chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,4000")
    pixels = matplotlib.image.imread(shot)  # RGBA floats in [0, 1]
    assert pixels.shape[:2] == (4000, 1280)
    # Plotly's plot background (#E5ECF6) covers a good part of the page: the figures were drawn,
    # not just their empty divs. The three here (history, learning curves, cost) cover ~11%.
    plot_bg = np.all(np.abs(pixels[..., :3] - np.array([229, 236, 246]) / 255) < 2 / 255, axis=-1)
    assert plot_bg.mean() > 0.05, plot_bg.mean()
    # ... and the first of them (the history, at ~750 px) comes after the best trial's table.
    first_plot_row = int(np.argmax(np.any(plot_bg, axis=1)))
    assert 400 < first_plot_row < 1300, first_plot_row


def test_an_empty_study_still_gets_a_report_but_no_best_yaml(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="empty")
    page = build_report(study, tmp_path).read_text()
    assert "No trial completed yet" in page and 'id="plot-history"' not in page
    with pytest.raises(ValueError, match="no complete trial"):
        write_best_yaml(study, tmp_path / "best.yaml")
