"""Alembic environment: runs on the connection it is given, or opens `sqlalchemy.url` itself."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection

from storage.db import create_engine, lock_migrations
from storage.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def render_item(kind: str, obj: Any, autogen: AutogenContext) -> str | Literal[False]:
    """Write our column types as plain SQLAlchemy ones, so migrations never import the models."""
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_on(connection: Connection) -> None:
    """Run the pending migrations on a synchronous connection."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
    )
    # Inside a caller's transaction (storage.db.upgrade) this adds none of its own.
    with context.begin_transaction():
        # Before Alembic reads the current revision: a process that waited here sees the
        # schema its predecessor committed.
        lock_migrations(connection)
        context.run_migrations()


async def run_on_url(url: str) -> None:
    """Open `url` with our engine settings (BEGIN IMMEDIATE on SQLite) and migrate it."""
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


def run_offline(url: str) -> None:
    """Write the migrations as SQL (`--sql`) instead of running them."""
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_on(connection)
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection given and no sqlalchemy.url set (see storage.db)")
    if context.is_offline_mode():
        run_offline(url)
    else:
        asyncio.run(run_on_url(url))
