"""The Discord adapter: discord.py events and slash commands in, engine turns out as streamed messages.

A mention in a channel is answered in a new thread on that message (or in the channel, by config);
the thread is then a conversation of its own. DMs need no mention. Replies stream by editing the
message at most once per `edit_interval_s`, split at Discord's 2,000 characters; tool calls and
sources go compactly underneath. Slash commands defer at once and follow up; 👍/👎 on a reply are
stored as feedback. Scope = the guild id (a DM: the person's own `dm-<user id>`), so history and
documents never cross servers. Only the non-privileged intents are asked for unless configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from adapters.inflight import InFlight
from adapters.textsplit import split_message
from bot.app import App
from bot.citations import sources_footer
from bot.errors import ChinwagError
from bot.seams.history import ConversationKey, History, UserRef
from bot.types import (
    CommandResult,
    Event,
    Incoming,
    Notice,
    TextDelta,
    ToolCall,
    TurnDone,
    TurnFailed,
    TurnStarted,
)
from config.settings import DiscordSettings, Settings

log = logging.getLogger(__name__)

PLATFORM = "discord"
LIKE = "👍"
DISLIKE = "👎"
TYPING_EVERY_S = 8.0  # Discord shows "is typing…" for about 10 seconds per request
THREAD_NAME_CHARS = 90  # Discord allows 100


class Engine(Protocol):
    """What the adapter needs of the engine."""

    def handle(self, incoming: Incoming) -> AsyncGenerator[Event, None]:
        """Answer one message or /command as a stream of events."""
        ...

    async def link_reply(
        self, turn: TurnStarted | None, message_id: int | None, platform: str, external_ids: Sequence[str]
    ) -> None:
        """Link a turn's stored reply to the platform messages that show it."""
        ...

    async def forget(self, platform: str, external_id: str) -> int:
        """Take a deleted question and its replies out of the conversation's context."""
        ...


def token_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The bot token, from DISCORD_TOKEN only (never from a config file, never logged)."""
    token = (os.environ if environ is None else environ).get("DISCORD_TOKEN", "").strip()
    if not token:
        raise ChinwagError("Discord needs the environment variable DISCORD_TOKEN (the bot's token).")
    return token


def intents_for(settings: DiscordSettings) -> discord.Intents:
    """Guilds, messages and reactions; Message Content (privileged) only when the operator asks."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.dm_messages = True
    intents.guild_reactions = True
    intents.dm_reactions = True
    intents.message_content = settings.message_content_intent
    return intents


def point_at(settings: DiscordSettings) -> None:
    """Send discord.py's REST calls and gateway connection to the configured URLs (process-wide)."""
    discord.http.Route.BASE = settings.api_base_url
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.gateway_url)


# One reply, posted as one or more messages ------------------------------------------------------


class Sink(Protocol):
    """Where a reply's messages go: a channel or thread, or an interaction's follow-ups."""

    async def post(self, text: str) -> discord.Message:
        """Post one more message of the reply."""
        ...


@dataclass
class ChannelSink:
    """Messages in a channel, thread or DM; the first one replies to `reference` when given."""

    channel: discord.abc.Messageable
    reference: discord.Message | None = None

    async def post(self, text: str) -> discord.Message:
        """Send a message (as a reply to the question, the first time)."""
        reference, self.reference = self.reference, None
        if reference is not None:
            return await self.channel.send(text, reference=reference, mention_author=False)
        return await self.channel.send(text)


@dataclass
class InteractionSink:
    """The deferred response of a slash command, then follow-up messages."""

    interaction: discord.Interaction
    ephemeral: bool = False
    _first: bool = True

    async def post(self, text: str) -> discord.Message:
        """Fill in the deferred "thinking" response, then send follow-ups."""
        if self._first:
            self._first = False
            return await self.interaction.edit_original_response(content=text)
        return await self.interaction.followup.send(text, ephemeral=self.ephemeral, wait=True)


