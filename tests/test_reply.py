"""The reply lifecycle the chat adapters share, with no platform: folding events into the text,
pacing the pushes, stopping on deletion or shutdown, and feedback. The platform is a `Board`
(messages in memory); the engine is the real one with a FakeModel on a real SQLite history."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field

import pytest

from adapters.inflight import ShutdownPlan
from adapters.reply import ChatAdapter, Place, Reply, Stream, Style
from bot.engine import Engine
from bot.types import (
    CommandResult,
    Incoming,
    Notice,
    TextDelta,
    ToolCall,
    TurnDone,
    TurnFailed,
    TurnStarted,
    Usage,
)
from storage import SqlHistory
from tests.fakes import FakeModel

STYLE = Style(
    status="<{}>",
    remark="~{}~",
    sources="src: {}",
    tool="tool `{}`",
    warning="!! {}",
    tick="'",
    markup=str.upper,
)
WAITING = "thinking…"


class Busy(Exception):
    """The board refuses for now (as a platform answers 429 or 503)."""


@dataclass
class Board(Place[int]):
    """A platform in memory: its messages by index, and every post and edit with its time.

    `gate`, when given, is the platform's pace: an edit may go only once it is set. `refuse`
    refuses every post for good; `busy` refuses the next posts and edits for now, asking to wait
    `busy_wait` seconds (0: no wait named)."""

    messages: list[str] = field(default_factory=list)
    pushes: list[tuple[float, str]] = field(default_factory=list)  # (when, what the reply showed)
    edits: list[str] = field(default_factory=list)
    refusals: list[float] = field(default_factory=list)  # when each refusal for now came
    gate: asyncio.Event | None = None
    refuse: bool = False
    busy: int = 0
    busy_wait: float = 0.0

    failures = (OSError, TimeoutError, Busy)

    def retry_after(self, error: Exception) -> float | None:
        return self.busy_wait if isinstance(error, Busy) else None

    def _busy(self) -> None:
        if self.busy > 0:
            self.busy -= 1
            self.refusals.append(time.monotonic())
            raise Busy("try again later")

    @property
    def where(self) -> str:
        return "the board"

    async def post(self, text: str) -> int:
        await asyncio.sleep(0)  # a platform call yields to the loop
        if self.refuse:
            raise OSError("the board is closed")
        self._busy()
        self.messages.append(text)
        self.pushes.append((time.monotonic(), text))
        return len(self.messages) - 1

    async def edit(self, message: int, text: str) -> int:
        await asyncio.sleep(0)
        self._busy()
        self.messages[message] = text
        self.edits.append(text)
        self.pushes.append((time.monotonic(), text))
        return message

    def ref(self, message: int) -> str:
        return f"board-{message}"

    async def ready(self) -> None:
        if self.gate is not None:
            await self.gate.wait()


def done(text: str, **kw: object) -> TurnDone:
    fields: dict[str, object] = {
        "conversation_id": 1,
        "message_id": 2,
        "text": text,
        "status": "complete",
        "usage": Usage(),
        "model": "fake-model",
    }
    fields.update(kw)
    return TurnDone(**fields)  # type: ignore[arg-type]


def call(result: str) -> ToolCall:
    return ToolCall("calculator", {"expression": "6*7"}, result, "ok", 3)


# Folding events into the text -------------------------------------------------------------------


def test_events_fold_into_the_answer_with_its_notes_under_it() -> None:
    reply = Reply(STYLE)
    reply.apply(TurnStarted(conversation_id=7, user_message_id=8))
    reply.apply(Notice("Waiting for the model — you are next"))
    assert reply.whole() == "<Waiting for the model — you are next>"
    reply.apply(TextDelta("the answer"))
    reply.apply(call("`42`"))
    reply.apply(TextDelta(" is 42"))
    assert reply.whole() == "THE ANSWER IS 42\n\ntool `calculator(expression=\"6*7\") → '42'`"
    sources = [{"n": 1, "title": "Guide", "path": "guide.md", "cited": True}]
    reply.apply(done("The answer is **42**.", metadata={"sources": sources}, status="interrupted"))
    body, notes = reply.whole().split("\n\n")
    assert body == "THE ANSWER IS **42**."  # the engine's text replaces the deltas; only it is marked up
    tool, footer, interrupted = notes.split("\n")
    assert tool.startswith("tool `calculator(")
    assert footer.startswith("src: Sources: [1]") and "Guide" in footer
    assert interrupted == "~(interrupted)~"
    assert reply.finished and (reply.conversation_id, reply.stored_id) == (1, 2)
    assert reply.turn == TurnStarted(conversation_id=7, user_message_id=8)


def test_the_first_words_clear_a_notice() -> None:
    reply = Reply(STYLE)
    reply.apply(Notice("Summarising older turns…"))
    reply.apply(TextDelta("\n"))  # nothing to show yet, but the model has started
    assert reply.status == ""
    assert reply.whole() == ""


def test_an_empty_answer_says_so_even_under_tool_calls() -> None:
    reply = Reply(STYLE)
    reply.apply(call("42"))
    reply.apply(done("  "))
    assert reply.whole().split("\n\n")[0] == "<(no answer)>"


def test_failures_and_refused_commands_are_warnings() -> None:
    failed = Reply(STYLE)
    failed.apply(Notice("Waiting for the model"))
    failed.apply(TurnFailed("The model is not available.", conversation_id=3, message_id=9))
    assert failed.whole() == "!! The model is not available."
    assert failed.finished and failed.stored_id == 9 and failed.conversation_id == 3

    refused = Reply(STYLE)
    refused.apply(CommandResult(conversation_id=4, command="/set", text="Invalid temperature '7'", ok=False))
    assert refused.whole() == "!! INVALID TEMPERATURE '7'"


def test_the_placeholder_shows_until_there_is_something_else() -> None:
    reply = Reply(STYLE)
    assert reply.parts(100) == []  # a platform without a placeholder posts nothing yet
    waiting = Reply(Style(**{**STYLE.__dict__, "placeholder": WAITING}))
    assert waiting.parts(100) == [WAITING]
    waiting.apply(Notice("Waiting"))
    assert waiting.parts(100) == ["<Waiting>"]
    waiting.apply(TextDelta("hi"))
    assert waiting.parts(100) == ["HI"]


def test_a_long_reply_is_split_below_the_limit() -> None:
    reply = Reply(STYLE)
    reply.apply(done("\n\n".join(f"paragraph {n} " + "word " * 20 for n in range(10))))
    parts = reply.parts(300)
    assert len(parts) > 1 and all(len(p) <= 300 for p in parts)
    assert " ".join(" ".join(parts).split()) == " ".join(reply.whole().split())


def test_a_stopped_reply_says_why() -> None:
    deleted, restarting = Reply(STYLE), Reply(STYLE)
    for reply in (deleted, restarting):
        reply.apply(Notice("Waiting for the model"))
    deleted.stop(deleted=True)
    restarting.stop(deleted=False)
    assert deleted.whole() == "~(stopped: the question was deleted)~"
    assert restarting.whole() == "~(interrupted: chinwag is restarting)~"


# Pacing ------------------------------------------------------------------------------------------


async def test_pushes_come_at_most_once_per_interval_and_carry_all_that_came() -> None:
    board = Board()
    stream = Stream(Reply(STYLE), board, limit=1000, interval_s=0.2)
    pusher = asyncio.create_task(stream.push())
    words = [f"w{n} " for n in range(30)]
    started = asyncio.get_running_loop().time()
    for word in words:
        stream.reply.apply(TextDelta(word))
        stream.news()
        await asyncio.sleep(0.02)
    stream.end()
    await pusher
    # However long the deltas took to come (a loaded machine stretches the sleeps), at most one
    # push per interval.
    elapsed = asyncio.get_running_loop().time() - started
    assert board.messages == ["".join(words).strip().upper()]
    # Every push but the last (which goes as soon as the turn ends) waited out the interval.
    times = [when for when, _ in board.pushes]
    gaps = [b - a for a, b in itertools.pairwise(times[:-1])]
    assert all(gap >= 0.19 for gap in gaps), gaps
    assert len(board.pushes) <= elapsed / 0.2 + 2


async def test_an_edit_waits_its_turn_and_then_carries_what_came_meanwhile() -> None:
    board = Board(gate=asyncio.Event())
    stream = Stream(Reply(STYLE), board, limit=1000, interval_s=0.0)
    pusher = asyncio.create_task(stream.push())
    stream.reply.apply(TextDelta("one"))
    stream.news()
    async with asyncio.timeout(5):
        while not board.messages:  # a post needs no turn
            await asyncio.sleep(0.01)
    for word in (" two", " three"):
        stream.reply.apply(TextDelta(word))
        stream.news()
        await asyncio.sleep(0.05)
    assert board.edits == []  # waiting for the platform
    board.gate.set()  # type: ignore[union-attr]
    stream.end()
    await pusher
    assert board.edits == ["ONE TWO THREE"]


async def test_a_reply_cut_short_makes_its_last_edit_without_waiting_its_turn() -> None:
    board = Board(gate=asyncio.Event())  # never set: the platform's pace is spent
    stream = Stream(Reply(STYLE), board, limit=1000, interval_s=0.0)
    pusher = asyncio.create_task(stream.push())
    stream.reply.apply(TextDelta("half an"))
    stream.news()
    async with asyncio.timeout(5):
        while not board.messages:
            await asyncio.sleep(0.01)
    stream.reply.stop(deleted=False)
    stream.cut.set()
    stream.end()
    async with asyncio.timeout(5):
        await pusher
    assert board.messages == ["HALF AN\n\n~(interrupted: chinwag is restarting)~"]


# Refusals for now --------------------------------------------------------------------------------


async def stream_words(stream: Stream[int], words: list[str], gap_s: float = 0.0) -> None:
    """Feed the words to the stream as an answer would, then end it."""
    for word in words:
        stream.reply.apply(TextDelta(word))
        stream.news()
        await asyncio.sleep(gap_s)
    stream.reply.apply(done(stream.reply.text))
    stream.end()


async def test_a_reply_refused_for_now_is_shown_in_full_once_the_platform_takes_it() -> None:
    # Twelve refusals in a row, the final edit among them: more than any client's own retries.
    board = Board(busy_wait=0.01)
    stream = Stream(Reply(STYLE), board, limit=1000, interval_s=0.0)
    pusher = asyncio.create_task(stream.push())
    words = [f"w{n} " for n in range(20)]
    stream.reply.apply(TextDelta(words[0]))
    stream.news()
    async with asyncio.timeout(5):
        while not board.messages:
            await asyncio.sleep(0.01)
    board.busy = 12
    await stream_words(stream, words[1:], gap_s=0.005)
    async with asyncio.timeout(10):
        await pusher
    assert len(board.refusals) == 12
    assert board.messages == ["".join(words).strip().upper()]
    assert stream.failure is None


async def test_a_post_refused_for_now_is_posted_later_and_only_once() -> None:
    board = Board(busy=3, busy_wait=0.01)
    stream = Stream(Reply(STYLE), board, limit=1000, interval_s=0.0)
    pusher = asyncio.create_task(stream.push())
    await stream_words(stream, ["all ", "of ", "it"])
    async with asyncio.timeout(10):
        await pusher
    assert board.messages == ["ALL OF IT"]
    assert stream.refs() == ["board-0"]


async def test_without_a_named_wait_the_pauses_between_tries_double() -> None:
    board = Board(busy=2)  # names no wait: the stream backs off by itself
    stream = Stream(Reply(STYLE), board, limit=1000, interval_s=0.0)
    pusher = asyncio.create_task(stream.push())
    await stream_words(stream, ["patience"])
    async with asyncio.timeout(10):
        await pusher
    assert board.messages == ["PATIENCE"]
    first, second = board.refusals
    assert second - first >= 0.5 * 0.95
    assert board.pushes[0][0] - second >= 1.0 * 0.95


async def test_a_reply_refused_for_longer_than_the_patience_is_given_up_logged_and_kept(
    engine: Engine, history: SqlHistory, model: FakeModel, caplog: pytest.LogCaptureFixture
) -> None:
    chat, board = Chat(engine, history), Board(busy=10_000, busy_wait=0.05)
    model.enqueue("kept", " anyway")
    stream = Stream(Reply(STYLE), board, limit=1000, interval_s=0.0, patience_s=0.5)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="adapters.reply"):
        await chat.answer(asked("hello?"), stream)
    assert time.monotonic() - started < 3
    assert board.messages == []
    assert [content for _, content, _, _ in await stored(history)] == ["hello?", "kept anyway"]
    [record] = [r for r in caplog.records if r.name == "adapters.reply"]
    assert "try again later" in record.getMessage() and "refused" in record.getMessage()


async def test_a_shutdown_does_not_wait_for_a_platform_that_keeps_refusing_the_last_edit(
    engine: Engine, history: SqlHistory, model: FakeModel, caplog: pytest.LogCaptureFixture
) -> None:
    chat, board = Chat(engine, history), Board()
    model.enqueue(*[f"w{n} " for n in range(100)], delay=0.02)
    chat.spawn(chat.answer(asked("go on"), chat.stream(board, interval_s=0.0)), "q1")
    async with asyncio.timeout(10):
        while not board.messages:
            await asyncio.sleep(0.01)
    board.busy, board.busy_wait = 10_000, 30.0  # from now on: "come back in 30 s"
    plan = ShutdownPlan(timeout_s=3.0)  # answers are cut short at once
    with caplog.at_level(logging.ERROR, logger="adapters.reply"):
        await chat.drain(plan)
    assert time.monotonic() < plan.stored_by + 0.2
    assert not chat._tasks
    assert [status for _, _, status, _ in await stored(history)] == ["complete", "interrupted"]
    [record] = [r for r in caplog.records if r.name == "adapters.reply"]
    assert "last edit did not go through" in record.getMessage()
    # What was stored is linked to the message that shows the start of it.
    linked = await history.find_message("chat", "board-0")
    assert linked is not None and linked.status == "interrupted"


# Stop, shutdown, failure, feedback ---------------------------------------------------------------


class Chat(ChatAdapter):
    """The shared adapter with a board for a platform."""

    platform = "chat"

    def stream(self, board: Board, placeholder: str = "", interval_s: float = 0.05) -> Stream[int]:
        style = Style(**{**STYLE.__dict__, "placeholder": placeholder})
        return Stream(Reply(style), board, limit=1000, interval_s=interval_s)


def asked(text: str, message_id: str = "q1") -> Incoming:
    return Incoming(text=text, platform="chat", scope="s", channel="c", thread="t", message_id=message_id)


async def stored(history: SqlHistory) -> list[tuple[str, str, str, bool]]:
    [conv] = await history.list()
    messages = await history.load(conv.id)
    return [(m.role, m.content, m.status, bool(m.metadata.get("deleted"))) for m in messages]


async def test_a_deleted_question_stops_its_answer_which_says_so(
    engine: Engine, history: SqlHistory, model: FakeModel
) -> None:
    chat, board = Chat(engine, history), Board()
    model.enqueue(*[f"word{n} " for n in range(100)], delay=0.02)
    chat.spawn(chat.answer(asked("talk a lot"), chat.stream(board)), "q1")
    async with asyncio.timeout(10):
        while not board.messages or "WORD1" not in board.messages[0]:
            await asyncio.sleep(0.01)
    await chat.deleted("q1")
    await chat.idle()
    [shown] = board.messages
    said, note = shown.split("\n\n")
    assert said.startswith("WORD0 WORD1") and note == "~(stopped: the question was deleted)~"
    [question, answer] = await stored(history)
    assert question == ("user", "talk a lot", "complete", True)
    assert answer[2:] == ("interrupted", True) and answer[1].startswith("word0 word1")
    assert model.cancelled == 1
    linked = await history.find_message("chat", "board-0")
    assert linked is not None and linked.role == "assistant"


@pytest.mark.parametrize("placeholder", ["", WAITING])
async def test_a_question_deleted_before_any_words_gets_no_answer_but_its_placeholder_a_note(
    engine: Engine, history: SqlHistory, model: FakeModel, placeholder: str
) -> None:
    chat, board = Chat(engine, history), Board()
    model.enqueue("never", "said", delay=2.0)
    chat.spawn(chat.answer(asked("slow to start"), chat.stream(board, placeholder)), "q1")
    async with asyncio.timeout(10):
        while not model.prompts:
            await asyncio.sleep(0.01)
    await chat.deleted("q1")
    await chat.idle()
    if placeholder:
        assert board.messages == ["~(stopped: the question was deleted)~"]
    else:
        assert board.messages == []
    assert [status for _, _, status, _ in await stored(history)] == ["complete", "interrupted"]


async def test_a_shutdown_cuts_the_answer_short_and_its_last_edit_goes_at_once(
    engine: Engine, history: SqlHistory, model: FakeModel
) -> None:
    chat, board = Chat(engine, history), Board(gate=asyncio.Event())  # the pace is spent
    model.enqueue(*[f"w{n} " for n in range(100)], delay=0.02)
    chat.spawn(chat.answer(asked("go on"), chat.stream(board, interval_s=0.0)), "q1")
    async with asyncio.timeout(10):
        while not board.messages:
            await asyncio.sleep(0.01)
    started = time.monotonic()
    await chat.drain(ShutdownPlan(timeout_s=4.0))  # answers get 1 s, then are cut short
    assert time.monotonic() - started < 3
    assert not chat.accepting
    [shown] = board.messages
    assert shown.startswith("W0") and shown.endswith("~(interrupted: chinwag is restarting)~")
    assert [status for _, _, status, _ in await stored(history)] == ["complete", "interrupted"]


async def test_a_reply_the_platform_refuses_is_logged_and_kept(
    engine: Engine, history: SqlHistory, model: FakeModel, caplog: pytest.LogCaptureFixture
) -> None:
    chat, board = Chat(engine, history), Board(refuse=True)
    model.enqueue("kept", " anyway")
    with caplog.at_level(logging.ERROR, logger="adapters.reply"):
        await chat.answer(asked("hello?"), chat.stream(board))
    [conv] = await history.list()
    assert [content for _, content, _, _ in await stored(history)] == ["hello?", "kept anyway"]
    [record] = [r for r in caplog.records if r.name == "adapters.reply"]
    message = record.getMessage()
    assert f"conversation {conv.id}" in message and "the board is closed" in message and "kept" in message


async def test_feedback_on_a_reply_is_set_and_withdrawn_only_if_it_was_that_one(
    engine: Engine, history: SqlHistory, model: FakeModel
) -> None:
    chat, board = Chat(engine, history), Board()
    model.enqueue("a fine answer")
    await chat.answer(asked("rate me"), chat.stream(board))
    reply = await history.find_message("chat", "board-0")
    assert reply is not None and reply.role == "assistant"

    async def ratings() -> list[tuple[str, int]]:
        return [(f.user.external_id, f.value) for f in await history.feedback(reply.id)]

    await chat.rate("board-0", "u1", 1, added=True)
    await chat.rate("board-0", "u2", -1, added=True)
    assert sorted(await ratings()) == [("u1", 1), ("u2", -1)]
    await chat.rate("board-0", "u1", -1, added=False)  # not the rating u1 gave
    assert sorted(await ratings()) == [("u1", 1), ("u2", -1)]
    await chat.rate("board-0", "u1", 1, added=False)
    assert await ratings() == [("u2", -1)]

    question = await history.find_message("chat", "q1")
    assert question is not None and question.role == "user"
    await chat.rate("q1", "u1", 1, added=True)  # a question is not a reply to rate
    assert await history.feedback(question.id) == []
