"""The async engine of the history database, and its migrations."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, func, make_url, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import await_only

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# The PostgreSQL advisory lock that serialises migrations: any fixed 64-bit number works, as long
# as nothing else in the database uses it ("chinwag" in ASCII).
MIGRATION_LOCK_KEY = 0x63_68_69_6E_77_61_67


def create_engine(
    url: str | URL, busy_timeout_ms: int = 5000, write_deadline_s: float = 120.0
) -> AsyncEngine:
    """An async engine for `url`; SQLite gets WAL, a busy timeout, foreign keys, BEGIN IMMEDIATE.

    PostgreSQL is passed through as it is (a bare `postgresql://` gets asyncpg). An in-memory
    SQLite database (`sqlite+aiosqlite://` or `...:///:memory:`) lives in one connection that
    callers take in turn: fine for tests, never shared between engines, gone when the engine is
    disposed.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and "+" not in parsed.drivername:
        # A bare `postgresql://` (as PostgreSQL's own tools write it) means the async driver of
        # the `postgres` extra; SQLAlchemy would pick a synchronous or absent one.
        parsed = parsed.set(drivername="postgresql+asyncpg")
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(parsed)

    if parsed.get_driver_name() != "aiosqlite":
        # A plain `sqlite:///file.db` from a config file means this file, through the async driver.
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    path = _sqlite_file(parsed)
    options: dict[str, Any] = {}
    if path is None:
        # SQLAlchemy's default here, StaticPool, lets concurrent coroutines share one connection
        # and therefore one transaction; a single-connection queue pool makes them wait instead.
        options = {"poolclass": AsyncAdaptedQueuePool, "pool_size": 1, "max_overflow": 0}
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(parsed, **options)
    _configure_sqlite(engine, busy_timeout_ms, write_deadline_s, wal=path is not None)
    return engine


def _sqlite_file(url: URL) -> Path | None:
    """The database file a SQLite URL names, or None for an in-memory database."""
    database = url.database or ""
    if url.query.get("uri") in ("true", "1"):
        if "mode=memory" in database:
            return None
        database = database.removeprefix("file:").split("?", 1)[0]
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return None
    return Path(database).expanduser()


def _configure_sqlite(
    engine: AsyncEngine, busy_timeout_ms: int, write_deadline_s: float, *, wal: bool
) -> None:
    """SQLAlchemy's recipe for real SQLite transactions, plus the pragmas chinwag relies on."""

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Stop the driver from issuing its own deferred BEGIN right before the first DML:
        # the SELECT of a read-modify-write would run outside the transaction and an
        # update made meanwhile by another connection would be silently overwritten.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if wal:
                # Readers never block the writer, and the writer never blocks readers.
                cursor.execute("PRAGMA journal_mode=WAL")
                # Durable at each checkpoint rather than each commit: safe in WAL mode.
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Connection) -> None:
        # Take the write lock up front; a competing writer waits (busy_timeout) for our commit.
        # When busy_timeout runs out (other processes writing on a loaded machine), try again
        # with backoff until the deadline rather than drop the write. The pause is awaited (this
        # runs in SQLAlchemy's greenlet on the event loop): a blocking sleep would hold up every
        # other connection of the process, the one holding the lock included.
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        deadline = time.monotonic() + write_deadline_s
        pause = 0.01
        try:
            while True:
                try:
                    cursor.execute("BEGIN IMMEDIATE")
                    return
                except Exception as error:  # the driver's OperationalError, whatever its module
                    busy = "locked" in str(error) or "busy" in str(error)
                    if not busy or time.monotonic() + pause > deadline:
                        raise
                await_only(asyncio.sleep(pause))
                pause = min(pause * 2, 0.1)
        finally:
            cursor.close()


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for our migrations (there is no alembic.ini).

    With `connection`, migrations run on it, inside its transaction; without, `env.py` opens
    the URL in the `sqlalchemy.url` main option.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def lock_migrations(connection: Connection) -> None:
    """Make other processes' migrations wait until this connection's transaction ends.

    SQLite needs nothing more: BEGIN IMMEDIATE already holds the database's write lock. On
    PostgreSQL, replicas starting together on an empty database would all try to create
    `alembic_version` and all but one fail; a transaction-scoped advisory lock makes them
    migrate in turn, and the later ones find the schema already there.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema up to `revision` in one transaction (a no-op when it is already there)."""

    def run(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), revision)

    # One transaction, and `env.py` takes the migration lock first (`lock_migrations`):
    # processes starting together migrate in turn.
    async with engine.begin() as connection:
        await connection.run_sync(run)
