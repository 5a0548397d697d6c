"""A command study from the CLI as a user writes one: the script's own JSON config file, fixed
``overrides:``, ``{python}``, an accuracy to maximise, best.yaml holding what the script read, and
``speechtune rerun`` reproducing the winner."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml

from speechtune.config import ConfigError
from speechtune.tuning.spec import load_tuning
from speechtune.tuning.study import load_study
from tests.helpers.command_studies import run_study
from tests.helpers.workers import speechtune_argv

# Standard library only: the protocol, not the speechtune package, as in a foreign environment.
SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    config = json.load(open(sys.argv[1]))
    flags = dict(a[2:].split("=", 1) for a in sys.argv[2:])
    x, width = float(config["model"]["x"]), int(config["model"]["width"])
    assert flags["model.width"] == str(width) and float(flags["model.x"]) == x, (flags, config)
    with open(os.environ["SPEECHTUNE_REPORT_FILE"], "a") as fh:
        for epoch in (1, 2):
            acc = width / 100 - (x - 0.3) ** 2 - 0.1 / epoch
            fh.write(json.dumps({"epoch": epoch, "acc": acc, "epochs_set": config["train"]["epochs"]}) + "\\n")
    print("done", config["name"])
    """
)


def _study(tmp_path: Path, **command: object) -> Path:
    (tmp_path / "train.py").write_text(SCRIPT)
    (tmp_path / "base.json").write_text(
        json.dumps({"name": "mine", "model": {"x": 0.9, "width": 8}, "train": {"epochs": 10}})
    )
    spec = {
        "overrides": {"model.width": 16},
        "space": {"model.x": {"type": "float", "low": 0.0, "high": 1.0}},
        "study": {"name": "cmd", "sampler": "random", "pruner": "none", "n_trials": 4, "seed": 3},
        "objective": {"kind": "command", "metric": "acc", "direction": "maximize", "seeds": [0]},
        "command": {
            "argv": ["{python}", "train.py", "{config}"],
            "overrides": "--{key}={value}",
            "config_file": "base.json",
            **command,
        },
    }
    path = tmp_path / "tuning.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_command_study_maximises_with_a_base_config_and_reruns_its_winner(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_study(_study(tmp_path), run_dir, timeout=300)
    study = load_study(run_dir)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4
    assert study.best_trial.value == max(t.value for t in done)  # maximised, not minimised
    best_dir = Path(study.best_trial.user_attrs["trial_dir"])
    read = json.loads((best_dir / "config.json").read_text())
    # the base file, the fixed override and the sampled value, all in the file the script read
    assert read["name"] == "mine" and read["train"]["epochs"] == 10
    assert read["model"]["width"] == 16
    assert read["model"]["x"] == pytest.approx(study.best_trial.params["model.x"])
    argv = json.loads((best_dir / "command.json").read_text())["argv"]
    assert "--model.width=16" in argv and argv[1] == "train.py"

    best = (run_dir / "best.yaml").read_text()
    assert yaml.safe_load(best) == read
    assert f"speechtune rerun {run_dir} --trial {study.best_trial.number}" in best

    rerun = subprocess.run(
        speechtune_argv("rerun", str(run_dir)), capture_output=True, text=True, timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr + rerun.stdout
    value = f"{study.best_trial.value:.6g}"
    assert f"acc: {value} (study: {value})" in rerun.stdout
    assert (
        (run_dir / "reruns" / f"trial-{study.best_trial.number:04d}-1" / "stdout.log")
        .read_text()
        .startswith("done mine")
    )


def test_a_missing_or_bad_config_file_is_one_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_tuning(_study(tmp_path, config_file="nope.yaml"))
    assert "command.config_file" in str(err.value) and "cannot be read" in str(err.value)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError) as err:
        load_tuning(_study(tmp_path, config_file="list.yaml"))
    assert "must hold a mapping" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_tuning(_study(tmp_path, config_file="conf.toml"))
    assert ".yaml, .yml or .json" in str(err.value)
