"""One reply lifecycle for the chat platforms (Slack, Discord): what an answer shows, and how it gets there.

A `Reply` folds the engine's events into the text a reply shows; a `Stream` posts it as it grows,
editing at most once per interval and at a pace the platform allows, and when the platform refuses
for now (429s, 5xx) keeps the latest text and asks again until it is shown; a `ChatAdapter` runs
the turn, stops an answer whose question was deleted or that a shutdown cuts short, links the
posted messages to the stored reply, and keeps 👍/👎 feedback. A platform supplies only a `Place`
(how to post and edit its messages, and which refusals are worth asking again) and a `Style`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from adapters.inflight import InFlight
from adapters.textsplit import split_message
from bot.citations import documents_notice, sources_footer
from bot.engine import Approver
from bot.seams.history import Conversation, History, UserRef
from bot.types import (
    CommandResult,
    Event,
    Incoming,
    Notice,
    TextDelta,
    ToolCall,
    TurnDone,
    TurnFailed,
    TurnStarted,
)

log = logging.getLogger(__name__)

# Seconds a deletion waits for the answer it stops to be stored (its last edit waits at most
# LAST_EDIT_WAIT_S of them; a shutdown gives it what its plan leaves).
STOP_WAIT_S = 10.0
LAST_EDIT_WAIT_S = 5.0
# A platform that refuses a reply for now is asked again after the wait it names, else after a pause
# that doubles from RETRY_FIRST_S up to RETRY_MAX_S; a reply it keeps refusing for PATIENCE_S is
# given up (it is stored all the same, and the log says so).
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
PATIENCE_S = 300.0

M = TypeVar("M")  # a posted message as its platform knows it (Slack: its ts; Discord: a Message)


class ChatEngine(Protocol):
    """What the adapters need of the engine (`bot.engine.Engine` is one)."""

    def handle(self, incoming: Incoming, approve: Approver | None = None) -> AsyncGenerator[Event, None]:
        """Answer one message or /command as a stream of events; `approve` is asked before
        sensitive tools run."""
        ...

    async def link_reply(
        self, turn: TurnStarted | None, message_id: int | None, platform: str, external_ids: Sequence[str]
    ) -> None:
        """Link a turn's stored reply to the platform messages that show it."""
        ...

    async def forget(self, platform: str, external_id: str) -> int:
        """Take a deleted question and its replies out of the conversation's context."""
        ...

    async def latest_conversation(self, platform: str, scope: str, channel: str) -> Conversation | None:
        """The channel's latest live conversation (what a command naming no thread acts on)."""
        ...

    def task_name(self, name: str) -> str | None:
        """The language task a command word runs (summarize, translate, actions, a team's own), or None."""
        ...


def _verbatim(text: str) -> str:
    return text


@dataclass(frozen=True)
class Style:
    """How a platform marks up the pieces of a reply; each template takes the piece as `{}`."""

    status: str  # a notice while nothing is written ("Waiting for the model…"), "(no answer)"
    remark: str  # "(interrupted)", "(stopped: …)", under the answer
    sources: str  # the sources footer
    tool: str  # one tool call, as inline code
    warning: str  # a failed turn, a refused command
    tick: str  # what a backtick in a tool call becomes (it would end the inline code)
    markup: Callable[[str], str] = _verbatim  # the answer's Markdown as the platform writes it
    placeholder: str = ""  # shown until there is something to show; "" posts nothing until then


