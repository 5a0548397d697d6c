"""The package as pip installs it: the wheel holds its data files, and torch is a floor, not a pin."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.helpers.paths import REPO


def test_the_wheel_ships_presets_templates_and_the_typed_marker(tmp_path: Path) -> None:
    # No build isolation: the venv's setuptools builds it, nothing is downloaded.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("speechtune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"speechtune/py.typed", "speechtune/workflow/templates/report.html.j2"} <= names
    assert "speechtune/tuning/spec/presets/optimizer.yaml" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "docs/")) for n in names)


def test_dependencies_are_ranges_and_torch_a_floor() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    deps = {
        d.split(">")[0].split("=")[0].split("[")[0].strip(): d for d in project["dependencies"]
    }
    assert deps["torch"].startswith("torch>=")  # never ==: pip must keep a user's own CUDA build
    assert not [d for d in project["dependencies"] if "==" in d]
    extras = project["optional-dependencies"]
    assert {"report", "ray", "postgres", "onnx", "synth", "dev"} <= set(extras)
