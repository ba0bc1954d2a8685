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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from adapters.discord_tasks import ReadError, read_channel, to_source
from adapters.inflight import ShutdownPlan, unless_stopped, within
from adapters.reply import ChatAdapter, ChatEngine, Place, Reply, Stream, Style
from adapters.taskwords import Window, parse_window
from bot.app import App
from bot.errors import ChinwagError, TaskError
from bot.seams.history import ConversationKey, History
from bot.tasks.languages import Language, flag_language, is_flag, language
from bot.types import Incoming, SourceMessage
from config.settings import DiscordSettings, Settings

log = logging.getLogger(__name__)

PLATFORM = "discord"
LIKE = "👍"
DISLIKE = "👎"
TYPING_EVERY_S = 8.0  # Discord shows "is typing…" for about 10 seconds per request
THREAD_NAME_CHARS = 90  # Discord allows 100


# Discord's Markdown for a reply: notes under the answer in small print (-#). No placeholder:
# "is typing…" shows that the bot is on it.
STYLE = Style(
    status="*{}*",
    remark="-# *{}*",
    sources="-# {}",
    tool="-# ⚙ `{}`",
    warning="⚠️ {}",
    tick="ʼ",
)


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


def client_for(settings: DiscordSettings) -> discord.Client:
    """A discord.py client: of the whole bot, or (`shard_count`) of the shards `shard_ids` only, so
    that replicas given different shards split the guilds (Discord sends each guild's events to
    shard (guild_id >> 22) % shard_count, and DMs to shard 0)."""
    options: dict[str, Any] = {
        "intents": intents_for(settings),
        # A model's words must never ping @everyone, a role or a person.
        "allowed_mentions": discord.AllowedMentions.none(),
    }
    if settings.shard_count is None:
        return discord.Client(**options)
    if settings.shard_ids is not None:
        options["shard_ids"] = settings.shard_ids
    return discord.AutoShardedClient(shard_count=settings.shard_count, **options)


def point_at(settings: DiscordSettings) -> None:
    """Send discord.py's REST calls and gateway connection to the configured URLs (process-wide)."""
    discord.http.Route.BASE = settings.api_base_url
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.gateway_url)


# One reply, posted as one or more messages ------------------------------------------------------


class Sink(Place[discord.Message]):
    """Where a reply's messages go: a channel or thread, or an interaction's follow-ups."""

    failures = (discord.HTTPException, discord.RateLimited, aiohttp.ClientError, OSError, TimeoutError)

    async def edit(self, message: discord.Message, text: str) -> discord.Message:
        """Edit a posted message; discord.py waits out a 429 (retry_after) and retries by itself."""
        return await message.edit(content=text) or message

    def ref(self, message: discord.Message) -> str:
        """A posted message's id in the history: its snowflake."""
        return str(message.id)

    def retry_after(self, error: Exception) -> float | None:
        """429s (once discord.py's own retries are spent), 5xx and network errors pass; a refusal
        such as Missing Permissions (403) or Unknown Message (404) stays."""
        if isinstance(error, discord.RateLimited):
            return error.retry_after
        if isinstance(error, discord.HTTPException):
            return 0.0 if error.status == 429 or error.status >= 500 else None
        return 0.0

    def describe(self, error: Exception) -> str:
        """Discord's status and message, or the kind of failure."""
        if isinstance(error, discord.HTTPException):
            return f"HTTP {error.status}: {error.text or error.response.reason}"
        return str(error) or type(error).__name__


@dataclass
class ChannelSink(Sink):
    """Messages in a channel, thread or DM; the first one replies to `reference` when given."""

    channel: discord.abc.Messageable
    reference: discord.Message | None = None

    @property
    def where(self) -> str:
        """The channel, for logs."""
        return f"channel {getattr(self.channel, 'id', self.channel)}"

    async def post(self, text: str) -> discord.Message:
        """Send a message (as a reply to the question, the first time)."""
        reference, self.reference = self.reference, None
        if reference is not None:
            return await self.channel.send(text, reference=reference, mention_author=False)
        return await self.channel.send(text)


