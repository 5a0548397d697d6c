"""A small, safe expression language for derived values and constraints.

Expressions are parsed with :mod:`ast` and evaluated by walking the tree; nothing is ever
``eval``'d. Allowed: numbers, strings and booleans; names, including dotted keys such as
``model.d_model`` (an attribute chain rooted at a name is read as one dotted key);
``+ - * / // % **``; unary ``-``/``+``/``not``; comparisons; ``and``/``or``; calls to
``min, max, round, int, float, sqrt, log``. Anything else is refused with an error naming
the construct.

The work an expression may cause is bounded, so that a typo or a hostile YAML cannot hang
``validate`` or ``tune``: its length and node count are capped (each node is evaluated at most
once, so the node count is the step budget), and an integer result may not exceed
4,096 bits; a power or product that would is refused before it is computed.
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

# The largest integer (in bits) an expression may produce, also as an intermediate result:
# far above any hyperparameter, far below what makes ``((9**1024)**1024)**1024`` hang.
_MAX_INT_BITS = 4096

# Real constraints and derived values are a few dozen nodes; these caps bound parsing (a very
# long or deeply nested text makes ast.parse itself slow or raise MemoryError) and evaluation.
_MAX_CHARS = 2000
_MAX_NODES = 500
_MAX_ROUND_DIGITS = 1000


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
                f"{_clip(expr)}: constant {node.value!r} is not allowed (numbers, strings, booleans only)"
            )
    elif isinstance(node, (ast.Name, ast.Attribute)):
        name = _dotted(node)
        if name is None:
            raise ExprError(
                f"{_clip(expr)}: attribute access is only allowed on dotted keys such as model.d_model"
            )
        if any(part.startswith("__") for part in name.split(".")):
            raise ExprError(f"{_clip(expr)}: name {name!r} is not allowed (no dunder names)")
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS:
            raise ExprError(
                f"{_clip(expr)}: operator {type(node.op).__name__} is not allowed; use + - * / // % **"
            )
        _check(node.left, expr)
        _check(node.right, expr)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
            raise ExprError(
                f"{_clip(expr)}: unary operator {type(node.op).__name__} is not allowed"
            )
        _check(node.operand, expr)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _CMPOPS:
                raise ExprError(
                    f"{_clip(expr)}: comparison {type(op).__name__} is not allowed; use == != < <= > >="
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
                f"{_clip(expr)}: call to {what!r} is not allowed; allowed functions: {allowed}"
            )
        if node.keywords:
            raise ExprError(f"{_clip(expr)}: keyword arguments are not allowed in calls")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise ExprError(f"{_clip(expr)}: starred arguments are not allowed")
            _check(arg, expr)
    else:
        raise ExprError(f"{_clip(expr)}: {type(node).__name__} is not allowed in an expression")


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


def _clip(expr: str) -> str:
    """``expr`` quoted for an error message, its middle elided when it is long."""
    return repr(expr) if len(expr) <= 80 else f"{expr[:60]!r}...{expr[-10:]!r}"


@functools.lru_cache(maxsize=512)
def _parse(expr: str) -> ast.Expression:
    if len(expr) > _MAX_CHARS:
        raise ExprError(
            f"{_clip(expr)}: expression is {len(expr)} characters long; at most {_MAX_CHARS}"
        )
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"{_clip(expr)} does not parse: {exc.msg}") from exc
    except (RecursionError, MemoryError) as exc:
        raise ExprError(f"{_clip(expr)} is too deeply nested to parse") from exc
    # ast.walk is iterative: counting first keeps the recursive _check and _eval shallow.
    nodes = sum(1 for _ in ast.walk(tree))
    if nodes > _MAX_NODES:
        raise ExprError(
            f"{_clip(expr)}: expression has {nodes} syntax nodes; at most {_MAX_NODES} are allowed"
        )
    _check(tree, expr)
    _fold_constants(tree.body, expr)
    return tree


def _reads_names(node: ast.AST) -> bool:
    """Does ``node`` read a key? (A called function's name is not a key.)"""
    if isinstance(node, (ast.Name, ast.Attribute)):
        return True
    if isinstance(node, ast.Call):
        return any(_reads_names(arg) for arg in node.args)
    return any(_reads_names(child) for child in ast.iter_child_nodes(node))


def _fold_constants(node: ast.AST, expr: str) -> None:
    """Evaluate each sub-expression that reads no key, once, when the expression is parsed.

    One that cannot be computed (``(9**1024)**1024``, ``1 / 0``) is then refused by
    ``validate`` for every objective kind, instead of failing each trial that reaches it.
    """
    if isinstance(node, (ast.Constant, ast.Name, ast.Attribute)):
        return
    if not _reads_names(node):
        _eval(node, {}, expr)
        return
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.expr):  # not operators, contexts or a call's function name
            _fold_constants(child, expr)


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
    raise ExprError(f"{_clip(expr)}: arithmetic needs numbers, got {value!r}")