@dataclass
class Reply:
    """What one answer says so far, folded from the engine's events; no platform in it."""

    style: Style
    text: str = ""
    notes: list[str] = field(default_factory=list)  # tool calls, sources, remarks: under the text
    status: str = ""
    finished: bool = False
    conversation_id: int | None = None
    # The turn (once the question is stored) and its stored reply (once told), to link the posts to.
    turn: TurnStarted | None = None
    stored_id: int | None = None

    def apply(self, event: Event) -> None:
        """Fold one engine event into the reply."""
        style = self.style
        if isinstance(event, TextDelta):
            self.text += event.text
            self.status = ""  # a notice ("Waiting for the model…") no longer holds
        elif isinstance(event, Notice):
            self.status = style.status.format(event.text)
        elif isinstance(event, ToolCall):
            self.notes.append(style.tool.format(event.summary().replace("`", style.tick)))
        elif isinstance(event, CommandResult):
            self.conversation_id = event.conversation_id
            self._finish(event.text if event.ok else style.warning.format(event.text))
        elif isinstance(event, TurnFailed):
            self.conversation_id = event.conversation_id or self.conversation_id
            self.stored_id = event.message_id
            self.notes.append(style.warning.format(event.message))
            self.status = ""
            self.finished = True
        elif isinstance(event, TurnDone):
            self.conversation_id = event.conversation_id
            self.stored_id = event.message_id
            self._finish(event.text)
            if footer := sources_footer(event.metadata.get("sources") or []):
                self.notes.append(style.sources.format(footer))
            if notice := documents_notice(event.metadata):
                self.notes.append(style.remark.format(notice))
            if event.status == "interrupted":
                self.notes.append(style.remark.format("(interrupted)"))
        elif isinstance(event, TurnStarted):
            self.conversation_id = event.conversation_id
            self.turn = event

    def _finish(self, text: str) -> None:
        self.text = text
        self.status = "" if text.strip() else self.style.status.format("(no answer)")
        self.finished = True

    def stop(self, deleted: bool) -> None:
        """Cut short: by its question's deletion, or by a shutdown; says which under what was said."""
        why = "stopped: the question was deleted" if deleted else "interrupted: chinwag is restarting"
        self.notes.append(self.style.remark.format(f"({why})"))
        self.status = ""
        self.finished = True

    def whole(self) -> str:
        """The reply as one text: the answer (or its status, or the placeholder), notes under it."""
        shown = self.style.markup(self.text.strip()) or self.status
        body = shown or ("" if self.finished else self.style.placeholder)
        return "\n\n".join(p for p in (body, "\n".join(self.notes)) if p.strip())

    def parts(self, limit: int) -> list[str]:
        """The messages the reply is now, each below `limit`; a posted message is never emptied."""
        placeholder = self.style.placeholder
        return split_message(self.whole(), limit) or ([placeholder] if placeholder else [])


class Place(ABC, Generic[M]):
    """Where one reply's messages go on a platform: the only part of a reply a platform writes."""

    # What posting or editing raises once the client's own retries (429s, 5xx) are behind it.
    failures: tuple[type[Exception], ...] = (OSError, TimeoutError)

    @property
    @abstractmethod
    def where(self) -> str:
        """The channel or thread, for logs."""

    @abstractmethod
    async def post(self, text: str) -> M:
        """Post one more message of the reply."""

    @abstractmethod
    async def edit(self, message: M, text: str) -> M:
        """Change a posted message's text; the message as it is after the edit."""

    @abstractmethod
    def ref(self, message: M) -> str:
        """A posted message's id in the history (a reaction on it finds the stored reply by it)."""

    async def ready(self) -> None:
        """Wait until the platform may take one more edit (no wait unless the platform paces)."""

    def describe(self, error: Exception) -> str:
        """What went wrong, in a few words for the log."""
        return str(error) or type(error).__name__

    def retry_after(self, error: Exception) -> float | None:
        """After `error` (one of `failures`): the seconds the platform asks to wait before it takes
        the reply (0 when it names none), or None when asking again cannot help (no permission, a
        deleted channel). Only a platform knows which are which: by default, none is worth a retry."""
        return None