@dataclass
class InteractionSink(Sink):
    """The deferred response of a slash command, then follow-up messages."""

    interaction: discord.Interaction
    ephemeral: bool = False
    _first: bool = True

    @property
    def where(self) -> str:
        """The interaction, for logs."""
        return f"interaction {self.interaction.id}"

    async def post(self, text: str) -> discord.Message:
        """Fill in the deferred "thinking" response, then send follow-ups."""
        if self._first:
            self._first = False
            return await self.interaction.edit_original_response(content=text)
        return await self.interaction.followup.send(text, ephemeral=self.ephemeral, wait=True)


# The adapter ----------------------------------------------------------------------------------


class DiscordAdapter(ChatAdapter):
    """Discord events in, engine turns out; one per process (one bot token, any number of guilds)."""

    platform = PLATFORM

    def __init__(
        self,
        engine: ChatEngine,
        history: History,
        settings: DiscordSettings,
        token: str,
        task_commands: Sequence[tuple[str, str]] = (),
        max_messages: int = 5000,
    ) -> None:
        super().__init__(engine, history)
        self.settings = settings
        # The team's own commands (name, description), registered as slash commands like /summarize.
        self.task_commands = list(task_commands)
        self.max_messages = max_messages  # the most messages one language task reads
        self._token = token
        point_at(settings)
        self.client = client_for(settings)
        self.tree = app_commands.CommandTree(self.client)
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

        self._register_tasks()

    def _register_tasks(self) -> None:
        """/summarize, /actions, /translate and the team's own commands (bot/tasks)."""
        since = "24h, 7d, or a number of messages (default: the last 24h)"
        where = "another channel (#name); default: here"

        @self.tree.command(
            name="summarize", description="Summarise this channel's or thread's recent messages"
        )
        @app_commands.describe(since=since, channel=where)
        async def summarize(
            interaction: discord.Interaction, since: str | None = None, channel: str | None = None
        ) -> None:
            await self._task_slash(interaction, "summarize", since, channel)

        @self.tree.command(
            name="actions", description="The action items of recent messages: what, who, by when"
        )
        @app_commands.describe(since=since, channel=where)
        async def actions(
            interaction: discord.Interaction, since: str | None = None, channel: str | None = None
        ) -> None:
            await self._task_slash(interaction, "actions", since, channel)

        @self.tree.command(name="translate", description="Translate a text, or the last message here")
        @app_commands.describe(language="a language name or code: French, fr, ja…", text="what to translate")
        async def translate(interaction: discord.Interaction, language: str, text: str | None = None) -> None:
            await self._task_slash(interaction, "translate", None, None, language=language, text=text)

        taken = {command.name for command in self.tree.get_commands()}
        for name, description in self.task_commands:
            if name in taken:
                log.warning(
                    "discord: the command /%s exists already; the team's /%s is not registered", name, name
                )
                continue
            self.tree.add_command(self._task_command(name, description or f"/{name}"))

    def _task_command(self, name: str, description: str) -> app_commands.Command[Any, Any, None]:
        async def run(
            interaction: discord.Interaction, since: str | None = None, channel: str | None = None
        ) -> None:
            await self._task_slash(interaction, name, since, channel)

        return app_commands.Command(name=name, description=description[:100], callback=run)

    async def start(self) -> None:
        """Log in, register the slash commands, and connect to the gateway (until ready)."""
        api, gateway = self.settings.api_base_url, self.settings.gateway_url
        try:
            await self.client.login(self._token)
        except discord.LoginFailure:
            raise ChinwagError("Discord refused the bot token (DISCORD_TOKEN).") from None
        except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as error:
            raise ChinwagError(f"Cannot reach Discord's API at {api}: {_cause(error)}") from None
        if self.settings.sync_commands:
            try:
                await self.tree.sync()
            except discord.HTTPException as error:
                log.error("discord: could not register the slash commands: %s", error)
        connection = self._connection = asyncio.create_task(
            self.client.connect(reconnect=True), name="discord-gateway"
        )
        ready = asyncio.create_task(self.client.wait_until_ready())
        try:
            await asyncio.wait({connection, ready}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()  # (a stop while connecting cancels start(): close() ends the connection)
        if not self.client.is_ready():
            await self.client.close()
            failure = connection.exception()
            if isinstance(failure, discord.PrivilegedIntentsRequired):
                raise ChinwagError(
                    "Discord refused the Message Content intent: enable it for the bot in the Developer "
                    "Portal, or set discord.message_content_intent = false."
                )
            raise ChinwagError(f"Cannot connect to Discord's gateway at {gateway}: {_cause(failure)}")
        user = self.client.user
        guilds = len(self.client.guilds)
        log.info("discord: connected as %s (%s) in %d guilds", user, user and user.id, guilds)
        if self.settings.shard_count is not None:
            shards = self.settings.shard_ids or list(range(self.settings.shard_count))
            log.info("discord: shards %s of %d", shards, self.settings.shard_count)

    @property
    def connection(self) -> asyncio.Task[None]:
        """The task that keeps the gateway connection (reconnecting as needed); set by start()."""
        if self._connection is None:
            raise RuntimeError("start() the adapter first")
        return self._connection

    async def close(self, within_s: float = 5.0) -> None:
        """Disconnect from the gateway and close the HTTP session, in at most about `within_s`; a
        connection still being retried is given up."""
        await within(self.client.close(), within_s, "discord: closing the connection")
        if connection := self._connection:
            # Closed, the client ends its connection loop at its next step; it may be waiting out a
            # reconnect's backoff meanwhile.
            connection.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await connection

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
        elsewhere = getattr(channel, "guild_id", None) if guild_id is None else None
        if elsewhere is not None:
            # A guild this process does not hold (another replica's shard, or one not yet
            # available): not a DM, and not ours to answer.
            log.info("discord: message %s is in guild %s, not one this process holds", message.id, elsewhere)
            return
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
            log.info("discord: message %s already handled (a replayed event)", message.id)
            return
        incoming = _incoming(key, message.author, text, str(message.id))
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
        """Run one turn and stream it to Discord, showing "is typing…" in `typing` meanwhile."""
        limit, interval = self.settings.max_message_chars, self.settings.edit_interval_s
        stream = Stream(Reply(STYLE), sink, limit, interval)
        typer = asyncio.create_task(self._type(typing, stream)) if typing is not None else None
        try:
            await self.answer(incoming, stream)
        finally:
            if typer is not None:
                typer.cancel()

    async def _type(self, channel: discord.abc.Messageable, stream: Stream[discord.Message]) -> None:
        """Show "chinwag is typing…" until the answer's first words are posted (a placeholder with
        the reply's place in the queue does not count: the bot is still working on it)."""
        while not (stream.posted and stream.reply.text.strip()) and not stream.ended.is_set():
            try:
                await channel.typing()
            except (discord.HTTPException, OSError) as error:
                log.debug("discord: typing indicator failed: %s", error)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.ended.wait(), timeout=TYPING_EVERY_S)

    # Slash commands -------------------------------------------------------------------

    async def _slash(self, interaction: discord.Interaction, text: str, ephemeral: bool = True) -> None:
        """Defer at once (Discord allows 3 seconds), then answer through the engine in a task."""
        allowed = self.allowed(interaction.guild_id, interaction.channel, interaction.user)
        if not self.accepting or not allowed:
            await interaction.response.send_message("chinwag is not available here.", ephemeral=True)
            return
        await interaction.response.defer(thinking=True, ephemeral=ephemeral)
        key = self._key(interaction.guild_id, interaction.user.id, interaction.channel)
        incoming = _incoming(key, interaction.user, text, f"interaction:{interaction.id}")
        self.spawn(self._answer(incoming, InteractionSink(interaction, ephemeral)))

    # Language tasks -------------------------------------------------------------------

    async def _task_slash(
        self,
        interaction: discord.Interaction,
        task: str,
        since: str | None,
        channel: str | None,
        language: str | None = None,
        text: str | None = None,
    ) -> None:
        """/summarize, /actions, /translate, a team command: read the channel's (or thread's) recent
        messages over REST, then answer in the interaction as it is worked on."""
        allowed = self.allowed(interaction.guild_id, interaction.channel, interaction.user)
        if not self.accepting or not allowed:
            await interaction.response.send_message("chinwag is not available here.", ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        key = self._key(interaction.guild_id, interaction.user.id, interaction.channel)
        words = [task]
        source: tuple[SourceMessage, ...] | None = None
        label: str | None = None
        try:
            if language is not None:
                _check_language(language)
                words.append(language)
            if text:
                words.append(text)
            else:
                try:
                    window = parse_window((since or "").split()) if task != "translate" else Window(count=1)
                except ValueError as error:
                    raise TaskError(
                        f"I don't understand {str(error)!r}: since is 24h, 7d or a number of messages."
                    ) from None
                target = self._channel(channel or window.channel, interaction)
                raw = await read_channel(target, window, self.max_messages)
                if len(raw) > self.max_messages:
                    raise TaskError(
                        f"More than {self.max_messages} messages in that window: ask for a shorter one "
                        "(24h, or a number of messages)."
                    )
                source = to_source(raw, self.client.user, self.settings.message_content_intent)
                label = window.label(getattr(target, "mention", "this channel"))
                if window.bots:
                    words.append("bots")
        except (TaskError, ReadError) as error:
            await InteractionSink(interaction).post(STYLE.warning.format(error))
            return
        incoming = replace(
            _incoming(key, interaction.user, "/" + " ".join(words), f"interaction:{interaction.id}"),
            source=source,
            source_label=label,
        )
        self.spawn(self._answer(incoming, InteractionSink(interaction, False)))

    def _channel(self, ref: str | None, interaction: discord.Interaction) -> discord.abc.Messageable:
        """The channel a task names (`<#id>`, an id, `#name`), else the interaction's own."""
        here = interaction.channel
        if not ref:
            if not isinstance(here, discord.abc.Messageable):
                raise ReadError("I can't read the messages here.")
            return here
        ref = ref.strip()
        digits = re.sub(r"[<#>]", "", ref)
        found: Any = None
        if digits.isdigit():
            found = self.client.get_channel(int(digits))
        elif interaction.guild is not None:
            found = discord.utils.get(interaction.guild.text_channels, name=ref.lstrip("#"))
        same_guild = found is not None and getattr(found, "guild", None) == interaction.guild
        if not same_guild or not isinstance(found, discord.abc.Messageable):
            raise ReadError(f"I can't find the channel {ref} here.")
        return found

    async def _translate_flag(self, payload: discord.RawReactionActionEvent) -> None:
        """A flag on a message: its translation in a thread on it, once per message and language;
        a flag that means no language gets one line, once."""
        emoji = str(payload.emoji)
        target: Language | None = None
        refusal = ""
        try:
            target = flag_language(emoji)
        except TaskError as error:
            refusal = str(error)
        if not await self.history.claim_event(
            PLATFORM, f"translate:{payload.message_id}:{target.code if target else emoji}"
        ):
            return
        try:
            channel: Any = self.client.get_channel(payload.channel_id) or await self.client.fetch_channel(
                payload.channel_id
            )
            message = await channel.fetch_message(payload.message_id)
            where: discord.abc.Messageable = channel
            reference: discord.Message | None = message
            if isinstance(channel, discord.TextChannel):
                where = message.thread or await message.create_thread(
                    name=_thread_name(f"{emoji} {message.content}"),
                    auto_archive_duration=self.settings.thread_auto_archive_minutes,
                )
                reference = None
        except discord.HTTPException as error:
            log.warning("discord: cannot translate message %s: %s", payload.message_id, error)
            return
        sink = ChannelSink(where, reference)
        try:
            if target is None:
                raise ReadError(refusal)
            source = to_source([message], self.client.user, self.settings.message_content_intent)
        except ReadError as error:
            with contextlib.suppress(*Sink.failures):
                await sink.post(STYLE.warning.format(error))
            return
        if not source:
            return
        scope = str(payload.guild_id) if payload.guild_id is not None else f"dm-{payload.user_id}"
        incoming = Incoming(
            text=f"/translate {target.code}", platform=PLATFORM, scope=scope, channel=str(payload.channel_id),
            thread=f"translate:{message.id}", user_id=str(payload.user_id), source=source,
            source_label="a message",
        )  # fmt: skip
        await self._answer(incoming, sink)

    # Deletions and reactions ----------------------------------------------------------

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        """A question deleted: its answer stops if it is being written, and both leave the
        conversation's context."""
        await self.deleted(str(payload.message_id))

    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        await asyncio.gather(*(self.deleted(str(m)) for m in payload.message_ids))

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        """👍/👎 on one of the bot's replies: the person's rating of that stored message; a flag on
        any message: its translation."""
        if is_flag(str(payload.emoji)):
            me = self.client.user
            person = (
                me is not None and payload.user_id != me.id and not (payload.member and payload.member.bot)
            )
            if self.accepting and person:
                self.spawn(self._translate_flag(payload))
            return
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
        await self.rate(str(payload.message_id), str(payload.user_id), value, added)

    async def on_resumed(self) -> None:
        """The gateway came back: answers in flight kept going over REST meanwhile."""
        log.info("discord: gateway session resumed (%d answers in flight)", len(self._tasks))


def _incoming(
    key: ConversationKey, user: discord.User | discord.Member, text: str, message_id: str
) -> Incoming:
    """What `user` said in the conversation `key`, as the engine takes it."""
    return Incoming(
        text=text,
        platform=PLATFORM,
        scope=key.scope,
        channel=key.channel,
        thread=key.thread,
        user_id=str(user.id),
        user_name=user.display_name,
        message_id=message_id,
    )


def _check_language(name: str) -> Language:
    """The language `name` names; TaskError (one line) before anything is read or posted."""
    return language(name)


def _rating(emoji: str) -> int | None:
    """+1 for 👍, -1 for 👎 (any skin tone), else None."""
    if emoji.startswith(LIKE):
        return 1
    if emoji.startswith(DISLIKE):
        return -1
    return None


# What a connection that cannot be made raises (a timeout apart).
NETWORK_ERRORS = (OSError, aiohttp.ClientError, discord.ConnectionClosed, discord.GatewayNotFound)


def _cause(error: BaseException | None) -> str:
    """What made a connection fail, in a few words. discord.py can hide a network error behind an
    error of its own (retrying a first connection, it reads the state of a websocket that never
    opened): the network error is then found in the chain."""
    seen = error
    while seen is not None:
        if isinstance(seen, TimeoutError):
            return "no answer in time"
        if isinstance(seen, NETWORK_ERRORS):
            return str(seen) or type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    return (str(error) or type(error).__name__) if error is not None else "the connection closed"


def _thread_name(text: str) -> str:
    """A thread title from the question's first line."""
    line = " ".join(text.split()) or "chinwag"
    return line if len(line) <= THREAD_NAME_CHARS else line[: THREAD_NAME_CHARS - 1] + "…"


# Serving ----------------------------------------------------------------------------------


async def serve(
    adapter: DiscordAdapter, stop: asyncio.Event, ready: Callable[[], None] | None = None
) -> None:
    """Serve Discord until `stop` is set, then stop accepting and let answers in flight finish; the
    whole stop takes at most `shutdown_timeout_s`, connecting or reconnecting included."""
    try:
        if not await unless_stopped(adapter.start(), stop):
            return
        adapter.follow_deletions()
        if ready:
            ready()
        connection = adapter.connection
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({stopping, connection}, return_when=asyncio.FIRST_COMPLETED)
            if connection.done() and not stop.is_set():
                error = connection.exception()
                cause = _cause(error) if error else "closed"
                raise ChinwagError(f"Discord gateway connection ended: {cause}")
        finally:
            stopping.cancel()
    finally:
        plan = ShutdownPlan(adapter.settings.shutdown_timeout_s)
        adapter.accepting = False
        await adapter.drain(plan)
        await adapter.unfollow_deletions()
        await adapter.close(plan.left(plan.closed_by))


def check(settings: Settings) -> None:
    """Raise ChinwagError when Discord cannot run here: DISCORD_TOKEN is not in the environment."""
    token_from_env()


async def run_discord(app: App, stop: asyncio.Event) -> None:
    """Run the Discord adapter on a started chinwag App until `stop` is set (the shape every adapter has)."""
    tasks = app.settings.tasks
    commands = [(c.name, c.description) for c in tasks.commands]
    adapter = DiscordAdapter(
        app.engine, app.history, app.settings.discord, token_from_env(), commands, tasks.max_messages
    )
    await serve(adapter, stop)


# adapters.slack names its entry point `run`: the same shape under the same name.
run = run_discord
