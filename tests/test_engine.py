"""The engine with a FakeModel on a real SQLite file: turns, persistence, failures, cancellation."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from bot.engine import Engine
from bot.seams.history import NewMessage, StoredMessage
from bot.types import (
    CommandResult,
    Event,
    Incoming,
    Notice,
    TextDelta,
    TurnDone,
    TurnFailed,
    TurnStarted,
)
from config import Settings
from storage import SqlHistory
from tests.fakes import FakeModel


def said(text: str, **kw: object) -> Incoming:
    fields: dict[str, object] = {"platform": "terminal", "channel": "repl", "thread": "t1"}
    fields.update(kw)
    return Incoming(text=text, **fields)  # type: ignore[arg-type]


async def run(engine: Engine, incoming: Incoming) -> list[Event]:
    return [event async for event in engine.handle(incoming)]


def reply_text(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_a_turn_streams_and_stores_both_messages(
    engine: Engine, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue("Hello", " there", "!")
    events = await run(engine, said("hi"))

    assert isinstance(events[0], TurnStarted)
    assert reply_text(events) == "Hello there!"
    done = events[-1]
    assert isinstance(done, TurnDone)
    assert done.status == "complete" and done.text == "Hello there!"
    assert done.usage.completion_tokens == 3 and done.usage.prompt_tokens > 0
    assert done.model == "fake-model"

    stored = await history.load(done.conversation_id)
    assert [(m.role, m.content, m.status) for m in stored] == [
        ("user", "hi", "complete"),
        ("assistant", "Hello there!", "complete"),
    ]
    reply = stored[1]
    assert reply.completion_tokens == 3 and reply.model == "fake-model"
    assert reply.latency_ms is not None and reply.metadata["finish_reason"] == "stop"
    assert stored[0].user is not None and stored[0].user.platform == "terminal"


async def test_a_queued_reply_tells_its_place_in_line_and_stores_only_the_answer(
    engine: Engine, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue("Hello", " there", queued=(3, 2, 1, 0))
    events = await run(engine, said("hi"))

    kinds = [type(e).__name__ for e in events]
    assert kinds == ["TurnStarted", *["Notice"] * 4, "TextDelta", "TextDelta", "TurnDone"]
    assert [e.text for e in events if isinstance(e, Notice)] == [
        "Waiting for the model — 2 ahead of you",
        "Waiting for the model — 1 ahead of you",
        "Waiting for the model — you are next",
        "Thinking…",
    ]
    done = events[-1]
    assert isinstance(done, TurnDone) and done.text == "Hello there" and done.status == "complete"
    stored = await history.load(done.conversation_id)
    assert [(m.role, m.content) for m in stored] == [("user", "hi"), ("assistant", "Hello there")]


async def test_a_reply_stopped_while_it_waits_in_the_queue_is_stored_interrupted(
    engine: Engine, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue("never", " said", queued=(1,), delay=60)
    async with aclosing(engine.handle(said("anyone?"))) as events:
        async for event in events:
            if isinstance(event, Notice):
                break  # the user gives up (or the process stops) while the reply waits
    conv = (await history.list())[0]
    stored = await history.load(conv.id)
    assert [(m.role, m.content, m.status) for m in stored] == [
        ("user", "anyone?", "complete"),
        ("assistant", "", "interrupted"),
    ]
    assert model.cancelled == 1


async def test_prompt_has_system_prompt_history_and_new_message(
    engine: Engine, model: FakeModel, settings: Settings
) -> None:
    model.enqueue("first answer")
    await run(engine, said("first question"))
    model.enqueue("second answer")
    await run(engine, said("second question"))

    prompt = model.prompts[-1]
    assert prompt[0].role == "system" and prompt[0].content == settings.chat.system_prompt
    assert [(m.role, m.content) for m in prompt[1:]] == [
        ("user", "first question"),
        ("assistant", "first answer"),
        ("user", "second question"),
    ]


async def test_user_message_is_committed_before_generation(
    engine: Engine, model: FakeModel, settings: Settings
) -> None:
    seen: list[list[str]] = []

    async def look() -> None:
        # A separate connection: only committed rows are visible to it.
        other = await SqlHistory.open(settings)
        try:
            conv = (await other.list())[0]
            seen.append([m.content for m in await other.load(conv.id)])
        finally:
            await other.close()

    model.before_stream = look
    await run(engine, said("keep me"))
    assert seen == [["keep me"]]


async def test_history_survives_a_restart(settings: Settings) -> None:
    first_model = FakeModel()
    store = await SqlHistory.open(settings)
    first_model.enqueue("I will remember 42.")
    await run(Engine(first_model, store, settings), said("remember 42"))
    await store.close()

    model = FakeModel()
    store = await SqlHistory.open(settings)
    try:
        model.enqueue("It was 42.")
        events = await run(Engine(model, store, settings), said("what number?"))
        assert isinstance(events[-1], TurnDone)
        contents = [m.content for m in model.prompts[-1]]
        assert "remember 42" in contents and "I will remember 42." in contents
    finally:
        await store.close()


async def test_conversation_id_continues_a_stored_conversation(engine: Engine, model: FakeModel) -> None:
    events = await run(engine, said("one", thread="a"))
    conv_id = events[-1].conversation_id  # type: ignore[union-attr]
    await run(engine, said("two", thread="b", conversation_id=conv_id))
    assert [m.content for m in model.prompts[-1][1:]] == ["one", "ok", "two"]

    missing = await run(engine, said("three", conversation_id=9999))
    assert isinstance(missing[-1], TurnFailed) and "9999" in missing[-1].message


async def test_keys_isolate_conversations(engine: Engine, model: FakeModel) -> None:
    await run(engine, said("secret of team A", platform="slack", scope="T1", thread=None))
    await run(engine, said("hello", platform="slack", scope="T2", thread=None))
    assert all("secret" not in m.content for m in model.prompts[-1])


async def test_empty_message_gets_a_clear_message_and_stores_nothing(
    engine: Engine, history: SqlHistory
) -> None:
    events = await run(engine, said("   \n "))
    assert len(events) == 1 and isinstance(events[0], TurnFailed)
    assert "empty" in events[0].message
    conv = (await history.list())[0]
    assert await history.load(conv.id) == []


async def test_too_long_message_is_kept_refused_and_never_prompted(
    settings: Settings, history: SqlHistory
) -> None:
    model = FakeModel(context_window=600)
    engine = Engine(model, history, settings)
    huge = "word " * 2000
    events = await run(engine, said(huge))
    failed = events[-1]
    assert isinstance(failed, TurnFailed)
    limit = engine.budget.max_message_tokens(settings.chat.system_prompt, 512)
    assert f"limit is {limit} tokens" in failed.message and "2000 tokens" in failed.message
    assert model.prompts == []

    stored = await history.load(failed.conversation_id)  # type: ignore[arg-type]
    assert stored[0].status == "rejected" and stored[0].metadata["reason"] == "too_long"

    await run(engine, said("/set max_tokens 50"))
    await run(engine, said("short one"))
    assert all("word word" not in m.content for m in model.prompts[-1])


async def test_a_question_deleted_on_its_platform_leaves_the_context_with_its_reply(
    engine: Engine, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue("Blue.")
    model.enqueue("A secret.")
    model.enqueue("Blue, you said.")
    await run(engine, said("My favourite colour is blue.", message_id="m1"))
    events = await run(engine, said("Here is a secret: 1234.", message_id="m2"))
    done = events[-1]
    started = events[0]
    assert isinstance(started, TurnStarted) and isinstance(done, TurnDone)
    assert done.metadata["reply_to"] == started.user_message_id
    found = await history.find_message("terminal", "m2")
    assert found is not None and found.content == "Here is a secret: 1234."

    assert await engine.forget("terminal", "m2") == 2  # the question and its reply
    assert await engine.forget("terminal", "m9") == 0  # not a question it kept
    await run(engine, said("What did I tell you?", message_id="m3"))
    asked = [m.content for m in model.prompts[-1]]
    assert "My favourite colour is blue." in asked and "Blue." in asked
    assert not any("1234" in text or text == "A secret." for text in asked)
    stored = await history.load(done.conversation_id)
    assert [m.metadata.get("deleted", False) for m in stored] == [False, False, True, True, False, False]
    # Kept, and shown as deleted.
    listing = next(e for e in await run(engine, said("/history")) if isinstance(e, CommandResult)).text
    assert "1234" in listing and "_(deleted)_" in listing


async def test_a_reply_stored_after_its_question_was_deleted_leaves_the_context_too(
    engine: Engine, model: FakeModel, history: SqlHistory, settings: Settings
) -> None:
    """Another replica forgets the question while this one is writing the answer: its `forget`
    finds no reply yet, so the reply, once stored, finds the mark on its question itself."""

    async def deleted_elsewhere() -> None:
        other = await SqlHistory.open(settings)  # another process's connection
        try:
            assert await Engine(FakeModel(), other, settings).forget("terminal", "m1") == 1
        finally:
            await other.close()

    model.before_stream = deleted_elsewhere
    model.enqueue("A secret.")
    done = (await run(engine, said("Here is a secret: 1234.", message_id="m1")))[-1]
    assert isinstance(done, TurnDone)
    model.before_stream = None
    stored = await history.load(done.conversation_id)
    assert [(m.role, m.metadata.get("deleted")) for m in stored] == [("user", True), ("assistant", True)]
    model.enqueue("Nothing.")
    await run(engine, said("What did I tell you?", message_id="m2"))
    assert not any("1234" in m.content or m.content == "A secret." for m in model.prompts[-1])


async def test_model_failure_marks_reply_failed_without_traceback(
    engine: Engine, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue("partial", " answer", error=RuntimeError("CUDA exploded"), error_after=2)
    events = await run(engine, said("question"))
    failed = events[-1]
    assert isinstance(failed, TurnFailed)
    assert "Traceback" not in failed.message and "\n" not in failed.message
    assert "kept" in failed.message

    stored = await history.load(failed.conversation_id)  # type: ignore[arg-type]
    assert [m.status for m in stored] == ["complete", "failed"]
    assert stored[1].content == "partial answer"
    assert "CUDA exploded" in stored[1].metadata["error"]

    # A failed reply does not poison the next prompt.
    await run(engine, said("again"))
    assert [m.content for m in model.prompts[-1][1:]] == ["question", "again"]


async def test_cancelling_the_task_stores_an_interrupted_reply(
    engine: Engine, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue(*[f"w{i} " for i in range(100)], delay=0.01)
    deltas: list[str] = []

    async def consume() -> None:
        async for event in engine.handle(said("long please")):
            if isinstance(event, TextDelta):
                deltas.append(event.text)

    task = asyncio.create_task(consume())
    while len(deltas) < 3:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    conv = (await history.list())[0]
    stored = await history.load(conv.id)
    assert stored[-1].role == "assistant" and stored[-1].status == "interrupted"
    assert stored[-1].content.startswith("w0 w1 w2")
    assert len(stored[-1].content.split()) < 100
    assert model.cancelled == 1


async def test_closing_the_stream_stores_an_interrupted_reply(
    engine: Engine, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue("a ", "b ", "c ", "d ")
    async with aclosing(engine.handle(said("go"))) as events:
        async for event in events:
            if isinstance(event, TextDelta) and event.text == "b ":
                break
    conv = (await history.list())[0]
    stored = await history.load(conv.id)
    assert (stored[-1].status, stored[-1].content) == ("interrupted", "a b ")
    assert model.cancelled == 1


async def test_max_tokens_bounds_the_reply(engine: Engine, model: FakeModel) -> None:
    await run(engine, said("/set max_tokens 2"))
    model.enqueue("one ", "two ", "three ")
    events = await run(engine, said("count"))
    done = events[-1]
    assert isinstance(done, TurnDone)
    assert done.text == "one two " and done.metadata["finish_reason"] == "length"


# Commands ----------------------------------------------------------------------------


async def command(engine: Engine, text: str, **kw: object) -> CommandResult:
    events = await run(engine, said(text, **kw))
    assert len(events) == 1 and isinstance(events[0], CommandResult), events
    return events[0]


async def test_help_lists_every_command(engine: Engine) -> None:
    result = await command(engine, "/help")
    for name in ("/help", "/reset", "/history", "/set", "/system", "/settings", "/model"):
        assert name in result.text


async def test_unknown_command_and_paths(engine: Engine, model: FakeModel) -> None:
    result = await command(engine, "/frobnicate now")
    assert not result.ok and "Unknown command /frobnicate" in result.text and "/help" in result.text
    # A path is a message, not a command.
    events = await run(engine, said("/usr/bin/python is missing"))
    assert isinstance(events[-1], TurnDone)
    assert model.prompts[-1][-1].content == "/usr/bin/python is missing"


async def test_commands_are_not_stored_as_messages(engine: Engine, history: SqlHistory) -> None:
    result = await command(engine, "/settings")
    assert await history.load(result.conversation_id) == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("/set temperature 5", "temperature"),
        ("/set temperature hot", "temperature"),
        ("/set top_p 0", "top_p"),
        ("/set top_k -1", "top_k"),
        ("/set repetition_penalty 0.5", "repetition_penalty"),
        ("/set seed -3", "seed"),
        ("/set max_tokens 0", "max_tokens"),
        ("/set max_tokens 5000", "at most"),
        ("/set colour blue", "Unknown setting 'colour'"),
        ("/set temperature", "Give a value"),
        ("/set", "Usage"),
    ],
)
async def test_set_rejects_bad_input_in_one_line(
    engine: Engine, history: SqlHistory, text: str, fragment: str
) -> None:
    result = await command(engine, text)
    assert not result.ok and fragment in result.text and "\n" not in result.text
    conv = await history.get(result.conversation_id)
    assert conv is not None and conv.settings == {}


async def test_set_is_persisted_and_used(
    engine: Engine, model: FakeModel, history: SqlHistory, settings: Settings
) -> None:
    for line in (
        "/set temperature 0.2",
        "/set top_k 5",
        "/set seed 7",
        "/set max_tokens 64",
        "/set repetition_penalty 1.3",
        "/set top_p 0.5",
    ):
        assert (await command(engine, line)).ok
    await run(engine, said("hi"))
    params = model.params[-1]
    assert (params.temperature, params.top_k, params.seed, params.max_tokens) == (0.2, 5, 7, 64)
    assert (params.repetition_penalty, params.top_p) == (1.3, 0.5)

    # After a restart the conversation keeps its settings.
    again = Engine(model, await SqlHistory.open(settings), settings)
    try:
        await run(again, said("hi again"))
        assert model.params[-1].temperature == 0.2
    finally:
        await again.history.close()

    back = await command(engine, "/set seed none")
    assert "default" in back.text
    await run(engine, said("and now"))
    assert model.params[-1].seed is None


async def test_settings_shows_values_and_their_source(engine: Engine) -> None:
    await command(engine, "/set temperature 0.3")
    text = (await command(engine, "/settings")).text
    assert "`temperature` = 0.3 (this conversation)" in text
    assert "`top_p` = 0.9 (default)" in text
    assert "System prompt (default)" in text


async def test_system_prompt_per_conversation(engine: Engine, model: FakeModel, settings: Settings) -> None:
    assert (await command(engine, "/system You are a pirate.")).ok
    await run(engine, said("hello"))
    assert model.prompts[-1][0].content == "You are a pirate."
    assert "pirate" in (await command(engine, "/system")).text

    # Another conversation keeps the default persona.
    await run(engine, said("hello", thread="other"))
    assert model.prompts[-1][0].content == settings.chat.system_prompt

    await command(engine, "/system default")
    await run(engine, said("hello again"))
    assert model.prompts[-1][0].content == settings.chat.system_prompt


async def test_reset_starts_a_new_conversation_and_keeps_the_old(
    engine: Engine, model: FakeModel, history: SqlHistory
) -> None:
    first = await run(engine, said("remember me"))
    old_id = first[-1].conversation_id  # type: ignore[union-attr]
    result = await command(engine, "/reset")
    assert result.conversation_id != old_id and f"#{old_id}" in result.text

    await run(engine, said("fresh start"))
    assert [m.content for m in model.prompts[-1][1:]] == ["fresh start"]
    assert old_id is not None
    assert [m.content for m in await history.load(old_id)] == ["remember me", "ok"]


async def test_history_command(engine: Engine, model: FakeModel) -> None:
    model.enqueue("The answer is 4.")
    await run(engine, said("what is 2+2?"))
    text = (await command(engine, "/history")).text
    assert "**You:** what is 2+2?" in text and "**chinwag:** The answer is 4." in text
    assert "2 messages" in text
    assert (await command(engine, "/history 1")).text.count("- **") == 1
    assert not (await command(engine, "/history lots")).ok


async def test_model_command(engine: Engine) -> None:
    text = (await command(engine, "/model")).text
    assert "fake-model" in text and "cpu" in text and "float32" in text and "4096" in text


# The token budget and the running summary ------------------------------------------------


def tiny_window(settings: Settings) -> Settings:
    """A 400-token window, so that a dozen turns must be summarised."""
    context = settings.context.model_copy(update={"max_tokens": 400, "summary_max_tokens": 64})
    return settings.model_copy(update={"context": context})


def summariser(prompts_seen: list[str]) -> object:
    def respond(prompt: list) -> list[str] | None:
        if prompt[0].content.startswith("You keep a running summary"):
            prompts_seen.append(prompt[-1].content)
            return [f"SUMMARY{len(prompts_seen)}"]
        return None

    return respond


async def test_old_turns_are_summarised_not_dropped(history: SqlHistory, settings: Settings) -> None:
    small = tiny_window(settings)
    model = FakeModel()
    summaries: list[str] = []
    model.responder = summariser(summaries)  # type: ignore[assignment]
    engine = Engine(model, history, small)
    await run(engine, said("/set max_tokens 100"))

    notices = []
    for i in range(12):
        model.enqueue(*[f"a{i}_{j} " for j in range(20)])
        events = await run(engine, said(" ".join(f"u{i}_{j}" for j in range(20))))
        assert isinstance(events[-1], TurnDone), events[-1]
        notices += [e for e in events if type(e).__name__ == "Notice"]
        prompt = model.prompts[-1]
        assert model.count_tokens(prompt) + 100 <= 400

    assert summaries, "older turns should have been summarised"
    assert notices
    conv = (await history.list())[0]
    assert conv.summary and conv.summary.startswith("SUMMARY")
    assert conv.summary_until is not None

    last_prompt = model.prompts[-1]
    assert conv.summary in last_prompt[0].content
    # The newest message is always there; kept turns start with a user message.
    assert last_prompt[-1].content.startswith("u11_0")
    assert last_prompt[1].role == "user"
    # The first summary saw the first turn; later ones extend the previous summary.
    assert "u0_0" in summaries[0]
    assert any("SUMMARY1" in s for s in summaries[1:])
    # Nothing was dropped silently: every turn is either in a summary prompt or in the prompt.
    seen = "\n".join(summaries) + "\n".join(m.content for m in last_prompt)
    for i in range(12):
        assert f"u{i}_0" in seen


async def test_summary_is_reused_not_rewritten_every_turn(history: SqlHistory, settings: Settings) -> None:
    small = tiny_window(settings)
    model = FakeModel()
    summaries: list[str] = []
    model.responder = summariser(summaries)  # type: ignore[assignment]
    engine = Engine(model, history, small)
    await run(engine, said("/set max_tokens 100"))
    for i in range(12):
        model.enqueue("short reply")
        await run(engine, said(" ".join(f"u{i}_{j}" for j in range(20))))
    # keep_ratio leaves headroom, so far fewer summaries than turns.
    assert 1 <= len(summaries) <= 4


class _HeldWrites(SqlHistory):
    """The real store, with each write held until the test lets it go (a busy disk), so that a
    cancel lands mid-write; `finished` is set when a write ends, whether it was stored or not."""

    entered: asyncio.Event
    release: asyncio.Event
    finished: asyncio.Event

    async def append(self, conversation_id: int, message: NewMessage) -> StoredMessage:
        self.entered.set()
        try:
            await self.release.wait()
            return await super().append(conversation_id, message)
        finally:
            self.finished.set()


async def test_a_cancel_while_the_message_is_written_does_not_lose_it(
    model: FakeModel, settings: Settings
) -> None:
    history = await _HeldWrites.open(settings)
    assert isinstance(history, _HeldWrites)
    history.entered, history.release, history.finished = asyncio.Event(), asyncio.Event(), asyncio.Event()
    try:
        engine = Engine(model, history, settings)
        task = asyncio.create_task(run(engine, said("please keep me")))
        await history.entered.wait()  # inside the write
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not history.finished.is_set()
        history.release.set()
        await history.finished.wait()  # the shielded write goes on without the cancelled turn
        [conv] = await history.list()
        assert [(m.role, m.content) for m in await history.load(conv.id)] == [("user", "please keep me")]
        assert model.prompts == []  # nothing was generated for a cancelled turn
    finally:
        await history.close()


async def test_latest_conversation_is_the_channels_last_active_one_not_archived(
    engine: Engine, model: FakeModel, history: SqlHistory
) -> None:
    where = {"platform": "slack", "scope": "T1", "channel": "C1"}
    assert await engine.latest_conversation(**where) is None

    model.enqueue("first")
    older = await run(engine, said("one", thread="100.1", **where))
    model.enqueue("second")
    newer = await run(engine, said("two", thread="200.2", **where))
    model.enqueue("elsewhere")
    await run(engine, said("three", thread="300.3", platform="slack", scope="T1", channel="C2"))
    model.enqueue("other team")
    await run(engine, said("four", thread="400.4", platform="slack", scope="T2", channel="C1"))
    first, second = older[0], newer[0]
    assert isinstance(first, TurnStarted) and isinstance(second, TurnStarted)

    latest = await engine.latest_conversation(**where)
    assert latest is not None and latest.id == second.conversation_id
    assert latest.key.thread == "200.2"

    # /reset in that thread archives it; the fresh one it starts is now the latest.
    reset = await run(engine, said("/reset", thread="200.2", **where))
    fresh = next(e for e in reset if isinstance(e, CommandResult)).conversation_id
    assert fresh != second.conversation_id
    latest = await engine.latest_conversation(**where)
    assert latest is not None and latest.id == fresh and not latest.archived
    # An answer that was being written at the /reset is stored after it: the archived
    # conversation is now the last updated, and still not the one commands act on.
    await history.append(second.conversation_id, NewMessage("assistant", "late"))
    [last_updated, *_] = await history.list(platform="slack", scope="T1", channel="C1")
    assert last_updated.id == second.conversation_id and last_updated.archived
    latest = await engine.latest_conversation(**where)
    assert latest is not None and latest.id == fresh

    # Talking in the older thread again makes it the latest.
    model.enqueue("again")
    await run(engine, said("five", thread="100.1", **where))
    latest = await engine.latest_conversation(**where)
    assert latest is not None and latest.id == first.conversation_id
