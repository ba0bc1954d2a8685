"""The tables of the history database (ORM rows never leave storage/)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints: Alembic's batch mode (SQLite) can only drop or alter what has a name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (indexable, compact); JSON text elsewhere.
JsonDict = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite stores datetimes as naive text, so values are normalised to UTC on the way in and
    tagged as UTC on the way out; PostgreSQL's `timestamptz` round-trips them as they are.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes (their zone is a guess) and store UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use a timezone-aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """The declarative base of every table here."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UserRow(Base):
    """A person on a platform."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("platform", "external_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConversationRow(Base):
    """One conversation at a (platform, scope, channel, thread)."""

    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(255))
    channel: Mapped[str] = mapped_column(String(255))
    thread: Mapped[str | None] = mapped_column(String(255))
    title: Mapped[str | None] = mapped_column(Text)
    settings: Mapped[dict[str, Any]] = mapped_column(JsonDict, default=dict)
    summary: Mapped[str | None] = mapped_column(Text)
    # The id of the last message folded into `summary` (no FK: the message may be deleted).
    summary_until: Mapped[int | None] = mapped_column(Integer)
    archived: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    __table_args__ = (
        Index("ix_conversations_key", "platform", "scope", "channel", "thread", "archived"),
        # Never reuse the id of a deleted conversation: `--resume 5` must not find a stranger's.
        {"sqlite_autoincrement": True},
    )


# At most one active conversation per key, even where no BEGIN IMMEDIATE serialises writers
# (PostgreSQL); `resolve` retries when it loses that race. NULL threads would never collide in a
# plain unique index, hence the coalesce.
_conversations = ConversationRow.__table__.c
Index(
    "uq_conversations_active_key",
    _conversations.platform,
    _conversations.scope,
    _conversations.channel,
    func.coalesce(_conversations.thread, ""),
    unique=True,
    sqlite_where=_conversations.archived == false(),
    postgresql_where=_conversations.archived == false(),
)


class MessageRow(Base):
    """One message of a conversation."""

    __tablename__ = "messages"
    # Message ids only grow, so `summary_until` and `after_id` keep their meaning.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="complete")
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    model: Mapped[str | None] = mapped_column(String(255))
    # `metadata` is reserved on declarative classes, hence the attribute name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JsonDict, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    # Loaded with the message in the same SELECT: async sessions cannot lazy-load.
    user: Mapped[UserRow | None] = relationship(lazy="joined")


class EventRow(Base):
    """A platform event already taken in, so that a redelivery (a retry) is not handled twice."""

    __tablename__ = "processed_events"

    platform: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    # Indexed: old claims are pruned by age.
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class MessageRefRow(Base):
    """A platform's id for (part of) a stored message: one reply may be posted as several messages."""

    __tablename__ = "message_refs"
    __table_args__ = (UniqueConstraint("platform", "external_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    platform: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(255))


class FeedbackRow(Base):
    """One person's rating of a message: +1 or -1 (the latest one counts)."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("message_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    value: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[UserRow] = relationship(lazy="joined")