class Stream(Generic[M]):
    """One reply shown on a platform as it grows: the messages it is posted as, and the pushes."""

    def __init__(
        self, reply: Reply, place: Place[M], limit: int, interval_s: float, patience_s: float = PATIENCE_S
    ) -> None:
        self.reply = reply
        self.place = place
        self.limit = limit
        self.interval_s = interval_s
        self.patience_s = patience_s
        self.posted: list[M] = []
        self.shown: list[str] = []
        self.last_edit = 0.0
        self.failure: str | None = None  # set once the platform would not take the reply
        # Refusals for now in a row (a push that goes through ends the run), since when, the last
        # one's reason, and how long to wait before asking again.
        self.refusals = 0
        self.refused_since = 0.0
        self.refused: str | None = None
        self.retry_in = 0.0
        self.changed = asyncio.Event()  # the reply has news the pusher has not shown
        self.ended = asyncio.Event()  # no more news will come: the pusher makes its last edit
        # Cut short (a shutdown, a deletion): its last edit goes at once instead of waiting its turn
        # under the platform's pace (with many answers cut at once, their turns would come after
        # the process is gone).
        self.cut = asyncio.Event()

    def refs(self) -> list[str]:
        """The history's ids of the messages posted so far."""
        return [self.place.ref(m) for m in self.posted]

    def news(self) -> None:
        """The reply changed: the pusher shows it in its next edit."""
        self.changed.set()

    def end(self) -> None:
        """No more changes will come: the pusher shows the last of them and returns."""
        self.ended.set()
        self.changed.set()  # the pusher may be idle, waiting for a change: this is the last one

    async def push(self) -> None:
        """Push the reply as it grows: at most one edit per interval, carrying all that came
        meanwhile; refused for now, ask again later with whatever is newest by then."""
        while True:
            await self.changed.wait()
            self.changed.clear()
            if not self.ended.is_set():
                # Let more text arrive before editing; what comes meanwhile goes in the same edit.
                wait = self.last_edit + self.interval_s - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.ended.wait(), timeout=wait)
            if not await self.show():
                await self._pause()
                self.changed.set()
            elif self.ended.is_set() and not self.changed.is_set():
                return  # (news that came while the edit was under way is shown first)

    async def show(self) -> bool:
        """Bring the reply's messages up to date: edit what changed, post what is new. False when
        the platform refused for now (`retry_in` says when to ask again); a refusal for good, or
        for longer than `patience_s`, ends the showing (`failure` says why)."""
        if self.failure is not None:
            return True
        try:
            index = 0
            while index < len(parts := self.reply.parts(self.limit)):
                if index >= len(self.posted):
                    self.posted.append(await self.place.post(parts[index]))
                    self.shown.append(parts[index])
                    self.last_edit = time.monotonic()
                elif self.shown[index] != parts[index]:
                    await self._turn()
                    # The edit carries the reply as it is now, with whatever came while it waited.
                    parts = self.reply.parts(self.limit)
                    if index >= len(parts):
                        break
                    self.posted[index] = await self.place.edit(self.posted[index], parts[index])
                    self.shown[index] = parts[index]
                    self.last_edit = time.monotonic()
                index += 1
        except self.place.failures as error:
            return self._refused(error)
        self.refusals = 0
        return True

    def _refused(self, error: Exception) -> bool:
        """Note a refusal (the client's own retries are behind it); False while it is worth asking again."""
        reason = self.place.describe(error)
        asked = self.place.retry_after(error)
        if asked is None:
            self.failure = reason  # the reply is stored: the adapter logs that it could not be shown
            return True
        now = time.monotonic()
        if self.refusals == 0:
            self.refused_since = now
        self.refusals += 1
        self.refused = reason
        self.retry_in = asked or min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (self.refusals - 1))
        if now + self.retry_in - self.refused_since > self.patience_s:
            self.failure = f"{reason}, refused {self.refusals} times over {now - self.refused_since:.0f} s"
            return True
        log.info(
            "the reply in %s was refused for now (%s); asking again in %.1f s",
            self.place.where,
            reason,
            self.retry_in,
        )
        return False

    async def _pause(self) -> None:
        """Wait as long as the platform asked after a refusal; a reply cut short meanwhile tries its
        last edit at once (the wait may be longer than the shutdown allows)."""
        if self.cut.is_set():
            await asyncio.sleep(self.retry_in)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.cut.wait(), timeout=self.retry_in)

    async def _turn(self) -> None:
        """Wait until the platform may take one more edit, or until the reply is cut short."""
        if self.cut.is_set():
            return
        turn = asyncio.ensure_future(self.place.ready())
        cut = asyncio.ensure_future(self.cut.wait())
        try:
            await asyncio.wait({turn, cut}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            turn.cancel()
            cut.cancel()


class ChatAdapter(InFlight):
    """What the chat platforms' adapters share: answers streamed as replies, stopped when their
    question is deleted or a shutdown cuts them short, and 👍/👎 on replies kept as feedback."""

    def __init__(self, engine: ChatEngine, history: History) -> None:
        super().__init__()
        self.engine = engine
        self.history = history
        self._following: asyncio.Task[None] | None = None
        # Set once deletions on other replicas reach this process (never on SQLite).
        self.listening = asyncio.Event()

    def follow_deletions(self) -> None:
        """Start hearing of questions deleted on other replicas: their answers stop here if this
        process is writing them (until `unfollow_deletions`)."""
        if self._following is None:
            self._following = asyncio.create_task(self._follow(), name=f"{self.platform}-deletions")

    async def unfollow_deletions(self) -> None:
        """Stop hearing of other replicas' deletions (at shutdown, once the answers are done)."""
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following
            self._following = None

    async def _follow(self) -> None:
        try:
            async with aclosing(self.history.deleted_elsewhere(self.platform)) as deletions:
                async for key in deletions:
                    try:
                        if key is None:
                            self.listening.set()
                            await self._recheck()
                        else:
                            self.stop(key)  # its reply is stored, and leaves the context (Engine.forget)
                    except Exception:  # one failed check must not end the listening
                        log.exception("%s: acting on a deletion from another replica failed", self.platform)
        except Exception:
            log.exception(
                "%s: listening for other replicas' deletions failed; only deletions this process "
                "hears of stop its answers now",
                self.platform,
            )

    async def _recheck(self) -> None:
        """Stop the answers whose questions were marked deleted while nothing was heard (a
        replica's announcement reaches only the processes listening at that moment)."""
        for key in self.keys():
            question = await self.history.find_message(self.platform, key)
            if question is not None and question.metadata.get("deleted"):
                self.stop(key)

    async def answer(self, incoming: Incoming, stream: Stream[Any]) -> None:
        """Run one turn and stream it to the platform; the reply is stored even if the platform
        cannot take it."""
        reply = stream.reply
        pusher = asyncio.create_task(stream.push())
        try:
            await stream.show()  # a placeholder, where the platform has one: the bot is on it
            async with aclosing(self.engine.handle(incoming)) as events:
                async for event in events:
                    reply.apply(event)
                    stream.news()
            stream.end()
            # The last edits, however long the platform takes to allow them (up to the stream's
            # patience; a shutdown cuts this short).
            await asyncio.shield(pusher)
        except asyncio.CancelledError:
            deleted = self.stopped()
            if not reply.finished:
                if deleted and not stream.posted:
                    pusher.cancel()  # nothing shown yet: nothing to answer a deleted question with
                reply.stop(deleted)
            stream.cut.set()
            stream.end()
            await self._last_edit(stream, pusher, self.time_for_last_edit(LAST_EDIT_WAIT_S))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._link(stream))
            raise
        finally:
            stream.end()
        await self._link(stream)

    async def _last_edit(self, stream: Stream[Any], pusher: asyncio.Task[None], seconds: float) -> None:
        """Give the reply `seconds` for its last edit; past them it stays as the platform shows it."""
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({pusher}, timeout=seconds)
        if not pusher.done():
            pusher.cancel()
            if stream.failure is None:
                why = f" ({stream.refused})" if stream.refusals else ""
                stream.failure = f"its last edit did not go through within {seconds:.1f} s{why}"
        elif not pusher.cancelled() and (error := pusher.exception()) is not None:
            log.error("%s: showing a reply failed: %r", self.platform, error)

    async def _link(self, stream: Stream[Any]) -> None:
        """Link the stored reply to the messages that show it (a 👍 on any of them then reaches it)."""
        reply = stream.reply
        if stream.failure is not None:
            log.error(
                "%s: the reply in conversation %s could not be posted in full to %s (%s); "
                "it is kept in the history",
                self.platform,
                reply.conversation_id,
                stream.place.where,
                stream.failure,
            )
        await self.engine.link_reply(reply.turn, reply.stored_id, self.platform, stream.refs())

    async def deleted(self, key: str) -> None:
        """A message deleted on the platform (`key`, its id as its Incoming gave it): its answer
        stops if it is being written, here or on another replica, then the question and its
        replies leave the conversation's context (`Engine.forget`)."""
        task = self.stop(key)
        try:
            if task is not None:
                await asyncio.wait({task}, timeout=STOP_WAIT_S)  # the reply it stores is forgotten too
            else:
                # Not written here: perhaps by another replica sharing the history, which stops it.
                await self.history.announce_deleted(self.platform, key)
            await self.engine.forget(self.platform, key)
        except Exception:  # the history's own failure (a database down): logged, not lost in a task
            log.exception(
                "%s: the deletion of message %s could not be passed on or stored", self.platform, key
            )

    async def rate(self, ref: str, user_id: str, value: int, added: bool) -> None:
        """A 👍 (+1) or 👎 (-1) `added` or taken back on the message `ref`: the person's rating of
        the stored reply it shows; taking one back withdraws the rating only if it was that one."""
        stored = await self.history.find_message(self.platform, ref)
        if stored is None or stored.role != "assistant":
            return
        if not added:
            ratings = await self.history.feedback(stored.id)
            if [f.value for f in ratings if f.user.external_id == user_id] != [value]:
                return
        await self.history.set_feedback(stored.id, UserRef(self.platform, user_id), value if added else None)
        log.info(
            "%s: feedback %+d on message %s (%s)", self.platform, value, stored.id, "on" if added else "off"
        )