@dataclass
class Reply:
    """One answer on Discord: what it says so far, and the messages that show it."""

    sink: Sink
    text: str = ""
    notes: list[str] = field(default_factory=list)
    status: str = ""
    posted: list[discord.Message] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)
    last_edit: float = 0.0
    conversation_id: int | None = None
    failed: bool = False
    finished: bool = False
    # The turn (once the question is stored) and its stored reply (once told), to link the posts to.
    turn: TurnStarted | None = None
    stored_id: int | None = None

    def parts(self, limit: int) -> list[str]:
        """The messages the reply is now: the text, notes under it, split at the limit."""
        empty = self.finished and not self.notes
        body = self.text.strip() or self.status or ("*(no answer)*" if empty else "")
        whole = "\n\n".join(p for p in (body, "\n".join(self.notes)) if p.strip())
        return split_message(whole, limit)

    def apply(self, event: Event) -> None:
        """Fold one engine event into the reply."""
        if isinstance(event, TextDelta):
            self.text += event.text
            self.status = ""
        elif isinstance(event, Notice):
            self.status = f"*{event.text}*"
        elif isinstance(event, ToolCall):
            self.notes.append(f"-# ⚙ `{event.summary().replace('`', 'ʼ')}`")
        elif isinstance(event, CommandResult):
            self.conversation_id = event.conversation_id
            self.text = event.text if event.ok else f"⚠️ {event.text}"
            self.finished = True
        elif isinstance(event, TurnFailed):
            self.conversation_id = event.conversation_id or self.conversation_id
            self.stored_id = event.message_id
            self.notes.append(f"⚠️ {event.message}")
            self.status = ""
            self.finished = True
        elif isinstance(event, TurnDone):
            self.conversation_id = event.conversation_id
            self.stored_id = event.message_id
            self.text = event.text
            self.status = ""  # a notice ("Waiting for the model…") no longer holds
            self.finished = True
            if footer := sources_footer(event.metadata.get("sources") or []):
                self.notes.append(f"-# {footer}")
            if event.status == "interrupted":
                self.notes.append("-# *(interrupted)*")
        elif isinstance(event, TurnStarted):
            self.conversation_id = event.conversation_id
            self.turn = event


# The adapter ----------------------------------------------------------------------------------


