"""A fake Discord for adapter tests: the gateway websocket and the REST routes the bot uses, on 127.0.0.1.

Real discord.py talks to it (pointed here by `discord.api_base_url` / `discord.gateway_url`). It
records every REST request, keeps the messages it was sent and edited, and lets a test dispatch
gateway events, drop the gateway connection, refuse new ones or keep them silent, or answer the
next edits with 429. Connections that IDENTIFY with a shard ([id, count]) get the guilds of their
shard only, and a guild's events go to its shard ((guild_id >> 22) % count; DMs to shard 0), as
Discord does: several processes (replicas) can split the guilds between them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

BOT_ID = 900_000_000_000_000_001
APP_ID = 900_000_000_000_000_002
OWNER_ID = 900_000_000_000_000_003
TIMESTAMP = "2026-01-01T00:00:00+00:00"
DISCORD_EPOCH_MS = 1_420_070_400_000


def user_payload(user_id: int, name: str, bot: bool = False) -> dict[str, Any]:
    """A Discord user object."""
    return {
        "id": str(user_id),
        "username": name,
        "discriminator": "0",
        "global_name": name,
        "avatar": None,
        "bot": bot,
    }


def message_payload(
    mid: int,
    channel_id: int,
    author: dict[str, Any],
    content: str,
    *,
    mentions: list[dict[str, Any]] | None = None,
    embeds: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A message object as Discord sends it (the fields discord.py reads)."""
    return {
        "id": str(mid),
        "channel_id": str(channel_id),
        "author": author,
        "content": content,
        "timestamp": TIMESTAMP,
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": mentions or [],
        "mention_roles": [],
        "attachments": [],
        "embeds": embeds or [],
        "pinned": False,
        "type": 0,
    }


@dataclass
class Recorded:
    """One REST request the bot made."""

    method: str
    path: str
    body: Any


