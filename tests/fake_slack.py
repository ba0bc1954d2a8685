"""A fake Slack on 127.0.0.1: the Web API methods chinwag calls, response URLs, a Socket Mode websocket.

Every call is recorded with its arguments. `fail_once` answers one call of a method with an HTTP
status (429 with Retry-After, 500…), `fail_next` the next several; `errors` makes a method answer
`ok: false` every time. `refuse_sockets` refuses Socket Mode connections; `drop_sockets` ends the
open ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

BOT_USER = "UBOT"
BOT_ID = "BBOT"
TEAM = "T1"


@dataclass
class Call:
    """One Web API call as the fake received it."""

    method: str
    args: dict[str, Any]
    at: float
    status: int = 200


@dataclass
class FakeSlack:
    """The fake server; `url` is set once started."""

    url: str = ""
    calls: list[Call] = field(default_factory=list)
    responses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)
    fail_once: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)
    failing: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    refuse_sockets: bool = False
    errors: dict[str, str] = field(default_factory=dict)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # ts -> the message as it is now
    # What people wrote, per channel (each message: ts, user, text, thread_ts?, bot_id?), read back
    # by conversations.history / .replies together with the bot's own posts; people's names
    # (users.info); channel names (conversations.list); channels the bot is not in.
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    channels: dict[str, str] = field(default_factory=dict)
    not_in: set[str] = field(default_factory=set)
    page_size: int = 200
    _ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    _sockets: list[web.WebSocketResponse] = field(default_factory=list)
    _connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> FakeSlack:
        """Listen on an ephemeral loopback port."""
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)  # slack_sdk reads history with GET
        app.router.add_post("/response/{id}", self._response)
        app.router.add_get("/ws", self._ws)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def close(self) -> None:
        """Close sockets and stop listening."""
        for socket in list(self._sockets):
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        """The Web API base URL (slack.api_base_url)."""
        return self.url + "/api/"

    # The Web API ------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        raw = await request.text()
        if request.method == "GET":
            args: dict[str, Any] = dict(request.query)
        elif request.content_type == "application/json":
            args = json.loads(raw or "{}")
        else:
            args = dict(parse_qsl(raw))
        if method in self.fail_once or self.failing.get(method):
            status, headers = (
                self.fail_once.pop(method) if method in self.fail_once else self.failing[method].pop(0)
            )
            self.calls.append(Call(method, args, time.monotonic(), status))
            return web.json_response({"ok": False, "error": "ratelimited"}, status=status, headers=headers)
        self.calls.append(Call(method, args, time.monotonic()))
        if method in self.errors:
            return web.json_response({"ok": False, "error": self.errors[method]})
        return web.json_response(self._answer(method, args))

    def _answer(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {"ok": True, "user_id": BOT_USER, "user": "chinwag", "team_id": TEAM, "bot_id": BOT_ID}
        if method == "apps.connections.open":
            return {"ok": True, "url": self.url.replace("http://", "ws://") + "/ws"}
        if method == "chat.postMessage":
            ts = f"1700000{next(self._ts):03d}.000100"
            self.messages[ts] = {**args, "ts": ts}
            return {
                "ok": True,
                "channel": args.get("channel"),
                "ts": ts,
                "message": {"text": args.get("text")},
            }
        if method == "chat.update":
            ts = str(args.get("ts"))
            if ts not in self.messages:
                return {"ok": False, "error": "message_not_found"}
            self.messages[ts] = {**self.messages[ts], "text": args.get("text")}
            return {"ok": True, "channel": args.get("channel"), "ts": ts, "text": args.get("text")}
        if method in ("conversations.history", "conversations.replies"):
            return self._read(method, args)
        if method == "chat.getPermalink":
            channel, ts = str(args.get("channel")), str(args.get("message_ts"))
            link = f"https://fake.slack.com/archives/{channel}/p{ts.replace('.', '')}"
            return {"ok": True, "channel": channel, "permalink": link}
        if method == "users.info":
            user = str(args.get("user"))
            if user not in self.users:
                return {"ok": False, "error": "user_not_found"}
            name = self.users[user]
            profile = {"display_name": name, "real_name": name}
            return {
                "ok": True,
                "user": {"id": user, "name": name.lower(), "real_name": name, "profile": profile},
            }
        if method == "conversations.list":
            listed = [
                {"id": cid, "name": name, "is_member": cid not in self.not_in}
                for cid, name in self.channels.items()
            ]
            return {"ok": True, "channels": listed, "response_metadata": {"next_cursor": ""}}
        return {"ok": True}

    def channel_messages(self, channel: str) -> list[dict[str, Any]]:
        """Everything in a channel, oldest first: people's messages and the bot's posts."""
        posted = [
            {
                "ts": m["ts"],
                "user": BOT_USER,
                "bot_id": BOT_ID,
                "text": m.get("text", ""),
                "thread_ts": m.get("thread_ts"),
            }
            for m in self.messages.values()
            if m.get("channel") == channel
        ]
        return sorted([*self.history.get(channel, []), *posted], key=lambda m: float(m["ts"]))

    def _read(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        """conversations.history (top-level messages, newest first, oldest/latest/inclusive) and
        conversations.replies (a thread, parent first), paged by cursor as Slack does."""
        channel = str(args.get("channel"))
        if channel not in self.history and channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        if channel in self.not_in:
            return {"ok": False, "error": "not_in_channel"}
        everything = self.channel_messages(channel)
        if method == "conversations.history":
            oldest, latest = float(args.get("oldest") or 0), float(args.get("latest") or 1e12)
            inclusive = str(args.get("inclusive", "")).lower() in ("1", "true")

            def within(ts: float) -> bool:
                return oldest <= ts <= latest if inclusive else oldest < ts < latest

            top = [m for m in everything if not m.get("thread_ts") or m.get("thread_ts") == m["ts"]]
            found = [m for m in top if within(float(m["ts"]))]
            found.reverse()
        else:
            ts = str(args.get("ts"))
            root = next((m.get("thread_ts") or m["ts"] for m in everything if m["ts"] == ts), None)
            if root is None:
                return {"ok": False, "error": "thread_not_found"}
            found = [m for m in everything if m["ts"] == root or m.get("thread_ts") == root]
        start = int(args.get("cursor") or 0)
        size = min(int(args.get("limit") or 100), self.page_size)
        page = found[start : start + size]
        more = start + size < len(found)
        clean = [{k: v for k, v in m.items() if v is not None} | {"type": "message"} for m in page]
        return {
            "ok": True,
            "messages": clean,
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + size) if more else ""},
        }

    async def _response(self, request: web.Request) -> web.Response:
        self.responses.append((request.match_info["id"], await request.json()))
        return web.Response(text="ok")

    def fail_next(self, method: str, times: int, status: int = 429, retry_after: str = "0") -> None:
        """Answer the next `times` calls of `method` with `status` (a 429 with `retry_after`)."""
        headers = {"Retry-After": retry_after} if status == 429 else {}
        self.failing.setdefault(method, []).extend([(status, headers)] * times)

    # Queries ------------------------------------------------------------------------------

    def called(self, method: str) -> list[Call]:
        """The calls of one method, in order."""
        return [call for call in self.calls if call.method == method]

    def web_calls(self) -> list[Call]:
        """Every call but auth.test (which the app makes when it starts)."""
        return [call for call in self.calls if call.method != "auth.test"]

    def thread(self, channel: str, thread_ts: str | None) -> list[dict[str, Any]]:
        """The bot's messages in a thread (or at the top of a channel), as they read now."""
        return [
            m
            for m in self.messages.values()
            if m.get("channel") == channel and (m.get("thread_ts") or None) == thread_ts
        ]

    async def wait_for(self, condition: Callable[[], Any], within: float = 10.0) -> Any:
        """Poll until `condition()` is truthy; its value, or AssertionError after `within` seconds."""
        deadline = time.monotonic() + within
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting; calls: {[c.method for c in self.calls]}")
            await asyncio.sleep(0.01)

    # Socket Mode ---------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_sockets:
            self.calls.append(Call("websocket", {}, time.monotonic(), 503))
            return web.Response(status=503, text="refused")
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        self._sockets.append(socket)
        await socket.send_json({"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A1"}})
        self._connected.set()
        try:
            async for message in socket:
                if message.type == WSMsgType.TEXT:
                    self.acks.append(json.loads(message.data))
        finally:
            self._sockets.remove(socket)
        return socket

    @property
    def sockets_open(self) -> int:
        """Socket Mode connections open now."""
        return len(self._sockets)

    async def drop_sockets(self) -> None:
        """End every open Socket Mode connection (the app then reconnects)."""
        for socket in list(self._sockets):
            await socket.close()

    async def connected(self) -> None:
        """Wait until the app has opened the websocket."""
        await asyncio.wait_for(self._connected.wait(), 10)

    async def send_envelope(self, kind: str, payload: dict[str, Any], retry_attempt: int = 0) -> str:
        """Send one Socket Mode envelope; its envelope_id."""
        envelope_id = f"env-{next(self._ts)}"
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
        }
        await self._sockets[-1].send_json(envelope)
        return envelope_id


def sign(secret: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    """The headers of a correctly signed Slack request: v0=HMAC-SHA256 of `v0:{ts}:{body}`."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{stamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"}


def event_body(event: dict[str, Any], *, event_id: str, team: str = TEAM) -> dict[str, Any]:
    """An Events API envelope around one event."""
    return {
        "token": "legacy-unused",
        "team_id": team,
        "api_app_id": "A1",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()),
        "authorizations": [{"team_id": team, "user_id": BOT_USER, "is_bot": True}],
    }
