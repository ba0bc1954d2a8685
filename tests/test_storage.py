"""SqlHistory on a real database: schema, pragmas, conversations, messages, races.

A SQLite file in tmp_path, and PostgreSQL too when CHINWAG_TEST_DATABASE_URL is set (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from bot.errors import ChinwagError, ConversationNotFoundError
from bot.seams.history import ConversationKey, History, NewMessage, UserRef
from config import Settings
from storage import SqlHistory
from storage.db import create_engine
from storage.models import Base, ConversationRow
from storage.store import TITLE_LENGTH, title_of

KEY = ConversationKey("slack", "T1", "C1")


async def scalar(store: SqlHistory, sql: str) -> Any:
    """One value from raw SQL on the store's own engine (pragmas, row counts)."""
    async with store.engine.connect() as connection:
        return (await connection.exec_driver_sql(sql)).scalar()


# Schema and connection settings -----------------------------------------------------


@pytest.mark.sqlite_only
async def test_open_migrates_a_new_file_and_reopening_is_a_no_op(settings: Settings) -> None:
    store = await SqlHistory.open(settings)
    try:
        assert isinstance(store, History)
        tables = await scalar(
            store,
            "SELECT group_concat(name, ',') FROM (SELECT name FROM sqlite_master "
            "WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name)",
        )
        assert tables == (
            "alembic_version,conversations,feedback,message_refs,messages,processed_events,users"
        )
        assert await scalar(store, "SELECT version_num FROM alembic_version") == "0002"
        conv = await store.resolve(KEY)
        await store.append(conv.id, NewMessage("user", "still here?"))
    finally:
        await store.close()

    assert (settings.resolved_data_dir / "chinwag.db").is_file()
    again = await SqlHistory.open(settings)
    try:
        assert await scalar(again, "SELECT count(*) FROM alembic_version") == 1
        assert [m.content for m in await again.load(conv.id)] == ["still here?"]
    finally:
        await again.close()


# Alembic cannot reflect SQLite expression indexes; the next test checks that one by its effect.
@pytest.mark.filterwarnings("ignore:.*expression-based index")
async def test_migrations_match_the_models(history: SqlHistory) -> None:
    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)

    async with history.engine.connect() as connection:
        assert await connection.run_sync(differences) == []


async def test_the_database_refuses_two_active_conversations_per_key(history: SqlHistory) -> None:
    await history.resolve(KEY)
    now = datetime.now(UTC)
    duplicate = insert(ConversationRow).values(
        platform=KEY.platform,
        scope=KEY.scope,
        channel=KEY.channel,
        thread=None,
        settings={},
        created_at=now,
        updated_at=now,
    )
    with pytest.raises(IntegrityError):
        async with history.engine.begin() as connection:
            await connection.execute(duplicate)
    async with history.engine.begin() as connection:
        await connection.execute(duplicate.values(archived=True))  # archived ones may pile up


@pytest.mark.sqlite_only
async def test_sqlite_runs_in_wal_with_foreign_keys_and_a_busy_timeout(
    history: SqlHistory, settings: Settings
) -> None:
    assert await scalar(history, "PRAGMA journal_mode") == "wal"
    assert await scalar(history, "PRAGMA foreign_keys") == 1
    assert await scalar(history, "PRAGMA busy_timeout") == settings.storage.busy_timeout_ms
    assert await scalar(history, "PRAGMA synchronous") == 1  # NORMAL


async def test_an_in_memory_database_works_and_serialises_writers() -> None:
    async with await SqlHistory.from_url("sqlite+aiosqlite:///:memory:") as store:
        conv = await store.resolve(KEY)
        await asyncio.gather(*(store.update_settings(conv.id, {f"k{i}": i}) for i in range(20)))
        assert len((await store.resolve(KEY)).settings) == 20


async def test_a_database_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ChinwagError, match="history database") as caught:
        await SqlHistory.from_url("postgresql+nosuchdriver://chinwag:hunter2@localhost/chinwag")
    assert "hunter2" not in str(caught.value)

    with pytest.raises(ChinwagError, match="URL"):
        await SqlHistory.from_url("not a url")

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ChinwagError, match="history database"):
        await SqlHistory.from_url(f"sqlite+aiosqlite:///{blocker}/chinwag.db")


