"""Tools: schemas from signatures, argument validation, call parsing in every syntax, built-in tools."""

from __future__ import annotations

import re
import time

import pytest

from bot.tools.builtin import builtin_tools, calculate, clock, days_between
from bot.tools.calls import parse_tool_calls
from bot.tools.registry import Tool, ToolError, ToolRegistry


def lookup_order(order_id: int, include_items: bool = False, region: str = "eu") -> str:
    """Look up an order by id.

    Args:
        order_id: the order number printed on the invoice.
        include_items: whether to list the items too.
    """
    return f"{order_id}:{include_items}:{region}"


def test_the_schema_comes_from_the_signature_and_docstring() -> None:
    tool = Tool.from_function(lookup_order)
    schema = tool.schema()
    assert schema["type"] == "function"
    function = schema["function"]
    assert (function["name"], function["description"]) == ("lookup_order", "Look up an order by id.")
    params = function["parameters"]
    assert params["required"] == ["order_id"] and params["additionalProperties"] is False
    assert params["properties"]["order_id"] == {
        "type": "integer",
        "description": "the order number printed on the invoice.",
    }
    assert params["properties"]["include_items"]["default"] is False
    assert params["properties"]["region"] == {"type": "string", "default": "eu"}


def test_arguments_are_validated_with_messages_a_model_can_act_on() -> None:
    tool = Tool.from_function(lookup_order)
    assert tool.validate({"order_id": "42"}) == {"order_id": 42, "include_items": False, "region": "eu"}
    with pytest.raises(ToolError, match=r"order_id: Field required"):
        tool.validate({})
    with pytest.raises(ToolError, match=r"order_id: Input should be a valid integer"):
        tool.validate({"order_id": "forty-two"})
    # Unknown keys (small models copy "type" from the schema) are dropped, not fatal.
    assert tool.validate({"order_id": 1, "type": "integer"}) == {
        "order_id": 1,
        "include_items": False,
        "region": "eu",
    }
    with pytest.raises(ToolError, match="must be a JSON object"):
        tool.validate("order 42")


def test_functions_that_cannot_be_described_are_refused() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        """Something."""

    def undocumented(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="no type hint"):
        Tool.from_function(untyped)
    with pytest.raises(ValueError, match="docstring"):
        Tool.from_function(undocumented)


def test_the_registry_names_the_real_tools_when_one_is_invented() -> None:
    registry = ToolRegistry()
    for tool in builtin_tools():
        registry.add(tool)
    with pytest.raises(
        ToolError, match="no tool named 'weather'; the tools are: calculator, clock, days_between"
    ):
        registry.get("weather")
    with pytest.raises(ValueError, match="two tools"):
        registry.add(builtin_tools()[0])
    assert [s["function"]["name"] for s in registry.only(["clock"]).schemas()] == ["clock"]


# Parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "output",
    [
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1234*5678"}}\n</tool_call>',
        '```json\n{"name": "calculator", "arguments": {"expression": "1234*5678"}}\n```',
        '{"name": "calculator", "arguments": {"expression": "1234*5678"}}',
        '{"name": "calculator", "parameters": {"expression": "1234*5678"}}',
        '{"function": {"name": "calculator", "arguments": "{\\"expression\\": \\"1234*5678\\"}"}}',
        'Let me calculate.\n```\n{"name": "calculator", "arguments": {"expression": "1234*5678"}}\n```',
        '<tool_call>{"name": "calculator", "arguments": {"expression": "1234*5678"}}',  # unterminated
    ],
)
def test_calls_are_found_in_every_syntax_small_models_use(output: str) -> None:
    parsed = parse_tool_calls(output)
    assert [(c.name, c.arguments) for c in parsed.calls] == [("calculator", {"expression": "1234*5678"})]
    assert parsed.malformed == []


def test_several_calls_and_the_text_around_them() -> None:
    parsed = parse_tool_calls(
        'Checking both.\n<tool_call>{"name": "clock", "arguments": {"timezone": "Asia/Tokyo"}}</tool_call>\n'
        '<tool_call>{"name": "clock", "arguments": {}}</tool_call>'
    )
    assert [(c.name, c.arguments) for c in parsed.calls] == [
        ("clock", {"timezone": "Asia/Tokyo"}),
        ("clock", {}),
    ]
    assert parsed.text == "Checking both."


