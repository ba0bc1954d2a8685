"""What language tasks read on Discord: a channel's or thread's recent messages (REST history) as
`SourceMessage`s, with names and jump links, and the one line that explains a missing intent.

Without the privileged Message Content intent Discord sends other people's messages with their
text blanked (mentions of the bot and DMs apart). A task must not summarise blanks: reading one
says so, with how to enable the intent, instead.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

import discord

from adapters.taskwords import DEFAULT_SPAN_S, Window
from bot.types import SourceMessage

NEEDS_INTENT = (
    "Discord hides other people's messages from me without the Message Content intent, so I "
    "can't read them: enable it in the Developer Portal (your app → Bot → Privileged Gateway "
    "Intents → Message Content Intent) and set discord.message_content_intent = true."
)
_SPOKEN = (discord.MessageType.default, discord.MessageType.reply)


class ReadError(Exception):
    """Messages the bot cannot read; `str()` is one line for the user."""


async def read_channel(channel: discord.abc.Messageable, window: Window, limit: int) -> list[discord.Message]:
    """The channel's messages in `window`, oldest first; at most `limit + 1` (one more: too many)."""
    wanted = limit + 1 if window.count is None else min(window.count, limit + 1)
    since = None
    if window.count is None or window.seconds is not None:
        since = time.time() - (window.seconds or DEFAULT_SPAN_S)
    found: list[discord.Message] = []
    try:
        async for message in channel.history(limit=None):  # newest first, 100 a page
            if since is not None and message.created_at.timestamp() < since:
                break
            if message.type in _SPOKEN:
                found.append(message)
            if len(found) >= wanted:
                break
    except discord.Forbidden:
        where = getattr(channel, "mention", "that channel")
        raise ReadError(
            f"I can't read {where}: give me View Channel and Read Message History there."
        ) from None
    found.reverse()
    return found


def to_source(
    messages: Sequence[discord.Message], me: discord.abc.User | None, content_intent: bool
) -> tuple[SourceMessage, ...]:
    """The messages as a task reads them: names, bots and chinwag marked, jump links. ReadError
    when people's text came back blank because the intent is off."""
    out: list[SourceMessage] = []
    blank = 0
    for message in messages:
        own = me is not None and message.author.id == me.id
        text = message.content
        for user in message.mentions:
            text = text.replace(f"<@{user.id}>", f"@{user.display_name}").replace(
                f"<@!{user.id}>", f"@{user.display_name}"
            )
        if not text.strip():
            blank += not (own or message.author.bot) and not message.attachments
            continue
        out.append(
            SourceMessage(
                text,
                author="chinwag" if own else message.author.display_name,
                id=str(message.id),
                timestamp=message.created_at.astimezone(UTC) if message.created_at else datetime.now(UTC),
                link=message.jump_url,
                bot=own or message.author.bot,
            )
        )
    if blank and not content_intent:
        raise ReadError(NEEDS_INTENT)
    return tuple(out)