@dataclass
class FakeDiscord:
    """The fake server: start() it, point discord.py at `api_base_url` and `gateway_url`."""

    guilds: dict[int, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    threads: dict[int, dict[str, Any]] = field(default_factory=dict)
    interactions: dict[str, dict[str, Any]] = field(default_factory=dict)
    content_intent: bool = (
        True  # False: people's text comes back blank, as Discord sends it without the intent
    )
    rate_limit_edits: int = 0  # answer this many message edits with 429 first
    failing_edits: int = 0  # then this many with 503
    fail_posts: int = 0  # refuse this many new messages with 403 (not retried)
    retry_after: float = 0.05
    identified: int = 0
    gateway_tries: int = 0
    refuse_gateway: bool = False  # answer gateway connections with 503
    silent_gateway: bool = False  # accept gateway connections and never say hello
    resumed: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1_000_000_000_000_000_000))
    _ws: web.WebSocketResponse | None = None  # the latest connection without a shard
    _shards: dict[int, tuple[web.WebSocketResponse, int]] = field(default_factory=dict)  # id -> (ws, count)
    _seq: int = 0
    _runner: web.AppRunner | None = None
    port: int = 0

    # Lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on an ephemeral port of 127.0.0.1."""
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Close the gateway connections and the server."""
        for ws in [self._ws, *(ws for ws, _ in self._shards.values())]:
            if ws is not None:
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base_url(self) -> str:
        """What discord.api_base_url is set to."""
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        """What discord.gateway_url is set to."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    def snowflake(self) -> int:
        """A fresh id."""
        return next(self._ids)

    def add_guild(self, guild_id: int, channel_ids: list[int], name: str = "guild") -> None:
        """A guild the bot is in, with text channels."""
        channels = [
            {"id": str(c), "type": 0, "name": f"chan-{c}", "position": n, "permission_overwrites": []}
            for n, c in enumerate(channel_ids)
        ]
        self.guilds[guild_id] = {"id": str(guild_id), "name": name, "channels": channels}

    async def wait_for(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Wait until `predicate()` holds (checked on every request and gateway message)."""

        async def check() -> None:
            async with self.changed:
                await self.changed.wait_for(predicate)

        await asyncio.wait_for(check(), within)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    # Gateway ---------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        self.gateway_tries += 1
        await self._notify()
        if self.refuse_gateway:
            return web.Response(status=503, text="unavailable")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if self.silent_gateway:
            async for _ in ws:
                pass
            return ws
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": 45_000}, "s": None, "t": None})
        shard: tuple[int, int] | None = None
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            op = data["op"]
            if op == 1:
                await ws.send_json({"op": 11, "d": None, "s": None, "t": None})
            elif op in (2, 6):
                if op == 2:
                    # IDENTIFY: the shard it asks for (discord.py sends none unless sharded).
                    self.identified += 1
                    asked = data["d"].get("shard")
                    shard = (int(asked[0]), int(asked[1])) if asked else None
                else:
                    # RESUME names the session, which names the shard (see _ready).
                    parts = str(data["d"].get("session_id", "")).split("-")[2:]
                    shard = (int(parts[0]), int(parts[1])) if len(parts) == 2 else None
                self._open(ws, shard)
                if op == 2:
                    guilds = [g for g in self.guilds.values() if self._in_shard(int(g["id"]), shard)]
                    await self._send(ws, "READY", self._ready(guilds, shard))
                    for guild in guilds:
                        await self._send(ws, "GUILD_CREATE", self._guild_create(guild))
                else:
                    self.resumed += 1
                    await self._send(ws, "RESUMED", {})
            await self._notify()
        if self._ws is ws:
            self._ws = None
        if shard is not None and self._shards.get(shard[0], (None, 0))[0] is ws:
            del self._shards[shard[0]]
        return ws

    def _open(self, ws: web.WebSocketResponse, shard: tuple[int, int] | None) -> None:
        """Route events to this connection: its shard's, or all of them (no shard)."""
        if shard is None:
            self._ws = ws
        else:
            self._shards[shard[0]] = (ws, shard[1])

    @staticmethod
    def _in_shard(guild_id: int | None, shard: tuple[int, int] | None) -> bool:
        """Whether a guild's events (a DM's: guild None) go to `shard` (None: an unsharded connection)."""
        if shard is None:
            return True
        shard_id, count = shard
        return (guild_id >> 22) % count == shard_id if guild_id is not None else shard_id == 0

    def _ready(self, guilds: list[dict[str, Any]], shard: tuple[int, int] | None) -> dict[str, Any]:
        ready: dict[str, Any] = {
            "v": 10,
            "user": user_payload(BOT_ID, "chinwag", bot=True),
            "guilds": [{"id": g["id"], "unavailable": True} for g in guilds],
            "session_id": "fake-session" + (f"-{shard[0]}-{shard[1]}" if shard else ""),
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(APP_ID), "flags": 0},
        }
        if shard is not None:
            ready["shard"] = list(shard)
        return ready

    def shard_of(self, guild_id: int | None) -> int | None:
        """The connected shard a guild's events go to (None: the unsharded connection takes all)."""
        for shard_id, (_, count) in self._shards.items():
            if self._in_shard(guild_id, (shard_id, count)):
                return shard_id
        return None

    def _target(self, data: dict[str, Any], shard: int | None) -> web.WebSocketResponse | None:
        """The connection an event goes to: `shard`'s if named, else its guild's shard's, else the
        unsharded connection."""
        if shard is None and self._shards:
            guild = data.get("guild_id")
            shard = self.shard_of(int(guild) if guild is not None else None)
        if shard is not None:
            found = self._shards.get(shard)
            return found[0] if found is not None else None
        return self._ws

    def _guild_create(self, guild: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": guild["id"],
            "name": guild["name"],
            "icon": None,
            "owner_id": str(OWNER_ID),
            "roles": [
                {"id": str(r), "name": f"role-{r}", "permissions": "0", "position": n}
                for n, r in enumerate([int(guild["id"]), *guild.get("roles", [])])
            ],
            "emojis": [],
            "stickers": [],
            "features": [],
            "channels": guild["channels"],
            "threads": [t for t in self.threads.values() if t["guild_id"] == guild["id"]],
            "members": [],
            "member_count": 2,
            "large": False,
            "unavailable": False,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "nsfw_level": 0,
            "system_channel_flags": 0,
        }

    async def _send(self, ws: web.WebSocketResponse, event: str, data: dict[str, Any]) -> None:
        self._seq += 1
        await ws.send_json({"op": 0, "t": event, "s": self._seq, "d": data})

    async def connected(self, within: float = 10.0, shards: int = 0) -> None:
        """Wait until a gateway connection is open (with `shards`: that many sharded ones)."""
        if shards:
            await self.wait_for(lambda: len(self._shards) >= shards, within)
        else:
            await self.wait_for(lambda: self._ws is not None and not self._ws.closed, within)

    async def dispatch(self, event: str, data: dict[str, Any], shard: int | None = None) -> None:
        """Send a DISPATCH to the bot: to the connection of `shard` if named, else to the one the
        event's guild belongs to (a redelivery to another shard names it)."""

        def target() -> web.WebSocketResponse | None:
            ws = self._target(data, shard)
            return ws if ws is not None and not ws.closed else None

        await self.wait_for(lambda: target() is not None)
        ws = target()
        assert ws is not None
        await self._send(ws, event, data)

    async def drop_gateway(self, code: int = 4000) -> None:
        """Close the gateway websocket with a resumable code: discord.py reconnects and RESUMEs."""
        if self._ws is not None:
            ws, self._ws = self._ws, None
            await ws.close(code=code)

    # Events a person causes ------------------------------------------------------------

    async def user_says(
        self,
        text: str,
        *,
        channel_id: int,
        guild_id: int | None = None,
        user_id: int = 42,
        mention: bool = False,
        bot: bool = False,
        roles: list[int] | None = None,
        message_id: int | None = None,
        shard: int | None = None,
    ) -> dict[str, Any]:
        """A person posts a message (MESSAGE_CREATE, to `shard`'s connection if named); its payload."""
        mid = message_id or self.snowflake()
        author = user_payload(user_id, f"user{user_id}", bot=bot)
        payload = message_payload(
            mid,
            channel_id,
            author,
            (f"<@{BOT_ID}> " + text) if mention else text,
            mentions=[user_payload(BOT_ID, "chinwag", bot=True)] if mention else [],
        )
        if guild_id is not None:
            payload["guild_id"] = str(guild_id)
            payload["member"] = {
                "roles": [str(r) for r in roles or []],
                "joined_at": TIMESTAMP,
                "deaf": False,
                "mute": False,
                "flags": 0,
            }
        self.messages[mid] = payload
        await self.dispatch("MESSAGE_CREATE", payload, shard)
        return payload

    def said_earlier(
        self,
        text: str,
        *,
        channel_id: int,
        guild_id: int,
        user_id: int = 42,
        name: str | None = None,
        bot: bool = False,
        seconds_ago: float = 60.0,
    ) -> dict[str, Any]:
        """A message already in a channel's history (no gateway event): what REST history returns.
        Its id is a snowflake of its time, as Discord's are (discord.py reads the time from it)."""
        stamp_ms = int((time.time() - seconds_ago) * 1000) - DISCORD_EPOCH_MS
        mid = (stamp_ms << 22) | (next(self._ids) & 0x3FFFFF)
        payload = message_payload(
            mid, channel_id, user_payload(user_id, name or f"user{user_id}", bot=bot), text
        )
        payload["guild_id"] = str(guild_id)
        self.messages[mid] = payload
        return payload

    def _as_read(self, message: dict[str, Any]) -> dict[str, Any]:
        """A message as the bot gets it over REST: without the intent, people's text is blank."""
        mine = message["author"]["id"] == str(BOT_ID)
        mentioned = any(u["id"] == str(BOT_ID) for u in message.get("mentions", []))
        if self.content_intent or mine or mentioned:
            return message
        return {**message, "content": "", "embeds": [], "attachments": []}

    async def redeliver(self, payload: dict[str, Any], shard: int) -> None:
        """Send a MESSAGE_CREATE again, to `shard`'s connection (another replica's, when sharded)."""
        await self.dispatch("MESSAGE_CREATE", payload, shard)

    async def user_deletes(self, message: dict[str, Any]) -> None:
        """A person deletes their message (MESSAGE_DELETE)."""
        self.messages.pop(int(message["id"]), None)
        data = {"id": message["id"], "channel_id": message["channel_id"]}
        if "guild_id" in message:
            data["guild_id"] = message["guild_id"]
        await self.dispatch("MESSAGE_DELETE", data)

    async def react(
        self,
        emoji: str,
        *,
        message_id: int,
        channel_id: int,
        guild_id: int | None = None,
        user_id: int = 42,
        removed: bool = False,
    ) -> None:
        """A person adds a reaction (MESSAGE_REACTION_ADD), or takes it back (MESSAGE_REACTION_REMOVE)."""
        data: dict[str, Any] = {
            "user_id": str(user_id),
            "channel_id": str(channel_id),
            "message_id": str(message_id),
            "emoji": {"id": None, "name": emoji},
            "type": 0,
            "burst": False,
        }
        if guild_id is not None:
            data["guild_id"] = str(guild_id)
            if not removed:
                data["member"] = {
                    "user": user_payload(user_id, f"user{user_id}"),
                    "roles": [],
                    "joined_at": TIMESTAMP,
                    "deaf": False,
                    "mute": False,
                    "flags": 0,
                }
        await self.dispatch("MESSAGE_REACTION_REMOVE" if removed else "MESSAGE_REACTION_ADD", data)

    async def slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        channel_id: int,
        guild_id: int | None = None,
        user_id: int = 42,
        roles: list[int] | None = None,
    ) -> dict[str, Any]:
        """A person runs an application command (INTERACTION_CREATE); returns the interaction."""
        iid = self.snowflake()
        data: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(APP_ID),
            "type": 2,
            "token": f"itoken-{iid}",
            "version": 1,
            "channel_id": str(channel_id),
            "channel": {"id": str(channel_id), "type": 0 if guild_id else 1},
            "app_permissions": "0",
            "locale": "en-US",
            "attachment_size_limit": 8_000_000,
            "data": {
                "id": str(self.snowflake()),
                "name": name,
                "type": 1,
                "options": [{"name": k, "type": 3, "value": v} for k, v in (options or {}).items()],
            },
        }
        user = user_payload(user_id, f"user{user_id}")
        if guild_id is not None:
            data["guild_id"] = str(guild_id)
            data["channel"]["guild_id"] = str(guild_id)
            data["member"] = {
                "user": user,
                "roles": [str(r) for r in roles or []],
                "joined_at": TIMESTAMP,
                "deaf": False,
                "mute": False,
                "flags": 0,
                "permissions": "0",
            }
        else:
            data["user"] = user
        self.interactions[data["token"]] = data
        await self.dispatch("INTERACTION_CREATE", data)
        return data

    # REST ------------------------------------------------------------------------------

    def sent(self, method: str | None = None, contains: str = "") -> list[Recorded]:
        """The recorded requests, filtered by method and a path fragment."""
        return [r for r in self.requests if (method is None or r.method == method) and contains in r.path]

    def bot_messages(self, channel_id: int | None = None) -> list[dict[str, Any]]:
        """Messages the bot posted (as they are now, edits applied), oldest first."""
        return [
            m
            for m in self.messages.values()
            if m["author"]["id"] == str(BOT_ID) and (channel_id is None or m["channel_id"] == str(channel_id))
        ]

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        self.requests.append(Recorded(request.method, path, body))
        try:
            return await self._route(request.method, path.split("/")[1:], body, request.query)
        finally:
            await self._notify()

    async def _route(
        self, method: str, parts: list[str], body: Any, query: Mapping[str, str]
    ) -> web.StreamResponse:
        match method, parts:
            case "GET", ["users", "@me"]:
                return _json(user_payload(BOT_ID, "chinwag", bot=True))
            case "GET", ["oauth2", "applications", "@me"] | ["applications", "@me"]:
                return _json(
                    {
                        "id": str(APP_ID),
                        "name": "chinwag",
                        "description": "",
                        "icon": None,
                        "bot_public": True,
                        "bot_require_code_grant": False,
                        "owner": user_payload(OWNER_ID, "owner"),
                        "verify_key": "00",
                        "flags": 0,
                    }
                )
            case "PUT", ["applications", _, "commands"]:
                return _json(
                    [{**c, "id": str(self.snowflake()), "application_id": str(APP_ID)} for c in body]
                )
            case "POST", ["channels", channel, "typing"]:
                return web.Response(status=204)
            case "POST", ["channels", channel, "messages"]:
                if self.fail_posts > 0:
                    self.fail_posts -= 1
                    return _json({"message": "Missing Permissions", "code": 50013}, status=403)
                return _json(self._new_message(int(channel), body))
            case "PATCH", ["channels", channel, "messages", mid]:
                if self.rate_limit_edits > 0:
                    self.rate_limit_edits -= 1
                    return _json(
                        {
                            "message": "You are being rate limited.",
                            "retry_after": self.retry_after,
                            "global": False,
                        },
                        status=429,
                        headers={"Via": "1.1 google"},
                    )
                if self.failing_edits > 0:
                    self.failing_edits -= 1
                    return _json({"message": "Service Unavailable", "code": 0}, status=503)
                message = self.messages[int(mid)]
                message.update({k: v for k, v in body.items() if k in ("content", "embeds")})
                message["edited_timestamp"] = TIMESTAMP
                return _json(message)
            case "GET", ["channels", channel, "messages"]:
                return _json(self._history(int(channel), query))
            case "GET", ["channels", channel, "messages", mid]:
                found = self.messages.get(int(mid))
                if found is None or found["channel_id"] != channel:
                    return _json({"message": "Unknown Message", "code": 10008}, status=404)
                return _json(self._as_read(found))
            case "POST", ["channels", channel, "messages", mid, "threads"]:
                return _json(await self._new_thread(int(channel), int(mid), body))
            case "POST", ["interactions", iid, token, "callback"]:
                return _json(self._callback(iid, token, body))
            case "POST", ["webhooks", _, token]:
                return _json(self._new_message(_interaction_channel(self, token), body, token=token))
            case "PATCH", ["webhooks", _, token, "messages", mid]:
                return _json(self._edit_webhook(token, mid, body))
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    def _history(self, channel_id: int, query: Mapping[str, str]) -> list[dict[str, Any]]:
        """GET /channels/{id}/messages: newest first, `limit` (≤ 100) of them before `before`."""
        before = int(query.get("before") or 1 << 63)
        limit = min(int(query.get("limit") or 50), 100)
        here = [m for mid, m in self.messages.items() if m["channel_id"] == str(channel_id) and mid < before]
        here.sort(key=lambda m: int(m["id"]), reverse=True)
        return [self._as_read(m) for m in here[:limit]]

    def _new_message(self, channel_id: int, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        mid = self.snowflake()
        thread = self.threads.get(channel_id)
        message = message_payload(
            mid,
            channel_id,
            user_payload(BOT_ID, "chinwag", bot=True),
            body.get("content") or "",
            embeds=body.get("embeds"),
        )
        message["flags"] = body.get("flags", 0)
        if thread is not None:
            message["guild_id"] = thread["guild_id"]
            thread["message_count"] += 1
        if token is not None:
            message["webhook_id"] = str(APP_ID)
            message["interaction_token"] = token
        self.messages[mid] = message
        return message

    def _callback(self, iid: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
        """The answer to an interaction: type 5 defers ("thinking…"), type 4 is a message at once."""
        data = body.get("data") or {}
        resource: dict[str, Any] = {"type": body["type"]}
        if body["type"] == 4:
            resource["message"] = self._new_message(_interaction_channel(self, token), data, token=token)
        return {
            "interaction": {
                "id": iid,
                "type": 2,
                "response_message_loading": body["type"] == 5,
                "response_message_ephemeral": bool(data.get("flags", 0) & 64),
            },
            "resource": resource,
        }

    def _edit_webhook(self, token: str, mid: str, body: dict[str, Any]) -> dict[str, Any]:
        if mid == "@original":
            found = [m for m in self.messages.values() if m.get("interaction_token") == token]
            if not found:
                return self._new_message(_interaction_channel(self, token), body, token=token)
            message = found[0]
        else:
            message = self.messages[int(mid)]
        message.update({k: v for k, v in body.items() if k in ("content", "embeds")})
        return message

    async def _new_thread(self, channel_id: int, message_id: int, body: dict[str, Any]) -> dict[str, Any]:
        guild_id = next(
            g for g, guild in self.guilds.items() for c in guild["channels"] if c["id"] == str(channel_id)
        )
        thread = {
            "id": str(message_id),  # Discord gives a thread started from a message that message's id
            "guild_id": str(guild_id),
            "parent_id": str(channel_id),
            "owner_id": str(BOT_ID),
            "name": body.get("name", "thread"),
            "type": 11,
            "message_count": 0,
            "member_count": 1,
            "rate_limit_per_user": 0,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": body.get("auto_archive_duration", 1440),
                "archive_timestamp": TIMESTAMP,
                "locked": False,
            },
        }
        self.threads[message_id] = thread
        # Discord tells the creator about its new thread on the gateway as well.
        await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return thread


def _interaction_channel(fake: FakeDiscord, token: str) -> int:
    """The channel an interaction (named by its token) happened in."""
    return int(fake.interactions[token]["channel_id"])


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py parses a body only when Content-Type is exactly application/json (no charset).
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
