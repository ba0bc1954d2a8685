"""The Slack adapter: a slack-bolt AsyncApp that turns Slack events into `Incoming` and replies into posts.

Mentions in a channel are answered in a thread under the message; later messages in that thread
continue the conversation without a mention. A DM is one conversation (one per DM thread when
threads are used). Replies stream by editing the message at a pace Slack allows, split below the
message limit; `/chinwag` runs the engine's commands ephemerally; 👍/👎 on a reply are stored as
feedback. Scope = the workspace (team) id, so history and documents stay within one workspace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.web.async_client import AsyncWebClient

from adapters.inflight import InFlight
from adapters.slack_format import from_slack, to_mrkdwn
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
from config import Settings, SlackSettings

log = logging.getLogger(__name__)

PLATFORM = "slack"
COMMAND = "/chinwag"
LIKE = {"+1", "thumbsup"}
DISLIKE = {"-1", "thumbsdown"}
# Message subtypes that are still a person talking; edits, deletions, joins and bots are not.
_SPOKEN_SUBTYPES = {None, "thread_broadcast", "file_share"}


@dataclass(frozen=True)
class SlackCredentials:
    """The tokens the app runs with; they come from the environment and are never logged."""

    bot_token: str
    app_token: str | None = None
    signing_secret: str | None = None

    @classmethod
    def from_env(cls, mode: str, environ: Mapping[str, str] | None = None) -> SlackCredentials:
        """Read SLACK_BOT_TOKEN and, per mode, SLACK_APP_TOKEN or SLACK_SIGNING_SECRET."""
        env = os.environ if environ is None else environ
        needed = ["SLACK_BOT_TOKEN", "SLACK_APP_TOKEN" if mode == "socket" else "SLACK_SIGNING_SECRET"]
        missing = [name for name in needed if not env.get(name)]
        if missing:
            raise ChinwagError(f"Slack ({mode} mode) needs the environment variable(s) {', '.join(missing)}.")
        return cls(env["SLACK_BOT_TOKEN"], env.get("SLACK_APP_TOKEN"), env.get("SLACK_SIGNING_SECRET"))

    def __repr__(self) -> str:
        """Never show a token, even in a traceback."""
        return "SlackCredentials(<hidden>)"


def web_client(token: str | None, base_url: str) -> AsyncWebClient:
    """A Web API client that waits out 429s (Retry-After) and retries transient failures with backoff."""
    backoff = BackoffRetryIntervalCalculator(backoff_factor=0.5)
    return AsyncWebClient(
        token=token,
        base_url=base_url,
        retry_handlers=[
            AsyncRateLimitErrorRetryHandler(max_retry_count=3),
            AsyncServerErrorRetryHandler(max_retry_count=2, interval_calculator=backoff),
            AsyncConnectionErrorRetryHandler(max_retry_count=2, interval_calculator=backoff),
        ],
    )


class Pace:
    """Edits per workspace: a token bucket of `per_minute` (chat.update is Tier 3, ~50 a minute)."""

    def __init__(self, per_minute: int, burst: int = 5) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(max(1, min(burst, per_minute)))
        self._tokens: dict[str, float] = {}
        self._stamp: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def take(self, team: str) -> None:
        """Wait until `team` may make one more edit."""
        lock = self._locks.setdefault(team, asyncio.Lock())
        async with lock:
            while True:
                now = time.monotonic()
                tokens = min(
                    self.capacity,
                    self._tokens.get(team, self.capacity) + (now - self._stamp.get(team, now)) * self.rate,
                )
                self._stamp[team] = now
                if tokens >= 1:
                    self._tokens[team] = tokens - 1
                    return
                self._tokens[team] = tokens
                await asyncio.sleep((1 - tokens) / self.rate)


@dataclass
class _Reply:
    """One answer on Slack: the messages it is posted as, and what each shows."""

    channel: str
    thread_ts: str | None
    team: str
    conversation_id: int | None = None
    text: str = ""
    notes: list[str] = field(default_factory=list)
    status: str = ""
    posted: list[str] = field(default_factory=list)  # message ts, in order
    shown: list[str] = field(default_factory=list)
    edited_at: dict[int, float] = field(default_factory=dict)
    failed: bool = False
    finished: bool = False
    # Cut short by a shutdown: its last edit goes at once instead of waiting its turn under the pace
    # (with many answers cut at once, their turns would come after the process is gone).
    cut: asyncio.Event = field(default_factory=asyncio.Event)
    # The turn (once the question is stored) and its stored reply (once told), to link the posts to.
    turn: TurnStarted | None = None
    stored_id: int | None = None

    def parts(self, limit: int, thinking: str) -> list[str]:
        """The messages the reply is now: Markdown made mrkdwn, notes under it, split below the limit."""
        body = to_mrkdwn(self.text.strip()) or self.status or ("" if self.finished else thinking)
        whole = "\n\n".join(p for p in (body, "\n".join(self.notes)) if p.strip())
        return split_message(whole, limit) or [thinking]


class SlackAdapter(InFlight):
    """Slack events in, engine turns out; one instance per process (one bot token, any number of teams)."""

    platform = PLATFORM

    def __init__(
        self,
        engine: Any,
        history: History,
        settings: SlackSettings,
        credentials: SlackCredentials,
    ) -> None:
        self.engine = engine
        self.history = history
        self.settings = settings
        self.credentials = credentials
        self.client = web_client(credentials.bot_token, settings.api_base_url)
        self.app = AsyncApp(
            client=self.client,
            signing_secret=credentials.signing_secret or "",
            # Socket Mode traffic is authenticated by the app token; HTTP requests by their signature.
            request_verification_enabled=settings.mode == "http",
            # The listeners only filter, claim the event and hand the answer to a tracked task: they
            # return in milliseconds, so the ack still comes well within 3 s, and it comes after the
            # claim is stored (a retry cannot race the original; a failed claim gets a 500 and a retry).
            process_before_response=True,
            logger=logging.getLogger("slack_bolt"),
            name="chinwag",
        )
        self.pace = Pace(settings.updates_per_minute)
        self.bot_user_id: str | None = None
        super().__init__()
        self._register()

    # Wiring ---------------------------------------------------------------------------

    def _register(self) -> None:
        self.app.event("app_mention")(self._on_mention)
        self.app.event("message")(self._on_message)
        self.app.event("reaction_added")(self._on_reaction)
        self.app.event("reaction_removed")(self._on_reaction)
        self.app.command(COMMAND)(self._on_command)

    async def start(self) -> None:
        """Check the bot token (auth.test) and learn the bot's own user id."""
        try:
            auth = await self.client.auth_test()
        except SlackApiError as error:
            raise ChinwagError(f"Slack refused the bot token: {error.response.get('error')}") from None
        except SlackClientError as error:
            raise ChinwagError(f"Cannot reach Slack at {self.settings.api_base_url}: {error}") from None
        self.bot_user_id = auth.get("user_id")
        log.info("slack: connected as %s in team %s", auth.get("user"), auth.get("team_id"))

    # Checks ---------------------------------------------------------------------------

    def allowed(self, channel: str | None, user: str | None) -> bool:
        """Whether this channel and user may talk to the bot (empty lists allow everyone)."""
        channels, users = self.settings.allowed_channels, self.settings.allowed_users
        if channels and channel not in channels:
            return False
        return not (users and user not in users)

    async def _claim(self, body: Mapping[str, Any]) -> bool:
        """Record the event before any work; False for a redelivery (Slack retries, even after a restart)."""
        event_id = body.get("event_id")
        if not event_id:
            return True
        if await self.history.claim_event(PLATFORM, str(event_id)):
            return True
        log.info("slack: event %s already handled (retry %s)", event_id, body.get("retry_attempt", "?"))
        return False

    async def _claim_message(self, team: str, channel: str, ts: str) -> bool:
        """One answer per Slack message, though it may come as both app_mention and message events."""
        return await self.history.claim_event(PLATFORM, f"message:{team}:{channel}:{ts}")

    # Events ---------------------------------------------------------------------------

    async def _on_mention(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        """@chinwag in a channel: answer in the message's thread (a new conversation, or the thread's)."""
        if (
            not self.accepting
            or event.get("bot_id")
            or not self.allowed(event.get("channel"), event.get("user"))
        ):
            return
        if not await self._claim(body):
            return
        team = _team(body, event)
        if not await self._claim_message(team, event["channel"], event["ts"]):
            return
        thread = event.get("thread_ts") or event["ts"]
        incoming = self._incoming(team, event, thread)
        self.spawn(self._answer(incoming, thread), incoming.message_id)

    async def _on_message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        """A DM, or a message in a thread that is one of the bot's conversations (or a deletion)."""
        if gone := _deleted_ts(event):
            # Its answer stops and both leave the context; not in this handler (Slack's ack waits).
            self.spawn(self.deleted(self.engine, _ref(_team(body, event), str(event.get("channel")), gone)))
            return
        if not self.accepting or event.get("subtype") not in _SPOKEN_SUBTYPES or event.get("bot_id"):
            return
        user, channel = event.get("user"), event.get("channel")
        if not user or not channel or user == self.bot_user_id or not self.allowed(channel, user):
            return
        team = _team(body, event)
        thread_ts = event.get("thread_ts")
        if event.get("channel_type") == "im":
            # One conversation per DM, or per DM thread when the person uses threads.
            thread, reply_in = thread_ts, thread_ts
        else:
            if not thread_ts:
                return  # a channel message without a mention is not for us
            if await self.history.find(ConversationKey(PLATFORM, team, channel, thread_ts)) is None:
                return  # a thread the bot is not part of
            thread, reply_in = thread_ts, thread_ts
        if not await self._claim(body) or not await self._claim_message(team, channel, event["ts"]):
            return
        incoming = self._incoming(team, event, thread)
        self.spawn(self._answer(incoming, reply_in), incoming.message_id)

    def _incoming(self, team: str, event: Mapping[str, Any], thread: str | None) -> Incoming:
        return Incoming(
            text=from_slack(event.get("text") or "", self.bot_user_id),
            platform=PLATFORM,
            scope=team,
            channel=event["channel"],
            thread=thread,
            user_id=event.get("user") or "unknown",
            message_id=_ref(team, event["channel"], event["ts"]),  # ts is unique only in its channel
        )

    async def _on_reaction(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        """👍/👎 on one of the bot's replies: the person's feedback on that stored message."""
        name = str(event.get("reaction", "")).split("::")[0]  # skin tones: "+1::skin-tone-2"
        item = event.get("item") or {}
        if name not in LIKE | DISLIKE or item.get("type") != "message":
            return
        if self.bot_user_id and event.get("item_user") not in (None, self.bot_user_id):
            return
        if not self.allowed(item.get("channel"), event.get("user")) or not await self._claim(body):
            return
        team = _team(body, event)
        stored = await self.history.find_message(PLATFORM, _ref(team, item["channel"], item["ts"]))
        if stored is None:
            return
        user = UserRef(PLATFORM, str(event.get("user")))
        value = 1 if name in LIKE else -1
        if event.get("type") == "reaction_removed":
            # Withdrawn only if it was this rating that the person gave.
            current = [
                f.value
                for f in await self.history.feedback(stored.id)
                if f.user.external_id == user.external_id
            ]
            if current != [value]:
                return
            await self.history.set_feedback(stored.id, user, None)
        else:
            await self.history.set_feedback(stored.id, user, value)
        log.info("slack: feedback %+d on message %s", value, stored.id)

    async def _on_command(
        self,
        ack: Callable[..., Awaitable[Any]],
        command: dict[str, Any],
        respond: Callable[..., Awaitable[Any]],
    ) -> None:
        """`/chinwag help|reset|sources|settings|set KEY VALUE`: engine commands, shown to the user only."""
        await ack()
        if not self.accepting:
            return
        if not self.allowed(command.get("channel_id"), command.get("user_id")):
            await respond(text="chinwag is not available here.", response_type="ephemeral")
            return
        self.spawn(self._command(command, respond))

    async def _command(self, command: Mapping[str, Any], respond: Callable[..., Awaitable[Any]]) -> None:
        team, channel = str(command.get("team_id")), str(command.get("channel_id"))
        words = " ".join(str(command.get("text") or "").split()) or "help"
        incoming = Incoming(
            text="/" + words.removeprefix("/"),
            platform=PLATFORM,
            scope=team,
            channel=channel,
            thread=None,
            user_id=str(command.get("user_id")),
        )
        if not channel.startswith("D"):
            # Slash commands carry no thread: in a channel they act on its latest conversation.
            latest = [
                c
                for c in await self.history.list(platform=PLATFORM, scope=team, channel=channel)
                if not c.archived
            ]
            if not latest:
                await respond(
                    text=f"No conversation with chinwag in this channel yet: mention <@{self.bot_user_id}> "
                    f"to start one; `{COMMAND}` then acts on the latest.",
                    response_type="ephemeral",
                )
                return
            incoming = replace(incoming, conversation_id=latest[0].id, thread=latest[0].key.thread)
        text = "No answer."
        async with aclosing(self.engine.handle(incoming)) as events:
            async for event in events:
                if isinstance(event, CommandResult):
                    text = event.text if event.ok else f":warning: {event.text}"
                elif isinstance(event, TurnFailed):
                    text = f":warning: {event.message}"
                elif isinstance(event, TurnDone):
                    text = event.text
        try:
            await respond(text=to_mrkdwn(text)[:3000], response_type="ephemeral")
        except Exception:
            log.exception("slack: could not answer %s %s in %s", COMMAND, words.split()[0], channel)

    # Answers --------------------------------------------------------------------------

    async def _answer(self, incoming: Incoming, thread_ts: str | None) -> None:
        """Run one turn and stream it to Slack; the reply is stored even if Slack cannot take it."""
        reply = _Reply(incoming.channel, thread_ts, incoming.scope)
        await self._show(reply)  # the placeholder: the user sees at once that the bot is on it
        changed = asyncio.Event()
        finished = asyncio.Event()
        pusher = asyncio.create_task(self._push_loop(reply, changed, finished))
        try:
            async with aclosing(self.engine.handle(incoming)) as events:
                async for event in events:
                    self._apply(reply, event)
                    changed.set()
        except asyncio.CancelledError:
            deleted = self.stopped()
            reply.notes.append(
                "_(stopped: the question was deleted)_"
                if deleted
                else "_(interrupted: chinwag is restarting)_"
            )
            reply.status = ""  # a notice ("Waiting for the model…") no longer holds
            reply.finished = True
            reply.cut.set()
            finished.set()
            changed.set()  # the pusher may be idle, waiting for a change: this is the last one
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(pusher), timeout=5)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._link(reply))
            raise
        finally:
            finished.set()
            changed.set()
        await pusher
        await self._link(reply)
        if reply.failed:
            log.error(
                "slack: the reply in conversation %s could not be posted to %s; it is kept in the history",
                reply.conversation_id,
                reply.channel,
            )

    async def _link(self, reply: _Reply) -> None:
        """Link the stored reply to the messages that show it (a 👍 on any of them then reaches it)."""
        refs = [_ref(reply.team, reply.channel, ts) for ts in reply.posted]
        await self.engine.link_reply(reply.turn, reply.stored_id, PLATFORM, refs)

    def _apply(self, reply: _Reply, event: Event) -> None:
        """Fold one engine event into the reply."""
        if isinstance(event, TextDelta):
            reply.text += event.text
        elif isinstance(event, Notice):
            reply.status = f"_{event.text}_"
        elif isinstance(event, ToolCall):
            summary = event.summary().replace("`", "'")
            reply.notes.append(f"⚙ `{summary}`")
        elif isinstance(event, CommandResult):
            reply.conversation_id = event.conversation_id
            reply.text = event.text if event.ok else f":warning: {event.text}"
            reply.finished = True
        elif isinstance(event, TurnFailed):
            reply.conversation_id = event.conversation_id or reply.conversation_id
            reply.stored_id = event.message_id
            reply.notes.append(f":warning: {event.message}")
            reply.status = ""
            reply.finished = True
        elif isinstance(event, TurnDone):
            reply.conversation_id = event.conversation_id
            reply.stored_id = event.message_id
            reply.text = event.text
            reply.finished = True
            reply.status = "" if event.text.strip() else "_(no answer)_"
            if footer := sources_footer(event.metadata.get("sources") or []):
                reply.notes.append(f"_{footer}_")
            if event.status == "interrupted":
                reply.notes.append("_(interrupted)_")
        elif isinstance(event, TurnStarted):
            reply.conversation_id = event.conversation_id
            reply.turn = event

    async def _push_loop(self, reply: _Reply, changed: asyncio.Event, finished: asyncio.Event) -> None:
        """Push the reply as it grows: one edit per message per interval, with all that came meanwhile."""
        while True:
            await changed.wait()
            changed.clear()
            if not finished.is_set():
                # Let more text arrive before editing; what comes meanwhile is sent in the same edit.
                last = max(reply.edited_at.values(), default=0.0)
                wait = last + self.settings.update_interval_s - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(finished.wait(), timeout=wait)
            await self._show(reply)
            if finished.is_set():
                await self._show(reply)  # the last events may have come in while the edit was under way
                return

    async def _show(self, reply: _Reply) -> None:
        """Bring the reply's messages on Slack up to date: edit what changed, post what is new."""
        if reply.failed:
            return
        limit, thinking = self.settings.max_message_chars, self.settings.thinking_text
        try:
            index = 0
            while index < len(parts := reply.parts(limit, thinking)):
                part = parts[index]
                if index >= len(reply.posted):
                    response = await self.client.chat_postMessage(
                        channel=reply.channel, thread_ts=reply.thread_ts, text=part, unfurl_links=False
                    )
                    reply.posted.append(str(response["ts"]))
                    reply.shown.append(part)
                    reply.edited_at[index] = time.monotonic()
                elif reply.shown[index] != part:
                    await self._turn(reply)
                    # The edit carries the reply as it is now, with whatever came while it waited.
                    parts = reply.parts(limit, thinking)
                    if index >= len(parts):
                        break
                    part = parts[index]
                    await self.client.chat_update(channel=reply.channel, ts=reply.posted[index], text=part)
                    reply.shown[index] = part
                    reply.edited_at[index] = time.monotonic()
                index += 1
        except (SlackApiError, SlackClientError, OSError, TimeoutError) as error:
            # Retries (429 Retry-After, 5xx, connection errors) are behind us: give up on this reply.
            reply.failed = True
            detail = error.response.get("error") if isinstance(error, SlackApiError) else type(error).__name__
            log.error(
                "slack: posting to %s failed (%s) in conversation %s",
                reply.channel,
                detail,
                reply.conversation_id,
            )

    async def _turn(self, reply: _Reply) -> None:
        """Wait until the workspace may take one more edit, or until the reply is cut short."""
        if reply.cut.is_set():
            return
        turn = asyncio.ensure_future(self.pace.take(reply.team))
        cut = asyncio.ensure_future(reply.cut.wait())
        try:
            await asyncio.wait({turn, cut}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            turn.cancel()
            cut.cancel()


def _team(body: Mapping[str, Any], event: Mapping[str, Any]) -> str:
    """The workspace the event belongs to: the scope of its conversation."""
    return str(body.get("team_id") or event.get("team") or "unknown")


def _deleted_ts(event: Mapping[str, Any]) -> str | None:
    """The ts of the message a `message` event says was deleted: `message_deleted`, or for a message
    with replies in its thread, `message_changed` to a tombstone ("This message was deleted.")."""
    if event.get("subtype") == "message_deleted":
        return event.get("deleted_ts")
    changed = event.get("message") or {}
    if event.get("subtype") == "message_changed" and changed.get("subtype") == "tombstone":
        return changed.get("ts")
    return None


def _ref(team: str, channel: str, ts: str) -> str:
    """A Slack message's id in the history: ts is unique only within a channel."""
    return f"{team}:{channel}:{ts}"


# Serving ----------------------------------------------------------------------------------


def http_app(adapter: SlackAdapter) -> web.Application:
    """The Events API endpoint as an aiohttp application (Slack posts events and commands here)."""

    async def handle(request: web.Request) -> web.Response:
        # Bolt verifies the signature and acks; the answer itself runs in a task after the ack.
        response = await adapter.app.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(response)

    application = web.Application()
    application.router.add_post(adapter.settings.http_path, handle)
    return application


async def serve(
    adapter: SlackAdapter, stop: asyncio.Event, ready: Callable[[str], None] | None = None
) -> None:
    """Serve Slack until `stop` is set, then stop accepting and let answers in flight finish."""
    settings = adapter.settings
    await adapter.start()
    if settings.mode == "http":
        runner = web.AppRunner(http_app(adapter), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        where = ", ".join(f"http://{host}:{port}{settings.http_path}" for host, port, *_ in runner.addresses)
        log.info("slack: listening for events on %s", where)
        if ready:
            ready(where)
        try:
            await stop.wait()
        finally:
            adapter.accepting = False
            await site.stop()
            await adapter.drain(settings.shutdown_timeout_s)
            await runner.cleanup()
        return

    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    handler = AsyncSocketModeHandler(adapter.app, adapter.credentials.app_token, web_client=adapter.client)
    await handler.connect_async()
    log.info("slack: connected in socket mode")
    if ready:
        ready("socket")
    try:
        await stop.wait()
    finally:
        adapter.accepting = False
        await handler.close_async()
        await adapter.drain(settings.shutdown_timeout_s)


def check(settings: Settings) -> None:
    """Raise ChinwagError when Slack cannot run here: a token its mode needs is not in the environment."""
    SlackCredentials.from_env(settings.slack.mode)


async def run(app: App, stop: asyncio.Event) -> None:
    """Run the Slack adapter on a started chinwag App until `stop` is set (the shape every adapter has)."""
    settings = app.settings.slack
    credentials = SlackCredentials.from_env(settings.mode)
    await serve(SlackAdapter(app.engine, app.history, settings, credentials), stop)