def test_a_bare_postgresql_url_means_asyncpg_and_its_absence_says_which_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("asyncpg")
    assert create_engine("postgresql://chinwag@127.0.0.1/chinwag").dialect.driver == "asyncpg"

    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if the extra were not installed
    with pytest.raises(ChinwagError, match=r"pip install 'chinwag\[postgres\]'"):
        asyncio.run(SqlHistory.from_url("postgresql://chinwag@127.0.0.1/chinwag"))


# Conversations -----------------------------------------------------------------------


async def test_resolve_gets_or_creates_one_conversation_per_key(history: SqlHistory) -> None:
    first = await history.resolve(KEY)
    assert first == await history.resolve(KEY)
    assert first.key == KEY and first.settings == {} and not first.archived
    assert first.created_at.tzinfo is UTC and first.updated_at.tzinfo is UTC

    others = [
        ConversationKey("slack", "T2", "C1"),
        ConversationKey("slack", "T1", "C2"),
        ConversationKey("slack", "T1", "C1", thread="1700000000.0001"),
        ConversationKey("discord", "T1", "C1"),
    ]
    ids = {first.id} | {(await history.resolve(key)).id for key in others}
    assert len(ids) == 5
    assert (await history.resolve(others[2])).key.thread == "1700000000.0001"


async def test_concurrent_resolves_create_a_single_conversation(history: SqlHistory) -> None:
    found = await asyncio.gather(*(history.resolve(KEY) for _ in range(10)))
    assert len({conv.id for conv in found}) == 1


async def test_start_new_archives_the_active_conversation(history: SqlHistory) -> None:
    old = await history.resolve(KEY)
    await history.append(old.id, NewMessage("user", "before the reset"))
    fresh = await history.start_new(KEY)

    assert fresh.id != old.id and not fresh.archived and fresh.message_count == 0
    assert await history.resolve(KEY) == fresh
    kept = await history.get(old.id)
    assert kept is not None and kept.archived and kept.message_count == 1
    # With nothing to archive it just creates one.
    other = await history.start_new(ConversationKey("slack", "T9", "C9"))
    assert not other.archived


async def test_get_returns_none_for_an_unknown_id(history: SqlHistory) -> None:
    assert await history.get(12345) is None


async def test_settings_merge_and_a_none_value_removes_a_key(history: SqlHistory) -> None:
    conv = await history.resolve(KEY)
    await history.update_settings(conv.id, {"temperature": 0.2, "system": "Be brief."})
    updated = await history.update_settings(conv.id, {"top_k": 5, "system": None, "absent": None})
    assert updated.settings == {"temperature": 0.2, "top_k": 5}
    assert updated.updated_at >= conv.updated_at
    assert (await history.resolve(KEY)).settings == {"temperature": 0.2, "top_k": 5}


async def test_a_message_appended_with_its_platform_id_is_found_by_it(history: SqlHistory) -> None:
    conv = await history.resolve(KEY)
    first = await history.append(conv.id, NewMessage("user", "hi", external_id="p1"))
    # Another message with the same id (a redelivery the platform did not dedupe) is kept, unlinked.
    second = await history.append(conv.id, NewMessage("user", "hi again", external_id="p1"))
    assert await history.find_message(KEY.platform, "p1") == first
    assert [m.id for m in await history.load(conv.id)] == [first.id, second.id]


async def test_a_message_s_metadata_merges_and_a_none_value_removes_a_key(history: SqlHistory) -> None:
    conv = await history.resolve(KEY)
    stored = await history.append(conv.id, NewMessage("user", "hi", metadata={"a": 1, "b": 2}))
    await history.update_message(stored.id, {"deleted": True, "b": None, "absent": None})
    [found] = await history.load(conv.id)
    assert found.metadata == {"a": 1, "deleted": True}
    with pytest.raises(ChinwagError):
        await history.update_message(stored.id + 1, {"deleted": True})


