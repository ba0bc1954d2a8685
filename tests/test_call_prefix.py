"""With tools offered, a reply is held back while it may still be a tool call and streams from the
moment it cannot be one: code in another language, JSON that is not a call, a Markdown link.

Driven through ToolLoop with a FakeModel that writes one character at a time, so the first text
shown says exactly where the reply was released. Every form of call the parser accepts is checked
never to be released (a released call would be shown instead of run).
"""

from __future__ import annotations

import pytest

from bot.toolloop import ToolLoop
from bot.tools.calls import parse_tool_calls
from bot.tools.registry import Tool, ToolRegistry
from bot.types import ChatMessage, GenerationParams, TextDelta, ToolCall
from config.settings import ToolsSettings
from tests.fakes import FakeModel

PROMPT = [ChatMessage("system", "You help."), ChatMessage("user", "What is 6 * 7?")]
ARGS = '{"a": 6, "b": 7}'


def tools() -> ToolRegistry:
    def multiply(a: int, b: int) -> int:
        """Multiply two numbers."""
        return a * b

    registry = ToolRegistry()
    registry.add(Tool.from_function(multiply))
    return registry


async def first_shown(reply: str) -> tuple[str | None, list[ToolCall]]:
    """Stream `reply` a character at a time with tools offered: the first text shown (None if
    none was) and the calls that ran."""
    model = FakeModel()
    model.enqueue(*reply)
    model.enqueue("It is 42.")
    loop = ToolLoop(model, GenerationParams(), tools(), ToolsSettings(), 11)
    shown: str | None = None
    calls: list[ToolCall] = []
    async for event in loop.run(PROMPT):
        if isinstance(event, TextDelta) and shown is None:
            shown = event.text
        elif isinstance(event, ToolCall):
            calls.append(event)
    return shown, calls


@pytest.mark.parametrize(
    ("reply", "released_at"),
    [
        ("```python\nprint(6 * 7)\n```", "```p"),
        ("```bash\necho 42\n```", "```b"),
        ("  ```js\nlet x = 42;\n```", "  ```js\n"),
        ('```json\n{"answer": 42}\n```', '```json\n{"an'),
        ("```\ndef f():\n    return 42\n```", "```\nd"),
        ('{"answer": 42, "why": "6 * 7"}', '{"an'),
        ('\n{ "city": "Paris" }', '\n{ "c'),
        ("{{ answer }} is a template.", "{{"),
        ("[1, 2] are numbers.", "[1"),
        ("[the docs](https://example.org) say 42.", "[t"),
        ('[{"x": 1}]', '[{"x'),
        ("<tools> are nice.", "<tools"),
        ("42.", "4"),
    ],
)
async def test_a_reply_that_cannot_be_a_call_streams_from_where_that_is_plain(
    reply: str, released_at: str
) -> None:
    assert parse_tool_calls(reply).calls == []  # the parser agrees: none of these is a call
    shown, calls = await first_shown(reply)
    assert shown == released_at and calls == []


@pytest.mark.parametrize(
    "call",
    [
        f'{{"name": "multiply", "arguments": {ARGS}}}',
        f'\n  {{"name": "multiply", "arguments": {ARGS}}}',
        f'{{"arguments": {ARGS}, "name": "multiply"}}',
        f'{{"tool": "multiply", "args": {ARGS}}}',
        f'{{"function": {{"name": "multiply", "arguments": {ARGS}}}}}',
        f'{{"type": "function", "function": {{"name": "multiply", "arguments": {ARGS}}}}}',
        f'[{{"name": "multiply", "arguments": {ARGS}}}]',
        f'<tool_call>{{"name": "multiply", "arguments": {ARGS}}}</tool_call>',
        f'```json\n{{"name": "multiply", "arguments": {ARGS}}}\n```',
        f'```JSON\n{{"name": "multiply", "arguments": {ARGS}}}\n```',
        f'```tool_call\n{{"name": "multiply", "arguments": {ARGS}}}\n```',
        f'```tool\n[{{"name": "multiply", "arguments": {ARGS}}}]\n```',
        f'```\n{{"name": "multiply", "arguments": {ARGS}}}\n```',
    ],
)
async def test_a_call_in_any_form_the_parser_accepts_is_never_shown_and_runs(call: str) -> None:
    assert [c.name for c in parse_tool_calls(call).calls] == ["multiply"]
    shown, calls = await first_shown(call)
    assert [(c.name, c.result) for c in calls] == [("multiply", "42")]
    assert shown == "It is 42."


async def test_json_that_opens_like_a_call_but_is_none_is_shown_whole_at_its_end() -> None:
    reply = '{"id": 7, "label": "seven"}'  # "id" may open an OpenAI-style call: held back
    assert parse_tool_calls(reply).calls == [] and not parse_tool_calls(reply).malformed
    shown, calls = await first_shown(reply)
    assert shown == reply and calls == []
