"""Built-in tools: a calculator that never runs `eval`, and a clock with time zones and date differences."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from bot.tools.registry import Tool, ToolError

# Limits that keep one expression cheap: its length, nesting, and the size of any number in it.
MAX_EXPRESSION = 500
MAX_DEPTH = 40
MAX_INT_BITS = 4096  # about 1,233 decimal digits
MAX_FACTORIAL = 450  # 450! has about 1,000 digits
# round()'s digits beyond this change nothing for numbers within MAX_INT_BITS (or floats), while
# round(7, -N) computes 10**N first: clamped, its cost no longer grows with the argument.
MAX_ROUND_DIGITS = 1300

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _factorial(n: Any) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ToolError("factorial needs a non-negative whole number")
    if n > MAX_FACTORIAL:
        raise ToolError(f"factorial is limited to n <= {MAX_FACTORIAL}")
    return math.factorial(n)


def _round(x: Any, ndigits: Any = None) -> Any:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or isinstance(ndigits, bool):
        raise ToolError("round's second argument must be a whole number")
    return round(x, max(-MAX_ROUND_DIGITS, min(MAX_ROUND_DIGITS, ndigits)))


def _log(x: Any, base: Any = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": _log,
    "ln": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "degrees": math.degrees,
    "radians": math.radians,
    "abs": abs,
    "round": _round,
    "floor": math.floor,
    "ceil": math.ceil,
    "factorial": _factorial,
    "min": min,
    "max": max,
    "hypot": math.hypot,
}


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly, e.g. "1234*5678", "sqrt(2)**3", "factorial(20)".

    Args:
        expression: numbers, + - * / // % ** and parentheses, constants pi, e, tau, and functions sqrt,
            exp, log, ln, log10, log2, sin, cos, tan, asin, acos, atan, degrees, radians, abs, round,
            floor, ceil, factorial, min, max, hypot.
    """
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    if not text:
        raise ToolError("the expression is empty")
    if len(text) > MAX_EXPRESSION:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ToolError(f"not an arithmetic expression: {expression!r}") from None
    try:
        value = _eval(tree.body, 0)
    except ToolError:
        raise
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("the result is too large") from None
    except (ValueError, TypeError) as error:
        raise ToolError(f"math error: {error}") from None
    return _format(value)


def _eval(node: ast.AST, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ToolError("the expression is nested too deeply")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _checked(node.value)
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_eval(node.operand, depth + 1)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
                raise ToolError("the result is too large")
        return _checked(_BINARY[type(node.op)](left, right))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
        and len(node.args) <= 8
    ):
        args = [_eval(arg, depth + 1) for arg in node.args]
        return _checked(_FUNCTIONS[node.func.id](*args))
    if isinstance(node, ast.Name):
        raise ToolError(f"unknown name {node.id!r}; only pi, e and tau are defined")
    raise ToolError(f"{type(node).__name__} is not allowed in an expression")


def _check_power(base: Any, exponent: Any) -> None:
    if isinstance(exponent, int) and abs(exponent) > 100_000:
        raise ToolError("the exponent is too large")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * math.log2(abs(base)) > MAX_INT_BITS:
            raise ToolError("the result is too large")


def _checked(value: Any) -> Any:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError("the result is too large")
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        raise ToolError("the result is not a finite number")
    if isinstance(value, complex):
        raise ToolError("the result is not a real number")
    return value


def _format(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.12g}"


def clock(timezone: str = "UTC") -> str:
    """The current date and time in a time zone.

    Args:
        timezone: an IANA time zone name such as "Europe/Lisbon", "America/New_York" or "UTC".
    """
    name = resolve_zone(timezone)
    now = datetime.now(ZoneInfo(name))
    offset = now.strftime("%z")
    return f"{now:%Y-%m-%d %H:%M:%S} ({now:%A}) in {name}, UTC{offset[:3]}:{offset[3:]}"


def resolve_zone(text: str) -> str:
    """An IANA zone from a name or a city ("Berlin", "new york", "Asia/Tokyo"): small models pass cities."""
    wanted = text.strip()
    if not wanted:
        raise ToolError("no time zone given; use an IANA name like Europe/Berlin")
    try:
        ZoneInfo(wanted)
        return wanted
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a name that is a directory of the zone database ("Europe") or unreadable.
        pass
    key = wanted.lower().replace(" ", "_")
    matches = sorted(
        zone
        for zone in available_timezones()
        if zone.lower() == key or zone.lower().rsplit("/", 1)[-1] == key.rsplit("/", 1)[-1]
    )
    # Prefer the canonical continent zones over legacy aliases ("Europe/Berlin", not "Etc/...").
    canonical = [z for z in matches if z.split("/", 1)[0] in _CONTINENTS]
    if canonical or matches:
        return (canonical or matches)[0]
    raise ToolError(f"unknown time zone {text!r}; use an IANA name like Europe/Berlin")


_CONTINENTS = {
    "Africa",
    "America",
    "Antarctica",
    "Asia",
    "Atlantic",
    "Australia",
    "Europe",
    "Indian",
    "Pacific",
}


def days_between(start: str, end: str) -> str:
    """The number of days from one date to another.

    Args:
        start: the first date, as YYYY-MM-DD.
        end: the second date, as YYYY-MM-DD.
    """
    try:
        first, second = date.fromisoformat(start.strip()), date.fromisoformat(end.strip())
    except ValueError:
        raise ToolError("dates must look like 2026-11-22") from None
    days = (second - first).days
    return f"{days} days from {first.isoformat()} to {second.isoformat()}"


def builtin_tools() -> list[Tool]:
    """The tools every chinwag has (document search and HTTP come with their own components)."""
    return [
        # Pure computations: nothing they are given leaves the process.
        Tool.from_function(calculate, name="calculator", timeout_s=2.0, outbound=False, isolated=True),
        Tool.from_function(clock, timeout_s=2.0, outbound=False),
        Tool.from_function(days_between, timeout_s=2.0, outbound=False),
    ]
