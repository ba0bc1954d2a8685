"""`chinwag serve`'s /healthz and /metrics, served for a real engine on a local port."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import aiohttp
import pytest
from aiohttp import web

from bot.app import App
from bot.engine import Engine
from bot.monitor import monitor_app, probe, serve_monitor, start_monitor
from bot.types import Incoming
from config import Settings
from storage import SqlHistory
from tests.fakes import FakeModel


async def test_health_and_metrics_count_the_engines_turns(
    engine: Engine, model: FakeModel, history: SqlHistory, settings: Settings
) -> None:
    model.enqueue("Hello", " there", " friend.")
    incoming = Incoming(text="hi", platform="slack", scope="T1", channel="C1")
    [event async for event in engine.handle(incoming)]
    model.enqueue("never", error=RuntimeError("boom"), error_after=0)
    [event async for event in engine.handle(incoming)]

    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    app = App(settings, model, history, engine)
    server = asyncio.create_task(serve_monitor(app, "127.0.0.1", 0, stop, ready=bound.set_result))
    port = await asyncio.wait_for(bound, 10)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok", "model": "fake-model", "active_turns": 0}
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await response.text()
        assert 'chinwag_turns_total{status="complete"} 1' in text
        assert 'chinwag_turns_total{status="failed"} 1' in text
        assert "chinwag_completion_tokens_total 3" in text
        assert "chinwag_active_turns 0" in text
        assert "chinwag_time_to_first_token_seconds_count 1" in text  # the failed turn had none
        assert 'chinwag_time_to_first_token_seconds_bucket{le="+Inf"}' in text
        stop.set()
        await asyncio.wait_for(server, 10)


async def test_a_port_in_use_leaves_the_endpoints_off_without_failing(
    engine: Engine, model: FakeModel, history: SqlHistory, settings: Settings
) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        stop = asyncio.Event()
        app = App(settings, model, history, engine)
        await asyncio.wait_for(serve_monitor(app, "127.0.0.1", port, stop), 10)  # returns, no raise
    finally:
        blocker.close()
        await blocker.wait_closed()


def free_port(host: str) -> int:
    """A port nothing listens on at `host` now; skips when this machine has no such address."""
    with socket.socket() as probe:
        try:
            probe.bind((host, 0))
        except OSError as error:
            pytest.skip(f"cannot bind {host} here ({error.strerror})")
        return probe.getsockname()[1]


@pytest.mark.parametrize(("configured", "other"), [("127.0.0.1", "127.0.0.2"), ("127.0.0.2", "127.0.0.1")])
async def test_the_endpoints_listen_on_the_configured_host_only(
    configured: str, other: str, engine: Engine, model: FakeModel, history: SqlHistory, settings: Settings
) -> None:
    """serve.monitor_host decides the address: two loopback addresses stand for "inside" and "outside"."""
    free_port(other)  # both addresses exist here
    port = free_port(configured)
    settings.serve.monitor_host = configured
    settings.serve.monitor_port = port
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = start_monitor(App(settings, model, history, engine), stop, ready=bound.set_result)
    assert server is not None
    try:
        assert await asyncio.wait_for(bound, 10) == port
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"http://{configured}:{port}/healthz") as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.get(f"http://{other}:{port}/healthz")
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)


async def test_port_zero_turns_the_endpoints_off(
    engine: Engine, model: FakeModel, history: SqlHistory, settings: Settings
) -> None:
    assert settings.serve.monitor_host == "127.0.0.1"  # the default: nothing published off this machine
    settings.serve.monitor_port = 0
    assert start_monitor(App(settings, model, history, engine), asyncio.Event()) is None


async def run_probe(**env: str) -> tuple[int, str]:
    """`python -m bot.monitor` (the image's HEALTHCHECK) with these settings in its environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CHINWAG_")} | env
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.monitor", env=environ, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_the_health_probe_asks_where_the_settings_say(
    engine: Engine, model: FakeModel, history: SqlHistory, settings: Settings
) -> None:
    port = free_port("127.0.0.1")
    settings.serve.monitor_port = port
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = start_monitor(App(settings, model, history, engine), stop, ready=bound.set_result)
    assert server is not None
    try:
        await asyncio.wait_for(bound, 10)
        # As in the image: listening on every interface is asked for on loopback.
        env = {"CHINWAG_SERVE__MONITOR_HOST": "0.0.0.0", "CHINWAG_SERVE__MONITOR_PORT": str(port)}
        assert await run_probe(**env) == (0, "")
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)
    code, stderr = await run_probe(**env)
    assert code == 1
    assert stderr.startswith(f"chinwag: unhealthy: no answer from http://127.0.0.1:{port}/healthz (")
    assert stderr.count("\n") == 1


async def test_the_health_probe_fails_while_stopping_and_when_off(
    engine: Engine, model: FakeModel, history: SqlHistory, settings: Settings
) -> None:
    stopping = asyncio.Event()
    stopping.set()
    runner = web.AppRunner(monitor_app(App(settings, model, history, engine), stopping), access_log=None)
    await runner.setup()
    try:
        port = free_port("127.0.0.1")
        await web.TCPSite(runner, "127.0.0.1", port).start()
        settings.serve.monitor_port = port
        assert await asyncio.to_thread(probe, settings) == f"http://127.0.0.1:{port}/healthz answered 503"
    finally:
        await runner.cleanup()
    settings.serve.monitor_port = 0
    assert probe(settings) == "the health endpoint is off (serve.monitor_port is 0)"
