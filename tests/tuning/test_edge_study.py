"""An edge study end to end: WER, CPU latency and size on disk traded on a Pareto front."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from speechtune.cli import main
from speechtune.tuning.spec import load_tuning
from tests.helpers.paths import CONF
from tests.helpers.recipes import TINY_RECIPE


def test_the_shipped_edge_study_is_a_three_objective_study_over_the_edge_knobs() -> None:
    spec = load_tuning(CONF / "tuning_edge.yaml")
    assert {"edge.quantize", "edge.prune_sparsity", "model.d_model"} <= set(spec.space.params)
    assert spec.objective.extra_objectives == ["cpu_latency_ms_per_audio_s", "model_size_mb"]


def test_a_small_edge_study_yields_a_pareto_front_and_its_knee(tmp_path: Path, capsys) -> None:
    recipe = copy.deepcopy(TINY_RECIPE)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    tuning = {
        "recipe": "recipe.yaml",
        "presets": ["edge"],
        "space": {"model.d_model": {"choices": [32, 96]}},
        "study": {"name": "edge", "sampler": "tpe", "pruner": "none", "n_trials": 6, "seed": 0},
        "objective": {
            "kind": "recipe",
            "seeds": [1],
            # WER is 1.0 for every config this small; dev loss is measured deterministically and
            # trades against size (d_model 96 vs 32, quantised or not), so the front has >= 2
            # points whatever the latency figures (a third objective only adds to a front).
            "metric": "dev_loss",
            "extra_objectives": ["cpu_latency_ms_per_audio_s", "model_size_mb"],
        },
    }
    (tmp_path / "tuning.yaml").write_text(yaml.safe_dump(tuning))
    run_dir = tmp_path / "run"
    argv = ["tune", "--config", str(tmp_path / "tuning.yaml"), "--run-dir", str(run_dir)]
    argv += ["--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--threads", "1"]
    assert main([*argv, "--quiet", "--no-tracking"]) == 0
    out = capsys.readouterr().out
    front = re.search(r"Pareto front: (\d+) trials \(([\d, ]+)\)", out)
    assert front is not None, out
    front_trials = {int(n) for n in front.group(2).split(", ")}
    assert len(front_trials) >= 2, out
    knee = re.search(r"knee of the front: trial (\d+)", out)
    assert knee is not None and int(knee.group(1)) in front_trials
    # Every trial measured what ships: the size of its (quantised) model.pt on disk.
    measured = sorted(run_dir.glob("trials/*/metrics.json"))
    assert len(measured) == 6
    points: dict[int, tuple[float, float, float]] = {}
    for metrics in measured:
        values = yaml.safe_load(metrics.read_text())
        size = (metrics.parent / "model.pt").stat().st_size / 1e6
        assert abs(values["model_size_mb"] - size) < 1e-9
        assert values["cpu_latency_ms_per_audio_s"] > 0
        points[int(metrics.parent.name)] = (
            values["dev_loss"],
            values["cpu_latency_ms_per_audio_s"],
            values["model_size_mb"],
        )

    # The front is exactly the non-dominated trials of what was measured. Latency is measured
    # wall time, so how many trials trade off varies between machines; which ones are on the
    # front must follow from the numbers.
    def dominated(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(y <= x for x, y in zip(a, b, strict=True)) and b != a

    expected = {n for n, p in points.items() if not any(dominated(p, q) for q in points.values())}
    assert front_trials == expected, (points, out)
    assert f"knee (trial {knee.group(1)})" in (run_dir / "report.html").read_text()
