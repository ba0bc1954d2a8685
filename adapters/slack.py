"""The Slack adapter: a slack-bolt AsyncApp that turns Slack events into `Incoming` and replies into posts.

Mentions in a channel are answered in a thread under the message; later messages in that thread
continue the conversation without a mention. A DM is one conversation (one per DM thread when
threads are used). Replies stream by editing the message at a pace Slack allows, split below the
message limit; `/chinwag` runs the engine's commands ephemerally; 👍/👎 on a reply are stored as
feedback. Scope = the workspace (team) id, so history and documents stay within one workspace.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
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

from adapters.inflight import RESERVE_S, ShutdownPlan, unless_stopped, within
from adapters.reply import ChatAdapter, ChatEngine, Place, Reply, Stream, Style
from adapters.slack_format import from_slack, to_mrkdwn
from adapters.slack_pace import Pace, open_pace
from adapters.slack_tasks import ReadError, SlackReader, Window, parse_window
from bot.app import App
from bot.errors import ChinwagError, TaskError
from bot.seams.history import ConversationKey, History
from bot.tasks.languages import flag_language, is_flag, language
from bot.types import Incoming, SourceMessage
from config import Settings, SlackSettings

log = logging.getLogger(__name__)

PLATFORM = "slack"
COMMAND = "/chinwag"
LIKE = {"+1", "thumbsup"}
DISLIKE = {"-1", "thumbsdown"}
# Message subtypes that are still a person talking; edits, deletions, joins and bots are not.
_SPOKEN_SUBTYPES = {None, "thread_broadcast", "file_share"}
# Slack's markup (mrkdwn) for a reply; the placeholder comes from the settings.
STYLE = Style(
    status="_{}_",
    remark="_{}_",
    sources="_{}_",
    tool="⚙ `{}`",
    warning=":warning: {}",
    tick="'",
    markup=to_mrkdwn,
)


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


@dataclass
class SlackThread(Place[str]):
    """Where a reply goes on Slack: posts in a channel or thread (known by their ts), edited at the
    workspace's pace."""

    client: AsyncWebClient
    pace: Pace
    team: str
    channel: str
    thread_ts: str | None

    failures = (SlackApiError, SlackClientError, aiohttp.ClientError, OSError, TimeoutError)

    @property
    def where(self) -> str:
        """The channel, for logs."""
        return self.channel

    async def post(self, text: str) -> str:
        """Post one more message in the thread; its ts."""
        response = await self.client.chat_postMessage(
            channel=self.channel, thread_ts=self.thread_ts, text=text, unfurl_links=False
        )
        return str(response["ts"])

    async def edit(self, message: str, text: str) -> str:
        """Change a posted message (chat.update)."""
        await self.client.chat_update(channel=self.channel, ts=message, text=text)
        return message

    def ref(self, message: str) -> str:
        """A posted message's id in the history."""
        return _ref(self.team, self.channel, message)

    async def ready(self) -> None:
        """Wait until the workspace may take one more edit."""
        await self.pace.take(self.team)

    def describe(self, error: Exception) -> str:
        """Slack's error code (and HTTP status), or the kind of failure."""
        if isinstance(error, SlackApiError):
            return f"{error.response.get('error')}, HTTP {error.response.status_code}"
        return type(error).__name__

    def retry_after(self, error: Exception) -> float | None:
        """429 (Slack's Retry-After), 5xx and network errors pass; other refusals stay."""
        if isinstance(error, SlackApiError):
            status = error.response.status_code
            if status == 429:
                return _retry_after(error.response.headers)
            return 0.0 if status >= 500 else None
        return None if isinstance(error, SlackClientError) else 0.0