class DiscordAdapter(InFlight):
    """Discord events in, engine turns out; one per process (one bot token, any number of guilds)."""

    platform = PLATFORM

    def __init__(self, engine: Engine, history: History, settings: DiscordSettings, token: str) -> None:
        self.engine = engine
        self.history = history
        self.settings = settings
        self._token = token
        point_at(settings)
        self.client = discord.Client(
            intents=intents_for(settings),
            # A model's words must never ping @everyone, a role or a person.
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.tree = app_commands.CommandTree(self.client)
        super().__init__()
        self._connection: asyncio.Task[None] | None = None
        self._register()

    def __repr__(self) -> str:
        """Never show the token, even in a traceback."""
        return "DiscordAdapter(<token hidden>)"

    # Wiring ---------------------------------------------------------------------------

    def _register(self) -> None:
        for handler in (
            self.on_message,
            self.on_raw_message_delete,
            self.on_raw_bulk_message_delete,
            self.on_raw_reaction_add,
            self.on_raw_reaction_remove,
        ):
            self.client.event(handler)
        self.client.event(self.on_resumed)

        @self.tree.command(name="chat", description="Ask chinwag something")
        @app_commands.describe(question="What to ask")
        async def chat(interaction: discord.Interaction, question: str) -> None:
            await self._slash(interaction, question, ephemeral=False)

        @self.tree.command(name="reset", description="Start a new conversation here")
        async def reset(interaction: discord.Interaction) -> None:
            await self._slash(interaction, "/reset")

        @self.tree.command(name="sources", description="The passages the last answer drew on")
        async def sources(interaction: discord.Interaction) -> None:
            await self._slash(interaction, "/sources")

        @self.tree.command(name="settings", description="The settings this conversation uses")
        async def settings(interaction: discord.Interaction) -> None:
            await self._slash(interaction, "/settings")

        @self.tree.command(name="set", description="Change a setting of this conversation")
        @app_commands.describe(key="temperature, top_p, top_k, max_tokens, …", value="a value, or default")
        async def set_(interaction: discord.Interaction, key: str, value: str) -> None:
            await self._slash(interaction, f"/set {key} {value}")

    async def start(self) -> None:
        """Log in, register the slash commands, and connect to the gateway (until ready)."""
        try:
            await self.client.login(self._token)
        except discord.LoginFailure:
            raise ChinwagError("Discord refused the bot token (DISCORD_TOKEN).") from None
        except (discord.HTTPException, OSError) as error:
            raise ChinwagError(f"Cannot reach Discord at {self.settings.api_base_url}: {error}") from None
        if self.settings.sync_commands:
            try:
                await self.tree.sync()
            except discord.HTTPException as error:
                log.error("discord: could not register the slash commands: %s", error)
        connection = self._connection = asyncio.create_task(
            self.client.connect(reconnect=True), name="discord-gateway"
        )
        ready = asyncio.create_task(self.client.wait_until_ready())
        await asyncio.wait({connection, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            await self.client.close()
            failure = connection.exception()
            if isinstance(failure, discord.PrivilegedIntentsRequired):
                raise ChinwagError(
                    "Discord refused the Message Content intent: enable it for the bot in the Developer "
                    "Portal, or set discord.message_content_intent = false."
                )
            raise ChinwagError(f"Discord gateway connection failed: {failure}")
        user = self.client.user
        guilds = len(self.client.guilds)
        log.info("discord: connected as %s (%s) in %d guilds", user, user and user.id, guilds)

    @property
    def connection(self) -> asyncio.Task[None]:
        """The task that keeps the gateway connection (reconnecting as needed); set by start()."""
        if self._connection is None:
            raise RuntimeError("start() the adapter first")
        return self._connection

    async def close(self) -> None:
        """Disconnect from the gateway and close the HTTP session."""
        await self.client.close()
        if connection := self._connection:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(connection, timeout=5)

    # Checks ---------------------------------------------------------------------------

    def allowed(self, guild_id: int | None, channel: Any, member: Any) -> bool:
        """Whether this guild, channel and person may talk to the bot (empty lists allow all)."""
        if guild_id is None:
            return self.settings.allow_dms
        s = self.settings
        if s.allowed_guilds and str(guild_id) not in s.allowed_guilds:
            return False
        if s.allowed_channels:
            # A thread counts as its parent channel.
            ids = {str(getattr(channel, "id", "")), str(getattr(channel, "parent_id", ""))}
            if not ids & set(s.allowed_channels):
                return False
        if s.allowed_roles:
            roles = {str(role.id) for role in getattr(member, "roles", [])}
            if not roles & set(s.allowed_roles):
                return False
        return True

    def _key(self, guild_id: int | None, user_id: int, channel: Any) -> ConversationKey:
        """The conversation of a place: a thread, a DM, or a channel (mentions answered in it)."""
        scope = str(guild_id) if guild_id is not None else f"dm-{user_id}"
        if isinstance(channel, discord.Thread):
            return ConversationKey(PLATFORM, scope, str(channel.parent_id), str(channel.id))
        return ConversationKey(PLATFORM, scope, str(channel.id), None)

    def _text(self, message: discord.Message) -> str:
        """The message's words: the bot's mention dropped, other people's as @name (the model reads names)."""
        me = self.client.user
        text = message.content
        for user in message.mentions:
            name = "" if me is not None and user.id == me.id else f"@{user.display_name}"
            text = re.sub(rf"<@!?{user.id}>", name, text)
        return text.strip()

    # Messages -------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        """A DM, a mention, or a message in one of the bot's threads: answer it."""
        me = self.client.user
        if not self.accepting or me is None or message.author.bot:
            return  # other bots, and itself: no loops
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        guild_id = message.guild.id if message.guild else None
        channel = message.channel
        if not self.allowed(guild_id, channel, message.author):
            return
        key = self._key(guild_id, message.author.id, channel)
        mentioned = me in message.mentions
        new_thread = False
        if guild_id is not None:
            if isinstance(channel, discord.Thread):
                if not mentioned and await self.history.find(key) is None:
                    return  # a thread the bot is not part of
            elif not mentioned:
                return  # a channel message not for us
            else:
                new_thread = self.settings.reply_in_thread and isinstance(channel, discord.TextChannel)
        text = self._text(message)
        if not text and not mentioned and guild_id is not None:
            # Without the Message Content intent a thread message that does not mention us is empty.
            log.debug("discord: empty message %s in thread %s (no Message Content intent?)", message.id, key)
            return
        # A resumed gateway may replay events; a message is answered once, even across restarts.
        if not await self.history.claim_event(PLATFORM, f"message:{message.id}"):
            return
        incoming = Incoming(
            text=text,
            platform=PLATFORM,
            scope=key.scope,
            channel=key.channel,
            thread=key.thread,
            user_id=str(message.author.id),
            user_name=message.author.display_name,
            message_id=str(message.id),
        )
        self.spawn(self._answer_message(message, incoming, new_thread), incoming.message_id)

    async def _answer_message(self, message: discord.Message, incoming: Incoming, new_thread: bool) -> None:
        """Open the thread (when asked), then answer there."""
        where: discord.abc.Messageable = message.channel
        reference: discord.Message | None = None
        if new_thread:
            try:
                thread = await message.create_thread(
                    name=_thread_name(incoming.text),
                    auto_archive_duration=self.settings.thread_auto_archive_minutes,
                )
                where = thread
                incoming = replace(incoming, thread=str(thread.id))
            except discord.HTTPException as error:
                log.warning("discord: no thread in %s (%s); replying in the channel", incoming.channel, error)
                reference = message
        elif message.guild is not None and not isinstance(message.channel, discord.Thread):
            reference = message
        await self._answer(incoming, ChannelSink(where, reference), typing=where)

    # Answers --------------------------------------------------------------------------

    async def _answer(
        self, incoming: Incoming, sink: Sink, typing: discord.abc.Messageable | None = None
    ) -> None:
        """Run one turn and stream it to Discord; the reply is stored even if Discord cannot take it."""
        reply = Reply(sink)
        changed = asyncio.Event()
        finished = asyncio.Event()
        pusher = asyncio.create_task(self._push_loop(reply, changed, finished))
        typer = asyncio.create_task(self._type(typing, reply, finished)) if typing is not None else None
        try:
            async with aclosing(self.engine.handle(incoming)) as events:
                async for event in events:
                    reply.apply(event)
                    changed.set()
        except asyncio.CancelledError:
            deleted = self.stopped()
            if deleted and not reply.posted:
                pusher.cancel()  # nothing shown yet: nothing to answer a deleted question with
            reply.notes.append(
                "-# *(stopped: the question was deleted)*"
                if deleted
                else "-# *(interrupted: chinwag is restarting)*"
            )
            reply.status = ""
            reply.finished = True
            finished.set()
            changed.set()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(pusher), timeout=5)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._link(reply))
            raise
        finally:
            finished.set()
            changed.set()
            if typer is not None:
                typer.cancel()
        await pusher
        await self._link(reply)
        if reply.failed:
            log.error(
                "discord: the reply in conversation %s could not be posted in full; the history keeps it",
                reply.conversation_id,
            )

    async def _link(self, reply: Reply) -> None:
        """Link the stored reply to the messages that show it (a 👍 on any of them then reaches it)."""
        ids = [str(m.id) for m in reply.posted]
        await self.engine.link_reply(reply.turn, reply.stored_id, PLATFORM, ids)

    async def _type(self, channel: discord.abc.Messageable, reply: Reply, finished: asyncio.Event) -> None:
        """Show "chinwag is typing…" until the answer's first words are posted (a placeholder with
        the reply's place in the queue does not count: the bot is still working on it)."""
        while not (reply.posted and reply.text.strip()) and not finished.is_set():
            try:
                await channel.typing()
            except (discord.HTTPException, OSError) as error:
                log.debug("discord: typing indicator failed: %s", error)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), timeout=TYPING_EVERY_S)

    async def _push_loop(self, reply: Reply, changed: asyncio.Event, finished: asyncio.Event) -> None:
        """Push the reply as it grows: at most one edit per interval, carrying all that came meanwhile."""
        while True:
            await changed.wait()
            changed.clear()
            if not finished.is_set():
                wait = reply.last_edit + self.settings.edit_interval_s - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(finished.wait(), timeout=wait)
            await self._show(reply)
            if finished.is_set():
                await self._show(reply)  # the last events may have come while the edit was under way
                return

    async def _show(self, reply: Reply) -> None:
        """Bring the reply's messages up to date: edit what changed, post what is new."""
        if reply.failed:
            return
        parts = reply.parts(self.settings.max_message_chars)
        try:
            for index, part in enumerate(parts):
                if index < len(reply.posted):
                    if reply.shown[index] == part:
                        continue
                    # discord.py waits out a 429 (retry_after) and retries by itself.
                    reply.posted[index] = await reply.posted[index].edit(content=part) or reply.posted[index]
                    reply.shown[index] = part
                else:
                    reply.posted.append(await reply.sink.post(part))
                    reply.shown.append(part)
                reply.last_edit = time.monotonic()
        except (discord.HTTPException, OSError, TimeoutError) as error:
            reply.failed = True
            log.error("discord: posting a reply failed (%s) in conversation %s", error, reply.conversation_id)

    # Slash commands -------------------------------------------------------------------

    async def _slash(self, interaction: discord.Interaction, text: str, ephemeral: bool = True) -> None:
        """Defer at once (Discord allows 3 seconds), then answer through the engine in a task."""
        allowed = self.allowed(interaction.guild_id, interaction.channel, interaction.user)
        if not self.accepting or not allowed:
            await interaction.response.send_message("chinwag is not available here.", ephemeral=True)
            return
        await interaction.response.defer(thinking=True, ephemeral=ephemeral)
        key = self._key(interaction.guild_id, interaction.user.id, interaction.channel)
        incoming = Incoming(
            text=text,
            platform=PLATFORM,
            scope=key.scope,
            channel=key.channel,
            thread=key.thread,
            user_id=str(interaction.user.id),
            user_name=interaction.user.display_name,
            message_id=f"interaction:{interaction.id}",
        )
        self.spawn(self._answer(incoming, InteractionSink(interaction, ephemeral)))

    # Deletions and reactions ----------------------------------------------------------

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        """A question deleted: its answer stops if it is being written, and both leave the
        conversation's context."""
        await self.deleted(self.engine, str(payload.message_id))

    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        await asyncio.gather(*(self.deleted(self.engine, str(m)) for m in payload.message_ids))

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        """👍/👎 on one of the bot's replies: the person's rating of that stored message."""
        await self._rate(payload, added=True)

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        """A 👍/👎 taken back: the rating is withdrawn (if it was that one)."""
        await self._rate(payload, added=False)

    async def _rate(self, payload: discord.RawReactionActionEvent, added: bool) -> None:
        value = _rating(str(payload.emoji))
        me = self.client.user
        if value is None or me is None or payload.user_id == me.id:
            return
        if payload.member is not None and payload.member.bot:
            return
        if payload.guild_id is not None and self.settings.allowed_guilds:
            if str(payload.guild_id) not in self.settings.allowed_guilds:
                return
        stored = await self.history.find_message(PLATFORM, str(payload.message_id))
        if stored is None or stored.role != "assistant":
            return
        user = UserRef(PLATFORM, str(payload.user_id))
        if added:
            await self.history.set_feedback(stored.id, user, value)
        else:
            ratings = await self.history.feedback(stored.id)
            current = [f.value for f in ratings if f.user.external_id == user.external_id]
            if current != [value]:
                return
            await self.history.set_feedback(stored.id, user, None)
        log.info("discord: feedback %+d on message %s (%s)", value, stored.id, "on" if added else "off")

    async def on_resumed(self) -> None:
        """The gateway came back: answers in flight kept going over REST meanwhile."""
        log.info("discord: gateway session resumed (%d answers in flight)", len(self._tasks))


