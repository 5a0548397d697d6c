"""Bad input to the command line ends with one ``error:`` line that names the key or file.

Covered here (issue 15): expression bombs in ``derive:``/constraints, malformed ``--set``
values and YAML tags, YAML files that are not UTF-8 or do not parse, a search space with nothing
to search, and a damaged ``study.db``. Config errors exit with 2, bad input files (the study
database) with 1, as docs/cli.md says; none prints a traceback. The commands run in-process.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from speechtune.cli import main
from tests.helpers.paths import CONF

FUNCTION = (
    "def objective(config, reporter):\n    return {'wer': (float(config['x']) - 0.3) ** 2}\n"
)


def _tuning(tmp_path: Path, **changes: Any) -> Path:
    """A tuning YAML of a Python function of one float (``changes`` replace its sections)."""
    (tmp_path / "fn_objective.py").write_text(FUNCTION)
    spec: dict[str, Any] = {
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "study": {"name": "one", "sampler": "random", "pruner": "none", "n_trials": 2, "seed": 0},
        "objective": {"kind": "python", "function": "fn_objective:objective", "metric": "wer"},
        **changes,
    }
    path = tmp_path / "tuning.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _tune(config: Path, run: Path, *extra: str) -> list[str]:
    return ["tune", "--config", str(config), "--run-dir", str(run), "--quiet", "--no-tracking", *extra]  # fmt: skip


def _error_line(capfd: pytest.CaptureFixture[str], argv: list[str], code: int) -> str:
    """Run ``speechtune argv``; assert the exit code and one error line, and return it."""
    capfd.readouterr()
    got = main(argv)
    out, err = capfd.readouterr()
    assert got == code, f"exit {got}\n{out[-2000:]}\n{err[-2000:]}"
    assert "Traceback" not in out + err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    return lines[0]


# ---------------------------------------------------------------------------------------------
# expression bombs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("section", "expression", "key"),
    [
        ("derive", "((9**1024)**1024)**1024", "space.y.derive"),
        ("derive", "(((9**1024)**1024)**1024)**1024", "space.y.derive"),
        ("derive", "9**9**9**9", "space.y.derive"),
        ("derive", "(2<<10**6)", "space.y.derive"),
        ("derive", "'a' * 10**9", "space.y.derive"),
        ("constraint", "x < (9**1024)**1024", "constraints[0]"),
    ],
)
@pytest.mark.parametrize("command", ["validate", "tune"])
def test_expression_bombs_are_refused_at_once(
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    command: str,
    section: str,
    expression: str,
    key: str,
) -> None:
    if section == "derive":
        space = {"x": {"type": "float", "low": 0.0, "high": 1.0}, "y": {"derive": expression}}
        config = _tuning(tmp_path, space=space)
    else:
        config = _tuning(tmp_path, constraints=[expression])
    argv = ["validate", str(config)] if command == "validate" else _tune(config, tmp_path / "run")
    start = time.monotonic()
    line = _error_line(capfd, argv, 2)
    assert time.monotonic() - start < 10  # it hung for good before (a second of it is imports)
    assert f"{key}: {expression!r}" in line and str(config) in line, line
    assert not (tmp_path / "run").exists()


def test_expression_bombs_in_a_recipe_study_are_refused(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tuning.yaml"
    space = {
        "optim.lr": {"low": 1e-4, "high": 1e-2},
        "train.epochs": {"derive": "(9**1024)**1024"},
    }
    config.write_text(yaml.safe_dump({"recipe": str(CONF / "synthetic.yaml"), "space": space}))
    line = _error_line(capfd, ["validate", str(config)], 2)
    assert "space.train.epochs.derive" in line and "too large" in line


# ---------------------------------------------------------------------------------------------
# --set values
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("train.epochs=[1,", "expected a YAML scalar, list or mapping"),
        ("seed=!!python/object:os.system", "tag !!python/object:os.system is not allowed"),
        ("seed=!!python/object/apply:os.system [id]", "tag !!python/object/apply:os.system"),
    ],
)
@pytest.mark.parametrize("command", ["train", "validate-recipe", "validate-tuning", "tune"])
def test_bad_set_values_are_one_named_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], command: str, override: str, says: str
) -> None:
    recipe = str(CONF / "synthetic.yaml")
    tuning = _tuning(tmp_path)
    if command in ("validate-tuning", "tune"):
        override = f"study.{override}"
    argv = {
        "train": [
            "train",
            "--config",
            recipe,
            "--run-dir",
            str(tmp_path / "run"),
            "--set",
            override,
        ],
        "validate-recipe": ["validate", recipe, "--set", override],
        "validate-tuning": ["validate", str(tuning), "--set", override],
        "tune": _tune(tuning, tmp_path / "run", "--set", override),
    }[command]
    line = _error_line(capfd, argv, 2)
    assert f"--set {override}: " in line and says in line, line
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# YAML files
# ---------------------------------------------------------------------------------------------
NOT_UTF8 = b"seed: 1\n# Fran\xe7ois's recipe\n"
SYNTAX = b"seed: 1\nmodel:\n  d_model: 96\n   num_layers: 2\n"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (NOT_UTF8, "is not UTF-8 text: byte 0xe7 at offset 14 (line 2, column 7)"),
        (SYNTAX, "is not valid YAML: line 4, column 14: mapping values are not allowed here"),
    ],
)
@pytest.mark.parametrize("command", ["train", "validate", "tune", "preset"])
def test_unreadable_yaml_names_the_file_and_where(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], command: str, content: bytes, says: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    run = tmp_path / "run"
    argv = {
        "train": ["train", "--config", str(bad), "--run-dir", str(run)],
        "validate": ["validate", str(bad)],
        "tune": _tune(bad, run),
        "preset": ["validate", str(_tuning(tmp_path, presets=["bad.yaml"]))],
    }[command]
    line = _error_line(capfd, argv, 2)
    assert str(bad) in line and says in line, line
    if content == NOT_UTF8:
        assert "expected UTF-8" in line
    assert not run.exists()


# ---------------------------------------------------------------------------------------------
# nothing to search
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("space", [{}, {"x": 0.5}, {"x": {"value": 1}, "y": {"derive": "2 * x"}}])
@pytest.mark.parametrize("command", ["validate", "tune"])
def test_a_space_with_nothing_to_search_is_refused(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], command: str, space: dict[str, Any]
) -> None:
    config = _tuning(tmp_path, space=space)
    run = tmp_path / "run"
    argv = ["validate", str(config)] if command == "validate" else _tune(config, run)
    line = _error_line(capfd, argv, 2)
    assert f"{config}: space: nothing to search" in line, line
    assert not run.exists()  # no trial ran


# ---------------------------------------------------------------------------------------------
# a damaged study.db
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a real two-trial study (``speechtune tune``)."""
    tmp = tmp_path_factory.mktemp("finished")
    run = tmp / "run"
    assert main(_tune(_tuning(tmp), run)) == 0
    assert (run / "study.db").is_file()
    return run


@pytest.mark.parametrize("damage", ["truncated", "text", "random-bytes"])
@pytest.mark.parametrize("command", ["report", "resume"])
def test_a_damaged_study_db_is_one_named_line(
    finished_run: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    command: str,
    damage: str,
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(finished_run / "spec.yaml", run / "spec.yaml")
    data = (finished_run / "study.db").read_bytes()
    content = {
        "truncated": data[: len(data) // 3],
        "text": b"not a database\n",
        "random-bytes": np.random.default_rng(3).bytes(8192),
    }[damage]
    (run / "study.db").write_bytes(content)
    config = finished_run.parent / "tuning.yaml"
    argv = ["report", str(run)] if command == "report" else _tune(config, run, "--resume")
    line = _error_line(capfd, argv, 1)
    assert f"study database {run / 'study.db'}: is not a readable SQLite study database" in line
    assert "aside to start a fresh study" in line
    assert (run / "study.db").read_bytes() == content  # left as it was, for the user to inspect
