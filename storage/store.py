"""SqlHistory: the History seam on a SQLAlchemy database (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from bot.errors import ChinwagError, ConversationNotFoundError
from bot.seams.history import Conversation, ConversationKey, Feedback, NewMessage, StoredMessage, UserRef
from bot.types import Role, Status
from config import Settings
from storage.db import create_engine, upgrade
from storage.models import (
    ConversationRow,
    EventRow,
    FeedbackRow,
    MessageRefRow,
    MessageRow,
    UserRow,
    utcnow,
)
from storage.notices import DeletionNotices

# Titles are for lists and pickers: one short line.
TITLE_LENGTH = 60

# How long a claimed event is remembered (platforms redeliver within minutes).
EVENT_MEMORY = timedelta(days=1)

# How many times `resolve`/`start_new` run when a concurrent writer created the same conversation
# first (possible on PostgreSQL; on SQLite BEGIN IMMEDIATE serialises them).
_ATTEMPTS = 3

_message_count = (
    select(func.count(MessageRow.id))
    .where(MessageRow.conversation_id == ConversationRow.id)
    .correlate(ConversationRow)
    .scalar_subquery()
    .label("message_count")
)
# Conversations with their message counts, in one query (a correlated count per row).
_WITH_COUNT = select(ConversationRow, _message_count)


class SqlHistory:
    """Conversations and messages in a SQL database; every method is one short transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # Transactions of this process queue here, in order, instead of spinning in SQLite's busy
        # handler (which backs off unfairly and, under load, gives up after busy_timeout).
        # Other processes still wait through busy_timeout.
        # Only SQLite has a single writer; PostgreSQL runs transactions side by side.
        self._lock: asyncio.Lock | contextlib.nullcontext[None] = (
            asyncio.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()
        )
        # Replicas on one PostgreSQL tell each other of deleted questions; SQLite is one machine,
        # where each platform is served by one process that stops its own answers.
        self._notices = DeletionNotices(engine) if engine.dialect.name == "postgresql" else None

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        async with self._lock, self._sessions.begin() as session:
            yield session

    @classmethod
    async def open(cls, settings: Settings) -> SqlHistory:
        """Open the database the settings name, migrated to the latest schema."""
        storage = settings.storage
        return await cls.from_url(settings.database_url, storage.busy_timeout_ms, storage.write_deadline_s)

    @classmethod
    async def from_url(
        cls, url: str | URL, busy_timeout_ms: int = 5000, write_deadline_s: float = 120.0
    ) -> SqlHistory:
        """Open the database at `url`, migrated to the latest schema."""
        try:
            # Never show a password: the message may reach a log or a chat.
            shown = make_url(url).render_as_string(hide_password=True)
        except (SQLAlchemyError, ValueError) as error:
            raise ChinwagError(f"Invalid history database URL: {error}") from None
        try:
            engine = create_engine(url, busy_timeout_ms, write_deadline_s)
        except ImportError as error:
            hint = " (pip install 'chinwag[postgres]')" if error.name == "asyncpg" else ""
            raise ChinwagError(f"Cannot open the history database {shown}: {error}{hint}") from error
        except (SQLAlchemyError, OSError) as error:
            raise ChinwagError(f"Cannot open the history database {shown}: {error}") from error
        try:
            await upgrade(engine)
        except BaseException as error:
            await engine.dispose()
            if isinstance(error, SQLAlchemyError | ImportError | OSError):
                message = f"Cannot open the history database {shown}: {error}"
                raise ChinwagError(message) from error
            raise
        return cls(engine)

    async def close(self) -> None:
        """Release connections."""
        await self.engine.dispose()

    async def __aenter__(self) -> SqlHistory:
        """Use the store in `async with`; it is closed on the way out."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the store."""
        await self.close()

    # Conversations ------------------------------------------------------------------

    async def resolve(self, key: ConversationKey) -> Conversation:
        """The active (not archived) conversation for `key`, created if there is none."""
        for attempt in range(_ATTEMPTS):
            try:
                async with self._transaction() as session:
                    query = _WITH_COUNT.where(*_active(key)).order_by(ConversationRow.id.desc())
                    found = (await session.execute(query.limit(1))).first()
                    if found is not None:
                        return _conversation(*found)
                    return await _create(session, key)
            except IntegrityError:
                # Another writer created it first (PostgreSQL); the next attempt finds theirs.
                if attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def start_new(self, key: ConversationKey) -> Conversation:
        """Archive the active conversation for `key` (if any) and create a fresh one."""
        for attempt in range(_ATTEMPTS):
            try:
                async with self._transaction() as session:
                    await session.execute(update(ConversationRow).where(*_active(key)).values(archived=True))
                    return await _create(session, key)
            except IntegrityError:
                if attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def find(self, key: ConversationKey) -> Conversation | None:
        """The active conversation for `key`, or None (never creates one)."""
        async with self._transaction() as session:
            query = _WITH_COUNT.where(*_active(key)).order_by(ConversationRow.id.desc())
            found = (await session.execute(query.limit(1))).first()
            return _conversation(*found) if found is not None else None

    async def get(self, conversation_id: int) -> Conversation | None:
        """One conversation, or None."""
        async with self._transaction() as session:
            query = _WITH_COUNT.where(ConversationRow.id == conversation_id)
            found = (await session.execute(query)).first()
            return _conversation(*found) if found is not None else None

    async def latest(self, platform: str | None = None) -> Conversation | None:
        """The most recently updated conversation (of one platform, if given)."""
        found = await self.list(platform=platform, limit=1)
        return found[0] if found else None

    async def list(
        self,
        *,
        platform: str | None = None,
        limit: int = 50,
        scope: str | None = None,
        channel: str | None = None,
    ) -> builtins.list[Conversation]:
        """Conversations, most recently updated first, with their message counts (filtered when asked)."""
        query = _WITH_COUNT.order_by(ConversationRow.updated_at.desc(), ConversationRow.id.desc())
        if platform is not None:
            query = query.where(ConversationRow.platform == platform)
        if scope is not None:
            query = query.where(ConversationRow.scope == scope)
        if channel is not None:
            query = query.where(ConversationRow.channel == channel)
        async with self._transaction() as session:
            rows = (await session.execute(query.limit(limit))).all()
            return [_conversation(row, count) for row, count in rows]

    async def delete(self, conversation_id: int) -> bool:
        """Delete a conversation and its messages; False if it did not exist."""
        async with self._transaction() as session:
            # The messages go by ON DELETE CASCADE, in the database, in the same statement.
            statement = delete(ConversationRow).where(ConversationRow.id == conversation_id)
            result = await session.execute(statement, execution_options={"synchronize_session": False})
            return cast(CursorResult[Any], result).rowcount > 0

    async def update_settings(self, conversation_id: int, changes: Mapping[str, Any]) -> Conversation:
        """Merge `changes` into the conversation's settings atomically; a None value removes a key."""
        async with self._transaction() as session:
            row = await _locked(session, conversation_id)
            row.settings = _merged(row.settings, changes)
            row.updated_at = utcnow()
            await session.flush()
            return _conversation(row, await _count(session, conversation_id))

    async def set_summary(self, conversation_id: int, summary: str, until_message_id: int) -> None:
        """Store the running summary, covering messages up to `until_message_id`."""
        async with self._transaction() as session:
            row = await _locked(session, conversation_id)
            row.summary = summary
            row.summary_until = until_message_id

    # Messages -----------------------------------------------------------------------

    async def append(self, conversation_id: int, message: NewMessage) -> StoredMessage:
        """Store a message, touch the conversation, and title it after its first user message."""
        async with self._transaction() as session:
            conversation = await _locked(session, conversation_id)
            user = await self._upsert_user(session, message.user) if message.user else None
            now = utcnow()
            row = MessageRow(
                conversation_id=conversation_id,
                user_id=user[0] if user else None,
                role=message.role,
                content=message.content,
                status=message.status,
                prompt_tokens=message.prompt_tokens,
                completion_tokens=message.completion_tokens,
                latency_ms=message.latency_ms,
                model=message.model,
                meta=dict(message.metadata),
                created_at=now,
            )
            session.add(row)
            conversation.updated_at = now
            if conversation.title is None and message.role == "user":
                conversation.title = title_of(message.content)
            await session.flush()
            if message.external_id is not None and not await _referenced(
                session, conversation.platform, message.external_id
            ):
                ref = MessageRefRow(
                    message_id=row.id, platform=conversation.platform, external_id=message.external_id
                )
                session.add(ref)
            return _stored(row, user[1] if user else None)

    async def load(
        self, conversation_id: int, *, after_id: int | None = None
    ) -> builtins.list[StoredMessage]:
        """Messages in order (only those with id > `after_id`, if given)."""
        query = select(MessageRow).where(MessageRow.conversation_id == conversation_id)
        if after_id is not None:
            query = query.where(MessageRow.id > after_id)
        async with self._transaction() as session:
            rows = (await session.scalars(query.order_by(MessageRow.id))).all()
            return [_stored(row, _user_ref(row.user)) for row in rows]

    # Platform events, message ids, feedback ----------------------------------------------

    async def claim_event(self, platform: str, event_id: str) -> bool:
        """Record a platform event as taken in; False when it already was (a redelivery)."""
        try:
            async with self._transaction() as session:
                # Platforms redeliver within minutes; a day of claims is plenty, and the table stays small.
                cutoff = utcnow() - EVENT_MEMORY
                await session.execute(delete(EventRow).where(EventRow.created_at < cutoff))
                if await session.get(EventRow, (platform, event_id)) is not None:
                    return False
                session.add(EventRow(platform=platform, event_id=event_id, created_at=utcnow()))
                await session.flush()
                return True
        except IntegrityError:
            # A concurrent writer claimed it first (PostgreSQL; SQLite serialises writers).
            return False

    async def link_message(self, message_id: int, platform: str, external_ids: Sequence[str]) -> None:
        """Record the platform's ids of a stored message (also listed in its metadata)."""
        async with self._transaction() as session:
            row = await _locked_message(session, message_id)
            known = set(
                await session.scalars(
                    select(MessageRefRow.external_id).where(
                        MessageRefRow.message_id == message_id, MessageRefRow.platform == platform
                    )
                )
            )
            fresh = [i for i in dict.fromkeys(external_ids) if i not in known]
            for external_id in fresh:
                session.add(MessageRefRow(message_id=message_id, platform=platform, external_id=external_id))
            if fresh:
                meta = dict(row.meta)
                meta["platform_message_ids"] = [*meta.get("platform_message_ids", []), *fresh]
                row.meta = meta

    async def update_message(self, message_id: int, metadata: Mapping[str, Any]) -> None:
        """Merge `metadata` into a stored message's metadata atomically; a None value removes a key."""
        async with self._transaction() as session:
            row = await _locked_message(session, message_id)
            row.meta = _merged(row.meta, metadata)

    async def announce_deleted(self, platform: str, external_id: str) -> None:
        """Tell the other processes sharing this history that a platform message was deleted
        (PostgreSQL: NOTIFY; SQLite: nothing to tell)."""
        if self._notices is not None:
            await self._notices.announce(platform, external_id)

    async def deleted_elsewhere(self, platform: str) -> AsyncGenerator[str | None, None]:
        """The ids of `platform` messages that other processes announce as deleted, as they come;
        None whenever listening (re)starts (what was announced before was not heard: check the
        `deleted` marks). Ends at once on SQLite."""
        if self._notices is None:
            return
        async with contextlib.aclosing(self._notices.follow(platform)) as notices:
            async for external_id in notices:
                yield external_id

    async def find_message(self, platform: str, external_id: str) -> StoredMessage | None:
        """The stored message a platform id belongs to, or None."""
        async with self._transaction() as session:
            query = (
                select(MessageRow)
                .join(MessageRefRow, MessageRefRow.message_id == MessageRow.id)
                .where(MessageRefRow.platform == platform, MessageRefRow.external_id == external_id)
            )
            row = (await session.scalars(query)).first()
            return _stored(row, _user_ref(row.user)) if row is not None else None

    async def set_feedback(self, message_id: int, user: UserRef, value: int | None) -> None:
        """Store a person's rating of a message (+1 or -1); None withdraws it."""
        if value not in (None, 1, -1):
            raise ValueError("feedback is +1, -1 or None")
        async with self._transaction() as session:
            if await session.get(MessageRow, message_id) is None:
                raise ChinwagError(f"No message #{message_id}.")
            user_id, _ = await self._upsert_user(session, user)
            found = await session.scalar(
                select(FeedbackRow).where(
                    FeedbackRow.message_id == message_id, FeedbackRow.user_id == user_id
                )
            )
            if value is None:
                if found is not None:
                    await session.delete(found)
            elif found is None:
                session.add(
                    FeedbackRow(message_id=message_id, user_id=user_id, value=value, created_at=utcnow())
                )
            else:
                found.value = value
                found.created_at = utcnow()

    async def feedback(self, message_id: int) -> builtins.list[Feedback]:
        """The ratings of a message."""
        async with self._transaction() as session:
            query = select(FeedbackRow).where(FeedbackRow.message_id == message_id).order_by(FeedbackRow.id)
            rows = (await session.scalars(query)).all()
            return [
                Feedback(UserRef(r.user.platform, r.user.external_id, r.user.display_name), r.value)
                for r in rows
            ]

    async def _upsert_user(self, session: AsyncSession, user: UserRef) -> tuple[int, UserRef]:
        """The user's row id (created or its display name refreshed) and the user as stored."""
        dialect = self.engine.dialect.name
        if dialect in ("sqlite", "postgresql"):
            insert = sqlite_insert if dialect == "sqlite" else postgresql_insert
            values = insert(UserRow).values(
                platform=user.platform,
                external_id=user.external_id,
                display_name=user.display_name,
                created_at=utcnow(),
            )
            # One atomic statement, so two first messages from one person cannot collide.
            # A message without a display name keeps the one already known.
            statement = values.on_conflict_do_update(
                index_elements=[UserRow.platform, UserRow.external_id],
                set_={"display_name": func.coalesce(values.excluded.display_name, UserRow.display_name)},
            ).returning(UserRow.id, UserRow.display_name)
            user_id, name = (await session.execute(statement)).one()
            return user_id, UserRef(user.platform, user.external_id, name)

        found = await session.scalar(
            select(UserRow)
            .where(UserRow.platform == user.platform, UserRow.external_id == user.external_id)
            .with_for_update(of=UserRow)
        )
        if found is None:
            found = UserRow(
                platform=user.platform,
                external_id=user.external_id,
                display_name=user.display_name,
            )
            session.add(found)
        elif user.display_name is not None:
            found.display_name = user.display_name
        await session.flush()
        return found.id, UserRef(user.platform, user.external_id, found.display_name)


