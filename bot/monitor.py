"""`chinwag serve`'s health and metrics endpoints: /healthz (JSON) and /metrics (Prometheus text)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from bot.app import App

log = logging.getLogger(__name__)


def monitor_app(app: App, stop: asyncio.Event) -> web.Application:
    """The aiohttp application answering /healthz and /metrics for one running `App`."""

    async def healthz(request: web.Request) -> web.Response:
        stopping = stop.is_set()
        body = {
            "status": "stopping" if stopping else "ok",
            "model": app.model.info.name,
            "active_turns": app.engine.metrics.active,
        }
        return web.json_response(body, status=503 if stopping else 200)

    async def metrics(request: web.Request) -> web.Response:
        scheduler: Any = getattr(app.model, "scheduler", None)
        queue = scheduler.load() if scheduler is not None else None
        text = app.engine.metrics.render(app.model.info.name, queue)
        response = web.Response(text=text, content_type="text/plain", charset="utf-8")
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    web_app = web.Application()
    web_app.router.add_get("/healthz", healthz)
    web_app.router.add_get("/metrics", metrics)
    return web_app


async def serve_monitor(
    app: App, host: str, port: int, stop: asyncio.Event, ready: Callable[[int], None] | None = None
) -> None:
    """Serve /healthz and /metrics on host:port until `stop` is set; a port in use is logged, not fatal."""
    runner = web.AppRunner(monitor_app(app, stop), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as error:
            log.warning(
                "health and metrics endpoints are off: cannot listen on %s:%s (%s)", host, port, error
            )
            return
        bound = runner.addresses[0][1] if runner.addresses else port
        log.info("health and metrics on http://%s:%s/healthz and /metrics", host, bound)
        if ready is not None:
            ready(bound)
        await stop.wait()
    finally:
        await runner.cleanup()
