"""Deleted platform messages, told to every process that shares one PostgreSQL history (LISTEN/NOTIFY).

Replicas of `chinwag serve` share the database, and a question deleted on its platform may reach
a replica other than the one writing its answer. The replica that hears of it NOTIFYs; every
replica LISTENs on a connection of its own and stops the answer if it is writing it. PostgreSQL
keeps no notice for a listener that is away: each time it (re)connects the feed says so (None), and
its reader checks its answers in flight against the `deleted` marks that `Engine.forget` stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

CHANNEL = "chinwag_deleted"
# A listener that cannot connect tries again after a pause that doubles up to the last one.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
# How often an idle listener checks that its connection still answers: a connection cut without
# a word (a network partition) is not noticed otherwise.
HEARTBEAT_S = 30.0


class DeletionNotices:
    """Announce deletions to the other processes on this database, and hear of theirs."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # This process's own notices come back to its listener too; they are skipped by this mark
        # (the process has stopped its own answers already).
        self.origin = uuid.uuid4().hex

    async def announce(self, platform: str, external_id: str) -> None:
        """NOTIFY every listener that the platform message `external_id` was deleted."""
        payload = json.dumps({"origin": self.origin, "platform": platform, "id": external_id})
        async with self.engine.begin() as connection:  # delivered when this commits
            await connection.execute(select(func.pg_notify(CHANNEL, payload)))

    async def follow(self, platform: str) -> AsyncGenerator[str | None, None]:
        """The ids of `platform` messages other processes announce as deleted, as they come, for
        ever; None each time the listener (re)connects: notices sent before were not heard, so
        check the marks."""
        heard: asyncio.Queue[str] = asyncio.Queue()
        pause = RETRY_FIRST_S
        while True:
            try:
                connection = await self._listen(platform, heard)
            except Exception as error:  # the driver's errors have no common base but Exception
                log.warning(
                    "%s: cannot listen for deletions (%s); trying again in %.0f s",
                    platform,
                    _short(error),
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX_S)
                continue
            pause = RETRY_FIRST_S
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _connection, gone=lost: gone.set())
            try:
                log.info("%s: listening for deletions announced by other processes", platform)
                yield None
                while (external_id := await _next(connection, heard, lost)) is not None:
                    yield external_id
                log.warning("%s: the connection listening for deletions was lost; reconnecting", platform)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(connection.close(timeout=2))

    async def _listen(self, platform: str, heard: asyncio.Queue[str]) -> Any:
        """A connection of its own (a pooled one goes back to the pool) that LISTENs for notices."""
        import asyncpg

        _, params = self.engine.dialect.create_connect_args(self.engine.url)
        # SQLAlchemy's own options for its asyncpg wrapper, not asyncpg's.
        for name in ("prepared_statement_cache_size", "prepared_statement_name_func", "async_creator_fn"):
            params.pop(name, None)
        connection = await asyncio.wait_for(asyncpg.connect(**params), timeout=10)

        def notice(_connection: Any, _pid: int, _channel: str, payload: str) -> None:
            try:
                told = json.loads(payload)
                if told["origin"] != self.origin and told["platform"] == platform:
                    heard.put_nowait(str(told["id"]))
            except (ValueError, KeyError, TypeError):
                log.warning("%s: a deletion notice that is not chinwag's was ignored", platform)

        try:
            await connection.add_listener(CHANNEL, notice)
        except BaseException:
            await connection.close(timeout=2)
            raise
        return connection


async def _next(connection: Any, heard: asyncio.Queue[str], lost: asyncio.Event) -> str | None:
    """The next notice heard on `connection`; None once it is lost or stops answering."""
    while True:
        waiting = asyncio.ensure_future(heard.get())
        gone = asyncio.ensure_future(lost.wait())
        try:
            done, _ = await asyncio.wait(
                {waiting, gone}, timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            gone.cancel()
            if not waiting.done():
                waiting.cancel()
        if waiting in done and not waiting.cancelled():
            return waiting.result()
        if lost.is_set():
            return None
        try:
            await asyncio.wait_for(connection.fetchval("SELECT 1"), timeout=10)
        except Exception:  # whatever the driver raises, the connection is no use: reconnect
            return None


def _short(error: BaseException) -> str:
    """A connection error in a line (a timeout's text is empty)."""
    text = str(error).splitlines()[0] if str(error) else ""
    return text or type(error).__name__
