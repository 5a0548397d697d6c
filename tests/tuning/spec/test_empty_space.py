"""A tuning YAML whose space has nothing to search is refused: every trial would be the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from speechtune.config import ConfigError
from speechtune.tuning.spec import load_tuning, validate_tuning
from tests.helpers.paths import CONF

RECIPE = str(CONF / "synthetic.yaml")


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "tuning.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _python(space: Any) -> dict[str, Any]:
    return {
        "space": space,
        "objective": {"kind": "python", "function": "mod:fn", "metric": "wer"},
    }


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (_python({}), "the space is empty"),
        ({"objective": {"kind": "python", "function": "mod:fn"}}, "the space is empty"),
        (_python({"x": 0.5}), "every key is fixed or derived"),
        (_python({"x": {"value": [1, 2]}, "y": {"derive": "2 * x[0]"}}), None),
        (_python({"x": 1, "y": {"derive": "2 * x"}}), "every key is fixed or derived"),
        (_python({"x": [3]}), "every key is fixed or derived"),  # one choice
        (_python({"x": {"low": 2, "high": 2}}), "every key is fixed or derived"),
        ({"recipe": RECIPE, "space": {"model.dropout": 0.1}}, "every key is fixed or derived"),
    ],
)
def test_nothing_to_search_is_one_problem_on_space(
    tmp_path: Path, data: dict[str, Any], what: str | None
) -> None:
    problems = validate_tuning(_write(tmp_path, data))
    keys = [p.key for p in problems]
    if what is None:  # a key that fails to parse is reported alone, not as "nothing to search"
        assert keys == ["space.y.derive"], problems
        return
    assert keys == ["space"], problems
    assert what in problems[0].rule and "nothing to search" in problems[0].rule
    with pytest.raises(ConfigError, match="nothing to search"):
        load_tuning(_write(tmp_path, data))


def test_one_searched_key_is_enough(tmp_path: Path) -> None:
    ok = [
        _python({"x": 1, "y": [1, 2]}),
        _python({"x": {"low": 0.0, "high": 1e-9}}),
        _python({"x": {"type": "categorical", "choices": [[1], [2]]}}),
        {"recipe": RECIPE, "presets": ["optimizer"]},  # the space comes from a preset
    ]
    for data in ok:
        assert validate_tuning(_write(tmp_path, data)) == [], data