def _refuse_large(op: ast.operator, left: Any, right: Any, expr: str) -> None:
    """Refuse a power or product of integers whose result would exceed _MAX_INT_BITS bits.

    Checked before computing: Python would happily spend minutes (and gigabytes) on it.
    """
    if isinstance(op, ast.Pow) and abs(right) > _MAX_EXPONENT:
        raise ExprError(
            f"{_clip(expr)}: exponent {_short(right)} is too large (at most {_MAX_EXPONENT})"
        )
    if not (isinstance(left, int) and isinstance(right, int)):
        return  # float arithmetic is bounded: it overflows to inf or raises OverflowError
    if isinstance(op, ast.Pow) and right > 1 and abs(left) > 1:
        # |a| ** n has at least (bits(a) - 1) * n + 1 bits; the rest is checked after computing.
        bits = (abs(left).bit_length() - 1) * right + 1
    elif isinstance(op, ast.Mult) and left and right:
        bits = abs(left).bit_length() + abs(right).bit_length() - 1
    else:
        return
    if bits > _MAX_INT_BITS:
        raise ExprError(
            f"{_clip(expr)}: result too large (an integer of over {_MAX_INT_BITS} bits at "
            f"{_short(left)} {'**' if isinstance(op, ast.Pow) else '*'} {_short(right)})"
        )


def _short(value: Any) -> str:
    """``value`` for an error message: a huge integer by its size, not its 1,000 digits."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"<integer of {value.bit_length()} bits>"
    return repr(value)


def _bounded(value: Any, expr: str) -> Any:
    """``value``, or an :class:`ExprError` when it is an oversized integer or a complex number."""
    if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        raise ExprError(
            f"{_clip(expr)}: result too large ({_short(value)}; at most {_MAX_INT_BITS} bits)"
        )
    if isinstance(value, complex):  # (-8) ** 0.5: no hyperparameter is complex
        raise ExprError(f"{_clip(expr)}: result {value!r} is a complex number")
    return value


def _eval(node: ast.AST, values: Mapping[str, Any], expr: str) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body, values, expr)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = _dotted(node) or ""
        if name not in values:
            raise ExprError(f"{_clip(expr)}: unknown name {name!r}")
        return values[name]
    if isinstance(node, ast.BinOp):
        left = _num(_eval(node.left, values, expr), expr)
        right = _num(_eval(node.right, values, expr), expr)
        _refuse_large(node.op, left, right, expr)
        try:
            out = _BINOPS[type(node.op)](left, right)
        except (ArithmeticError, ValueError) as exc:
            raise ExprError(f"{_clip(expr)}: {exc}") from exc
        return _bounded(out, expr)
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
                raise ExprError(f"{_clip(expr)}: cannot compare {left!r} and {right!r}") from exc
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
            raise ExprError(f"{_clip(expr)}: call to {func!r} is not allowed")
        args = [_eval(arg, values, expr) for arg in node.args]
        if func == "round" and len(args) == 2 and isinstance(args[1], int):
            # round(5, -10**9) computes 10**(10**9) for an integer first argument.
            if abs(args[1]) > _MAX_ROUND_DIGITS:
                raise ExprError(
                    f"{_clip(expr)}: round() digits {_short(args[1])} out of range "
                    f"(at most {_MAX_ROUND_DIGITS} either way)"
                )
        try:
            out = FUNCTIONS[func](*args)
        except (ArithmeticError, ValueError, TypeError) as exc:
            raise ExprError(f"{_clip(expr)}: {func}() failed: {exc}") from exc
        return _bounded(out, expr)
    raise ExprError(
        f"{_clip(expr)}: {type(node).__name__} is not allowed"
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
