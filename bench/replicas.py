"""Replicas on one PostgreSQL: starting together on an empty database, and a burst of Slack events.

    python bench/replicas.py [--database-url URL] [--starts 8] [--events 200] [--redelivered 0.2] [--json]

(a) `--starts` chinwag processes (`chinwag history list`: each brings the schema up to date as it
starts) launched at once on a database created empty for the run: how many exit 0.
(b) Two `chinwag serve --slack` replicas (the small model, SmolLM2, a few tokens an answer) on
one PostgreSQL, sharing the edit budget in Redis when one answers on 127.0.0.1:6379, against the
fake Slack of the tests: `--events` mentions sent at once, each to one replica, and a share of
them (`--redelivered`) sent again to the other replica, half racing the original, half after its
ack (an event whose ack is not a 200 is sent again, as Slack does). Counted: acks, answers
(conversations with a stored, linked reply and one message in their thread), duplicates, lost,
redeliveries turned away; and how long until every event was answered.
Everything runs on 127.0.0.1; the databases the run creates are dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import make_url
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from storage import SqlHistory
from tests.cli_support import chinwag_bin, cli_env
from tests.fake_slack import BOT_USER, FakeSlack, event_body, sign
from tests.replicas_support import SECRET, Replica, post, replicas

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


async def _execute(url: URL, *statements: str) -> list[Any]:
    """Run statements outside a transaction (CREATE/DROP DATABASE need that); the last one's rows."""
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    rows: list[Any] = []
    try:
        async with engine.connect() as connection:
            for statement in statements:
                result = await connection.exec_driver_sql(statement)
                rows = list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()
    return rows