def title_of(text: str) -> str | None:
    """A conversation title from its first user message: one line, cut on a word boundary."""
    words = " ".join(text.split())
    if not words:
        return None
    if len(words) <= TITLE_LENGTH:
        return words
    head = words[: TITLE_LENGTH + 1]
    space = head.rfind(" ")
    # A very long first word is cut where it must be rather than leaving a stub of a title.
    head = head[:space] if space > TITLE_LENGTH // 2 else words[:TITLE_LENGTH]
    return head.rstrip(" ,.;:-") + "…"


def _active(key: ConversationKey) -> builtins.list[ColumnElement[bool]]:
    """The conditions that select the active conversation of `key`."""
    thread = ConversationRow.thread
    return [
        ConversationRow.platform == key.platform,
        ConversationRow.scope == key.scope,
        ConversationRow.channel == key.channel,
        thread.is_(None) if key.thread is None else thread == key.thread,
        ConversationRow.archived.is_(False),
    ]


async def _create(session: AsyncSession, key: ConversationKey) -> Conversation:
    """Insert a fresh conversation for `key`."""
    now = utcnow()
    row = ConversationRow(
        platform=key.platform,
        scope=key.scope,
        channel=key.channel,
        thread=key.thread,
        settings={},
        archived=False,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    await session.flush()
    return _conversation(row, 0)


async def _referenced(session: AsyncSession, platform: str, external_id: str) -> bool:
    """Whether a stored message has this platform id already."""
    query = select(MessageRefRow.id).where(
        MessageRefRow.platform == platform, MessageRefRow.external_id == external_id
    )
    return (await session.scalar(query)) is not None


def _merged(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`current` with `changes` merged in (a new dict): a None value removes its key."""
    merged = dict(current)
    for name, value in changes.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


async def _locked(session: AsyncSession, conversation_id: int) -> ConversationRow:
    """The conversation row, locked for this transaction (FOR UPDATE on PostgreSQL)."""
    row = await session.get(ConversationRow, conversation_id, with_for_update={"of": ConversationRow})
    if row is None:
        raise ConversationNotFoundError(f"No conversation #{conversation_id}.")
    return row


async def _locked_message(session: AsyncSession, message_id: int) -> MessageRow:
    """The message row, locked for this transaction (FOR UPDATE OF messages on PostgreSQL)."""
    # A message is loaded with its user by a LEFT OUTER JOIN; PostgreSQL refuses a plain
    # FOR UPDATE on the nullable side of it, and the user row need not be locked anyway.
    row = await session.get(MessageRow, message_id, with_for_update={"of": MessageRow})
    if row is None:
        raise ChinwagError(f"No message #{message_id}.")
    return row


async def _count(session: AsyncSession, conversation_id: int) -> int:
    """How many messages a conversation has."""
    query = select(func.count(MessageRow.id)).where(MessageRow.conversation_id == conversation_id)
    return int(await session.scalar(query) or 0)


def _conversation(row: ConversationRow, message_count: int) -> Conversation:
    """Our own type for a conversation row."""
    return Conversation(
        id=row.id,
        key=ConversationKey(row.platform, row.scope, row.channel, row.thread),
        title=row.title,
        settings=dict(row.settings),
        summary=row.summary,
        summary_until=row.summary_until,
        archived=row.archived,
        created_at=row.created_at,
        updated_at=row.updated_at,
        message_count=int(message_count or 0),
    )


def _user_ref(row: UserRow | None) -> UserRef | None:
    """Our own type for a user row."""
    return UserRef(row.platform, row.external_id, row.display_name) if row is not None else None


def _stored(row: MessageRow, user: UserRef | None) -> StoredMessage:
    """Our own type for a message row."""
    return StoredMessage(
        id=row.id,
        conversation_id=row.conversation_id,
        role=cast(Role, row.role),
        content=row.content,
        status=cast(Status, row.status),
        created_at=row.created_at,
        user=user,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        latency_ms=row.latency_ms,
        model=row.model,
        metadata=dict(row.meta),
    )