def _rating(emoji: str) -> int | None:
    """+1 for 👍, -1 for 👎 (any skin tone), else None."""
    if emoji.startswith(LIKE):
        return 1
    if emoji.startswith(DISLIKE):
        return -1
    return None


def _thread_name(text: str) -> str:
    """A thread title from the question's first line."""
    line = " ".join(text.split()) or "chinwag"
    return line if len(line) <= THREAD_NAME_CHARS else line[: THREAD_NAME_CHARS - 1] + "…"


# Serving ----------------------------------------------------------------------------------


async def serve(
    adapter: DiscordAdapter, stop: asyncio.Event, ready: Callable[[], None] | None = None
) -> None:
    """Serve Discord until `stop` is set, then stop accepting and let answers in flight finish."""
    await adapter.start()
    if ready:
        ready()
    connection = adapter.connection
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({stopping, connection}, return_when=asyncio.FIRST_COMPLETED)
        if connection.done() and not stop.is_set():
            error = connection.exception()
            raise ChinwagError(f"Discord gateway connection ended: {error or 'closed'}")
    finally:
        stopping.cancel()
        adapter.accepting = False
        await adapter.drain(adapter.settings.shutdown_timeout_s)
        await adapter.close()


def check(settings: Settings) -> None:
    """Raise ChinwagError when Discord cannot run here: DISCORD_TOKEN is not in the environment."""
    token_from_env()


async def run_discord(app: App, stop: asyncio.Event) -> None:
    """Run the Discord adapter on a started chinwag App until `stop` is set (the shape every adapter has)."""
    adapter = DiscordAdapter(app.engine, app.history, app.settings.discord, token_from_env())
    await serve(adapter, stop)


# adapters.slack names its entry point `run`: the same shape under the same name.
run = run_discord
