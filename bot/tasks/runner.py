"""Language tasks on what the team already wrote: summarise, translate, extract action items, and
the team's own commands. One place for every surface.

An adapter hands the messages in (`Incoming.source`: a Slack thread, a Discord channel, a file);
without them a task reads the conversation itself, or the text after the command. Inputs longer
than the model's window are summarised piece by piece, then combined (map-reduce), with a
`Notice` per piece ("Reading 340 messages… part 2 of 5"). Each task is stored as a turn: the
request with what was read (message ids included) and the answer, so a follow-up question works.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bot.errors import ChinwagError, TaskError
from bot.prompt import usable_in_context
from bot.seams.history import Conversation, History, NewMessage, StoredMessage, UserRef
from bot.seams.model import ChatModel, Chunk, Constrain, Finish
from bot.tasks import actions
from bot.tasks.languages import Language, language
from bot.tasks.protect import protect, restore
from bot.types import (
    ChatMessage,
    Event,
    GenerationParams,
    Incoming,
    Notice,
    SourceMessage,
    Status,
    TextDelta,
    TurnDone,
    TurnFailed,
    TurnStarted,
    Usage,
)
from config import Settings
from config.settings import CustomCommand

log = logging.getLogger(__name__)

BUILTIN = {
    "summarize": (
        "/summarize [bots] [TEXT]",
        "summarise this conversation (or TEXT); `bots` keeps bots' messages",
    ),
    "translate": (
        "/translate LANG [TEXT]",
        "translate TEXT (or the last message) into LANG (a name or code)",
    ),
    "actions": ("/actions [TEXT]", "the action items of this conversation (or TEXT): what, who, by when"),
}
_ALIASES = {"summarise": "summarize", "summary": "summarize", "tr": "translate", "action-items": "actions"}
_BOTS_WORDS = {"bots", "+bots", "--bots", "with-bots"}
_VERBS = {"summarize": "summarise", "translate": "translate", "actions": "read for action items"}
# Tokens kept free for the prompt's own wording and the template around it.
_PROMPT_SLACK = 160
# Tokens of notes written per piece of a long input.
_NOTES_TOKENS = 256

SUMMARY_SYSTEM = (
    "You summarise team chat. Each message is numbered [n] and starts with its author's name. "
    "Write a short summary as Markdown bullet points: what was discussed, what was decided, open "
    "questions, and who said or will do what, by name. End each point with the numbers of the "
    "messages it comes from, like [3] or [4][9]. Use only what the messages say."
)
NOTES_SYSTEM = (
    "You take notes on one part of a long team chat. Each message is numbered [n] and starts with "
    "its author's name. Write brief bullet notes of the key points, decisions, action items and "
    "open questions, with who said what by name, each ending with the numbers of the messages it "
    "comes from, like [12]. Use only what the messages say."
)
COMBINE_SYSTEM = (
    "Below are notes on consecutive parts of one long team chat; the numbers in brackets are "
    "message numbers. Write one short summary of the whole chat as Markdown bullet points: what "
    "was discussed, what was decided, open questions, and who said or will do what, by name. Keep "
    "the message numbers at the end of each point, like [3]. Use only what the notes say."
)
ACTIONS_SYSTEM = (
    "You extract action items from team chat. Each message is numbered [n] and starts with its "
    "author's name. An action item is something a person agreed, offered or was asked to do. Call "
    f"{actions.TOOL_NAME} once with every action item: what (short, imperative), who (the name "
    "of the person who will do it, as written in the messages, or null), when (the deadline "
    "exactly as written, such as 'Friday', 'tomorrow' or 'Dec 12', or null), message (the number "
    "of the message it comes from). With no action items, call it with an empty list."
)
TRANSLATE_SYSTEM = (
    "You are a translator. Translate the user's text into {language}. Keep the meaning, the tone "
    "and the line breaks. Copy every mark like ⟦1⟧ exactly as it is, in the same place. Write only "
    "the translation, nothing else."
)
CUSTOM_SYSTEM = "You help a team with the messages they wrote in their chat. Follow the instruction exactly."


@dataclass
class _Run:
    """One task's model calls: their token counts, added up."""

    model: ChatModel
    started: float = field(default_factory=time.monotonic)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_ms: int | None = None
    text: str = ""  # what the streamed stage has said so far (kept if it is cut short)

    def usage(self) -> Usage:
        elapsed = int((time.monotonic() - self.started) * 1000)
        return Usage(self.prompt_tokens, self.completion_tokens, elapsed, self.first_token_ms)

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        tools: Sequence[dict[str, Any]] | None = None,
        constrain: Constrain = False,
    ) -> AsyncGenerator[str, None]:
        async with aclosing(self.model.stream(messages, params, tools, constrain)) as stream:
            async for item in stream:
                if isinstance(item, Chunk):
                    if self.first_token_ms is None:
                        self.first_token_ms = int((time.monotonic() - self.started) * 1000)
                    yield item.text
                elif isinstance(item, Finish):
                    self.prompt_tokens += item.prompt_tokens
                    self.completion_tokens += item.completion_tokens

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        tools: Sequence[dict[str, Any]] | None = None,
        constrain: Constrain = False,
    ) -> str:
        parts = [piece async for piece in self.stream(messages, params, tools, constrain)]
        return "".join(parts).strip()


