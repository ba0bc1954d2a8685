"""Finding tool calls in model output, in every form small models produce.

Qwen's template asks for `<tool_call>{...}</tool_call>`; Qwen2.5-Coder-0.5B mostly answers with a
fenced ```json block instead, and other models with bare JSON. A call is an object with a "name"
and "arguments" (also accepted: "parameters", "args", "input", a JSON string of arguments, and
{"function": {"name", "arguments"}}).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_FENCED = re.compile(r"```(?:json|tool_call|tool)?\s*\n?(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class ParsedCall:
    """A tool call as the model wrote it (arguments not yet validated)."""

    name: str
    arguments: Any
    raw: str


@dataclass(frozen=True)
class Parsed:
    """Calls found in a reply, the text around them, and calls that were not valid JSON."""

    calls: list[ParsedCall] = field(default_factory=list)
    text: str = ""
    malformed: list[str] = field(default_factory=list)


def parse_tool_calls(output: str) -> Parsed:
    """Tool calls in `output`: tagged first, then fenced JSON, then a reply that is bare JSON."""
    for pattern in (_TAGGED, _FENCED):
        matches = list(pattern.finditer(output))
        if not matches:
            continue
        calls: list[ParsedCall] = []
        malformed: list[str] = []
        for match in matches:
            body = match.group(1).strip()
            found = _calls_in(body)
            if found is None:
                # A fenced block of ordinary JSON or code is not a call; a tagged one is a bad call.
                if pattern is _TAGGED or _looks_like_call(body):
                    malformed.append(body)
                continue
            calls += [ParsedCall(name, args, body) for name, args in found]
        if calls or malformed:
            rest = pattern.sub("", output).strip()
            return Parsed(calls, rest, malformed)
    stripped = output.strip()
    if stripped.startswith(("{", "[")):
        found = _calls_in(stripped)
        if found is not None:
            return Parsed([ParsedCall(n, a, stripped) for n, a in found], "", [])
        if _looks_like_call(stripped):
            return Parsed([], "", [stripped])
    return Parsed([], output, [])


def _looks_like_call(body: str) -> bool:
    return bool(re.search(r'"(name|function)"\s*:', body))


def _calls_in(body: str) -> list[tuple[str, Any]] | None:
    try:
        value = json.loads(body)
    except ValueError:
        value = _first_json(body)
        if value is None:
            return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        call = _call(item)
        if call is None:
            return None
        calls.append(call)
    return calls or None


def _call(item: Any) -> tuple[str, Any] | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):
        item = item["function"]
    name = item.get("name") or item.get("tool")
    if not isinstance(name, str) or not name.strip():
        return None
    arguments: Any = {}
    for key in ("arguments", "parameters", "args", "input"):
        if key in item:
            arguments = item[key]
            break
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            pass  # left as a string: validation says it must be an object
    return name.strip(), arguments


def _first_json(text: str) -> Any:
    """The first complete JSON object in `text` (models add words around it)."""
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char in "{[":
            try:
                value, _ = decoder.raw_decode(text[start:])
                return value
            except ValueError:
                continue
    return None