async def test_summary_is_stored_with_its_boundary(history: SqlHistory) -> None:
    conv = await history.resolve(KEY)
    stored = [await history.append(conv.id, NewMessage("user", f"m{i}")) for i in range(3)]
    await history.set_summary(conv.id, "They counted to two.", stored[1].id)
    found = await history.get(conv.id)
    assert found is not None
    assert (found.summary, found.summary_until) == ("They counted to two.", stored[1].id)
    later = await history.load(conv.id, after_id=found.summary_until)
    assert [m.content for m in later] == ["m2"]


async def test_unknown_conversations_raise_not_found(history: SqlHistory) -> None:
    with pytest.raises(ConversationNotFoundError):
        await history.append(999, NewMessage("user", "hello"))
    with pytest.raises(ConversationNotFoundError):
        await history.update_settings(999, {"a": 1})
    with pytest.raises(ConversationNotFoundError):
        await history.set_summary(999, "nothing", 1)


async def test_list_has_message_counts_newest_first_and_filters_by_platform(
    history: SqlHistory,
) -> None:
    slack = await history.resolve(KEY)
    discord = await history.resolve(ConversationKey("discord", "G1", "C1"))
    terminal = await history.resolve(ConversationKey("terminal", "local", "repl"))
    for text_ in ("one", "two", "three"):
        await history.append(slack.id, NewMessage("user", text_))
    await history.append(discord.id, NewMessage("user", "hi"))

    listed = await history.list()
    assert [c.id for c in listed] == [discord.id, slack.id, terminal.id]
    assert [c.message_count for c in listed] == [1, 3, 0]
    assert [c.id for c in await history.list(platform="slack")] == [slack.id]
    assert await history.list(platform="matrix") == []
    assert len(await history.list(limit=2)) == 2


async def test_latest_is_the_most_recently_updated(history: SqlHistory) -> None:
    assert await history.latest() is None
    first = await history.resolve(ConversationKey("terminal", "local", "repl", "a"))
    second = await history.resolve(ConversationKey("terminal", "local", "repl", "b"))
    slack = await history.resolve(KEY)
    assert (await history.latest()).id == slack.id  # type: ignore[union-attr]
    assert (await history.latest("terminal")).id == second.id  # type: ignore[union-attr]

    await history.append(first.id, NewMessage("user", "back to the first"))
    assert (await history.latest("terminal")).id == first.id  # type: ignore[union-attr]
    assert (await history.latest()).id == first.id  # type: ignore[union-attr]
    assert await history.latest("discord") is None


async def test_delete_cascades_to_messages(history: SqlHistory) -> None:
    conv = await history.resolve(KEY)
    keep = await history.resolve(ConversationKey("slack", "T1", "C2"))
    for i in range(3):
        await history.append(conv.id, NewMessage("user", f"m{i}"))
    await history.append(keep.id, NewMessage("user", "kept"))

    assert await history.delete(conv.id) is True
    assert await history.get(conv.id) is None
    assert await history.load(conv.id) == []
    assert await scalar(history, "SELECT count(*) FROM messages") == 1
    assert await history.delete(conv.id) is False
    # A deleted id is never handed out again.
    assert (await history.resolve(KEY)).id > keep.id


# Messages ----------------------------------------------------------------------------


async def test_append_and_load_keep_order_metadata_and_after_id(history: SqlHistory) -> None:
    conv = await history.resolve(KEY)
    user = await history.append(conv.id, NewMessage("user", "what is 2+2?"))
    reply = await history.append(
        conv.id,
        NewMessage(
            "assistant",
            "4",
            status="interrupted",
            prompt_tokens=12,
            completion_tokens=1,
            latency_ms=80,
            model="fake",
            metadata={"sources": [{"id": "doc-1", "score": 0.5}]},
        ),
    )
    loaded = await history.load(conv.id)
    assert loaded == [user, reply]
    assert reply.id > user.id and reply.conversation_id == conv.id
    assert (reply.status, reply.prompt_tokens, reply.completion_tokens) == ("interrupted", 12, 1)
    assert (reply.latency_ms, reply.model) == (80, "fake")
    assert loaded[1].metadata == {"sources": [{"id": "doc-1", "score": 0.5}]}
    assert loaded[0].created_at.tzinfo is UTC
    assert await history.load(conv.id, after_id=user.id) == [reply]
    assert await history.load(conv.id, after_id=reply.id) == []

    touched = await history.get(conv.id)
    assert touched is not None and touched.updated_at == reply.created_at > conv.updated_at


