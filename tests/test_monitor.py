"""`chinwag serve`'s /healthz and /metrics, served for a real engine on a local port."""

from __future__ import annotations

import asyncio

import aiohttp

from bot.app import App
from bot.engine import Engine
from bot.monitor import serve_monitor
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
