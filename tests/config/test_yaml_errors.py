"""Bad YAML, in files and in ``--set`` overrides, is one line naming the file or override."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from speechtune.config import (
    ConfigError,
    YamlFileError,
    load_config,
    parse_overrides,
    read_yaml,
)


def _one_problem(err: pytest.ExceptionInfo[ConfigError]) -> str:
    (problem,) = err.value.problems
    text = str(problem)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("k=[1,", ["--set k=[1,", "expected a YAML scalar, list or mapping"]),
        ("model.d_model={a: 1", ["--set model.d_model={a: 1", "expected ',' or '}'"]),
        ("seed='unclosed", ["--set seed='unclosed", "quoted scalar"]),
        (
            "seed=!!python/object:os.system",
            ["--set seed=", "tag !!python/object:os.system is not allowed"],
        ),
        (
            "seed=!!python/object/apply:os.system [id]",
            ["tag !!python/object/apply:os.system is not allowed"],
        ),
        ("seed=!custom 3", ["tag !custom is not allowed"]),
    ],
)
def test_bad_override_values_are_one_named_line(override: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_overrides(["train.epochs=3", override])
    text = _one_problem(err)
    for fragment in fragments:
        assert fragment in text, text


def test_plain_override_values_still_parse() -> None:
    got = parse_overrides(["a.b=[1, 2]", "a.c={x: 1}", "d=1e-3", "e=text", "f=", "g='!!x'"])
    assert got == {
        "a": {"b": [1, 2], "c": {"x": 1}},
        "d": "1e-3",
        "e": "text",
        "f": None,
        "g": "!!x",
    }


def test_a_file_that_is_not_utf8_names_the_byte_offset_and_line(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"seed: 1\n# caf\xe9\nmodel: {d_model: 96}\n")
    with pytest.raises(YamlFileError) as err:
        read_yaml(path)
    reason = err.value.reason
    assert "not UTF-8" in reason and "expected UTF-8" in reason
    assert "offset 13" in reason and "line 2" in reason and "0xe9" in reason
    with pytest.raises(ConfigError) as cerr:
        load_config(path)
    text = _one_problem(cerr)
    assert str(path) in text and "offset 13" in text


def test_a_yaml_syntax_error_names_the_file_and_line_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("seed: 1\nmodel:\n  d_model: 96\n   num_layers: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = _one_problem(err)
    assert str(path) in text and "is not valid YAML: line 4, column 14" in text, text
    assert "(got 'num_layers: 2')" in text  # the offending line, not PyYAML's caret drawing
    # An unclosed bracket is found at the end of the file: the line that opened it is shown.
    path.write_text("seed: 1\nmodel: {d_model: [96\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = _one_problem(err)
    assert "while parsing a flow sequence at line 2, column 18" in text, text
    assert "(got 'model: {d_model: [96')" in text, text


def test_python_tags_in_a_file_are_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("seed: !!python/object/apply:os.system [id]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "tag !!python/object/apply:os.system is not allowed" in _one_problem(err)


def test_utf8_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_bytes("\ufeffseed: 7\n# café\n".encode())
    assert read_yaml(path) == {"seed": 7}
    assert load_config(path).seed == 7


def test_read_yaml_reads_what_safe_load_reads(tmp_path: Path) -> None:
    data = {"space": {"x": [1, 2]}, "name": "ünïcode", "n": 3}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    assert read_yaml(path) == data
