"""The conversation engine: one turn from `Incoming` to a stream of events. Knows no platform."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass
from typing import Any

from bot.citations import (
    PASSAGES_INTRO,
    PASSAGES_TASK,
    cite_label,
    mark_cited,
    passage_block,
    passages_context,
    source_record,
)
from bot.commands import parse_command, run_command
from bot.errors import ChinwagError, CommandError, ConversationNotFoundError
from bot.metrics import Metrics
from bot.params import effective_params
from bot.prompt import PromptBudget
from bot.seams.history import Conversation, ConversationKey, History, NewMessage, StoredMessage, UserRef
from bot.seams.model import ChatModel, Chunk, Finish, Queued
from bot.seams.retriever import Passage, Retriever, scopes_for
from bot.tools.calls import parse_tool_calls
from bot.tools.registry import Tool, ToolError, ToolRegistry
from bot.types import (
    ChatMessage,
    CommandResult,
    Event,
    GenerationParams,
    Incoming,
    Notice,
    Status,
    TextDelta,
    ToolCall,
    ToolStatus,
    TurnDone,
    TurnFailed,
    TurnStarted,
    Usage,
)
from config import Settings

log = logging.getLogger(__name__)

# How often the budget may fold turns into the summary within one turn before giving up.
_MAX_FOLDS = 4
# Tokens kept free around the passages for the chat template's own markup.
_PASSAGE_SLACK = 32


class Engine:
    """Runs turns: stores the user's message first, fits the prompt, streams the reply, stores it.

    Consumers iterate `handle()` and either finish it, close it (`contextlib.aclosing`) or cancel
    the task; a reply cut short is stored as interrupted with what was said so far.
    """

    def __init__(
        self,
        model: ChatModel,
        history: History,
        settings: Settings,
        retriever: Retriever | None = None,
        tools: ToolRegistry | None = None,
    ) -> None:
        self.model = model
        self.history = history
        self.settings = settings
        self.retriever = retriever
        self.tools = tools
        self.metrics = Metrics()
        self.window = min(model.info.context_window, settings.context.max_tokens)
        self.budget = PromptBudget(
            model,
            self.window,
            keep_ratio=settings.context.keep_ratio,
            summary_max_tokens=settings.context.summary_max_tokens,
        )

    # Conversations ------------------------------------------------------------------

    async def conversation(self, incoming: Incoming) -> Conversation:
        """The conversation an incoming message belongs to (created when new)."""
        if incoming.conversation_id is not None:
            found = await self.history.get(incoming.conversation_id)
            if found is None:
                raise ConversationNotFoundError(f"No conversation #{incoming.conversation_id}.")
            return found
        return await self.history.resolve(key_of(incoming))

    def system_prompt(self, conv: Conversation) -> str:
        """The conversation's persona, or the configured default."""
        return str(conv.settings.get("system") or self.settings.chat.system_prompt)

    def docs_enabled(self, conv: Conversation) -> bool:
        """Whether this conversation looks things up in the team's documents."""
        if self.retriever is None:
            return False
        return bool(conv.settings.get("docs", self.settings.retrieval.enabled))

    def params(self, conv: Conversation) -> GenerationParams:
        """The generation parameters this conversation uses."""
        return effective_params(self.settings.generation, conv.settings)

    # One turn -------------------------------------------------------------------------

    async def handle(
        self, incoming: Incoming, approve: Approver | None = None
    ) -> AsyncGenerator[Event, None]:
        """Answer one incoming message (or command) as a stream of events.

        `approve` asks the user whether a tool marked `needs_approval` may run (the REPL asks y/N);
        without it such tools never run.
        """
        started = False
        done: TurnDone | None = None
        try:
            async with aclosing(self._handle(incoming, approve)) as events:
                async for event in events:
                    if isinstance(event, TurnStarted):
                        started = True
                        self.metrics.started()
                    elif isinstance(event, TurnDone):
                        done = event
                    yield event
        except ChinwagError as error:
            yield TurnFailed(str(error), incoming.conversation_id)
        except Exception:
            # Never a traceback in a chat: log it, tell the user in one line.
            log.exception("turn failed unexpectedly (platform=%s)", incoming.platform)
            yield TurnFailed("Something went wrong on our side and was logged; your message was kept.")
        finally:
            if started:
                self.metrics.ended(done)

    async def link_reply(
        self, turn: TurnStarted | None, message_id: int | None, platform: str, external_ids: Sequence[str]
    ) -> None:
        """Link a turn's reply to the platform messages that show it (reactions on them then reach
        it): the stored reply `message_id` (from its TurnDone or TurnFailed) or, for a turn cut short
        (a shutdown, a cancelled task) that never told it, the reply stored for `turn`'s message.
        A failure is logged, not raised: the answer has been given and stored either way."""
        if not external_ids:
            return
        try:
            if message_id is None and turn is not None:
                replies = await self._replies_to(turn.conversation_id, turn.user_message_id)
                message_id = replies[0] if replies else None
            if message_id is not None:
                await self.history.link_message(message_id, platform, external_ids)
        except Exception:  # the reply stands; only reactions on its messages would not reach it
            log.exception("could not link reply %s to its %s messages", message_id, platform)

    async def forget(self, platform: str, external_id: str) -> int:
        """A question deleted on its platform (`external_id`, as its Incoming gave it): it and the
        replies to it leave the conversation's context, from the next turn on. They stay stored,
        marked `deleted` in their metadata (a summary already written keeps what it says). How many
        messages were marked: none when the platform message was not a question chinwag kept."""
        question = await self.history.find_message(platform, external_id)
        if question is None or question.role != "user":
            return 0
        gone = [question.id, *await self._replies_to(question.conversation_id, question.id)]
        for message_id in gone:
            await self.history.update_message(message_id, {"deleted": True})
        log.info("conversation %s: %d messages deleted from its context", question.conversation_id, len(gone))
        return len(gone)

    async def _replies_to(self, conversation_id: int, question_id: int) -> list[int]:
        """The stored replies to a question (those naming it in `reply_to`), oldest first."""
        later = await self.history.load(conversation_id, after_id=question_id)
        return [m.id for m in later if m.metadata.get("reply_to") == question_id]

    async def _handle(self, incoming: Incoming, approve: Approver | None) -> AsyncGenerator[Event, None]:
        conv = await self.conversation(incoming)
        text = incoming.text.strip()

        command = parse_command(text)
        if command is not None:
            name, args = command
            try:
                reply = await run_command(self, conv, name, args)
            except CommandError as error:
                yield CommandResult(conv.id, name, str(error), ok=False)
                return
            yield CommandResult(reply.conversation.id, name, reply.text, ok=reply.ok)
            return

        if not text:
            yield TurnFailed("Your message is empty: type something to ask.", conv.id)
            return

        user = UserRef(incoming.platform, incoming.user_id, incoming.user_name)
        params = self.params(conv)
        system_prompt = self.system_prompt(conv)
        limit = self.budget.max_message_tokens(system_prompt, params.max_tokens)
        length = self.model.count_text_tokens(text)
        if length > limit:
            # Kept (nothing is lost) but marked so that it never enters a prompt.
            stored = await self.history.append(
                conv.id,
                NewMessage(
                    "user",
                    text,
                    status="rejected",
                    user=user,
                    metadata={
                        "reason": "too_long",
                        "tokens": length,
                        "limit": limit,
                        "platform_message_id": incoming.message_id,
                    },
                    external_id=incoming.message_id,  # a deletion finds it by this (`forget`)
                ),
            )
            yield TurnFailed(
                f"Your message is {length} tokens; the limit is {limit} tokens "
                f"(context window {self.window}, minus room for the reply and the persona). "
                "It was saved but not answered: please shorten it or split it up.",
                conv.id,
            )
            return

        # Shielded: a Ctrl-C that lands while the message is being written must not lose it.
        stored = await asyncio.shield(
            self.history.append(
                conv.id,
                NewMessage(
                    "user",
                    text,
                    user=user,
                    metadata={"platform_message_id": incoming.message_id},
                    external_id=incoming.message_id,  # a deletion finds it by this (`forget`)
                ),
            )
        )
        yield TurnStarted(conv.id, stored.id)

        passages: list[Passage] = []
        tools = self.tools_for(conv)
        if self.docs_enabled(conv):
            config = self.settings.retrieval
            # With the search tool at hand, only clear matches go into the prompt.
            searchable = "search_documents" in tools.tools
            floor = max(config.min_score, config.min_score_with_tools) if searchable else config.min_score
            passages = await self._retrieve(conv, text, system_prompt, length, params.max_tokens, floor)
        context = passages_context(passages)
        sources = [source_record(n, p) for n, p in enumerate(passages, start=1)]

        prompt: list[ChatMessage] = []
        prompt_tokens = 0
        # Every nested stream is closed explicitly, so that an adapter closing this one reaches
        # the model at once (and the partial reply is stored) instead of at garbage collection.
        # Tool schemas ride in the prompt (the chat template renders them): keep room for them.
        reserve = 0
        if tools.tools:
            probe = [ChatMessage("system", system_prompt)]
            reserve = self.model.count_tokens(probe, tools.schemas()) - self.model.count_tokens(probe)
        async with aclosing(self._fit_prompt(conv, system_prompt, params, reserve, context)) as planning:
            async for item in planning:
                if isinstance(item, Notice):
                    yield item
                else:
                    prompt, prompt_tokens = item
        # The reply names the message it answers: a turn cut short ends without its TurnDone, and
        # its adapter finds what was stored this way (`link_reply`).
        extra: dict[str, Any] = {"reply_to": stored.id}
        if self.docs_enabled(conv):
            extra["sources"] = sources
        answer_stream = self._generate(conv, prompt, prompt_tokens, params, tools, extra, approve)
        async with aclosing(answer_stream) as answer:
            async for event in answer:
                yield event

    async def _retrieve(
        self,
        conv: Conversation,
        text: str,
        system_prompt: str,
        message_tokens: int,
        max_tokens: int,
        min_score: float,
    ) -> list[Passage]:
        """Relevant passages for this message, within the conversation's scopes and the token budget."""
        assert self.retriever is not None
        config = self.settings.retrieval
        try:
            found = await self.retriever.search(text, scopes_for(conv.key.scope), config.top_k)
        except Exception:
            # A broken store must not cost the user an answer: say nothing of documents this turn.
            log.exception("retrieval failed in conversation %s", conv.id)
            return []
        relevant = [p for p in found if p.score >= min_score]
        # Passages share the window with the persona, the message and the reply; the weakest go first.
        room = self.window - max_tokens - message_tokens - self.model.count_text_tokens(system_prompt)
        budget = min(config.max_context_tokens, room - _PASSAGE_SLACK)
        kept: list[Passage] = []
        # The passages' own message: its template tokens, the heading before them, the task after.
        frame = f"{PASSAGES_INTRO}\n\n{PASSAGES_TASK}"
        used = self.model.count_text_tokens(frame) + self.budget.message_overhead
        for passage in relevant:
            cost = self.model.count_text_tokens(passage_block(len(kept) + 1, passage)) + 2
            if used + cost > budget:
                continue
            kept.append(passage)
            used += cost
        return kept

    async def _fit_prompt(
        self,
        conv: Conversation,
        system_prompt: str,
        params: GenerationParams,
        reserve: int = 0,
        context: str | None = None,
    ) -> AsyncGenerator[Notice | tuple[list[ChatMessage], int], None]:
        """Plan the prompt; fold older turns into the running summary while they do not fit."""
        summary, until = conv.summary, conv.summary_until
        for _ in range(_MAX_FOLDS):
            turns = await self.history.load(conv.id, after_id=until)
            plan = self.budget.plan(system_prompt, summary, turns, params.max_tokens + reserve, context)
            if not plan.fold:
                yield plan.messages, plan.prompt_tokens
                return
            yield Notice(f"Summarising {len(plan.fold)} older messages to fit the context window…")
            summary = await self._summarise(summary, plan.fold)
            until = plan.fold[-1].id
            await self.history.set_summary(conv.id, summary, until)
        raise ChinwagError("This conversation no longer fits the context window; try /reset.")

    async def _summarise(self, previous: str | None, turns: list[StoredMessage]) -> str:
        """Extend the running summary with `turns`, batch by batch, greedily."""
        params = GenerationParams(
            temperature=0.0,
            max_tokens=self.settings.context.summary_max_tokens,
            repetition_penalty=1.05,
        )
        summary = previous
        for batch in self.budget.summary_batches(previous, turns):
            parts: list[str] = []
            async with aclosing(
                self.model.stream(self.budget.summary_prompt(summary, batch), params)
            ) as stream:
                async for item in stream:
                    if isinstance(item, Chunk):
                        parts.append(item.text)
            text = "".join(parts).strip()
            if text:
                summary = text
            else:
                # A model that says nothing must not lose the turns: keep them verbatim-ish.
                log.warning("empty summary from the model; keeping a plain digest instead")
                summary = _digest(summary, batch)
        return summary or ""

    async def _generate(
        self,
        conv: Conversation,
        prompt: list[ChatMessage],
        prompt_tokens: int,
        params: GenerationParams,
        tools: ToolRegistry,
        extra: dict[str, Any] | None = None,
        approve: Approver | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Stream the reply, with tool rounds (`tools`: those this conversation may use), and store it."""
        extra = dict(extra or {})
        model_name = self.model.info.name
        started = time.monotonic()
        first_token: float | None = None
        parts: list[str] = []
        finish: Finish | None = None
        completion = 0
        calls: list[ToolCall] = []
        messages = list(prompt)
        corrections = 0

        def usage() -> Usage:
            now = time.monotonic()
            return Usage(
                prompt_tokens=finish.prompt_tokens if finish else prompt_tokens,
                completion_tokens=completion + (0 if finish else len(parts)),
                latency_ms=int((now - started) * 1000),
                first_token_ms=int((first_token - started) * 1000) if first_token else None,
            )

        def metadata() -> dict[str, Any]:
            meta = dict(extra)
            if calls:
                meta["tool_calls"] = [asdict(call) for call in calls]
            return meta

        try:
            ran: dict[str, ToolCall] = {}
            for round_number in range(self.settings.tools.max_rounds + 1):
                offer = tools if tools.tools and round_number < self.settings.tools.max_rounds else None
                schemas = offer.schemas() if offer else None
                if offer is None and calls:
                    # The answer round. Small models that see their own calls in the prompt tend
                    # to call again instead of answering; given the results as plain context (or,
                    # when no tool gave one, the original prompt), they answer.
                    ok = any(call.status == "ok" for call in calls)
                    messages = _results_prompt(prompt, calls) if ok else list(prompt)
                parts, finish = [], None
                # While a call is possible (tools offered, or tools already used this turn), text
                # that starts like a call is held back until we know.
                held: list[str] = []
                streaming = offer is None and not calls
                constrain = bool(schemas) and self.settings.tools.constrained
                async with aclosing(self.model.stream(messages, params, schemas, constrain)) as stream:
                    async for item in stream:
                        if isinstance(item, Chunk):
                            if first_token is None:
                                first_token = time.monotonic()
                            parts.append(item.text)
                            if streaming:
                                yield TextDelta(item.text)
                                continue
                            held.append(item.text)
                            if _call_prefix("".join(held)) is False:
                                streaming = True
                                yield TextDelta("".join(held))
                                held = []
                        elif isinstance(item, Queued):
                            # Shown while waiting, never part of the reply.
                            yield Notice(queue_notice(item.position))
                        else:
                            finish = item
                completion += finish.completion_tokens if finish else len(parts)
                output = "".join(parts)
                parsed = parse_tool_calls(output) if not streaming else None
                if offer is None or parsed is None or not (parsed.calls or parsed.malformed):
                    if parsed is not None and (parsed.calls or parsed.malformed) and calls:
                        # Out of rounds and still calling: say what the tools found instead of JSON.
                        parts = [_results_reply(calls)]
                        held = parts
                    if held:
                        yield TextDelta("".join(held))
                    break
                # A tool round: run the calls, hand the results back, generate again.
                messages.append(ChatMessage("assistant", output))
                problems = list(parsed.malformed and ["the tool call is not valid JSON"])
                repeated = 0
                for found in parsed.calls:
                    key = f"{found.name}:{json.dumps(found.arguments, sort_keys=True, default=str)}"
                    if (key in ran and ran[key].status == "ok") or _echoes(found.arguments, calls):
                        # Small models often repeat a call after its result; do not run it again.
                        repeated += 1
                        previous = ran.get(key) or next(c for c in reversed(calls) if c.status == "ok")
                        messages.append(ChatMessage("tool", previous.result))
                        continue
                    call = await self._call_tool(offer, found.name, found.arguments, approve)
                    ran[key] = call
                    calls.append(call)
                    yield call
                    if call.status == "invalid":
                        problems.append(call.result)
                    else:
                        messages.append(ChatMessage("tool", call.result))
                if repeated and repeated == len(parsed.calls):
                    # The model has what it needs and is going round in circles: answer now.
                    tools = ToolRegistry()
                if problems:
                    corrections += 1
                    hint = (
                        "Your tool call could not be used: "
                        + "; ".join(problems)
                        + ". "
                        + (
                            "Call a tool again with valid JSON arguments, or answer directly."
                            if corrections == 1
                            else "Answer the user directly now, without tools."
                        )
                    )
                    messages.append(ChatMessage("tool", hint))
                    if corrections > 1:
                        tools = ToolRegistry()
                        if not any(call.status == "ok" for call in calls):
                            # Nothing useful came of the tools: answer as if none had been offered,
                            # from the original prompt, without the failed attempts in it.
                            messages = list(prompt)
        except (asyncio.CancelledError, GeneratorExit):
            # The user stopped the reply (Ctrl-C, a deleted message): keep what was said.
            await asyncio.shield(
                self._store_reply(
                    conv, "".join(parts), "interrupted", usage(), model_name, params, metadata()
                )
            )
            raise
        except Exception as error:
            log.exception("generation failed in conversation %s", conv.id)
            stored = await self._store_reply(
                conv,
                "".join(parts),
                "failed",
                usage(),
                model_name,
                params,
                metadata(),
                error=str(error) or type(error).__name__,
            )
            told = "The model failed while answering; your message was kept. Please try again."
            if isinstance(error, ChinwagError):  # ours say what happened (a model server that did not answer)
                told = f"{error} Your message was kept. Please try again."
            yield TurnFailed(told, conv.id, stored.id)
            return

        status: Status = "interrupted" if finish is not None and finish.reason == "cancelled" else "complete"
        text = "".join(parts)
        meta: dict[str, Any] = {**metadata(), "finish_reason": finish.reason if finish else "stop"}
        if "sources" in meta:
            meta["sources"] = mark_cited(meta["sources"], text)
        stored = await self._store_reply(conv, text, status, usage(), model_name, params, meta)
        yield TurnDone(conv.id, stored.id, text, status, usage(), model_name, meta)

    def tools_for(self, conv: Conversation) -> ToolRegistry:
        """The tools this conversation may use (none when tools are off)."""
        config = self.settings.tools
        enabled = config.scopes.get(conv.key.scope, config.enabled)
        if self.tools is None or enabled is False or not conv.settings.get("tools", True):
            return ToolRegistry()

        def allowed(name: str) -> bool:
            return name not in config.disabled and (enabled is True or name in enabled)

        tools = self.tools.only([name for name in self.tools.tools if allowed(name)])
        if self.docs_enabled(conv) and allowed("search_documents"):
            tools.add(self._document_search(conv))
        return tools

    def _document_search(self, conv: Conversation) -> Tool:
        """The document store as a tool, bound to the scopes this conversation may see."""
        retriever = self.retriever
        assert retriever is not None
        scopes = scopes_for(conv.key.scope)
        min_score = self.settings.retrieval.min_score

        async def search_documents(query: str, k: int = 4) -> str:
            """Search the team's documents and return the best passages with their sources.

            Args:
                query: what to look for, in a few words.
                k: how many passages to return (1-8).
            """
            found = [
                p for p in await retriever.search(query, scopes, max(1, min(k, 8))) if p.score >= min_score
            ]
            if not found:
                return "No passage in the team's documents matches that."
            return "\n\n".join(f"[{cite_label(p)}] (score {p.score:.2f})\n{p.text.strip()}" for p in found)

        return Tool.from_function(search_documents, timeout_s=10.0)

    async def _call_tool(
        self, tools: ToolRegistry, name: str, arguments: Any, approve: Approver | None = None
    ) -> ToolCall:
        """Validate and run one call off the event loop, with a timeout; never raises."""
        started = time.monotonic()

        def done(result: str, status: ToolStatus, args: dict[str, Any]) -> ToolCall:
            limit = self.settings.tools.result_max_chars
            if len(result) > limit:
                result = result[:limit] + f"… [cut at {limit} characters]"
            return ToolCall(name, args, result, status, int((time.monotonic() - started) * 1000))

        shown = arguments if isinstance(arguments, dict) else {"_": arguments}
        try:
            tool = tools.get(name)
            checked = tool.validate(arguments)
        except ToolError as error:
            return done(str(error), "invalid", shown)
        if tool.needs_approval:
            if approve is None:
                return done(f"{name} needs the user's approval, which cannot be asked here", "error", checked)
            asked = time.monotonic()
            if not await approve(ApprovalRequest(name, checked, tool.description)):
                return done(f"The user declined to run {name}", "error", checked)
            started += time.monotonic() - asked  # the user's thinking time is not the tool's
        timeout = min(tool.timeout_s, self.settings.tools.timeout_s)
        try:
            if inspect.iscoroutinefunction(tool.function):
                result = await asyncio.wait_for(tool.function(**checked), timeout)
            else:
                result = await asyncio.wait_for(asyncio.to_thread(tool.function, **checked), timeout)
        except TimeoutError:
            return done(f"{name} did not finish within {timeout:g} s", "timeout", checked)
        except ToolError as error:
            return done(f"Error: {error}", "error", checked)
        except Exception as error:
            log.exception("tool %s failed", name)
            return done(f"Error: {name} failed ({type(error).__name__})", "error", checked)
        return done(result if isinstance(result, str) else json.dumps(result, default=str), "ok", checked)

    async def _store_reply(
        self,
        conv: Conversation,
        text: str,
        status: Status,
        usage: Usage,
        model_name: str,
        params: GenerationParams,
        metadata: dict | None = None,
        error: str | None = None,
    ) -> StoredMessage:
        meta = dict(metadata or {})
        meta["params"] = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "max_tokens": params.max_tokens,
            "repetition_penalty": params.repetition_penalty,
            "seed": params.seed,
        }
        if usage.first_token_ms is not None:
            meta["first_token_ms"] = usage.first_token_ms
        if error:
            meta["error"] = error
        return await self.history.append(
            conv.id,
            NewMessage(
                "assistant",
                text,
                status=status,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                latency_ms=usage.latency_ms,
                model=model_name,
                metadata=meta,
            ),
        )


@dataclass(frozen=True)
class ApprovalRequest:
    """A tool call waiting for the user's yes or no."""

    name: str
    arguments: dict[str, Any]
    description: str


Approver = Callable[[ApprovalRequest], Awaitable[bool]]


def _echoes(arguments: Any, calls: list[ToolCall]) -> bool:
    """A call whose only input is an earlier result: the model is done, and restating it."""
    results = {call.result.strip() for call in calls if call.status == "ok"}
    if not results or not isinstance(arguments, dict) or not arguments:
        return False
    # Schema words small models copy into calls ("type": "string") are not inputs.
    values = [v for k, v in arguments.items() if k not in ("type", "description", "title")]
    return bool(values) and all(str(value).strip() in results for value in values)


def _results_prompt(prompt: list[ChatMessage], calls: list[ToolCall]) -> list[ChatMessage]:
    """The original prompt with the tools' results in the system message, for the answer round."""
    results = "\n".join(f"- {call.summary(limit=1500)}" for call in calls if call.status == "ok")
    note = (
        "Tools were run for the user's last message. Their results:\n"
        f"{results}\n"
        "Answer the user's last message in plain words, using these results. Do not write a tool call."
    )
    if prompt and prompt[0].role == "system":
        return [ChatMessage("system", f"{prompt[0].content}\n\n{note}"), *prompt[1:]]
    return [ChatMessage("system", note), *prompt]


def _results_reply(calls: list[ToolCall]) -> str:
    """A plain reply from the tool results, for a model that keeps calling instead of answering."""
    found = [call for call in calls if call.status == "ok"]
    if not found:
        return "I could not get an answer from the tools."
    return "\n".join(f"{call.summary(limit=500)}" for call in found)


def _call_prefix(text: str) -> bool | None:
    """Whether a reply that starts with `text` is a tool call (True), is not (False), or may be (None)."""
    start = text.lstrip()
    if not start:
        return None
    for prefix in ("<tool_call>", "```", "{", "["):
        if start.startswith(prefix) or (len(start) < len(prefix) and prefix.startswith(start)):
            return True
    return False


def queue_notice(position: int) -> str:
    """What the user is told while the reply waits for the model (0: it has started)."""
    if position <= 0:
        return "Thinking…"
    if position == 1:
        return "Waiting for the model — you are next"
    return f"Waiting for the model — {position - 1} ahead of you"


def key_of(incoming: Incoming) -> ConversationKey:
    """The conversation key of an incoming message."""
    return ConversationKey(incoming.platform, incoming.scope, incoming.channel, incoming.thread)


def new_thread_id() -> str:
    """A fresh thread id, for platforms where each session is its own conversation (CLI, REPL)."""
    return uuid.uuid4().hex[:12]


def _digest(previous: str | None, turns: list[StoredMessage]) -> str:
    """A plain fallback summary: the first sentence of each turn."""
    lines = [previous] if previous else []
    for message in turns:
        speaker = "User" if message.role == "user" else "Assistant"
        lines.append(f"{speaker}: {message.content.strip().split('. ')[0][:200]}")
    return "\n".join(lines)
