"""Slash commands, handled by the engine so that every platform gets the same ones."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bot.citations import source_label
from bot.errors import CommandError
from bot.params import SETTABLE, parse_setting
from bot.prompt import usable_in_context
from bot.seams.history import Conversation, History
from bot.seams.model import ChatModel
from bot.seams.retriever import Retriever
from bot.tools.registry import ToolRegistry
from bot.types import GenerationParams
from config import GenerationSettings

_COMMAND = re.compile(r"^/([A-Za-z][\w-]*)(?:\s+(.*))?$", re.DOTALL)
# Longest message shown per line in /history.
_HISTORY_CLIP = 300
_HISTORY_DEFAULT = 20


def parse_command(text: str) -> tuple[str, str] | None:
    """`("set", "temperature 0.2")` for "/set temperature 0.2"; None when text is not a command.

    "/usr/bin is full" is not a command: only a slash followed by a word, then space or end.
    """
    match = _COMMAND.match(text.strip())
    if not match:
        return None
    return match.group(1).lower(), (match.group(2) or "").strip()


class EngineView(Protocol):
    """The engine as commands see it, and all of it they may use; `Engine` provides it."""

    @property
    def history(self) -> History: ...

    @property
    def model(self) -> ChatModel: ...

    @property
    def retriever(self) -> Retriever | None: ...

    @property
    def window(self) -> int:
        """Tokens of the model's context window that this bot uses."""
        ...

    @property
    def generation(self) -> GenerationSettings:
        """The configured generation parameters, which a conversation's /set overrides."""
        ...

    def system_prompt(self, conv: Conversation) -> str: ...

    def docs_enabled(self, conv: Conversation) -> bool: ...

    def task_help(self) -> list[tuple[str, str]]:
        """(usage, summary) of the language tasks and the team's commands."""
        ...

    def params(self, conv: Conversation) -> GenerationParams: ...

    def tools_for(self, conv: Conversation) -> ToolRegistry: ...


@dataclass(frozen=True)
class Reply:
    """What a command answers, and which conversation is current afterwards."""

    text: str
    conversation: Conversation
    ok: bool = True


Handler = Callable[[EngineView, Conversation, str], Awaitable[Reply]]


@dataclass(frozen=True)
class Command:
    """A command's handler and its line in /help."""

    usage: str
    summary: str
    handler: Handler


async def _help(engine: EngineView, conv: Conversation, args: str) -> Reply:
    lines = ["**Commands**", ""]
    lines += [f"- `{c.usage}` — {c.summary}" for c in COMMANDS.values()]
    lines += [f"- `{usage}` — {summary}" for usage, summary in engine.task_help()]
    lines += ["", "Anything else you type is sent to the model."]
    return Reply("\n".join(lines), conv)


async def _reset(engine: EngineView, conv: Conversation, args: str) -> Reply:
    fresh = await engine.history.start_new(conv.key)
    return Reply(f"Started a new conversation (#{fresh.id}); #{conv.id} is kept in the history.", fresh)


async def _history(engine: EngineView, conv: Conversation, args: str) -> Reply:
    try:
        limit = int(args) if args else _HISTORY_DEFAULT
    except ValueError:
        raise CommandError("Usage: /history [N] (N = how many recent messages to show).") from None
    messages = [m for m in await engine.history.load(conv.id) if m.role in ("user", "assistant")]
    if not messages:
        return Reply(f"Conversation #{conv.id} has no messages yet.", conv)
    shown = messages[-max(limit, 1) :]
    lines = [f"**Conversation #{conv.id}** — {len(messages)} messages"]
    if conv.summary_until is not None:
        folded = sum(1 for m in messages if m.id <= conv.summary_until)
        lines.append(f"_{folded} older messages are summarised for the model._")
    lines.append("")
    for message in shown:
        who = "You" if message.role == "user" else "chinwag"
        text = " ".join(message.content.split())
        if len(text) > _HISTORY_CLIP:
            text = text[:_HISTORY_CLIP] + "…"
        mark = "" if usable_in_context(message) else f" _({message.status})_"
        if message.role == "assistant" and message.status == "interrupted":
            mark = " _(interrupted)_"
        if message.metadata.get("deleted"):
            mark = " _(deleted)_"
        lines.append(f"- **{who}:** {text}{mark}")
    return Reply("\n".join(lines), conv)