class SlackAdapter(ChatAdapter):
    """Slack events in, engine turns out; one instance per process (one bot token, any number of teams)."""

    platform = PLATFORM

    def __init__(
        self,
        engine: ChatEngine,
        history: History,
        settings: SlackSettings,
        credentials: SlackCredentials,
        max_messages: int = 5000,
    ) -> None:
        super().__init__(engine, history)
        self.max_messages = max_messages  # the most messages one language task reads
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
        # The workspace's edit budget: this process's own, or shared by the replicas in Redis.
        self.pace = open_pace(settings.updates_per_minute, settings.redis_url)
        self.style = replace(STYLE, placeholder=settings.thinking_text)
        self.bot_user_id: str | None = None
        self.reader = SlackReader(self.client, None)  # language tasks read threads and channels
        self._register()

    # Wiring ---------------------------------------------------------------------------

    def _register(self) -> None:
        self.app.event("app_mention")(self._on_mention)
        self.app.event("message")(self._on_message)
        self.app.event("reaction_added")(self._on_reaction)
        self.app.event("reaction_removed")(self._on_reaction)
        self.app.command(COMMAND)(self._on_command)

    async def start(self) -> None:
        """Check the bot token (auth.test) and the shared edit budget, and learn the bot's own user id."""
        await self.pace.check()
        try:
            auth = await self.client.auth_test()
        except SlackApiError as error:
            status = error.response.status_code
            if status == 429 or status >= 500:
                failed = f"failed (auth.test): HTTP {status}, {error.response.get('error')}"
                raise ChinwagError(f"Slack's API at {self.settings.api_base_url} {failed}") from None
            raise ChinwagError(f"Slack refused the bot token: {error.response.get('error')}") from None
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as error:
            url = self.settings.api_base_url
            raise ChinwagError(f"Cannot reach Slack's API at {url} (auth.test): {_cause(error)}") from None
        self.bot_user_id = auth.get("user_id")
        self.reader = SlackReader(self.client, self.bot_user_id)
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
        if self._task_words(incoming.text) is not None:
            # "@chinwag summarize" (actions, translate fr, a team command): about this thread.
            self.spawn(self._task_in_thread(incoming, event, thread), incoming.message_id)
            return
        self.spawn(self._answer(incoming, thread), incoming.message_id)

    async def _on_message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        """A DM, or a message in a thread that is one of the bot's conversations (or a deletion)."""
        if gone := _deleted_ts(event):
            # Its answer stops and both leave the context; not in this handler (Slack's ack waits).
            self.spawn(self.deleted(_ref(_team(body, event), str(event.get("channel")), gone)))
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
        if is_flag(name) and item.get("type") == "message" and event.get("type") == "reaction_added":
            if (
                self.accepting
                and self.allowed(item.get("channel"), event.get("user"))
                and await self._claim(body)
            ):
                self.spawn(self._translate_flag(_team(body, event), name, item, str(event.get("user"))))
            return
        if name not in LIKE | DISLIKE or item.get("type") != "message":
            return
        if self.bot_user_id and event.get("item_user") not in (None, self.bot_user_id):
            return
        if not self.allowed(item.get("channel"), event.get("user")) or not await self._claim(body):
            return
        ref = _ref(_team(body, event), item["channel"], item["ts"])
        await self.rate(
            ref, str(event.get("user")), 1 if name in LIKE else -1, event.get("type") == "reaction_added"
        )

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
        if (task := self._task_words(words)) is not None:
            await self._task_command(command, task, respond)
            return
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
            latest = await self.engine.latest_conversation(PLATFORM, team, channel)
            if latest is None:
                await respond(
                    text=f"No conversation with chinwag in this channel yet: mention <@{self.bot_user_id}> "
                    f"to start one; `{COMMAND}` then acts on the latest.",
                    response_type="ephemeral",
                )
                return
            incoming = replace(incoming, conversation_id=latest.id, thread=latest.key.thread)
        reply = Reply(self.style)
        async with aclosing(self.engine.handle(incoming)) as events:
            async for event in events:
                reply.apply(event)
        text = reply.whole() if reply.finished else "No answer."
        try:
            await respond(text=text[:3000], response_type="ephemeral")
        except Exception:
            log.exception("slack: could not answer %s %s in %s", COMMAND, words.split()[0], channel)

    # Language tasks -------------------------------------------------------------------

    def _task_words(self, text: str) -> tuple[str, list[str]] | None:
        """(task, the words after it) when `text` asks for a language task, else None."""
        words = text.strip().split()
        if not words:
            return None
        task = self.engine.task_name(words[0].removeprefix("/"))
        return None if task is None else (task, words[1:])

    async def _task_in_thread(self, incoming: Incoming, event: Mapping[str, Any], thread: str) -> None:
        """`@chinwag summarize` (or another task) in a thread: the task reads the thread
        (conversations.replies), the request itself left out, and answers in it."""
        task, words = self._task_words(incoming.text) or ("", [])
        place = SlackThread(self.client, self.pace, incoming.scope, incoming.channel, thread)
        try:
            raw = await self.reader.thread(incoming.channel, thread, self.max_messages)
            if len(raw) > self.max_messages:
                raise ReadError(
                    f"This thread has more than {self.max_messages} messages: that is more than one "
                    f"task reads. Use `{COMMAND} {task} N messages` for the latest N."
                )
            source = await self.reader.source(incoming.scope, incoming.channel, raw, skip_ts=event.get("ts"))
        except (ReadError, SlackApiError) as error:
            await self._say(place, _read_failure(error))
            return
        if task == "translate":
            # `@chinwag translate fr` in a thread: the message the thread starts with.
            source = source[:1]
        text = "/" + " ".join([task, *words])
        await self._answer(replace(incoming, text=text, source=source, source_label="this thread"), thread)

    async def _task_command(
        self, command: Mapping[str, Any], task: tuple[str, list[str]], respond: Callable[..., Awaitable[Any]]
    ) -> None:
        """`/chinwag summarize [#channel] [24h|7d|N messages]` (actions, translate LANG [text], a team
        command): reads the channel's recent history, posts a header in the channel where it was
        asked, and answers in its thread (a conversation: follow-ups there continue it)."""
        team, channel, user = (
            str(command.get("team_id")),
            str(command.get("channel_id")),
            str(command.get("user_id")),
        )
        name, words = task
        usage = f"{COMMAND} {name} [#channel] [24h|7d|N messages]"
        arguments: list[str] = []
        source: tuple[SourceMessage, ...] | None = None
        label: str | None = None
        try:
            if name == "translate":
                if not words:
                    raise TaskError(
                        f"Usage: {COMMAND} translate LANG [text] (without text: the channel's last message)."
                    )
                language(words[0])  # an unknown one is refused here, before anything is posted
                arguments, words = words[:1], words[1:]
                window = Window(count=1)
            else:
                try:
                    window = parse_window(words)
                except ValueError as error:
                    raise TaskError(f"I don't understand {str(error)!r}: {usage}") from None
                arguments, words = (["bots"] if window.bots else []), []
            if not words:  # the channel's history, not text typed after the command
                where = window.channel or channel
                if where.startswith("#"):
                    where = await self.reader.channel_id(where)
                raw = await self.reader.channel(where, window, self.max_messages)
                if len(raw) > self.max_messages:
                    raise TaskError(
                        f"<#{where}> has more than {self.max_messages} messages in that window: "
                        "ask for a shorter one (24h, or a number of messages)."
                    )
                source = await self.reader.source(team, where, raw)
                label = window.label(f"<#{where}>")
                if not any(window.bots or not m.bot for m in source):
                    raise TaskError(f"Nothing to read: {label} has no messages from people.")
        except (TaskError, ReadError, SlackApiError) as error:
            await respond(text=_read_failure(error), response_type="ephemeral")
            return
        text = "/" + " ".join([name, *arguments, *words])
        header = f":memo: `{COMMAND} {name}` for <@{user}>" + (f" — {label}" if label else "")
        try:
            posted = await self.client.chat_postMessage(channel=channel, text=header)
        except SlackApiError as error:
            await respond(text=_read_failure(error), response_type="ephemeral")
            return
        thread = str(posted["ts"])
        incoming = Incoming(
            text=text, platform=PLATFORM, scope=team, channel=channel, thread=thread, user_id=user,
            source=source, source_label=label,
        )  # fmt: skip
        await self._answer(incoming, thread)

    async def _translate_flag(self, team: str, flag: str, item: Mapping[str, Any], user: str) -> None:
        """A flag reaction: the message's translation in a thread under it, once per message and
        language (a redelivered or repeated reaction finds the claim); a flag meaning no language
        gets one line, once."""
        channel, ts = str(item.get("channel")), str(item.get("ts"))
        try:
            language = flag_language(flag)
        except TaskError as error:
            if await self.history.claim_event(PLATFORM, f"translate:{team}:{channel}:{ts}:{flag}"):
                place = SlackThread(self.client, self.pace, team, channel, ts)
                await self._say(place, str(error))
            return
        if not await self.history.claim_event(PLATFORM, f"translate:{team}:{channel}:{ts}:{language.code}"):
            return
        try:
            found = await self.reader.message(channel, ts)
            if found is None:
                return
            source = await self.reader.source(team, channel, [found])
        except (ReadError, SlackApiError) as error:
            log.warning("slack: cannot translate a message in %s: %s", channel, _read_failure(error))
            return
        thread = str(found.get("thread_ts") or ts)
        # A conversation of its own: a translation does not make the thread one chinwag follows.
        incoming = Incoming(
            text=f"/translate {language.code}", platform=PLATFORM, scope=team, channel=channel,
            thread=f"translate:{ts}", user_id=user, source=source, source_label="a message",
        )  # fmt: skip
        await self._answer(incoming, thread)

    async def _say(self, place: SlackThread, text: str) -> None:
        """One line in a thread (what went wrong with a task); logged if Slack will not take it."""
        try:
            await place.post(text)
        except place.failures as error:
            log.warning("slack: could not post in %s: %s", place.channel, place.describe(error))

    # Answers --------------------------------------------------------------------------

    async def _answer(self, incoming: Incoming, thread_ts: str | None) -> None:
        """Run one turn and stream it into the thread, the placeholder first."""
        place = SlackThread(self.client, self.pace, incoming.scope, incoming.channel, thread_ts)
        limit, interval = self.settings.max_message_chars, self.settings.update_interval_s
        await self.answer(incoming, Stream(Reply(self.style), place, limit, interval))


