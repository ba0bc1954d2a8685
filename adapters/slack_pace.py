"""How fast chinwag may edit messages in one Slack workspace: a token bucket per workspace.

Slack limits `chat.update` per app and workspace (Tier 3, about 50 a minute), whichever process
calls it. One process keeps the bucket in memory (`Pace`); replicas keep one bucket between them
in Redis (`SharedPace`, with `slack.redis_url`), taken from by a Lua script so that a take is
atomic and timed by the Redis server's clock, the same for every replica. While Redis cannot be
reached, a replica goes on with a bucket of its own (and says so in the log) rather than stall
its answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bot.errors import ChinwagError

log = logging.getLogger(__name__)

BURST = 5  # edits a workspace may make at once before the pace applies
KEY = "chinwag:slack:edits:{team}"
# After an error, Redis is asked again no sooner than this (meanwhile the process's own bucket).
REDIS_RETRY_S = 5.0

# KEYS[1]: one workspace's bucket; ARGV[1]: tokens per millisecond, ARGV[2]: capacity.
# Returns 0 when a token was taken, else the milliseconds until one will be there.
_TAKE = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate) + 1000)
return wait
"""


class Pace:
    """Edits per workspace in this process: a token bucket of `per_minute` (chat.update is Tier 3)."""

    def __init__(self, per_minute: int, burst: int = BURST) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(max(1, min(burst, per_minute)))
        self._tokens: dict[str, float] = {}
        self._stamp: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def check(self) -> None:
        """Nothing to reach: the bucket is in memory."""

    async def close(self) -> None:
        """Nothing to close."""

    def try_take(self, team: str) -> float:
        """Take one edit for `team` if there is one: 0.0; else the seconds until there will be."""
        now = time.monotonic()
        tokens = min(
            self.capacity,
            self._tokens.get(team, self.capacity) + (now - self._stamp.get(team, now)) * self.rate,
        )
        self._stamp[team] = now
        if tokens >= 1:
            self._tokens[team] = tokens - 1
            return 0.0
        self._tokens[team] = tokens
        return (1 - tokens) / self.rate

    async def take(self, team: str) -> None:
        """Wait until `team` may make one more edit (this process's waiters in turn)."""
        async with self._locks.setdefault(team, asyncio.Lock()):
            while True:
                wait = await self._try(team)
                if wait <= 0:
                    return
                await asyncio.sleep(wait)

    async def _try(self, team: str) -> float:
        return self.try_take(team)


class SharedPace(Pace):
    """One bucket per workspace for every replica, in Redis at `url`."""

    def __init__(self, url: str, per_minute: int, burst: int = BURST) -> None:
        super().__init__(per_minute, burst)
        try:
            import redis.asyncio as redis
        except ImportError:
            raise ChinwagError(
                "slack.redis_url needs the redis package (pip install 'chinwag[redis]')."
            ) from None
        self.shown = shown_url(url)
        try:
            self._client: Any = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        except ValueError as error:
            raise ChinwagError(f"Invalid slack.redis_url {self.shown}: {error}") from None
        self._script = self._client.register_script(_TAKE)
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError, TimeoutError)
        self._down_until = 0.0  # while Redis is down: when to ask it again

    async def check(self) -> None:
        """Make sure Redis answers (at start: a wrong URL should stop the process, not slow it)."""
        try:
            await self._client.ping()
        except self._errors as error:
            raise ChinwagError(f"Cannot reach Redis at {self.shown} (slack.redis_url): {error}") from None

    async def close(self) -> None:
        """Close the connections to Redis."""
        await self._client.aclose()

    async def try_take_shared(self, team: str) -> float:
        """Take one edit from the workspace's shared bucket: 0.0, or the seconds until one is there."""
        waited = await self._script(keys=[KEY.format(team=team)], args=[self.rate / 1000.0, self.capacity])
        return int(waited) / 1000.0

    async def _try(self, team: str) -> float:
        if time.monotonic() >= self._down_until:
            try:
                wait = await self.try_take_shared(team)
            except self._errors as error:
                self._down_until = time.monotonic() + REDIS_RETRY_S
                log.warning(
                    "slack: Redis at %s failed (%s); this process paces its edits alone meanwhile",
                    self.shown,
                    error,
                )
            else:
                if self._down_until:
                    self._down_until = 0.0
                    log.info("slack: Redis at %s is back; the edit budget is shared again", self.shown)
                return wait
        return self.try_take(team)


def open_pace(per_minute: int, redis_url: str | None) -> Pace:
    """The edit budget: shared in Redis when `redis_url` is set, else this process's own."""
    return SharedPace(redis_url, per_minute) if redis_url else Pace(per_minute)


def shown_url(url: str) -> str:
    """A URL fit for a log or an error: any password replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if parts.password is None:
        return url
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}{port}"
    return urlunsplit(parts._replace(netloc=netloc))
