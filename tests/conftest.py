"""Shared fixtures: settings in a temp data dir, a real history database, the engine with a FakeModel.

The history is SQLite in tmp_path. The modules in `BOTH_BACKENDS` also run every test that uses
`settings` (and so `history` and `engine`) against PostgreSQL when CHINWAG_TEST_DATABASE_URL names
a server: a database of its own for this run, emptied before each test. Tests that inspect SQLite
itself are marked `sqlite_only`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from bot.engine import Engine
from config import Settings, load_settings
from storage import SqlHistory
from tests.fakes import FakeModel

# No test reaches the network, and nothing tries a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# A PostgreSQL server to test against, e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test; read
# here, before the `settings` fixture clears every CHINWAG_* variable. Its database is only used
# to create and drop the run's own.
TEST_DATABASE_ENV = "CHINWAG_TEST_DATABASE_URL"
TEST_DATABASE_URL = os.environ.get(TEST_DATABASE_ENV, "")

# A Redis server for the tests of what replicas share through it (skipped when none answers).
TEST_REDIS_URL = os.environ.get("CHINWAG_TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"

# The test modules whose database tests run on both backends.
BOTH_BACKENDS = {"test_storage", "test_engine", "test_slack", "test_discord"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the database tests of `BOTH_BACKENDS` once per backend (SQLite only when marked so)."""
    if "database_url" not in metafunc.fixturenames:
        return
    if metafunc.module.__name__.rpartition(".")[2] not in BOTH_BACKENDS:
        return
    sqlite_only = metafunc.definition.get_closest_marker("sqlite_only") is not None
    metafunc.parametrize(
        "database_url", ["sqlite"] if sqlite_only else ["sqlite", "postgresql"], indirect=True
    )


def _postgres_url() -> URL:
    """The server to test against, through asyncpg; skips the test when there is none."""
    if not TEST_DATABASE_URL:
        pytest.skip(f"PostgreSQL variant: {TEST_DATABASE_ENV} is not set")
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        pytest.skip("PostgreSQL variant: asyncpg is not installed (pip install 'chinwag[postgres]')")
    url = make_url(TEST_DATABASE_URL)
    if url.get_backend_name() != "postgresql":
        pytest.fail(f"{TEST_DATABASE_ENV} must name a PostgreSQL database, not {url.get_backend_name()}")
    return url.set(drivername="postgresql+asyncpg")


def _execute(url: URL, *statements: str) -> None:
    """Run statements outside any transaction (CREATE/DROP DATABASE refuse to run inside one).

    In a thread of its own, with its own event loop: the test's loop is neither disturbed nor needed.
    """
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, _execute_async(url, *statements)).result()


async def _execute_async(url: URL, *statements: str) -> None:
    engine = create_async_engine(
        url, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"timeout": 5}
    )
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.exec_driver_sql(statement)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[URL]:
    """A database of this test run's own on the test server, dropped at the end.

    A fresh name per run, so that runs side by side (two worktrees, CI) never share one.
    """
    server = _postgres_url()
    name = f"chinwag_test_{uuid.uuid4().hex[:12]}"
    try:
        _execute(server, f'CREATE DATABASE "{name}"')
    except (OSError, SQLAlchemyError) as error:
        # One line: the reason is repeated for every PostgreSQL variant.
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        pytest.skip(f"PostgreSQL variant: cannot reach {TEST_DATABASE_ENV} ({reason})")
    try:
        yield server.set(database=name)
    finally:
        _execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_database: URL) -> str:
    """The URL of the run's PostgreSQL database, emptied first (its schema dropped and created
    again), so that the test starts on an empty database, as it would with a new SQLite file."""
    _execute(
        postgres_database,
        # A test that left a transaction open should fail this one loudly, not hang it.
        "SET lock_timeout = '10s'",
        "DROP SCHEMA public CASCADE",
        "CREATE SCHEMA public",
    )
    return postgres_database.render_as_string(hide_password=False)


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> str | None:
    """The history database of a test: None for SQLite in the data directory, else the run's
    PostgreSQL database, empty (`postgres_url`)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


def redis_problem() -> str | None:
    """Why the test Redis (CHINWAG_TEST_REDIS_URL, else the machine's own on 6379) cannot be used,
    or None when it answers."""
    try:
        import redis
    except ImportError:
        return "the redis package is not installed (pip install 'chinwag[redis]')"
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as error:
        return f"no Redis answers at {TEST_REDIS_URL} ({error})"
    finally:
        client.close()
    return None


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis; skips the test when there is none."""
    if (problem := redis_problem()) is not None:
        pytest.skip(f"Redis variant: {problem}")
    return TEST_REDIS_URL


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse connections to anything but loopback (127.0.0.0/8, ::1) and Unix sockets."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        if isinstance(address, tuple) and address and not _loopback(address[0]):
            raise OSError(f"tests may not reach the network ({address!r})")
        return real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", guarded)


def _loopback(host: object) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return False


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str | None) -> Settings:
    """Default settings with the data directory in tmp_path and no CHINWAG_* leaking in."""
    for name in list(os.environ):
        if name.startswith("CHINWAG_"):
            monkeypatch.delenv(name)
    return load_settings(data_dir=tmp_path / "data", storage={"url": database_url})


@pytest.fixture
async def history(settings: Settings) -> AsyncIterator[SqlHistory]:
    store = await SqlHistory.open(settings)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def engine(model: FakeModel, history: SqlHistory, settings: Settings) -> Engine:
    return Engine(model, history, settings)
