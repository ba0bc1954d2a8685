"""The history seam: where conversations and their messages are kept (storage/ implements it)."""

from __future__ import annotations

import builtins
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from bot.types import Role, Status


@dataclass(frozen=True)
class ConversationKey:
    """Where a conversation happens: one per (platform, scope, channel, thread) at a time."""

    platform: str
    scope: str
    channel: str
    thread: str | None = None


@dataclass(frozen=True)
class UserRef:
    """A person on a platform."""

    platform: str
    external_id: str
    display_name: str | None = None


@dataclass(frozen=True)
class Conversation:
    """A stored conversation. Messages with id <= `summary_until` are folded into `summary`."""

    id: int
    key: ConversationKey
    title: str | None
    settings: dict[str, Any]
    summary: str | None
    summary_until: int | None
    archived: bool
    created_at: datetime
    updated_at: datetime
    message_count: int = 0


@dataclass(frozen=True)
class NewMessage:
    """A message to append."""

    role: Role
    content: str
    status: Status = "complete"
    user: UserRef | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: int | None = None
    model: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # The platform's id of this message (a question's), recorded as `link_message` records a
    # reply's, in the same write, unless another message has it already.
    external_id: str | None = None


@dataclass(frozen=True)
class StoredMessage:
    """A message as stored."""

    id: int
    conversation_id: int
    role: Role
    content: str
    status: Status
    created_at: datetime
    user: UserRef | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: int | None = None
    model: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Feedback:
    """One person's rating of a message: +1 (helpful) or -1 (not)."""

    user: UserRef
    value: int


@runtime_checkable
class History(Protocol):
    """Conversations and messages. Every method is one short transaction."""

    async def resolve(self, key: ConversationKey) -> Conversation:
        """The active (not archived) conversation for `key`, created if there is none."""
        ...

    async def start_new(self, key: ConversationKey) -> Conversation:
        """Archive the active conversation for `key` (if any) and create a fresh one."""
        ...

    async def get(self, conversation_id: int) -> Conversation | None:
        """One conversation, or None."""
        ...

    async def latest(self, platform: str | None = None) -> Conversation | None:
        """The most recently updated conversation (of one platform, if given)."""
        ...

    async def list(
        self,
        *,
        platform: str | None = None,
        limit: int = 50,
        scope: str | None = None,
        channel: str | None = None,
    ) -> builtins.list[Conversation]:
        """Conversations, most recently updated first, with their message counts (filtered when asked)."""
        ...

    async def find(self, key: ConversationKey) -> Conversation | None:
        """The active conversation for `key`, or None (never creates one)."""
        ...

    async def delete(self, conversation_id: int) -> bool:
        """Delete a conversation and its messages; False if it did not exist."""
        ...

    async def append(self, conversation_id: int, message: NewMessage) -> StoredMessage:
        """Store a message, touch the conversation, and title it after its first user message."""
        ...

    async def load(
        self, conversation_id: int, *, after_id: int | None = None
    ) -> builtins.list[StoredMessage]:
        """Messages in order (only those with id > `after_id`, if given)."""
        ...

    async def update_settings(self, conversation_id: int, changes: Mapping[str, Any]) -> Conversation:
        """Merge `changes` into the conversation's settings atomically; a None value removes a key."""
        ...

    async def set_summary(self, conversation_id: int, summary: str, until_message_id: int) -> None:
        """Store the running summary, covering messages up to `until_message_id`."""
        ...

    async def claim_event(self, platform: str, event_id: str) -> bool:
        """Record a platform event as taken in; False when it already was (a redelivery)."""
        ...

    async def link_message(self, message_id: int, platform: str, external_ids: Sequence[str]) -> None:
        """Record the platform's ids of a stored message (a long reply may be several posts)."""
        ...

    async def find_message(self, platform: str, external_id: str) -> StoredMessage | None:
        """The stored message a platform id belongs to, or None."""
        ...

    async def announce_deleted(self, platform: str, external_id: str) -> None:
        """Tell the other processes sharing this history (replicas) that a platform message was deleted."""
        ...

    def deleted_elsewhere(self, platform: str) -> AsyncGenerator[str | None, None]:
        """The ids of `platform` messages other processes announce as deleted, as they come; None
        whenever listening (re)starts, as announcements made before were not heard (check the
        `deleted` marks). Ends at once where no other process can share the history."""
        ...

    async def update_message(self, message_id: int, metadata: Mapping[str, Any]) -> None:
        """Merge `metadata` into a stored message's metadata atomically; a None value removes a key."""
        ...

    async def set_feedback(self, message_id: int, user: UserRef, value: int | None) -> None:
        """Store a person's rating of a message (+1 or -1); None withdraws it."""
        ...

    async def feedback(self, message_id: int) -> builtins.list[Feedback]:
        """The ratings of a message."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
