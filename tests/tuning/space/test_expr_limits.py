"""The expression evaluator bounds its work: expression bombs are refused at once, named.

Each bomb below hung ``speechtune validate``/``tune`` (or exhausted memory) before the limits:
only the exponent was capped, so ``((9**1024)**1024)**1024`` computed a billion-digit number.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
import pytest

from speechtune.config import ConfigError
from speechtune.tuning.space import ExprError, parse_space
from speechtune.tuning.space import evaluate_expression as evaluate
from speechtune.tuning.space import parse_expression as parse

#: Generous for a 2-core machine shared by several test runs; a bomb ran for minutes.
FAST_S = 1.0

BOMBS = {
    "nested-power": "((9**1024)**1024)**1024",
    "deeper-nesting": "(((9**1024)**1024)**1024)**1024",
    "power-tower": "9**9**9**9",
    "shift": "(2<<10**6)",
    "string-repeat": "'a' * 10**9",
    "product-chain": "3**1024 * 3**1024 * 3**1024",
    "round-digits": "round(5, -10**999)",
    "deep-unary": "-" * 999 + "1",
    "long-sum": "+".join(["1"] * 1500),
    "too-long": "1+" * 1200 + "1",
    "many-parentheses": "(" * 300 + "1" + ")" * 300,
    "int-of-long-string": "int('" + "9" * 1900 + "') ** 2",
}


def _refused_quickly(run: Callable[[str, dict[str, Any]], object], expr: str) -> str:
    """The one-line error ``run(expr, values)`` raises, asserting that it came at once."""
    start = time.monotonic()
    with pytest.raises(ExprError) as err:
        run(expr, {"x": 3})
    elapsed = time.monotonic() - start
    assert elapsed < FAST_S, f"{expr[:40]!r} took {elapsed:.2f} s"
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    return message


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bombs_are_refused_within_a_second(name: str) -> None:
    message = _refused_quickly(lambda e, v: evaluate(e, v), BOMBS[name])
    assert message.startswith(("'", '"')), message  # it names the expression first


@pytest.mark.parametrize("name", ["nested-power", "power-tower", "string-repeat", "round-digits"])
def test_constant_bombs_are_refused_when_parsed(name: str) -> None:
    """A sub-expression that reads no key is computed once when parsed, so validate sees it."""
    _refused_quickly(lambda e, v: parse(e), BOMBS[name])


def test_bombs_built_from_keys_are_refused_before_computing() -> None:
    big = 2**3000
    for expr in ("x * x", "x ** 2", "(x * 2**1000) * x", "int(y) ** 1000 ** 1"):
        _refused_quickly(lambda e, v: evaluate(e, {"x": big, "y": 1e300}), expr)
    # Sums grow by a bit at a time: the result is still checked.
    with pytest.raises(ExprError, match="too large"):
        evaluate("x + x", {"x": 2**4096 - 1})


def test_large_but_bounded_integers_and_floats_still_evaluate() -> None:
    assert evaluate("2 ** 1000 * 2 ** 1000", {}) == 2**2000
    assert evaluate("x ** 2", {"x": 2**2000}) == 2**4000
    assert evaluate("9 ** 1024 > 0", {}) is True
    assert evaluate("2.0 ** 1000", {}) == 2.0**1000
    assert evaluate("round(1234.5678, 2) + round(1234, -2)", {}) == 1234.57 + 1200
    assert evaluate("max(x, 4) * 4 % 7 == 2", {"x": 3}) is True
    with pytest.raises(ExprError, match="complex"):
        evaluate("(-8) ** 0.5", {})


def test_a_bomb_in_a_search_space_names_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse_space(
            {"x": [1, 2], "y": {"derive": "((9**1024)**1024)**1024"}},
            constraints=["x < (9**1024)**1024"],
        )
    keys = [p.key for p in err.value.problems]
    assert keys == ["space.y.derive", "constraints[0]"]
    assert all("too large" in p.rule for p in err.value.problems)


def test_a_bomb_that_reads_keys_fails_the_sample_with_the_key_named() -> None:
    space = parse_space({"x": [3, 5], "y": {"derive": "(x ** 1024) ** 1024"}})
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    start = time.monotonic()
    with pytest.raises(ExprError, match=r"derived value y: .*too large"):
        space.sample(trial)
    assert time.monotonic() - start < FAST_S