def _read_failure(error: Exception) -> str:
    """What went wrong reading Slack, in one line for the user."""
    if isinstance(error, SlackApiError):
        data = error.response.data
        code = data.get("error") if isinstance(data, dict) else f"HTTP {error.response.status_code}"
        return f"Slack refused to let me read that ({code})."
    return str(error)


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


def _retry_after(headers: Mapping[str, Any]) -> float:
    """The seconds a 429's Retry-After asks for (0 when it names none)."""
    for name, value in headers.items():
        if name.lower() == "retry-after":
            text = value[0] if isinstance(value, list) else value
            try:
                return max(0.0, float(text))
            except ValueError:
                return 0.0
    return 0.0


def _cause(error: BaseException) -> str:
    """A network error in a few words (a timeout's text is empty)."""
    return str(error) or ("no answer in time" if isinstance(error, TimeoutError) else type(error).__name__)


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
    """Serve Slack until `stop` is set, then stop accepting and let answers in flight finish; the
    whole stop takes at most `shutdown_timeout_s`, even while Slack cannot be reached."""
    try:
        if not await unless_stopped(adapter.start(), stop):
            return
        adapter.follow_deletions()
        await _serve(adapter, stop, ready)
    finally:
        await adapter.unfollow_deletions()
        await adapter.pace.close()