async def test_the_first_user_message_titles_the_conversation(history: SqlHistory) -> None:
    conv = await history.resolve(KEY)
    await history.append(conv.id, NewMessage("system", "You are terse."))
    assert (await history.resolve(KEY)).title is None
    long = "How do I   rotate the\nAPI keys for our staging cluster without downtime please?"
    await history.append(conv.id, NewMessage("user", long))
    await history.append(conv.id, NewMessage("user", "and in production?"))
    title = (await history.resolve(KEY)).title
    assert title == "How do I rotate the API keys for our staging cluster without…"


def test_titles_are_cut_on_a_word_boundary() -> None:
    assert title_of("  hello\n  world ") == "hello world"
    assert title_of(" \n ") is None
    exact = "x" * TITLE_LENGTH
    assert title_of(exact) == exact
    assert title_of("a" * 200) == "a" * TITLE_LENGTH + "…"
    cut = title_of("word " * 30)
    assert cut is not None and len(cut) <= TITLE_LENGTH + 1 and cut.endswith("word…")


async def test_append_upserts_the_user(history: SqlHistory) -> None:
    conv = await history.resolve(KEY)
    first = await history.append(conv.id, NewMessage("user", "hi", user=UserRef("slack", "U1", "Al")))
    assert first.user == UserRef("slack", "U1", "Al")
    await history.append(conv.id, NewMessage("user", "again", user=UserRef("slack", "U1", "Alice")))
    # No display name this time: the known one is kept.
    third = await history.append(conv.id, NewMessage("user", "me", user=UserRef("slack", "U1")))
    assert third.user == UserRef("slack", "U1", "Alice")
    await history.append(conv.id, NewMessage("user", "other", user=UserRef("slack", "U2", "Bo")))
    await history.append(conv.id, NewMessage("assistant", "hello both"))

    loaded = await history.load(conv.id)
    assert [m.user.display_name if m.user else None for m in loaded] == [
        "Alice",
        "Alice",
        "Alice",
        "Bo",
        None,
    ]
    assert await scalar(history, "SELECT count(*) FROM users") == 2


# Concurrency: the lost-update bug of FACTS.md ------------------------------------------

TASKS, ROUNDS = 40, 25


async def increment(store: SqlHistory, conversation_id: int) -> None:
    """A read-modify-write in one transaction: read the counter, yield, write it back plus one."""
    async with store.engine.begin() as connection:
        query = select(ConversationRow.settings).where(ConversationRow.id == conversation_id)
        current = (await connection.execute(query)).scalar_one()
        # Give every other task the chance to read the same value (as real work would).
        await asyncio.sleep(0)
        count = current.get("count", 0) + 1
        statement = update(ConversationRow).where(ConversationRow.id == conversation_id)
        await connection.execute(statement.values(settings={**current, "count": count}))


async def _increments_from_many_tasks_all_count(stores: list[SqlHistory]) -> None:
    """TASKS tasks spread over `stores` each increment one counter ROUNDS times; none is lost."""
    try:
        conv = await stores[0].resolve(KEY)

        async def worker(n: int) -> None:
            for _ in range(ROUNDS):
                await increment(stores[n % len(stores)], conv.id)

        await asyncio.gather(*(worker(n) for n in range(TASKS)))
        found = await stores[1].get(conv.id)
        assert found is not None and found.settings["count"] == TASKS * ROUNDS
    finally:
        for store in stores:
            await store.close()


# BEGIN IMMEDIATE is SQLite's: on PostgreSQL (READ COMMITTED) an unlocked read-modify-write does lose
# updates, which is why the store locks its rows (the next test).
@pytest.mark.sqlite_only
@pytest.mark.slow
async def test_concurrent_read_modify_writes_lose_nothing(settings: Settings) -> None:
    await _increments_from_many_tasks_all_count([await SqlHistory.open(settings) for _ in range(4)])


