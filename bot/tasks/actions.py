"""Action items: the JSON schema the model's answer must fit, reading it back, the checklist.

The model answers by "calling" `record_action_items`, so the answer goes through the same
constrained decoding as tool calls (`bot.tools.grammar`, in required mode): on the local model it
cannot be anything but a well-formed call fitting the schema. What comes back is checked again
all the same (a model server cannot constrain), and a reply that does not fit is never shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.tasks.dates import resolve_date
from bot.tools.calls import parse_tool_calls
from bot.tools.grammar import ToolCallGrammar

TOOL_NAME = "record_action_items"

ITEMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "what": {"type": "string", "description": "the task, as an imperative"},
                    "who": {
                        "type": ["string", "null"],
                        "description": "the person who will do it, by name as written; null if nobody",
                    },
                    "when": {
                        "type": ["string", "null"],
                        "description": "the deadline as written ('Friday', 'Dec 12'); null if none",
                    },
                    "message": {"type": "integer", "description": "the number of the message it comes from"},
                },
                "required": ["what", "who", "when", "message"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["items"],
    "additionalProperties": False,
}

TOOL_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Record the action items found in the messages.",
        "parameters": ITEMS_SCHEMA,
    },
}


@dataclass(frozen=True)
class ActionItem:
    """One thing someone is to do: what, who (a name or None), by when (ISO date or None)."""

    what: str
    who: str | None
    when: str | None
    message: int | None = None
    said: str | None = None  # the deadline as written, when it could not be read as a date

    def as_json(self) -> dict[str, Any]:
        """The item as stored in the history and printed by `--json`."""
        return {"what": self.what, "who": self.who, "when": self.when, "message": self.message}


def fits(output: str, tool: dict[str, Any] = TOOL_SCHEMA) -> bool:
    """Whether `output` is exactly one well-formed call of `tool` (the grammar's own check)."""
    grammar = ToolCallGrammar([tool], required=True)
    return grammar.complete(grammar.feed(grammar.start(), output.strip()))


def read_call(output: str, tool: dict[str, Any] = TOOL_SCHEMA) -> dict[str, Any] | None:
    """The arguments of the call of `tool` in `output`, or None when it is not one fitting call."""
    name = tool["function"]["name"]
    if not fits(output, tool):
        return None
    parsed = parse_tool_calls(output)
    if len(parsed.calls) != 1 or parsed.calls[0].name != name:
        return None
    arguments = parsed.calls[0].arguments
    return arguments if isinstance(arguments, dict) else None


def structured_tool(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A custom command's output schema as the one tool the model must call."""
    return {"type": "function", "function": {"name": name, "description": description, "parameters": schema}}


def items_from(
    arguments: dict[str, Any], timestamps: dict[int, datetime], latest: datetime
) -> list[ActionItem]:
    """Action items from the call's arguments, relative deadlines resolved against the timestamp
    of the message that states them (else the latest message's)."""
    items: list[ActionItem] = []
    for raw in arguments.get("items") or []:
        what = " ".join(str(raw.get("what") or "").split())
        if not what:
            continue
        number = raw.get("message") if isinstance(raw.get("message"), int) else None
        said = timestamps.get(number or -1, latest)
        written = raw.get("when")
        when = resolve_date(written, said) if isinstance(written, str) else None
        who = raw.get("who") if isinstance(raw.get("who"), str) and raw.get("who").strip() else None
        items.append(
            ActionItem(
                what, who.strip() if who else None, when, number, written if written and not when else None
            )
        )
    return items


def merge(groups: list[list[ActionItem]]) -> list[ActionItem]:
    """Items from several pieces as one list, repeats (same what and who) once."""
    seen: set[tuple[str, str]] = set()
    merged: list[ActionItem] = []
    for group in groups:
        for item in group:
            key = (item.what.lower().rstrip("."), (item.who or "").lower())
            if key not in seen:
                seen.add(key)
                merged.append(item)
    return merged


def checklist(items: list[ActionItem], links: dict[int, str]) -> str:
    """The items as a Markdown checklist: what — who · when (and the message they come from)."""
    if not items:
        return "No action items found."
    lines = []
    for item in items:
        parts = [f"- [ ] {item.what}"]
        details = [f"**{item.who}**" if item.who else "_unassigned_"]
        if item.when:
            details.append(f"due {item.when}")
        elif item.said:
            details.append(f"due {item.said!r} (not a date)")
        parts.append(" — " + " · ".join(details))
        if item.message is not None:
            link = links.get(item.message)
            parts.append(f" ([{item.message}]({link}))" if link else f" [{item.message}]")
        lines.append("".join(parts))
    return "\n".join(lines)


def dumps(items: list[ActionItem]) -> str:
    """The items as JSON (what the history keeps beside the checklist)."""
    return json.dumps([item.as_json() for item in items], ensure_ascii=False)