async def _serve(adapter: SlackAdapter, stop: asyncio.Event, ready: Callable[[str], None] | None) -> None:
    """Take events (over HTTP or Socket Mode) until `stop` is set, then drain."""
    settings = adapter.settings
    if settings.mode == "http":
        # Slack's requests are acked in milliseconds: closing need not wait long for one.
        runner = web.AppRunner(http_app(adapter), access_log=None, shutdown_timeout=1.0)
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
            plan = ShutdownPlan(settings.shutdown_timeout_s)
            adapter.accepting = False
            await site.stop()
            await adapter.drain(plan)
            await within(runner.cleanup(), plan.left(plan.closed_by), "slack: closing the HTTP endpoint")
        return

    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    handler = AsyncSocketModeHandler(adapter.app, adapter.credentials.app_token, web_client=adapter.client)
    try:
        # slack_sdk retries a connection that fails for ever: a stop must not wait for it.
        if not await unless_stopped(handler.connect_async(), stop):
            return
        log.info("slack: connected in socket mode")
        if ready:
            ready("socket")
        await stop.wait()
    finally:
        plan = ShutdownPlan(settings.shutdown_timeout_s)
        adapter.accepting = False
        # Stop taking events first (answers in flight go on over the Web API); a connection being
        # retried is given up.
        closing = handler.close_async()
        await within(closing, RESERVE_S / 6, "slack: closing the Socket Mode connection")
        await adapter.drain(plan)


def check(settings: Settings) -> None:
    """Raise ChinwagError when Slack cannot run here: a token its mode needs is not in the
    environment, or a shared edit budget without the redis package or with a URL it refuses."""
    SlackCredentials.from_env(settings.slack.mode)
    open_pace(settings.slack.updates_per_minute, settings.slack.redis_url)  # connects only when used


async def run(app: App, stop: asyncio.Event) -> None:
    """Run the Slack adapter on a started chinwag App until `stop` is set (the shape every adapter has)."""
    settings = app.settings.slack
    credentials = SlackCredentials.from_env(settings.mode)
    adapter = SlackAdapter(app.engine, app.history, settings, credentials, app.settings.tasks.max_messages)
    await serve(adapter, stop)