@pytest.mark.sqlite_only
@pytest.mark.slow
async def test_writers_that_outlast_the_busy_timeout_retry_until_they_get_in(settings: Settings) -> None:
    # A 20 ms busy_timeout runs out again and again here, as a 5 s one does on a loaded machine
    # ("database is locked"). Backing off until write_deadline_s keeps every write.
    url = settings.database_url
    stores = [await SqlHistory.from_url(url, busy_timeout_ms=20, write_deadline_s=120) for _ in range(4)]
    await _increments_from_many_tasks_all_count(stores)


@pytest.mark.sqlite_only
async def test_a_writer_past_its_deadline_fails_with_the_lock_named(settings: Settings) -> None:
    url = settings.database_url
    holder = await SqlHistory.from_url(url)
    waiter = await SqlHistory.from_url(url, busy_timeout_ms=0, write_deadline_s=0.3)
    try:
        conv = await holder.resolve(KEY)
        async with holder.engine.begin() as connection:  # holds the write lock (BEGIN IMMEDIATE)
            started = asyncio.get_running_loop().time()
            with pytest.raises(Exception, match="locked"):
                await waiter.update_settings(conv.id, {"x": 1})
            assert asyncio.get_running_loop().time() - started >= 0.1  # it backed off, then gave up
            await connection.exec_driver_sql("SELECT 1")
    finally:
        await waiter.close()
        await holder.close()


@pytest.mark.slow
async def test_concurrent_update_settings_keep_every_key(settings: Settings) -> None:
    stores = [await SqlHistory.open(settings) for _ in range(4)]
    try:
        conv = await stores[0].resolve(KEY)

        async def worker(n: int) -> None:
            store = stores[n % len(stores)]
            for r in range(ROUNDS):
                await store.update_settings(conv.id, {f"task{n}-{r}": r})

        await asyncio.gather(*(worker(n) for n in range(TASKS)))
        found = await stores[2].get(conv.id)
        assert found is not None and len(found.settings) == TASKS * ROUNDS
    finally:
        for store in stores:
            await store.close()


async def test_concurrent_message_updates_keep_every_key(settings: Settings) -> None:
    # update_message locks the message row (on PostgreSQL: only that row, not its user's).
    stores = [await SqlHistory.open(settings) for _ in range(4)]
    try:
        conv = await stores[0].resolve(KEY)
        message = await stores[0].append(conv.id, NewMessage("user", "hi", user=UserRef("slack", "U1")))

        async def worker(n: int) -> None:
            for r in range(5):
                await stores[n % len(stores)].update_message(message.id, {f"task{n}-{r}": r})

        await asyncio.gather(*(worker(n) for n in range(20)))
        [found] = await stores[3].load(conv.id)
        assert len(found.metadata) == 20 * 5 and found.user == UserRef("slack", "U1")
    finally:
        for store in stores:
            await store.close()


REPLICAS = 8
ROOT = Path(__file__).resolve().parents[1]

