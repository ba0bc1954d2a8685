"""How long another conversation waits while hostile tool calls run.

    python bench/tool_stall.py [--calls N] [--json]

One process, one engine (a scripted model at the engine's seam, so the figure is about the tools,
not the model): N conversations at once each make one hostile call, half of them the calculator
on `round(7, -2*10**7)` (10**N computed while holding the interpreter's lock, unless bounded),
half http_get_json on a local host that sends a byte every 0.2 s (forever, unless the request
has a total deadline). Meanwhile another conversation asks a question that needs no tool; its
turn retrieves from documents through asyncio's default executor, as the real store does. Reported:
that turn's time alone, while N harmless turns run (no tool: what the rest of the engine costs),
and while the hostile calls run; and how long the hostile turns took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.app import default_tools
from bot.engine import Engine
from bot.types import ChatMessage, Incoming
from config import load_settings
from storage import SqlHistory
from tests.fakes import FakeModel


class Drip(BaseHTTPRequestHandler):
    """A response that never ends: a byte every 0.2 s, so that no single read times out."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        for _ in range(100_000):
            try:
                self.wfile.write(b" ")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.2)

    def log_message(self, *args: object) -> None:
        """Quiet."""


class Documents:
    """A retriever at the seam doing its (empty) search on asyncio's default executor."""

    async def search(self, query: str, scopes: Sequence[str], k: int) -> list[Any]:
        return await asyncio.to_thread(lambda: [])

    async def get(self, ids: Sequence[str]) -> list[Any]:
        return []


async def _run(calls: int) -> dict[str, Any]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/forecast"
    hostile = [
        {"name": "calculator", "arguments": {"expression": "round(7, -2*10**7)"}},
        {"name": "http_get_json", "arguments": {"url": url}},
    ]

    def respond(prompt: list[ChatMessage]) -> list[str] | None:
        last = prompt[-1]
        if last.role == "user" and last.content.startswith("hostile"):
            return [json.dumps(hostile[int(last.content.split()[1]) % 2])]
        return ["Fine."]

    with tempfile.TemporaryDirectory(prefix="chinwag-stall-") as tmp:
        settings = load_settings(
            data_dir=Path(tmp) / "data",
            tools={"http_allow_hosts": ["127.0.0.1"], "http_allow_private": True, "max_rounds": 1},
        )
        history = await SqlHistory.open(settings)
        engine = Engine(FakeModel(responder=respond), history, settings, Documents(), default_tools(settings))  # type: ignore[arg-type]

        async def turn(text: str, thread: str) -> float:
            started = time.monotonic()
            incoming = Incoming(text=text, platform="bench", channel="stall", thread=thread)
            async for _ in engine.handle(incoming):
                pass
            return time.monotonic() - started

        async def beside(kind: str) -> tuple[float, list[float], float]:
            started = time.monotonic()
            others = [asyncio.ensure_future(turn(f"{kind} {n}", f"{kind}{n}")) for n in range(calls)]
            await asyncio.sleep(0.5)  # the other turns are under way
            during = await turn("Hello", f"beside-{kind}")
            print(f"another conversation's turn beside {calls} {kind} turns: {during:.2f} s", file=sys.stderr)
            took = await asyncio.gather(*others)
            return during, took, time.monotonic() - started

        try:
            await turn("warm up", "warm")
            alone = min([await turn("Hello", f"alone{n}") for n in range(3)])
            calm, _, _ = await beside("calm")
            during, took, total = await beside("hostile")
        finally:
            await history.close()
            httpd.shutdown()
            httpd.server_close()
    return {
        "hostile_calls": calls,
        "other_turn_alone_s": round(alone, 3),
        "other_turn_beside_harmless_s": round(calm, 3),
        "other_turn_beside_hostile_s": round(during, 3),
        "hostile_turn_max_s": round(max(took), 3),
        "all_done_s": round(total, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10, help="hostile calls at once")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(_run(args.calls))
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:<22}{value}")


if __name__ == "__main__":
    main()