@dataclass(frozen=True)
class _Outcome:
    """What a task produced: the answer shown, and what the history keeps beside it."""

    text: str
    metadata: dict[str, Any]


class Tasks:
    """Runs `/summarize`, `/translate`, `/actions` and the configured commands for the engine."""

    def __init__(self, model: ChatModel, history: History, settings: Settings, window: int) -> None:
        self.model = model
        self.history = history
        self.config = settings.tasks
        self.window = window
        self.commands: dict[str, CustomCommand] = {c.name: c for c in settings.tasks.commands}

    # What there is --------------------------------------------------------------------

    def canonical(self, name: str) -> str | None:
        """The task a command name runs (`summarise` → `summarize`), or None for other commands."""
        name = _ALIASES.get(name, name)
        return name if name in BUILTIN or name in self.commands else None

    def help_lines(self) -> list[tuple[str, str]]:
        """(usage, summary) for /help: the built-in tasks, then the team's commands."""
        lines = list(BUILTIN.values())
        lines += [(f"/{c.name} [TEXT]", c.description or "a team command") for c in self.commands.values()]
        return lines

    # One task ---------------------------------------------------------------------------

    async def run(
        self, conv: Conversation, incoming: Incoming, name: str, args: str, user: UserRef
    ) -> AsyncGenerator[Event, None]:
        """Run one task as a turn: TurnStarted, Notices while it reads, the answer, TurnDone.
        Bad input (nothing to read, too much, an unknown language) raises TaskError before
        anything is stored, so the user gets one line and nothing partial."""
        task = self.canonical(name)
        assert task is not None
        include_bots = args.strip().lower() in _BOTS_WORDS
        rest = "" if include_bots else args.strip()
        target: Language | None = None
        if task == "translate":
            lang, _, rest = rest.partition(" ")
            if not lang:
                raise TaskError("Usage: /translate LANG [text] — LANG by name or code (French, fr, ja…).")
            target = language(lang)
            rest = rest.strip() if incoming.source is None else ""
        messages, label = await self._source(
            conv, incoming, rest, include_bots, task, latest_only=task == "translate"
        )

        stored = await asyncio.shield(self._store_request(conv, incoming, task, args, messages, label, user))
        yield TurnStarted(conv.id, stored.id)
        run = _Run(self.model)
        extra: dict[str, Any] = {"task": task, "reply_to": stored.id, "source": label}
        try:
            if task == "summarize":
                stage = self._summarize(run, messages, label, extra)
            elif task == "translate":
                assert target is not None
                stage = self._translate(run, messages, target, extra)
            elif task == "actions":
                stage = self._actions(run, messages, extra)
            else:
                stage = self._custom(run, self.commands[task], messages, label, extra)
            text = ""
            async with aclosing(stage) as events:
                async for event in events:
                    if isinstance(event, _Outcome):
                        text = event.text
                        extra.update(event.metadata)
                    else:
                        yield event
        except (asyncio.CancelledError, GeneratorExit):
            await asyncio.shield(self._store_reply(conv, run.text, "interrupted", run, extra))
            raise
        except Exception as error:
            told = str(error) if isinstance(error, ChinwagError) else "The model failed while working on it."
            if not isinstance(error, ChinwagError):
                log.exception("task %s failed in conversation %s", task, conv.id)
            failed = await self._store_reply(conv, run.text, "failed", run, {**extra, "error": told})
            yield TurnFailed(f"{told} Nothing was posted as an answer; please try again.", conv.id, failed.id)
            return
        done = await asyncio.shield(self._store_reply(conv, text, "complete", run, extra))
        yield TurnDone(conv.id, done.id, text, "complete", run.usage(), self.model.info.name, done.metadata)

    # What is read -----------------------------------------------------------------------

    async def _source(
        self,
        conv: Conversation,
        incoming: Incoming,
        text: str,
        include_bots: bool,
        task: str,
        latest_only: bool = False,
    ) -> tuple[list[SourceMessage], str]:
        if incoming.source is not None:
            found, label = list(incoming.source), incoming.source_label or "the messages"
        elif text:
            found, label = [SourceMessage(text, author=incoming.user_name or "You")], "your text"
        else:
            found, label = await self._conversation(conv), f"conversation #{conv.id}"
            if latest_only:
                found = found[-1:]
                label = "the last message"
        kept = [m for m in found if m.text.strip() and (include_bots or not m.bot)]
        verb = _VERBS.get(task, f"run /{task} on")
        if not kept:
            hidden = len([m for m in found if m.bot and m.text.strip()])
            why = (
                f" ({hidden} from bots are left out: add `bots` to include them)"
                if hidden and not include_bots
                else ""
            )
            raise TaskError(f"Nothing to {verb}: {label} has no messages{why}.")
        if len(kept) > self.config.max_messages:
            raise TaskError(
                f"{label} has {len(kept)} messages; one task reads at most {self.config.max_messages}: "
                "pick a shorter window (24h, or a number of messages)."
            )
        return kept, label

    async def _conversation(self, conv: Conversation) -> list[SourceMessage]:
        """The conversation's own turns (tasks' requests and answers left out)."""
        stored = await self.history.load(conv.id)
        return [
            SourceMessage(m.content, author=_author(m), id=str(m.id), timestamp=m.created_at)
            for m in stored
            if usable_in_context(m) and "task" not in m.metadata
        ]

    # Storing ------------------------------------------------------------------------------

    async def _store_request(
        self,
        conv: Conversation,
        incoming: Incoming,
        task: str,
        args: str,
        messages: list[SourceMessage],
        label: str,
        user: UserRef,
    ) -> StoredMessage:
        request = f"/{task} {args}".strip()
        content = request
        if incoming.source is not None or label == "your text":
            # What was read goes into the turn (as far as a follow-up prompt has room for it).
            transcript = "\n".join(_numbered(messages))
            content = f"{request}\n\nRead from {label} ({len(messages)} messages):\n\n"
            content += self._clip(transcript, self.window // 3)
        metadata: dict[str, Any] = {
            "task": task,
            "source": label,
            "read": [m.id for m in messages if m.id is not None],
            "read_count": len(messages),
            "platform_message_id": incoming.message_id,
        }
        return await self.history.append(
            conv.id,
            NewMessage("user", content, user=user, metadata=metadata, external_id=incoming.message_id),
        )

    async def _store_reply(
        self, conv: Conversation, text: str, status: Status, run: _Run, metadata: dict[str, Any]
    ) -> StoredMessage:
        usage = run.usage()
        return await self.history.append(
            conv.id,
            NewMessage(
                "assistant",
                text,
                status=status,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                latency_ms=usage.latency_ms,
                model=self.model.info.name,
                metadata=dict(metadata),
            ),
        )

    # Budget -----------------------------------------------------------------------------

    def _piece_budget(self, system: str, reply_tokens: int) -> int:
        """Tokens of messages one model call may read, leaving room for its instructions and reply."""
        room = self.window - reply_tokens - self.model.count_text_tokens(system) - _PROMPT_SLACK
        budget = min(self.config.piece_tokens, room)
        if budget < 64:
            raise TaskError(f"The context window ({self.window} tokens) is too small for this task.")
        return budget

    def _pieces(self, lines: list[str], budget: int) -> list[list[str]]:
        """`lines` packed in order into pieces of at most `budget` tokens; a line longer than that
        is cut into several."""
        pieces: list[list[str]] = []
        current: list[str] = []
        used = 0
        for line in lines:
            for part in self._cut(line, budget):
                cost = self.model.count_text_tokens(part) + 1
                if current and used + cost > budget:
                    pieces.append(current)
                    current, used = [], 0
                current.append(part)
                used += cost
        if current:
            pieces.append(current)
        return pieces

    def _cut(self, line: str, budget: int) -> list[str]:
        tokens = self.model.count_text_tokens(line)
        if tokens + 1 <= budget:
            return [line]
        words = line.split(" ")
        per = max(1, int(len(words) * (budget - 8) / max(tokens, 1)))
        return [" ".join(words[i : i + per]) for i in range(0, len(words), per)]

    def _clip(self, text: str, limit: int) -> str:
        tokens = self.model.count_text_tokens(text)
        while tokens > limit and text:
            text = text[: int(len(text) * limit / tokens * 0.95)]
            tokens = self.model.count_text_tokens(text)
        return text if tokens <= limit else ""

    async def _condense(
        self, run: _Run, lines: list[str], budget: int, count: int
    ) -> AsyncGenerator[Notice | list[str], None]:
        """Map, then reduce until it fits: notes on each piece, notes on the notes while they do
        not fit in `budget`; the last item is the lines that fit (the input itself when it did)."""
        pieces = self._pieces(lines, budget)
        if len(pieces) == 1:
            yield pieces[0]
            return
        # Notes of at most a quarter of a piece, so each round of combining reads at least four
        # and the rounds end: notes as long as a piece (a small `tasks.piece_tokens`) made every
        # round longer than the one before, without end.
        params = GenerationParams(
            temperature=0.0, max_tokens=min(_NOTES_TOKENS, budget // 4), repetition_penalty=1.05
        )
        notes: list[str] = []
        for index, piece in enumerate(pieces, start=1):
            yield Notice(f"Reading {count} messages… part {index} of {len(pieces)}")
            notes.append(await run.complete(_prompt(NOTES_SYSTEM, "\n".join(piece), SUMMARY_ASK), params))
        level = 1
        before = len(pieces)
        while len(pieces := self._pieces(notes, budget)) > 1:
            if len(pieces) >= before:  # cannot happen with short notes; never loop if it does
                raise TaskError("The notes on this input do not get shorter; raise tasks.piece_tokens.")
            before = len(pieces)
            level += 1
            yield Notice(f"Combining the notes of {len(notes)} parts… (round {level})")
            notes = [await run.complete(_prompt(COMBINE_SYSTEM, "\n\n".join(p)), params) for p in pieces]
        yield Notice(f"Combining {len(notes)} parts…")
        yield [f"Notes on part {i}:\n{note}" for i, note in enumerate(notes, start=1)]

    # The tasks --------------------------------------------------------------------------

    async def _summarize(
        self, run: _Run, messages: list[SourceMessage], label: str, extra: dict[str, Any]
    ) -> AsyncGenerator[Event | _Outcome, None]:
        reply = self.config.summary_tokens
        budget = self._piece_budget(SUMMARY_SYSTEM + SUMMARY_ASK + "\n".join(SUMMARY_SHOT), reply)
        lines = _numbered(messages)
        fitted: list[str] = []
        parts = 0
        async with aclosing(self._condense(run, lines, budget, len(messages))) as stages:
            async for stage in stages:
                if isinstance(stage, Notice):
                    parts += stage.text.startswith("Reading")
                    yield stage
                else:
                    fitted = stage
        if parts:
            prompt = _prompt(COMBINE_SYSTEM, "\n\n".join(fitted), SUMMARY_ASK)
        else:
            prompt = _prompt(SUMMARY_SYSTEM, "\n".join(fitted), SUMMARY_ASK, SUMMARY_SHOT)
        params = GenerationParams(temperature=0.0, max_tokens=reply, repetition_penalty=1.05)
        async for piece in run.stream(prompt, params):
            run.text += piece
            yield TextDelta(piece)
        text = link_citations(run.text.strip(), _links(messages))
        yield _Outcome(text, {"parts": max(parts, 1)})

    async def _translate(
        self, run: _Run, messages: list[SourceMessage], target: Language, extra: dict[str, Any]
    ) -> AsyncGenerator[Event | _Outcome, None]:
        if len(messages) == 1:
            whole = messages[0].text
        else:
            whole = "\n\n".join(f"{m.author}: {m.text}" if m.author else m.text for m in messages)
        protected, kept = protect(whole)
        system = TRANSLATE_SYSTEM.format(language=target.name)
        # The translation may be twice as long as the text (in tokens): a third of the room each.
        budget = self._piece_budget(system, 0) // 3
        paragraphs = [p for p in re.split(r"\n\s*\n", protected) if p.strip()]
        pieces = self._pieces(paragraphs, budget)
        out: list[str] = []
        for index, piece in enumerate(pieces, start=1):
            if len(pieces) > 1:
                yield Notice(f"Translating… part {index} of {len(pieces)}")
            text = "\n\n".join(piece)
            tokens = self.model.count_text_tokens(text)
            params = GenerationParams(temperature=0.0, max_tokens=min(2 * tokens + 64, self.window // 2))
            out.append(_unwrap(await run.complete(_prompt(system, text), params)))
        translated = restore("\n\n".join(out), kept)
        if not translated.strip():
            raise TaskError("The model gave no translation.")
        run.text = translated
        yield TextDelta(translated)
        yield _Outcome(translated, {"language": target.code})

    async def _actions(
        self, run: _Run, messages: list[SourceMessage], extra: dict[str, Any]
    ) -> AsyncGenerator[Event | _Outcome, None]:
        reply = 768  # a long list must not be cut off mid-JSON (a cut-off call does not fit)
        wording = ACTIONS_SYSTEM + ACTIONS_ASK + "\n".join(ACTIONS_SHOT) + json.dumps(actions.TOOL_SCHEMA)
        budget = self._piece_budget(wording, reply)
        pieces = self._pieces(_numbered(messages), budget)
        found: list[list[actions.ActionItem]] = []
        stamps = {n: m.timestamp for n, m in enumerate(messages, start=1) if m.timestamp is not None}
        latest = max(stamps.values(), default=datetime.now(UTC))
        for index, piece in enumerate(pieces, start=1):
            if len(pieces) > 1:
                yield Notice(f"Reading {len(messages)} messages… part {index} of {len(pieces)}")
            prompt = _prompt(ACTIONS_SYSTEM, "\n".join(piece), ACTIONS_ASK, ACTIONS_SHOT)
            arguments = await self._structured(run, prompt, actions.TOOL_SCHEMA, reply)
            found.append(actions.items_from(arguments, stamps, latest))
        items = actions.merge(found)
        text = actions.checklist(items, _links(messages))
        run.text = text
        yield TextDelta(text)
        yield _Outcome(text, {"action_items": [item.as_json() for item in items], "parts": len(pieces)})

    async def _structured(
        self, run: _Run, prompt: list[ChatMessage], tool: dict[str, Any], reply: int, temperature: float = 0.0
    ) -> dict[str, Any]:
        """The arguments of the model's call of `tool`, constrained to its schema; asked twice,
        then TaskError: an answer that does not fit is never shown."""
        params = GenerationParams(temperature=temperature, max_tokens=reply, repetition_penalty=1.0)
        for attempt in range(2):
            output = await run.complete(prompt, params, [tool], constrain="required")
            arguments = actions.read_call(output, tool)
            if arguments is not None:
                return arguments
            log.warning("task answer did not fit its schema (attempt %d, %d chars)", attempt + 1, len(output))
            params = GenerationParams(temperature=0.3, max_tokens=reply, seed=attempt + 1)
        raise TaskError("The model's answer did not fit the expected form, twice.")

    async def _custom(
        self,
        run: _Run,
        command: CustomCommand,
        messages: list[SourceMessage],
        label: str,
        extra: dict[str, Any],
    ) -> AsyncGenerator[Event | _Outcome, None]:
        reply = command.max_tokens or self.config.summary_tokens
        shots = "\n".join(e.input + e.output for e in command.examples)
        budget = self._piece_budget(command.prompt + shots + json.dumps(command.output_schema or {}), reply)
        fitted: list[str] = []
        async with aclosing(self._condense(run, _numbered(messages), budget, len(messages))) as stages:
            async for stage in stages:
                if isinstance(stage, Notice):
                    yield stage
                else:
                    fitted = stage
        thread = "\n".join(fitted)
        text = thread if fitted != _numbered(messages) else "\n\n".join(m.text for m in messages)
        prompt = [ChatMessage("system", CUSTOM_SYSTEM)]
        for example in command.examples:
            prompt += [
                ChatMessage("user", _fill(command.prompt, example.input, example.input)),
                ChatMessage("assistant", example.output),
            ]
        prompt.append(ChatMessage("user", _fill(command.prompt, thread, text)))
        temperature = command.temperature if command.temperature is not None else 0.0
        if command.output_schema is not None:
            tool = actions.structured_tool(
                command.name, command.output_schema, command.description or command.name
            )
            arguments = await self._structured(run, prompt, tool, reply, temperature)
            answer = "```json\n" + json.dumps(arguments, indent=2, ensure_ascii=False) + "\n```"
            run.text = answer
            yield TextDelta(answer)
            yield _Outcome(answer, {"output": arguments})
            return
        params = GenerationParams(temperature=temperature, max_tokens=reply, repetition_penalty=1.05)
        async for piece in run.stream(prompt, params):
            run.text += piece
            yield TextDelta(piece)
        yield _Outcome(link_citations(run.text.strip(), _links(messages)), {})


def _author(message: StoredMessage) -> str:
    if message.role == "assistant":
        return "chinwag"
    if message.user is not None and message.user.display_name:
        return message.user.display_name
    return "You"


def _numbered(messages: Sequence[SourceMessage]) -> list[str]:
    """One line per message: `[n] Author: text` (its lines joined), n counting from 1."""
    lines = []
    for n, message in enumerate(messages, start=1):
        text = " / ".join(line.strip() for line in message.text.strip().splitlines() if line.strip())
        lines.append(f"[{n}] {message.author}: {text}" if message.author else f"[{n}] {text}")
    return lines


def _links(messages: Sequence[SourceMessage]) -> dict[int, str]:
    return {n: m.link for n, m in enumerate(messages, start=1) if m.link}


def _prompt(
    system: str, content: str, ask: str | None = None, shot: tuple[str, str] | None = None
) -> list[ChatMessage]:
    """System instructions, an optional worked example, then the messages (and the ask again
    after them: small models follow what they read last)."""
    prompt = [ChatMessage("system", system)]
    if shot is not None:
        prompt += [ChatMessage("user", _ask(shot[0], ask)), ChatMessage("assistant", shot[1])]
    return [*prompt, ChatMessage("user", _ask(content, ask))]


def _ask(content: str, ask: str | None) -> str:
    return content if ask is None else f"{content}\n\n{ask}"


# One worked example per task: small models follow an example better than a description. It
# must not resemble a real thread: the 0.5B model copies an example's points into a summary of a
# thread on a similar topic (an earlier example about a slow login page put its "drop IE11
# support" into the summary of a thread about login latency). Message 3 asks someone else, so
# the owner of an item is the person who will do it, not the one who wrote the message.
_SHOT_CHAT = (
    "[1] Bea: the projector in the demo room died again during Friday's demo\n"
    "[2] Ugo: facilities say a new one arrives next month\n"
    "[3] Bea: Wen, can you book the big room for this week's demo?\n"
    "[4] Wen: sure, I'll book it today\n"
    "[5] Ugo: I'll ask facilities for a loaner by Thursday\n"
    "[6] Bea: thanks. let's also record the demos from now on\n"
    "[7] Wen: agreed, I'll set up the recording"
)
SUMMARY_SHOT = (
    _SHOT_CHAT,
    "- The demo room's projector broke during Friday's demo; a new one arrives next month [1][2].\n"
    "- Wen will book the big room today [3][4]; Ugo will ask facilities for a loaner by Thursday [5].\n"
    "- They agreed to record the demos from now on; Wen will set up the recording [6][7].",
)
_SHOT_ITEMS = [
    {"what": "Book the big room for this week's demo", "who": "Wen", "when": "today", "message": 4},
    {"what": "Ask facilities for a loaner projector", "who": "Ugo", "when": "by Thursday", "message": 5},
    {"what": "Set up recording of the demos", "who": "Wen", "when": None, "message": 7},
]
ACTIONS_SHOT = (
    _SHOT_CHAT,
    "<tool_call>\n"
    + json.dumps({"name": actions.TOOL_NAME, "arguments": {"items": _SHOT_ITEMS}})
    + "\n</tool_call>",
)
SUMMARY_ASK = (
    "Summarise the chat above in a few short bullet points, in your own words. Do not copy the messages."
)
ACTIONS_ASK = f"Call {actions.TOOL_NAME} with the action items of the chat above (only real tasks)."


def _fill(template: str, thread: str, text: str) -> str:
    # str.replace, not str.format: a team's prompt may hold braces of its own (JSON examples).
    return template.replace("{thread}", thread).replace("{text}", text)


_CITATION = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\](?!\()")
_PREAMBLE = re.compile(r"^(here is|here's|sure|translation)[^\n]*:\s*\n+", re.IGNORECASE)


def link_citations(text: str, links: dict[int, str]) -> str:
    """`[3]` and `[3, 5]` as links to those messages (`[3](url)`), where they have one."""
    if not links:
        return text

    def link(match: re.Match[str]) -> str:
        numbers = [int(n) for n in re.split(r"\s*[,;]\s*", match.group(1))]
        if not all(n in links for n in numbers):
            return match.group(0)
        # `[3](url)`, not `[[3]](url)`: nested brackets are no link in Slack's conversion.
        return " ".join(f"[{n}]({links[n]})" for n in numbers)

    return _CITATION.sub(link, text)


def _unwrap(text: str) -> str:
    """A translation without the chatter small models put around it."""
    text = _PREAMBLE.sub("", text.strip())
    if text.startswith("```") and text.endswith("```") and text.count("```") == 2:
        text = text.strip("`").split("\n", 1)[-1]
    return text.strip()
