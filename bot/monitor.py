"""`chinwag serve`'s health and metrics endpoints: /healthz (JSON) and /metrics (Prometheus text).

They listen on `serve.monitor_host`:`serve.monitor_port`: loopback by default, so a laptop does not
publish them; the Docker image sets 0.0.0.0, where loopback would be unreachable from outside the
container. `python -m bot.monitor` is the image's HEALTHCHECK: it asks /healthz where the settings
say it is, so a port or host changed in the config file or the environment is followed.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bot.errors import ChinwagError
from config import Settings, load_settings

if TYPE_CHECKING:  # the health probe, run every 30 s, need not import the engine
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


def start_monitor(
    app: App, stop: asyncio.Event, ready: Callable[[int], None] | None = None
) -> asyncio.Task[None] | None:
    """Serve the endpoints where `app`'s settings say, until `stop` is set; None when they are off."""
    where = app.settings.serve
    if not where.monitor_port:
        return None
    return asyncio.create_task(serve_monitor(app, where.monitor_host, where.monitor_port, stop, ready))


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


# Where a client on the same machine reaches a server listening on every interface.
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def probe(settings: Settings, timeout_s: float = 4.0) -> str | None:
    """Ask this machine's `chinwag serve` for /healthz: None when healthy, else why not, in one line."""
    serve = settings.serve
    if not serve.monitor_port:
        return "the health endpoint is off (serve.monitor_port is 0)"
    host = _WILDCARDS.get(serve.monitor_host, serve.monitor_host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{serve.monitor_port}/healthz"
    # No proxy: an HTTP_PROXY set for the container must not carry a loopback request away.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s):
            return None
    except urllib.error.HTTPError as error:  # 503: stopping
        return f"{url} answered {error.code}"
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        return f"no answer from {url} ({reason})"


def main() -> None:
    """`python -m bot.monitor`: exit 0 when healthy, else 1 with one line on stderr."""
    try:
        problem = probe(load_settings())
    except ChinwagError as error:
        problem = str(error)
    if problem:
        print(f"chinwag: unhealthy: {problem}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
