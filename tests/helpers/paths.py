"""Paths of the checkout the tests run in."""

from pathlib import Path

#: The repository root.
REPO = Path(__file__).resolve().parents[2]
#: The example configs (recipes, tuning YAMLs, presets).
CONF = REPO / "conf"
#: Small scripts the command-objective tests run.
SCRIPTS = REPO / "tests" / "fixtures_scripts"
#: The shared data beside the checkout (``../shared``), present in CI.
SHARED = REPO.parent / "shared"