class Database:
    """A database of the run's own on the server, dropped on the way out."""

    def __init__(self, server: URL) -> None:
        self.server = server
        self.name = f"chinwag_bench_{uuid.uuid4().hex[:10]}"

    async def __aenter__(self) -> str:
        await _execute(self.server, f'CREATE DATABASE "{self.name}"')
        return self.server.set(database=self.name).render_as_string(hide_password=False)

    async def __aexit__(self, *exc: object) -> None:
        await _execute(self.server, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


async def simultaneous_starts(server: URL, count: int, root: Path) -> dict[str, Any]:
    """`count` chinwag processes started at once on an empty database."""
    async with Database(server) as url:
        processes = []
        started = time.monotonic()
        for n in range(count):
            env = cli_env(root / f"start{n}", CHINWAG_STORAGE__URL=url)
            processes.append(
                await asyncio.create_subprocess_exec(
                    chinwag_bin(),
                    "history",
                    "list",
                    env=env,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                )
            )
        outputs = await asyncio.gather(*(p.communicate() for p in processes))
        seconds = time.monotonic() - started
        codes = [p.returncode for p in processes]
        versions = await _execute(make_url(url), "SELECT version_num FROM alembic_version")
    failures = [_cause(err.decode()) for (_, err), code in zip(outputs, codes, strict=True) if code]
    return {
        "processes": count,
        "exit_0": codes.count(0),
        "exit_codes": sorted(set(c for c in codes if c is not None)),
        "failures": failures[:3],
        "schema_versions": [row[0] for row in versions],
        "seconds": round(seconds, 1),
    }


def _cause(stderr: str) -> str:
    """The line of a failed start's output that says what went wrong."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "rror" in line]
    return (errors or lines or ["(nothing on stderr)"])[0][:240]


async def _send(url: str, n: int, team: str, retry: int = 0) -> tuple[int, float]:
    """Mention number `n` (event Ev{n}, thread 1700.{n}); the ack's status and seconds."""
    ts = f"1700.{n:06d}"
    event = {
        "type": "app_mention",
        "user": "U1",
        "text": f"<@{BOT_USER}> Say hi to number {n}.",
        "ts": ts,
        "channel": "C1",
        "event_ts": ts,
    }
    body = json.dumps(event_body(event, event_id=f"Ev{n}", team=team))
    headers = sign(SECRET, body)
    if retry:
        headers |= {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
    started = time.monotonic()
    try:
        status, _ = await post(url, body, headers, "application/json")
    except OSError:
        status = 0
    return status, time.monotonic() - started


async def burst(
    server: URL, events: int, share: float, root: Path, within: float, seed: int
) -> dict[str, Any]:
    """Two serve replicas and a burst of `events` Slack events, `share` of them redelivered."""
    redis_url = REDIS_URL if await _redis_answers() else None
    team = f"T{uuid.uuid4().hex[:8].upper()}"
    rng = random.Random(seed)
    again = set(rng.sample(range(events), round(events * share)))
    racing = set(sorted(again)[::2])  # half race the original; the rest come after its ack
    fake = await FakeSlack().start()
    try:
        async with Database(server) as url:
            env = {
                "CHINWAG_GENERATION__MAX_TOKENS": "8",
                "CHINWAG_SCHEDULER__MAX_QUEUE": str(events + 16),  # a queue for the whole burst
                # The bench counts answers, not pacing: a budget that never makes an edit wait.
                "CHINWAG_SLACK__UPDATES_PER_MINUTE": "10000",
                "CHINWAG_SLACK__SHUTDOWN_TIMEOUT_S": "5",
            }
            async with replicas(2, root, url, fake, None, redis_url, env) as pair:
                history = await SqlHistory.from_url(url)
                try:
                    result = await _burst(pair, history, fake, team, events, again, racing, within)
                finally:
                    await history.close()
    finally:
        await fake.close()
    result.update({"redis": redis_url is not None, "events": events, "redelivered": len(again)})
    return result


async def _burst(
    pair: list[Replica],
    history: SqlHistory,
    fake: FakeSlack,
    team: str,
    events: int,
    again: set[int],
    racing: set[int],
    within: float,
) -> dict[str, Any]:
    started = time.monotonic()

    async def deliver(n: int) -> list[tuple[int, float]]:
        first, other = pair[n % 2], pair[1 - n % 2]
        if n in racing:
            return list(
                await asyncio.gather(_send(first.slack_url, n, team), _send(other.slack_url, n, team, 1))
            )
        acks = [await _send(first.slack_url, n, team)]
        # Slack sends an event again when its ack is not a 200 (here at once, up to three times).
        while acks[-1][0] != 200 and len(acks) <= 3:
            acks.append(await _send(first.slack_url, n, team, len(acks)))
        if n in again:
            acks.append(await _send(other.slack_url, n, team, len(acks)))
        return acks

    acks = [ack for sent in await asyncio.gather(*(deliver(n) for n in range(events))) for ack in sent]
    sent_s = time.monotonic() - started

    async def tally() -> tuple[int, int, dict[str, int]]:
        answered, duplicated, statuses = 0, 0, {}
        for conv in await history.list(limit=events * 2):
            replies = [m for m in await history.load(conv.id) if m.role == "assistant"]
            if len(replies) > 1:
                duplicated += 1
            if replies and replies[-1].metadata.get("platform_message_ids"):
                answered += 1
                statuses[replies[-1].status] = statuses.get(replies[-1].status, 0) + 1
        return answered, duplicated, statuses

    deadline = time.monotonic() + within
    while True:
        done = await tally()
        if done[0] >= events or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    all_answered_s = time.monotonic() - started
    answered, duplicated, statuses = done
    # Redeliveries turned away by the replica they reached (each says so in its log).
    await asyncio.sleep(1.0)
    turned_away = sum(r.log().count("already handled") for r in pair)
    posts: dict[str, int] = {}
    for call in fake.called("chat.postMessage"):
        thread = str(call.args.get("thread_ts"))
        posts[thread] = posts.get(thread, 0) + 1
    conversations = len(await history.list(limit=events * 2))
    latencies = sorted(seconds for _, seconds in acks)
    return {
        "deliveries": len(acks),
        "acks_not_200": sum(1 for status, _ in acks if status != 200),
        "conversations": conversations,
        "answered": answered,
        "lost": events - answered,
        "duplicated_replies": duplicated,
        "threads_with_more_than_one_post": sum(1 for count in posts.values() if count > 1),
        "reply_statuses": statuses,
        "redeliveries_turned_away": turned_away,
        "ack_p50_ms": round(statistics.median(latencies) * 1000),
        "ack_p95_ms": round(latencies[int(len(latencies) * 0.95) - 1] * 1000),
        "burst_sent_s": round(sent_s, 1),
        "all_answered_s": round(all_answered_s, 1),
    }


async def _redis_answers() -> bool:
    try:
        import redis.asyncio as redis
    except ImportError:
        return False
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        return bool(await client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        await client.aclose()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    server = make_url(args.database_url).set(drivername="postgresql+asyncpg")
    with tempfile.TemporaryDirectory(prefix="chinwag-replicas-") as tmp:
        root = Path(tmp)
        result: dict[str, Any] = {}
        if args.starts:
            result["starts"] = await simultaneous_starts(server, args.starts, root / "starts")
        if args.events:
            result["burst"] = await burst(
                server, args.events, args.redelivered, root / "burst", args.within, args.seed
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CHINWAG_TEST_DATABASE_URL") or DEFAULT_URL,
        help="a PostgreSQL server (its database is only used to create and drop the run's own)",
    )
    parser.add_argument("--starts", type=int, default=8, help="processes started at once (0: skip)")
    parser.add_argument("--events", type=int, default=200, help="Slack events in the burst (0: skip)")
    parser.add_argument(
        "--redelivered", type=float, default=0.2, help="share sent again to the other replica"
    )
    parser.add_argument("--within", type=float, default=1800.0, help="seconds to wait for every answer")
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(result))
        return
    for part, figures in result.items():
        print(f"[{part}]")
        for name, value in figures.items():
            print(f"  {name:34} {value}")


if __name__ == "__main__":
    main()
