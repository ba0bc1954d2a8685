"""What language tasks read on Slack: a thread (conversations.replies) or a channel's recent history
(conversations.history), as `SourceMessage`s with their authors' names and permalinks; and the
words of a request (`summarize #ops 24h`, `actions 50 messages`, `translate fr`).

The engine does the task; this module only fetches and names. Reading stops one message past the
limit, so a 20,000-message channel costs a few pages, not a hundred, before it is refused.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack_format import from_slack
from adapters.taskwords import DEFAULT_SPAN_S, Window, parse_window
from bot.types import SourceMessage

# Message subtypes that are someone talking (bots included: they are marked, not dropped).
_TALK = {None, "thread_broadcast", "file_share", "bot_message", "me_message"}
_MENTION = re.compile(r"<@([UW]\w+)(?:\|[^>]*)?>")
_PAGE = 200


__all__ = ["ReadError", "SlackReader", "Window", "parse_window"]


class ReadError(Exception):
    """A thread or channel the bot cannot read; `str()` is one line for the user."""


class SlackReader:
    """Reads threads and channel windows through the Web API, naming people once per process."""

    def __init__(self, client: AsyncWebClient, bot_user_id: str | None) -> None:
        self.client = client
        self.bot_user_id = bot_user_id
        self.names: dict[str, str] = {}
        self.workspace_url: dict[str, str] = {}  # team → "https://acme.slack.com"

    async def channel_id(self, name: str) -> str:
        """The id of `#name` (conversations.list); ReadError if there is none the bot can see."""
        cursor: str | None = None
        wanted = name.lstrip("#").lower()
        while True:
            response = await self._call(
                "conversations_list",
                f"#{wanted}",
                cursor=cursor,
                limit=1000,
                types="public_channel,private_channel",
            )
            for channel in response.get("channels") or []:
                if str(channel.get("name", "")).lower() == wanted:
                    return str(channel["id"])
            cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                raise ReadError(
                    f"I can't find #{wanted}: check the name, or invite me there with /invite @chinwag."
                )

    async def thread(self, channel: str, thread_ts: str, limit: int) -> list[dict[str, Any]]:
        """The thread's messages, parent first; at most `limit + 1` (one more says: too many)."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while len(found) <= limit:
            response = await self._call(
                "conversations_replies", channel, channel=channel, ts=thread_ts, cursor=cursor, limit=_PAGE
            )
            found += response.get("messages") or []
            cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                break
        return found[: limit + 1]

    async def channel(self, channel: str, window: Window, limit: int) -> list[dict[str, Any]]:
        """The channel's top-level messages in `window`, oldest first; at most `limit + 1`."""
        wanted = limit + 1 if window.count is None else min(window.count, limit + 1)
        oldest = None
        if window.count is None or window.seconds is not None:
            oldest = f"{time.time() - (window.seconds or DEFAULT_SPAN_S):.6f}"
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while len(found) < wanted:
            response = await self._call(
                "conversations_history", channel, channel=channel, oldest=oldest, cursor=cursor, limit=_PAGE
            )
            found += [m for m in response.get("messages") or [] if m.get("subtype") in _TALK]
            cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                break
        found = found[:wanted]
        found.reverse()
        return found

    async def message(self, channel: str, ts: str) -> dict[str, Any] | None:
        """One message, top-level or in a thread; None if it is gone."""
        response = await self._call(
            "conversations_history", channel, channel=channel, latest=ts, oldest=ts, inclusive=True, limit=1
        )
        for found in response.get("messages") or []:
            if found.get("ts") == ts:
                return dict(found)
        try:
            replies = await self._call("conversations_replies", channel, channel=channel, ts=ts, limit=_PAGE)
        except ReadError:
            return None
        return next((dict(m) for m in replies.get("messages") or [] if m.get("ts") == ts), None)

    async def source(
        self, team: str, channel: str, raw: Sequence[Mapping[str, Any]], skip_ts: str | None = None
    ) -> tuple[SourceMessage, ...]:
        """The messages as a task reads them: people by name, bots and chinwag marked, permalinks."""
        kept = [m for m in raw if m.get("subtype") in _TALK and m.get("ts") != skip_ts]
        people = {str(m["user"]) for m in kept if m.get("user") and not m.get("bot_id")}
        for m in kept:
            people |= set(_MENTION.findall(str(m.get("text") or "")))
        await self._learn(people)
        base = await self._workspace(team, channel, kept[0]["ts"]) if kept else None
        out = []
        for m in kept:
            user = str(m.get("user") or "")
            own = bool(self.bot_user_id) and user == self.bot_user_id
            bot = own or bool(m.get("bot_id")) or m.get("subtype") == "bot_message"
            if own:
                author = "chinwag"
            elif bot:
                author = str(m.get("username") or (m.get("bot_profile") or {}).get("name") or "a bot")
            else:
                author = self.names.get(user, "someone")
            text = _MENTION.sub(
                lambda match: "@" + self.names.get(match.group(1), "someone"), str(m.get("text") or "")
            )
            ts = str(m["ts"])
            link = None
            if base:
                link = f"{base}/archives/{channel}/p{ts.replace('.', '')}"
                if m.get("thread_ts") and m.get("thread_ts") != ts:
                    link += f"?thread_ts={m['thread_ts']}&cid={channel}"
            out.append(
                SourceMessage(
                    from_slack(text, self.bot_user_id),
                    author=author,
                    id=f"{team}:{channel}:{ts}",
                    timestamp=datetime.fromtimestamp(float(ts), UTC),
                    link=link,
                    bot=bot,
                )
            )
        return tuple(out)

    async def _learn(self, users: set[str]) -> None:
        for user in users - self.names.keys():
            try:
                response = await self.client.users_info(user=user)
            except SlackApiError:
                continue  # shown as "someone": a name we cannot learn is never an id
            info = response.get("user") or {}
            profile = info.get("profile") or {}
            name = (
                profile.get("display_name")
                or profile.get("real_name")
                or info.get("real_name")
                or info.get("name")
            )
            if name:
                self.names[user] = str(name)

    async def _workspace(self, team: str, channel: str, ts: str) -> str | None:
        """The workspace's web address, learnt from one chat.getPermalink (then built locally)."""
        if team not in self.workspace_url:
            try:
                response = await self.client.chat_getPermalink(channel=channel, message_ts=ts)
            except SlackApiError:
                return None
            link = str(response.get("permalink") or "")
            if "/archives/" not in link:
                return None
            self.workspace_url[team] = link.split("/archives/")[0]
        return self.workspace_url[team]

    async def _call(self, method: str, where: str, **args: Any) -> Any:
        try:
            return await getattr(self.client, method)(**{k: v for k, v in args.items() if v is not None})
        except SlackApiError as error:
            code = error.response.get("error")
            shown = where if where.startswith("#") else f"<#{where}>"
            if code in ("not_in_channel", "channel_not_found", "missing_scope", "thread_not_found"):
                what = {
                    "not_in_channel": f"I'm not in {shown}: invite me with /invite @chinwag, then ask again.",
                    "channel_not_found": f"I can't see {shown}: invite me there with /invite @chinwag.",
                    "missing_scope": "I lack the permission to read that history (channels:history, "
                    "groups:history): reinstall the app with those scopes.",
                    "thread_not_found": "That thread is gone.",
                }[code]
                raise ReadError(what) from None
            raise