def test_broken_json_in_a_call_is_reported_not_ignored() -> None:
    parsed = parse_tool_calls('<tool_call>{"name": "calculator", "arguments": {"expression": 12*</tool_call>')
    assert parsed.calls == [] and len(parsed.malformed) == 1
    fenced = parse_tool_calls('```json\n{"name": "calculator", "arguments": {expression: 1}}\n```')
    assert fenced.calls == [] and len(fenced.malformed) == 1


@pytest.mark.parametrize(
    "output",
    [
        "The answer is 42.",
        'Here is a config example:\n```json\n{"debug": true, "port": 8080}\n```',
        "```python\nprint('hello')\n```",
        '{"debug": true}',
    ],
)
def test_ordinary_replies_and_code_blocks_are_not_calls(output: str) -> None:
    parsed = parse_tool_calls(output)
    assert parsed.calls == [] and parsed.malformed == [] and parsed.text == output


# Calculator ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("1234*5678", "7006652"),
        ("2^10", "1024"),
        ("(3 + 4) * 2 - 10 / 4", "11.5"),
        ("sqrt(2)", "1.41421356237"),
        ("factorial(20)", "2432902008176640000"),
        ("2**64", "18446744073709551616"),
        ("log(8, 2)", "3"),
        ("round(pi, 4)", "3.1416"),
        ("-7 // 2", "-4"),
        ("max(3, 9, 4) % 5", "4"),
        ("12 × 3 ÷ 4", "9"),
    ],
)
def test_the_calculator_is_exact(expression: str, result: str) -> None:
    assert calculate(expression) == result


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('ls')", "not allowed"),
        ("open('/etc/passwd').read()", "not allowed"),
        ("(1).__class__", "not allowed"),
        ("x + 1", "unknown name 'x'"),
        ("9**9**9**9", "too large"),
        ("10**5000", "too large"),
        ("factorial(100000)", "limited to n <= 450"),
        ("factorial(-1)", "non-negative"),
        ("1/0", "division by zero"),
        ("1e308 * 10", "not a finite number"),
        ("sqrt(-1)", "math error"),
        ("-" * 300 + "1", "nested too deeply"),
        ("1 +" * 300, "longer than 500|not an arithmetic expression"),
        ("[1, 2, 3]", "not allowed"),
        ("lambda: 1", "not allowed"),
        ("", "empty"),
    ],
)
def test_the_calculator_refuses_hostile_or_impossible_input_quickly(expression: str, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ToolError, match=message):
        calculate(expression)
    assert time.perf_counter() - started < 1.0


def test_costs_that_grow_with_an_argument_are_bounded_before_computing() -> None:
    # round(7, -N) computes 10**N first, holding the interpreter's lock (the reported freeze).
    started = time.perf_counter()
    assert calculate("round(7, -2*10**7)") == "0"
    assert calculate("round(-7.5, -10**9)") == "0"
    assert calculate("round(123456, -2)") == "123500"
    assert calculate("round(2.25, 10**9)") == "2.25"
    assert time.perf_counter() - started < 1.0
    with pytest.raises(ToolError, match="whole number"):
        calculate("round(7, 1.5)")


def test_huge_products_are_refused_before_they_are_computed() -> None:
    assert len(calculate("10**1200")) == 1201  # within the limit on its own
    with pytest.raises(ToolError, match="too large"):
        calculate("10**1200 * 10**1200 * 10**1200")


# Clock -----------------------------------------------------------------------------------


def test_the_clock_tells_the_time_in_a_zone() -> None:
    text = clock("Asia/Tokyo")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(\w+day\) in Asia/Tokyo, UTC\+09:00", text)
    assert "UTC+00:00" in clock()
    with pytest.raises(ToolError, match="unknown time zone 'Mars/Base'"):
        clock("Mars/Base")


@pytest.mark.parametrize("name", ["Europe", "America/", "../../etc/passwd", "UTC\x00"])
def test_zone_names_that_are_paths_or_directories_are_one_line_tool_errors(name: str) -> None:
    # "Europe" is a directory of the zone database: IsADirectoryError, before.
    with pytest.raises(ToolError, match=r"unknown time zone|no time zone"):
        clock(name)


def test_days_between_dates() -> None:
    assert days_between("2026-01-01", "2026-11-22") == "325 days from 2026-01-01 to 2026-11-22"
    assert days_between("2026-03-01", "2026-02-01").startswith("-28 days")
    with pytest.raises(ToolError, match="dates must look like"):
        days_between("tomorrow", "2026-01-01")
