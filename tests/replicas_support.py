"""Several real `chinwag serve` processes (replicas) on one PostgreSQL, against the fake Slack and Discord.

Each replica serves Slack over HTTP on a port of its own (Slack may send any event to any of
them) and one Discord shard of as many as there are replicas. Used by tests/test_replicas.py and
bench/replicas.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiohttp

from tests.cli_support import chinwag_bin, cli_env
from tests.fake_discord import FakeDiscord
from tests.fake_slack import FakeSlack, sign

SECRET = "test-signing-secret"
BOT_TOKEN = "xoxb-test-bot-token"


@dataclass
class Replica:
    """One `chinwag serve` process and where to reach it."""

    name: str
    process: asyncio.subprocess.Process
    slack_url: str  # its Events API endpoint
    data_dir: Path
    stderr: Path  # what it wrote to the terminal (a file: a pipe nobody reads could fill up)

    def log(self) -> str:
        """Its log file so far."""
        path = self.data_dir / "logs" / "chinwag.log"
        return path.read_text() if path.exists() else ""


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def post(url: str, body: str, headers: dict[str, str], content_type: str) -> tuple[int, str]:
    """POST as Slack does; the status and body of the answer."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={**headers, "Content-Type": content_type}) as response,
    ):
        return response.status, await response.text()


async def listening(replica: Replica, within: float) -> None:
    """Wait until the replica answers Slack's URL check (its model is loaded, Slack is served)."""
    challenge = json.dumps({"token": "t", "challenge": "up?", "type": "url_verification"})
    deadline = time.monotonic() + within
    while True:
        if replica.process.returncode is not None:
            raise AssertionError(f"{replica.name} exited: {replica.stderr.read_text()[-2000:]}")
        try:
            status, _ = await post(replica.slack_url, challenge, sign(SECRET, challenge), "application/json")
            if status == 200:
                return
        except aiohttp.ClientConnectionError:
            pass
        assert time.monotonic() < deadline, f"{replica.name} did not start listening"
        await asyncio.sleep(0.2)


@asynccontextmanager
async def replicas(
    count: int,
    root: Path,
    database_url: str,
    slack: FakeSlack,
    discord: FakeDiscord | None = None,
    redis_url: str | None = None,
    env: Mapping[str, str] | None = None,
    within: float = 300.0,
) -> AsyncIterator[list[Replica]]:
    """`count` replicas started at once (with `env` added to their environment), yielded once each
    serves Slack (and its Discord shard); killed on the way out if still running."""
    async with AsyncExitStack() as stack:
        started: list[Replica] = []
        for n in range(count):
            port = free_port()
            data_dir = root / f"replica{n}"
            environ = cli_env(
                data_dir,
                CHINWAG_STORAGE__URL=database_url,
                CHINWAG_RETRIEVAL__ENABLED="false",  # unless `env` names a Chroma server
                CHINWAG_SLACK__MODE="http",
                CHINWAG_SLACK__API_BASE_URL=slack.api_url,
                CHINWAG_SLACK__HTTP_HOST="127.0.0.1",
                CHINWAG_SLACK__HTTP_PORT=str(port),
                CHINWAG_SLACK__UPDATE_INTERVAL_S="0.2",
                CHINWAG_SERVE__MONITOR_PORT="0",  # off: replicas on one machine would share its port
                CHINWAG_MODEL__THREADS="1",  # replicas on one machine share its cores
                SLACK_BOT_TOKEN=BOT_TOKEN,
                SLACK_SIGNING_SECRET=SECRET,
            )
            environ.update(env or {})
            environ.pop("SLACK_APP_TOKEN", None)
            if redis_url:
                environ["CHINWAG_SLACK__REDIS_URL"] = redis_url
            platforms = ["--slack"]
            if discord is not None:
                platforms.append("--discord")
                environ.update(
                    DISCORD_TOKEN="test-token",
                    CHINWAG_DISCORD__API_BASE_URL=discord.api_base_url,
                    CHINWAG_DISCORD__GATEWAY_URL=discord.gateway_url,
                    CHINWAG_DISCORD__EDIT_INTERVAL_S="0.2",
                    CHINWAG_DISCORD__SHARD_COUNT=str(count),
                    CHINWAG_DISCORD__SHARD_IDS=json.dumps([n]),
                )
            stderr = root / f"replica{n}.stderr"
            with _new_file(stderr) as terminal:
                process = await asyncio.create_subprocess_exec(
                    chinwag_bin(),
                    "serve",
                    *platforms,
                    env=environ,
                    stdout=terminal,
                    stderr=terminal,
                )
            stack.push_async_callback(_kill, process)
            url = f"http://127.0.0.1:{port}/slack/events"
            started.append(Replica(f"replica{n}", process, url, data_dir, stderr))
        await asyncio.gather(*(listening(r, within) for r in started))
        if discord is not None:
            await discord.connected(within=60, shards=count)
        yield started


def _new_file(path: Path) -> BinaryIO:
    """An empty file at `path` (its folder made), open for writing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")


async def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await process.wait()
