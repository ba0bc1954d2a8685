"""The conversation engine: one turn from `Incoming` to a stream of events. Knows no platform."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass, replace
from typing import Any

from bot import grounding
from bot.citations import (
    DOCUMENTS_UNAVAILABLE,
    NOT_IN_DOCUMENTS,
    PASSAGES_INTRO,
    PASSAGES_TASK,
    PASSAGES_TASK_DECLINE,
    cite_label,
    mark_cited,
    passage_block,
    passages_context,
    source_record,
)
from bot.commands import parse_command, run_command
from bot.errors import (
    ChinwagError,
    CommandError,
    ConversationNotFoundError,
    DocumentsUnavailableError,
    ToolError,
)
from bot.metrics import Metrics
from bot.params import effective_params
from bot.prompt import PromptBudget
from bot.seams.history import Conversation, ConversationKey, History, NewMessage, StoredMessage, UserRef
from bot.seams.model import ChatModel, Chunk, Finish
from bot.seams.retriever import Passage, Retriever, scopes_for
from bot.tasks import Tasks
from bot.text import repair
from bot.toolloop import Approver, ToolLoop
from bot.tools.registry import Tool, ToolRegistry
from bot.tools.runner import ToolRunner
from bot.types import (
    ChatMessage,
    CommandResult,
    Event,
    GenerationParams,
    Incoming,
    Notice,
    Status,
    TextDelta,
    TurnDone,
    TurnFailed,
    TurnStarted,
    Usage,
)
from config import GenerationSettings, Settings

log = logging.getLogger(__name__)

# How often the budget may fold turns into the summary within one turn before giving up.
_MAX_FOLDS = 4
# Tokens kept free around the passages for the chat template's own markup.
_PASSAGE_SLACK = 32


@dataclass(frozen=True)
class Check:
    """A reply to check against the passages it is written from (`bot/grounding.py`): the question,
    the passages, and the model's own log-probability of declining to answer from them."""

    question: str
    passages: list[Passage]
    leaning: float | None = None


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
        # Every turn's tool calls share one bounded pool, apart from asyncio's default executor.
        self.tool_runner = ToolRunner(settings.tools.max_concurrent_calls, settings.tools.workers)
        self.window = min(model.info.context_window, settings.context.max_tokens)
        self.budget = PromptBudget(
            model,
            self.window,
            keep_ratio=settings.context.keep_ratio,
            summary_max_tokens=settings.context.summary_max_tokens,
        )
        # /summarize, /translate, /actions and the team's own commands (bot/tasks).
        self.tasks = Tasks(model, history, settings, self.window)

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

    def task_name(self, name: str) -> str | None:
        """The language task a command word runs (`summarise` → `summarize`, a team's own
        command), or None when it is no task."""
        return self.tasks.canonical(name.lower())

    def task_help(self) -> list[tuple[str, str]]:
        """(usage, summary) of the language tasks and the team's commands, for /help."""
        return self.tasks.help_lines()

    def docs_enabled(self, conv: Conversation) -> bool:
        """Whether this conversation looks things up in the team's documents."""
        if self.retriever is None:
            return False
        return bool(conv.settings.get("docs", self.settings.retrieval.enabled))

    @property
    def generation(self) -> GenerationSettings:
        """The configured generation parameters, which a conversation's /set overrides."""
        return self.settings.generation

    def params(self, conv: Conversation) -> GenerationParams:
        """The generation parameters this conversation uses."""
        return effective_params(self.generation, conv.settings)

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
            # Only a turn that started had its message stored: never claim it was kept otherwise.
            kept = "your message was kept" if started else "your message could not be saved"
            yield TurnFailed(f"Something went wrong on our side and was logged; {kept}.")
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
        # The question is marked before its replies are looked for: a reply that another replica
        # stores meanwhile is either found here or finds the mark itself (`_keep_reply`).
        await self.history.update_message(question.id, {"deleted": True})
        replies = await self._replies_to(question.conversation_id, question.id)
        for message_id in replies:
            await self.history.update_message(message_id, {"deleted": True})
        gone = 1 + len(replies)
        log.info("conversation %s: %d messages deleted from its context", question.conversation_id, gone)
        return gone

    async def _replies_to(self, conversation_id: int, question_id: int) -> list[int]:
        """The stored replies to a question (those naming it in `reply_to`), oldest first."""
        later = await self.history.load(conversation_id, after_id=question_id)
        return [m.id for m in later if m.metadata.get("reply_to") == question_id]

    async def _handle(self, incoming: Incoming, approve: Approver | None) -> AsyncGenerator[Event, None]:
        conv = await self.conversation(incoming)
        # Text no tokenizer or database takes (invalid UTF-8, lone surrogates) is repaired, not lost.
        text, original = repair(incoming.text)
        text = text.strip()
        kept: dict[str, Any] = {"original_text": original} if original is not None else {}

        command = parse_command(text)
        if command is not None and self.tasks.canonical(command[0]) is not None:
            user = UserRef(incoming.platform, incoming.user_id, incoming.user_name)
            async with aclosing(self.tasks.run(conv, incoming, *command, user)) as task:
                async for event in task:
                    yield event
            return
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
                        **kept,
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
                    metadata={"platform_message_id": incoming.message_id, **kept},
                    external_id=incoming.message_id,  # a deletion finds it by this (`forget`)
                ),
            )
        )
        yield TurnStarted(conv.id, stored.id)

        passages: list[Passage] = []
        unavailable = False
        tools = self.tools_for(conv)
        config = self.settings.retrieval
        if self.docs_enabled(conv):
            floor = config.min_score
            if "search_documents" in tools.tools:
                # With the search tool at hand, only clear matches go into the prompt: weak ones
                # pulled the model away from the clock and the calculator, and with the check of
                # the reply their "could not find" replaced the tools' answers (bench/RESULTS.md).
                floor = max(config.min_score, config.min_score_with_tools)
            found = await self._retrieve(conv, text, system_prompt, length, params.max_tokens, floor)
            unavailable = found is None
            passages = found or []
            if unavailable:
                # Said while the answer is being written, and kept with it (`documents_notice`).
                yield Notice(DOCUMENTS_UNAVAILABLE)
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
            if unavailable:
                extra["documents"] = "unavailable"
        asked = (incoming.platform, incoming.message_id) if incoming.message_id is not None else None
        # A reply written from passages is checked against them before it is shown (`bot/grounding.py`).
        check = Check(text, passages) if passages and config.grounded else None
        if check is not None and config.decline_logprob < 0:
            check = replace(check, leaning=await self._decline_leaning(prompt, context, passages))
        answer_stream = self._generate(
            conv, prompt, prompt_tokens, params, tools, extra, approve, asked, check
        )
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
    ) -> list[Passage] | None:
        """Relevant passages for this message, within the conversation's scopes and the token
        budget; None when the documents could not be searched."""
        assert self.retriever is not None
        config = self.settings.retrieval
        # A store that is down or broken must not cost the user an answer: the reply is written
        # without documents and says so.
        try:
            found = await self.retriever.search(text, scopes_for(conv.key.scope), config.top_k)
        except DocumentsUnavailableError as error:  # expected while a server is down: one line
            log.warning("conversation %s: answered without documents: %s", conv.id, error)
            return None
        except Exception:
            log.exception("retrieval failed in conversation %s", conv.id)
            return None
        # Names, codes and table rows match by their words more than by meaning: a chunk that both
        # searches rank first passes at `min_score` even when a higher floor applies (with tools):
        # measured, it admitted 7 answerable questions' passages below 0.5 and 1 of 41 tool prompts.
        relevant = [p for p in found if p.score >= min_score or (p.agreed and p.score >= config.min_score)]
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

    async def _decline_leaning(
        self, prompt: list[ChatMessage], context: str | None, passages: list[Passage]
    ) -> float | None:
        """How readily the model says the passages do not hold the answer: the log-probability of
        its opening with NOT_IN_DOCUMENTS, in the same prompt with a task that asks for exactly that
        (one token generated; the prefix cache keeps the conversation and the passages for the
        answer). None when the model cannot tell or is busy."""
        scoring_context = passages_context(passages, PASSAGES_TASK_DECLINE)
        if context is None or scoring_context is None or not any(m.content == context for m in prompt):
            return None
        scoring = [ChatMessage(m.role, scoring_context) if m.content == context else m for m in prompt]
        params = GenerationParams(
            temperature=0.0, max_tokens=1, repetition_penalty=1.0, watch=NOT_IN_DOCUMENTS
        )
        finish: Finish | None = None
        try:
            async with aclosing(self.model.stream(scoring, params)) as stream:
                async for item in stream:
                    if isinstance(item, Finish):
                        finish = item
        except ChinwagError as error:
            log.warning("could not ask the model whether the passages hold the answer: %s", error)
            return None
        return finish.watched if finish is not None else None

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
        asked: tuple[str, str] | None = None,
        check: Check | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Stream the reply through its tool rounds (`tools`: those this conversation may use), then
        store it: complete, or as far as it got when it was interrupted or failed. `asked`: the
        platform and id of the message it answers, whose deletion the reply follows. `check`: the
        question and the passages the reply is written from; its text is then held back until it
        is whole and checked against them, and replaced if they do not support it."""
        loop = ToolLoop(
            self.model, params, tools, self.settings.tools, prompt_tokens, approve, self.tool_runner
        )
        model_name = self.model.info.name

        def metadata() -> dict[str, Any]:
            meta = dict(extra or {})
            if loop.calls:
                meta["tool_calls"] = [asdict(call) for call in loop.calls]
            return meta

        try:
            async with aclosing(loop.run(prompt)) as rounds:
                async for event in rounds:
                    if check is not None and isinstance(event, TextDelta):
                        continue  # shown once checked
                    yield event
        except (asyncio.CancelledError, GeneratorExit):
            # The user stopped the reply (Ctrl-C, a deleted message): keep what was said.
            await asyncio.shield(
                self._store_reply(
                    conv,
                    loop.text,
                    "interrupted",
                    loop.usage(),
                    model_name,
                    params,
                    metadata(),
                    asked=asked,
                )
            )
            raise
        except Exception as error:
            log.exception("generation failed in conversation %s", conv.id)
            stored = await self._store_reply(
                conv,
                loop.text,
                "failed",
                loop.usage(),
                model_name,
                params,
                metadata(),
                error=str(error) or type(error).__name__,
                asked=asked,
            )
            told = "The model failed while answering; your message was kept. Please try again."
            if isinstance(error, ChinwagError):  # ours say what happened (a model server that did not answer)
                told = f"{error} Your message was kept. Please try again."
            yield TurnFailed(told, conv.id, stored.id)
            return

        finish = loop.finish
        status: Status = "interrupted" if finish is not None and finish.reason == "cancelled" else "complete"
        text = loop.text
        meta: dict[str, Any] = {**metadata(), "finish_reason": finish.reason if finish else "stop"}
        if check is not None:
            if not loop.calls and status == "complete":  # a tool's result is its own source
                passages = check.passages
                found = grounding.support(text, check.question, passages)
                meta["grounding"] = found.record()
                declines = grounding.leans_to_decline(check.leaning, self.settings.retrieval.decline_logprob)
                if check.leaning is not None:
                    meta["grounding"]["decline_logprob"] = round(check.leaning, 3)
                if declines or not found.grounded:
                    text = grounding.not_found(passages)
                    meta["searched"], meta["sources"] = meta.get("sources", []), []
            yield TextDelta(text)
        if "sources" in meta:
            meta["sources"] = mark_cited(meta["sources"], text)
        # A stop arriving during this write must not lose a reply that is already whole.
        stored = await asyncio.shield(
            self._store_reply(conv, text, status, loop.usage(), model_name, params, meta, asked=asked)
        )
        yield TurnDone(conv.id, stored.id, text, status, loop.usage(), model_name, meta)

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
            try:
                found = [
                    p
                    for p in await retriever.search(query, scopes, max(1, min(k, 8)))
                    if p.score >= min_score
                ]
            except DocumentsUnavailableError as error:
                log.warning("conversation %s: search_documents: %s", conv.id, error)
                raise ToolError(DOCUMENTS_UNAVAILABLE) from None
            if not found:
                return "No passage in the team's documents matches that."
            return "\n\n".join(f"[{cite_label(p)}] (score {p.score:.2f})\n{p.text.strip()}" for p in found)

        # Not outbound: the query goes only to the operator's own document store.
        return Tool.from_function(search_documents, timeout_s=10.0, outbound=False)

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
        asked: tuple[str, str] | None = None,
    ) -> StoredMessage:
        """Store a reply. If the message it answers (`asked`: platform and id) was deleted
        meanwhile, the reply leaves the context too: another replica's `forget` may have looked
        for replies before this one was stored."""
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
        stored = await self.history.append(
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
        if asked is not None:
            question = await self.history.find_message(*asked)
            if question is not None and question.metadata.get("deleted"):
                await self.history.update_message(stored.id, {"deleted": True})
                stored = replace(stored, metadata={**stored.metadata, "deleted": True})
        return stored

    async def latest_conversation(self, platform: str, scope: str, channel: str) -> Conversation | None:
        """The channel's most recently active conversation that is not archived: what a command
        that names no thread (a Slack slash command in a channel) acts on. None if there is none."""
        for conv in await self.history.list(platform=platform, scope=scope, channel=channel):
            if not conv.archived:
                return conv
        return None


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
