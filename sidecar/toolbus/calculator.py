"""A deterministic calculator on a safe expression parser (no eval of user text).

Numbers, + - * / // % **, unary signs, parentheses, ``pi``, ``e`` and a few pure
functions (``abs``, ``round``, ``min``, ``max``, ``sqrt``, ``floor``, ``ceil``). There are
no shifts, factorials, names, attributes, comprehensions, keywords or ``*args``.

Why an expression is always cheap (it runs on the event loop, so this is the bound that
stands in for ``timeout_s``; the hostile cases are timed in
``tests/test_hardening_event_loop.py``):

- The text is at most ``MAX_EXPRESSION_CHARS`` (500) characters, so at most ~250
  operations; the tree is at most ``MAX_DEPTH`` (200) levels deep (no RecursionError);
  a call takes at most ``MAX_CALL_ARGS`` (32) arguments.
- Every operand and every result is a real number with ``|x| <= MAX_MAGNITUDE`` (1e300):
  a finite float or an int of at most 997 bits, literals included. So + - * / // % and
  every function work on numbers of at most ~2,000 bits: microseconds each.
- ``**`` is refused *before* it is computed when the exponent is above ``MAX_EXPONENT``
  (1000) or an integer result would need more than ``MAX_RESULT_BITS`` (1000) bits
  (estimated from the base's bit length): at most ~10 squarings of 2,000-bit numbers.
- ``round``'s digits are a whole number within ``MAX_ROUND_DIGITS`` (±400), so the largest
  power of ten it builds is 10**400 (``round(5, -10**300)`` is refused, not computed).

Problems with the expression itself (syntax, unknown names, arity, too long, too deep) are
``ExpressionError`` — a bad argument, found before anything is computed. Problems found
while computing (division by zero, a result out of range) are ``CalculatorError``.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from ..errors import CalculatorError, ExpressionError

MAX_EXPRESSION_CHARS = 500
MAX_DEPTH = 200
MAX_CALL_ARGS = 32
MAX_MAGNITUDE = 1e300
MAX_EXPONENT = 1000
MAX_RESULT_BITS = 1000
MAX_ROUND_DIGITS = 400

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
# name -> (function, fewest arguments, most arguments)
_FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {
    "abs": (abs, 1, 1),
    "round": (round, 1, 2),
    "min": (min, 2, MAX_CALL_ARGS),
    "max": (max, 2, MAX_CALL_ARGS),
    "sqrt": (math.sqrt, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
}
_CONSTANTS = {"pi": math.pi, "e": math.e}


def evaluate(expression: str) -> int | float:
    tree = parse(expression)
    try:
        return _checked(_eval(tree.body))
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except CalculatorError:
        raise
    except (OverflowError, ValueError, TypeError) as exc:
        raise CalculatorError(f"out of range: {exc}") from None


def parse(expression: str) -> ast.Expression:
    """Parse and check the shape of ``expression`` without computing anything."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"not an arithmetic expression: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError):  # NUL bytes, surrogates, parser limits
        raise ExpressionError("not an arithmetic expression") from None
    _check_shape(tree.body)
    return tree


def _check_shape(root: ast.AST) -> None:
    """Only supported elements, at most ``MAX_DEPTH`` deep; iterative, so never recursing."""
    stack: list[tuple[ast.AST, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ExpressionError(f"expression nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, ast.Constant):
            if type(node.value) not in (int, float):
                raise ExpressionError(f"unsupported value: {type(node.value).__name__}")
        elif isinstance(node, ast.Name):
            if node.id not in _CONSTANTS:
                raise ExpressionError(f"unknown name {node.id[:40]!r}")
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            stack += [(node.left, depth + 1), (node.right, depth + 1)]
        elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            stack.append((node.operand, depth + 1))
        elif isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if name not in _FUNCTIONS:
                raise ExpressionError("unsupported function call")
            if node.keywords:
                raise ExpressionError(f"{name}() takes no keyword arguments")
            _, fewest, most = _FUNCTIONS[name]
            if not fewest <= len(node.args) <= most:
                wanted = str(fewest) if fewest == most else f"{fewest} to {most}"
                raise ExpressionError(
                    f"{name}() takes {wanted} argument(s), {len(node.args)} given"
                )
            stack += [(arg, depth + 1) for arg in node.args]  # a Starred arg fails there
        else:
            raise ExpressionError(f"unsupported element: {type(node).__name__}")


def _eval(node: ast.AST) -> int | float:
    """Compute a tree that ``_check_shape`` accepted; every value passes ``_checked``."""
    if isinstance(node, ast.Constant):
        return _checked(node.value)
    if isinstance(node, ast.Name):
        return _CONSTANTS[node.id]
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _checked(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp):
        return _checked(_UNARY[type(node.op)](_eval(node.operand)))
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    function = _FUNCTIONS[node.func.id][0]
    args = [_eval(arg) for arg in node.args]
    if function is round and len(args) == 2:
        _check_round_digits(args[1])
    return _checked(function(*args))


def _check_power(base: int | float, exponent: int | float) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent larger than {MAX_EXPONENT}")
    # |base| >= 2**(bits-1), so an int result has at least (bits-1)*exponent bits.
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and (abs(base).bit_length() - 1) * exponent > MAX_RESULT_BITS
    ):
        raise CalculatorError("the result is too large")


def _check_round_digits(digits: int | float) -> None:
    if not isinstance(digits, int):
        raise CalculatorError("round()'s digits must be a whole number")
    if abs(digits) > MAX_ROUND_DIGITS:
        raise CalculatorError(f"round()'s digits must be within ±{MAX_ROUND_DIGITS}")


def _checked(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):  # complex, bool, ...
        raise CalculatorError("the result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is not finite")
    if abs(value) > MAX_MAGNITUDE:
        raise CalculatorError("the result is too large")
    checked: int | float = value
    return checked