async def _set(engine: EngineView, conv: Conversation, args: str) -> Reply:
    key, _, value = args.partition(" ")
    if not key:
        keys = ", ".join(SETTABLE)
        raise CommandError(f"Usage: /set KEY VALUE, where KEY is one of {keys}.")
    parsed = parse_setting(engine.generation, key, value, max_reply_tokens=engine.window // 2)
    key = key.lower()
    updated = await engine.history.update_settings(conv.id, {key: parsed})
    if parsed is None:
        default = getattr(engine.generation, key)
        return Reply(f"{key} is back to the default ({_show(default)}).", updated)
    return Reply(f"{key} = {_show(parsed)} for this conversation.", updated)


async def _system(engine: EngineView, conv: Conversation, args: str) -> Reply:
    if not args:
        return Reply(f"System prompt:\n\n> {engine.system_prompt(conv)}", conv)
    if args.lower() in ("default", "reset"):
        updated = await engine.history.update_settings(conv.id, {"system": None})
        return Reply("System prompt is back to the default.", updated)
    limit = engine.window // 4
    if engine.model.count_text_tokens(args) > limit:
        raise CommandError(f"That system prompt is too long: at most {limit} tokens.")
    updated = await engine.history.update_settings(conv.id, {"system": args})
    return Reply("System prompt set for this conversation.", updated)


async def _settings(engine: EngineView, conv: Conversation, args: str) -> Reply:
    params = engine.params(conv)
    lines = [f"**Settings of conversation #{conv.id}**", ""]
    for key in SETTABLE:
        source = "this conversation" if key in conv.settings else "default"
        lines.append(f"- `{key}` = {_show(getattr(params, key))} ({source})")
    source = "this conversation" if "system" in conv.settings else "default"
    lines += ["", f"System prompt ({source}):", "", f"> {engine.system_prompt(conv)}"]
    return Reply("\n".join(lines), conv)


async def _model(engine: EngineView, conv: Conversation, args: str) -> Reply:
    info = engine.model.info
    lines = [f"- **model:** {info.name}"]
    if info.server is not None:
        lines.append(f"- **server:** {info.server}")
    else:
        lines += [f"- **device:** {info.device}", f"- **dtype:** {info.dtype}"]
    lines.append(f"- **context window:** {info.context_window} tokens (this bot uses up to {engine.window})")
    lines += [f"- _{note}_" for note in info.notes]
    return Reply("\n".join(lines), conv)


async def _docs(engine: EngineView, conv: Conversation, args: str) -> Reply:
    if engine.retriever is None:
        raise CommandError("Document search is not available in this chinwag (no document store).")
    choice = args.strip().lower()
    if choice in ("on", "off"):
        updated = await engine.history.update_settings(conv.id, {"docs": choice == "on"})
        state = "on" if choice == "on" else "off"
        return Reply(f"Document search is {state} for this conversation.", updated)
    if choice:
        raise CommandError("Usage: /docs on|off")
    state = "on" if engine.docs_enabled(conv) else "off"
    return Reply(f"Document search is {state} for this conversation (`/docs on|off` changes it).", conv)


async def _sources(engine: EngineView, conv: Conversation, args: str) -> Reply:
    messages = await engine.history.load(conv.id)
    last = next((m for m in reversed(messages) if m.role == "assistant"), None)
    if last is None:
        return Reply("No reply yet in this conversation.", conv)
    sources = last.metadata.get("sources")
    if sources is None:
        return Reply("The last reply did not search the documents.", conv)
    searched = last.metadata.get("searched")
    if not sources and searched:
        # The reply said the documents do not hold the answer: show where it looked.
        sources, heading = searched, "**Passages searched for the last reply (none of them held the answer)**"
    elif not sources:
        return Reply("No passage was relevant enough for the last reply; it did not use the documents.", conv)
    else:
        heading = "**Passages used for the last reply**"
    texts: dict[str, str] = {}
    if engine.retriever is not None:
        found = await engine.retriever.get([s["id"] for s in sources])
        texts = {p.id: p.text for p in found}
    lines = [heading, ""]
    for source in sources:
        label = source_label(source["title"] or source["path"], source.get("location") or "")
        cited = " · cited" if source.get("cited") else ""
        lines.append(f"**[{source['n']}] {label}** (score {source['score']:.2f}{cited})")
        text = texts.get(source["id"])
        quoted = _clip(text, 500) if text else "(no longer in the document store)"
        lines += ["", *(f"> {line}" for line in quoted.splitlines()), ""]
    return Reply("\n".join(lines).rstrip(), conv)


async def _tools(engine: EngineView, conv: Conversation, args: str) -> Reply:
    choice = args.strip().lower()
    if choice in ("on", "off"):
        updated = await engine.history.update_settings(conv.id, {"tools": choice == "on"})
        return Reply(f"Tools are {choice} for this conversation.", updated)
    if choice:
        raise CommandError("Usage: /tools [on|off]")
    tools = engine.tools_for(conv)
    if not tools.tools:
        return Reply("No tools are enabled in this conversation.", conv)
    lines = ["**Tools the model may call here**", ""]
    for tool in tools.tools.values():
        params = ", ".join(tool.arguments.model_fields)
        approval = " (asks you first)" if tool.needs_approval else ""
        lines.append(f"- `{tool.name}({params})` — {tool.description}{approval}")
    return Reply("\n".join(lines), conv)


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _show(value: object) -> str:
    return "random" if value is None else str(value)


COMMANDS: dict[str, Command] = {
    "help": Command("/help", "this list", _help),
    "reset": Command("/reset", "start a new conversation", _reset),
    "history": Command("/history [N]", "the last N messages of this conversation", _history),
    "set": Command(
        "/set KEY VALUE",
        "change a setting for this conversation: " + ", ".join(SETTABLE) + " ('default' restores one)",
        _set,
    ),
    "system": Command("/system [TEXT]", "show or set the system prompt ('default' restores it)", _system),
    "settings": Command("/settings", "the settings this conversation uses", _settings),
    "model": Command("/model", "the model: name, where it runs, context window", _model),
    "docs": Command("/docs [on|off]", "search the team's documents for this conversation, or not", _docs),
    "sources": Command("/sources", "the passages the last reply drew on, with their scores", _sources),
    "tools": Command(
        "/tools [on|off]", "the tools the model may call here; on/off for this conversation", _tools
    ),
}


async def run_command(engine: EngineView, conv: Conversation, name: str, args: str) -> Reply:
    """Run one command; unknown commands and bad arguments raise CommandError."""
    command = COMMANDS.get(name)
    if command is None:
        raise CommandError(f"Unknown command /{name}. Type /help for the list.")
    return await command.handler(engine, conv, args)
