"""A small, safe expression language for derived values and constraints.

Expressions are parsed with :mod:`ast` and evaluated by walking the tree; nothing is ever
``eval``'d. Allowed: numbers, strings and booleans; names, including dotted keys such as
``model.d_model`` (an attribute chain rooted at a name is read as one dotted key);
``+ - * / // % **``; unary ``-``/``+``/``not``; comparisons; ``and``/``or``; calls to
``min, max, round, int, float, sqrt, log``. Anything else is refused with an error naming
the construct.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any


class ExprError(ValueError):
    """An expression that does not parse, uses disallowed syntax, or cannot be evaluated."""


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "min": min,
    "max": max,
    "round": round,
    "int": int,
    "float": float,
    "sqrt": math.sqrt,
    "log": math.log,
}


_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


# An exponent this large is a typo or an attack (9 ** 9 ** 9 would hang the process).
_MAX_EXPONENT = 1024


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` as a dotted name, or None when the chain is not rooted at a plain name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _check(node: ast.AST, expr: str) -> None:
    """Raise :class:`ExprError` for the first disallowed construct under ``node``."""
    if isinstance(node, ast.Expression):
        _check(node.body, expr)
    elif isinstance(node, ast.Constant):
        if not isinstance(node.value, (int, float, str, bool)) or node.value is None:
            raise ExprError(
                f"{expr!r}: constant {node.value!r} is not allowed (numbers, strings, booleans only)"
            )
    elif isinstance(node, (ast.Name, ast.Attribute)):
        name = _dotted(node)
        if name is None:
            raise ExprError(
                f"{expr!r}: attribute access is only allowed on dotted keys such as model.d_model"
            )
        if any(part.startswith("__") for part in name.split(".")):
            raise ExprError(f"{expr!r}: name {name!r} is not allowed (no dunder names)")
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS:
            raise ExprError(
                f"{expr!r}: operator {type(node.op).__name__} is not allowed; use + - * / // % **"
            )
        _check(node.left, expr)
        _check(node.right, expr)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
            raise ExprError(f"{expr!r}: unary operator {type(node.op).__name__} is not allowed")
        _check(node.operand, expr)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _CMPOPS:
                raise ExprError(
                    f"{expr!r}: comparison {type(op).__name__} is not allowed; use == != < <= > >="
                )
        _check(node.left, expr)
        for comp in node.comparators:
            _check(comp, expr)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            _check(value, expr)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            what = node.func.id if isinstance(node.func, ast.Name) else type(node.func).__name__
            allowed = ", ".join(sorted(FUNCTIONS))
            raise ExprError(
                f"{expr!r}: call to {what!r} is not allowed; allowed functions: {allowed}"
            )
        if node.keywords:
            raise ExprError(f"{expr!r}: keyword arguments are not allowed in calls")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise ExprError(f"{expr!r}: starred arguments are not allowed")
            _check(arg, expr)
    else:
        raise ExprError(f"{expr!r}: {type(node).__name__} is not allowed in an expression")


def parse_expression(expr: str) -> ast.Expression:
    """Parse and vet ``expr``.

    Args:
        expr: the expression text, e.g. ``"4 * model.d_model"``.

    Returns:
        The vetted syntax tree.

    Raises:
        ExprError: on a syntax error or a disallowed construct (the error names it).
    """
    if not isinstance(expr, str) or not expr.strip():
        raise ExprError(f"expression must be a non-empty string, got {expr!r}")
    return _parse(expr)


@functools.lru_cache(maxsize=512)
def _parse(expr: str) -> ast.Expression:
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"{expr!r} does not parse: {exc.msg}") from exc
    _check(tree, expr)
    return tree


def expression_names(expr: str) -> set[str]:
    """The dotted keys an expression reads (function names excluded).

    Raises:
        ExprError: when ``expr`` does not parse or uses disallowed syntax.
    """
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Name, ast.Attribute)):
            found.add(_dotted(node) or "")
            return
        if isinstance(node, ast.Call):
            for arg in node.args:
                visit(arg)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(parse_expression(expr))
    return found


def _num(value: Any, expr: str) -> Any:
    # Arithmetic on strings ("a" * 10**9) is both useless here and a memory bomb.
    if isinstance(value, (int, float)):
        return value
    raise ExprError(f"{expr!r}: arithmetic needs numbers, got {value!r}")


def _eval(node: ast.AST, values: Mapping[str, Any], expr: str) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body, values, expr)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = _dotted(node) or ""
        if name not in values:
            raise ExprError(f"{expr!r}: unknown name {name!r}")
        return values[name]
    if isinstance(node, ast.BinOp):
        left = _num(_eval(node.left, values, expr), expr)
        right = _num(_eval(node.right, values, expr), expr)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ExprError(f"{expr!r}: exponent {right!r} is too large")
        try:
            return _BINOPS[type(node.op)](left, right)
        except (ArithmeticError, ValueError) as exc:
            raise ExprError(f"{expr!r}: {exc}") from exc
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, values, expr)
        if isinstance(node.op, ast.Not):
            return not operand
        operand = _num(operand, expr)
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.Compare):
        left = _eval(node.left, values, expr)
        for op, comp in zip(node.ops, node.comparators):
            right = _eval(comp, values, expr)
            try:
                if not _CMPOPS[type(op)](left, right):
                    return False
            except TypeError as exc:
                raise ExprError(f"{expr!r}: cannot compare {left!r} and {right!r}") from exc
            left = right
        return True
    if isinstance(node, ast.BoolOp):
        result: Any = isinstance(node.op, ast.And)
        for value_node in node.values:
            result = _eval(value_node, values, expr)
            # Short-circuit like Python: `and` stops at the first falsy, `or` at the first truthy.
            if isinstance(node.op, ast.And) and not result:
                return result
            if isinstance(node.op, ast.Or) and result:
                return result
        return result
    if isinstance(node, ast.Call):
        func = node.func.id if isinstance(node.func, ast.Name) else ""
        if (
            func not in FUNCTIONS
        ):  # unreachable after parse_expression(); kept so evaluation never trusts its input
            raise ExprError(f"{expr!r}: call to {func!r} is not allowed")
        args = [_eval(arg, values, expr) for arg in node.args]
        try:
            return FUNCTIONS[func](*args)
        except (ArithmeticError, ValueError, TypeError) as exc:
            raise ExprError(f"{expr!r}: {func}() failed: {exc}") from exc
    raise ExprError(
        f"{expr!r}: {type(node).__name__} is not allowed"
    )  # unreachable after parse_expression()


def evaluate_expression(expr: str, values: Mapping[str, Any]) -> Any:
    """Evaluate ``expr`` with dotted keys looked up in ``values``.

    Args:
        expr: the expression text.
        values: flat mapping of dotted key -> value.

    Returns:
        The expression's value.

    Raises:
        ExprError: on disallowed syntax, an unknown name, or an arithmetic error.
    """
    return _eval(parse_expression(expr), values, expr)
