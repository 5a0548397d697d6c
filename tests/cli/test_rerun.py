"""``speechtune rerun`` of a recipe study: the same thread count, the same metrics, and what
differs from the trial's recorded environment (``environment.json``) when a rerun is elsewhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from speechtune.cli._main import main
from speechtune.data import Manifest, Utterance
from speechtune.training import ENVIRONMENT_FILE, environment_differences
from speechtune.training._provenance import features_digest, manifest_digest
from tests.helpers.recipes import write_tiny_recipe_study


def _study(tmp_path: Path, capsys) -> tuple[Path, list[str]]:
    tuning = write_tiny_recipe_study(tmp_path, "rerun", n_trials=1)
    run_dir = tmp_path / "run"
    common = ["--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    argv = ["tune", "--config", str(tuning), "--run-dir", str(run_dir)]
    assert main([*argv, *common, "--threads", "1", "--quiet", "--no-tracking"]) == 0
    capsys.readouterr()
    return run_dir, common


def test_a_rerun_uses_the_trials_threads_and_names_what_differs(tmp_path: Path, capsys) -> None:
    run_dir, common = _study(tmp_path, capsys)
    trial_env_path = run_dir / "trials" / "0000" / ENVIRONMENT_FILE
    recorded = json.loads(trial_env_path.read_text())
    assert recorded["threads"] == 1 and recorded["torch"] == torch.__version__
    assert recorded["data"]["train_utterances"] > 0
    assert re.fullmatch(r"[0-9a-f]{16}", recorded["data"]["train_features"])
    report = (run_dir / "report.html").read_text()
    assert f"1 threads, torch {torch.__version__}" in report and "Ran on:" in report

    # Here, with no --threads: the trial's one thread, the same value, the same environment.
    assert main(["rerun", str(run_dir), *common]) == 0
    out = capsys.readouterr().out
    assert "(seed 1, 1 threads)" in out
    value = re.search(r"^  dev_loss: (\S+) \(study: (\S+)\)$", out, re.M)
    assert value is not None and value.group(1) == value.group(2), out
    assert "environment: the same as the trial's" in out
    again = json.loads((run_dir / "reruns" / "trial-0000-1" / ENVIRONMENT_FILE).read_text())
    assert again == recorded

    # As if the trial had run elsewhere on other features: the rerun lists exactly that.
    recorded["torch"] = "0.0-elsewhere"
    recorded["data"]["train_features"] = "0" * 16
    trial_env_path.write_text(json.dumps(recorded))
    assert main(["rerun", str(run_dir), "--threads", "2", *common]) == 0
    out = capsys.readouterr().out
    assert "(seed 1, 2 threads)" in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("environment: differs"))
    listed = lines[start + 1 :]
    assert [line.split(":")[0].strip() for line in listed] == [
        "data.train_features",
        "threads",
        "torch",
    ]
    assert f"torch: {torch.__version__} (trial: 0.0-elsewhere)" in out
    assert "threads: 2 (trial: 1)" in out


def test_the_digests_see_content_not_paths() -> None:
    a = Manifest(
        [
            Utterance("u1", "/a/u1.wav", 1.0, "yes", "s1"),
            Utterance("u2", "/a/u2.wav", 2.0, "no", "s1"),
        ]
    )
    moved = Manifest(
        [
            Utterance("u2", "/b/u2.wav", 2.0, "no", "s1"),
            Utterance("u1", "/b/u1.wav", 1.0, "yes", "s1"),
        ]
    )
    retold = Manifest(
        [
            Utterance("u1", "/a/u1.wav", 1.0, "yes", "s1"),
            Utterance("u2", "/a/u2.wav", 2.0, "on", "s1"),
        ]
    )
    assert manifest_digest(a) == manifest_digest(moved)  # other paths, other order
    assert manifest_digest(a) != manifest_digest(retold)

    gen = torch.Generator().manual_seed(0)
    feats = {"u1": torch.randn(7, 4, generator=gen), "u2": torch.randn(5, 4, generator=gen)}
    copied = {k: v.clone() for k, v in reversed(list(feats.items()))}
    assert features_digest(feats) == features_digest(copied)
    copied["u2"][3, 1] += 1e-6  # one value in one utterance
    assert features_digest(feats) != features_digest(copied)
    assert features_digest(feats) != features_digest({k: v.double() for k, v in feats.items()})
    assert environment_differences({"a": 1, "d": {"x": 1}}, {"a": 1, "d": {"x": 2}}) == [
        "d.x: 2 (trial: 1)"
    ]