# One replica: import everything, say so, wait for the word, then open (migrate) and write.
REPLICA = """
import asyncio, sys
from bot.seams.history import ConversationKey, NewMessage
from storage import SqlHistory
from storage.db import create_engine

async def main(url: str, n: str) -> None:
    print("ready", flush=True)
    sys.stdin.readline()
    # A long busy timeout: on SQLite the file lock queues the replicas, on a loaded machine too.
    async with await SqlHistory.from_url(url, busy_timeout_ms=60_000) as store:
        conv = await store.resolve(ConversationKey("slack", "T1", "C1"))
        await store.append(conv.id, NewMessage("user", "replica " + n))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.slow
async def test_replicas_starting_together_on_an_empty_database_all_start(settings: Settings) -> None:
    # Several processes opening an empty database at once migrate in turn (SQLite's write lock,
    # PostgreSQL's advisory lock) instead of racing to create the same tables.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    replicas = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            REPLICA,
            settings.database_url,
            str(n),
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for n in range(REPLICAS)
    ]
    try:
        for replica in replicas:
            assert replica.stdout is not None
            assert await asyncio.wait_for(replica.stdout.readline(), 120) == b"ready\n"
        for replica in replicas:  # all at once, as an orchestrator starts them
            assert replica.stdin is not None
            replica.stdin.write(b"go\n")
        await asyncio.gather(*(replica.stdin.drain() for replica in replicas if replica.stdin))
        outcomes = await asyncio.wait_for(asyncio.gather(*(r.communicate() for r in replicas)), 120)
    finally:
        for replica in replicas:
            if replica.returncode is None:
                replica.kill()
                await replica.wait()
    # The last line of each failure's traceback (the error itself).
    failures = [
        err.decode().strip().rpartition("\n")[2]
        for r, (_, err) in zip(replicas, outcomes, strict=True)
        if r.returncode
    ]
    assert failures == []

    async with await SqlHistory.open(settings) as store:
        assert await scalar(store, "SELECT count(*) FROM alembic_version") == 1
        [conv] = await store.list()
        contents = sorted(m.content for m in await store.load(conv.id))
        assert contents == sorted(f"replica {n}" for n in range(REPLICAS))


# Platform events, message ids, feedback -------------------------------------------------


async def test_an_event_is_claimed_once_even_after_reopening(settings: Settings) -> None:
    store = await SqlHistory.open(settings)
    try:
        assert await store.claim_event("slack", "Ev1")
        assert not await store.claim_event("slack", "Ev1")
        assert await store.claim_event("discord", "Ev1")
        results = await asyncio.gather(*(store.claim_event("slack", "Ev2") for _ in range(10)))
        assert sorted(results) == [False] * 9 + [True]
    finally:
        await store.close()
    again = await SqlHistory.open(settings)
    try:
        assert not await again.claim_event("slack", "Ev1")
    finally:
        await again.close()


async def test_old_event_claims_are_forgotten(history: SqlHistory) -> None:
    assert await history.claim_event("slack", "old")
    async with history.engine.begin() as connection:
        await connection.exec_driver_sql("UPDATE processed_events SET created_at = '2000-01-01 00:00:00'")
    assert await history.claim_event("slack", "new")
    assert await scalar(history, "SELECT count(*) FROM processed_events") == 1


async def test_platform_ids_find_their_message(history: SqlHistory) -> None:
    conv = await history.resolve(KEY)
    reply = await history.append(conv.id, NewMessage("assistant", "a long reply"))
    await history.link_message(reply.id, "slack", ["C1/1.1", "C1/1.2"])
    await history.link_message(reply.id, "slack", ["C1/1.2", "C1/1.3"])
    for external_id in ("C1/1.1", "C1/1.3"):
        found = await history.find_message("slack", external_id)
        assert found is not None and found.id == reply.id
    assert await history.find_message("slack", "C1/9.9") is None
    assert await history.find_message("discord", "C1/1.1") is None
    stored = (await history.load(conv.id))[-1]
    assert stored.metadata["platform_message_ids"] == ["C1/1.1", "C1/1.2", "C1/1.3"]


async def test_feedback_is_one_per_person_and_can_be_withdrawn(history: SqlHistory) -> None:
    conv = await history.resolve(KEY)
    reply = await history.append(conv.id, NewMessage("assistant", "answer"))
    ann, bob = UserRef("slack", "U1", "ann"), UserRef("slack", "U2")
    await history.set_feedback(reply.id, ann, 1)
    await history.set_feedback(reply.id, bob, 1)
    await history.set_feedback(reply.id, bob, -1)
    assert [(f.user.external_id, f.value) for f in await history.feedback(reply.id)] == [
        ("U1", 1),
        ("U2", -1),
    ]
    await history.set_feedback(reply.id, ann, None)
    assert [(f.user.external_id, f.value) for f in await history.feedback(reply.id)] == [("U2", -1)]
    with pytest.raises(ValueError):
        await history.set_feedback(reply.id, ann, 5)
    with pytest.raises(ChinwagError):
        await history.set_feedback(reply.id + 100, ann, 1)


async def test_find_never_creates_and_list_filters_by_scope_and_channel(history: SqlHistory) -> None:
    key = ConversationKey("slack", "T1", "C1", "1.5")
    assert await history.find(key) is None
    created = await history.resolve(key)
    found = await history.find(key)
    assert found is not None and found.id == created.id
    await history.resolve(ConversationKey("slack", "T2", "C1", "1.5"))
    await history.resolve(ConversationKey("slack", "T1", "C2"))
    assert [c.id for c in await history.list(platform="slack", scope="T1", channel="C1")] == [created.id]
    assert len(await history.list(scope="T1")) == 2
