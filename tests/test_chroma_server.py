"""Documents on a real Chroma server: `chroma run` (the CLI chromadb ships) on a free local port.

Ingest, search and answers with sources through it; a server that is down when chinwag starts, or
goes down while it runs: the answer still comes and says the documents are unavailable, and the
documents are used again as soon as the server is back, without a restart. Tenant, database and
token auth (Chroma's own Python server, which checks tokens) are tested the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters import slack
from adapters.reply import Reply
from bot.app import running
from bot.citations import DOCUMENTS_UNAVAILABLE
from bot.engine import Engine
from bot.errors import ConfigError, DocumentsUnavailableError
from bot.types import Event, Incoming, Notice, ToolCall, TurnDone
from config import Settings
from retrieval.chroma import TOKEN_ENV
from retrieval.keyword import KeywordIndex
from retrieval.store import DocumentStore
from storage import SqlHistory
from tests.cli_support import chinwag_bin, cli_env
from tests.fakes import FakeModel

# Every test here starts a real Chroma server process.
pytestmark = pytest.mark.slow

HANDBOOK = """# Larkspur handbook

## Leave

Every employee gets 27 days of paid leave a year, plus public holidays.
"""

API_PAGE = """# Shipment API

## Rate limits

The public API allows 120 requests per minute for each API key.
"""

QUESTION = "What is the API rate limit per key?"


def chroma_cli() -> str | None:
    """The `chroma` command installed with chromadb (next to this interpreter), if any."""
    beside = Path(sys.executable).with_name("chroma")
    return str(beside) if beside.exists() else shutil.which("chroma")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """A Chroma server in a process of its own on 127.0.0.1:`port`, stopped and started again at will.

    Its data stays in the directory its command names, so a restart serves the same documents.
    """

    def __init__(self, command: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.command = command
        self.port = port
        self.log = log
        self.env = {**os.environ, "ANONYMIZED_TELEMETRY": "False", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, within: float = 120.0) -> None:
        """Start it and wait until its heartbeat answers (the time only bounds a server that never
        comes up: the test fails then, with the server's own output)."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the Chroma server exited ({self.process.returncode}):\n{self._tail()}")
            try:
                if httpx.get(f"{self.url}/api/v2/heartbeat", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"the Chroma server did not answer within {within:g} s:\n{self._tail()}")

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL) and wait until it is gone."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """`chroma run` on a free local port, its data under tmp_path; stopped at the end."""
    cli = chroma_cli()
    if cli is None:
        pytest.skip("the chroma CLI is not installed (it ships with chromadb)")
    port = free_port()
    command = [
        cli,
        "run",
        "--path",
        str(tmp_path / "chroma-server"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    server = ServerProcess(command, port, tmp_path / "chroma-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "handbook.md").write_text(HANDBOOK)
    (folder / "api.md").write_text(API_PAGE)
    return folder


@pytest.fixture
def on_server(settings: Settings, chroma_server: ServerProcess) -> Settings:
    """The test's settings, with the documents on the Chroma server."""
    settings.retrieval.chroma_url = chroma_server.url
    return settings


def offline() -> Any:
    """Settings for a chromadb client of the test's own: no telemetry (no network)."""
    from chromadb.config import Settings as ChromaSettings

    return ChromaSettings(anonymized_telemetry=False)


def said(text: str) -> Incoming:
    return Incoming(text=text, platform="slack", scope="T1", channel="C1", thread="t1")


async def turn(engine: Engine, text: str = QUESTION) -> tuple[list[Event], TurnDone]:
    events = [event async for event in engine.handle(said(text))]
    done = events[-1]
    assert isinstance(done, TurnDone), events
    return events, done


def shown(events: list[Event]) -> str:
    """What the reply looks like on Slack once it is finished."""
    reply = Reply(slack.STYLE)
    for event in events:
        reply.apply(event)
    return reply.whole()


async def test_documents_are_ingested_searched_and_cited_through_the_server(
    on_server: Settings, chroma_server: ServerProcess, history: SqlHistory, model: FakeModel, docs: Path
) -> None:
    import chromadb

    store = DocumentStore.open(on_server)
    report = store.ingest([docs])
    assert sorted(Path(p).name for p in report.added) == ["api.md", "handbook.md"]
    assert not on_server.chroma_dir.exists()  # nothing went to an embedded store
    # The chunks are on the server: another client sees the collection.
    other = chromadb.HttpClient(host="127.0.0.1", port=chroma_server.port, settings=offline())
    assert store.collection_name("global") in [c.name for c in other.list_collections()]
    assert [d.title for d in store.documents()] == ["Shipment API", "Larkspur handbook"]
    [best, *_] = store.query(QUESTION, ["global"], 2)
    assert "120 requests per minute" in best.text

    engine = Engine(model, history, on_server, store)
    model.enqueue("Each key may make 120 requests per minute [1].")
    events, done = await turn(engine)
    assert "120 requests per minute" in model.prompts[-1][-2].content
    assert done.metadata["sources"][0]["title"] == "Shipment API" and "documents" not in done.metadata
    assert "Sources: [1] Shipment API" in shown(events)
    assert DOCUMENTS_UNAVAILABLE not in shown(events)

    assert [d.path for d in store.remove(str(docs / "api.md"))] == [str((docs / "api.md").resolve())]
    assert all("120 requests" not in p.text for p in store.query(QUESTION, ["global"], 4))


def test_each_process_keeps_its_keyword_index_in_step_with_the_server(
    on_server: Settings, tmp_path: Path, docs: Path
) -> None:
    on_server.retrieval.keyword_sync_s = 0  # every question brings it in step
    elsewhere = on_server.model_copy(deep=True)
    elsewhere.data_dir = tmp_path / "elsewhere"  # another process, with its own data directory
    reader = DocumentStore.open(elsewhere)  # connected before anything was ingested
    writer = DocumentStore.open(on_server)
    writer.ingest([docs])

    # Ingested by the other process: found by its words here too (27 is in no other document).
    [best] = reader.query("27", ["global"], 1)
    assert "27 days of paid leave" in best.text and best.keyword is not None
    assert list(elsewhere.resolved_data_dir.glob("keywords-*.sqlite3"))
    assert not on_server.chroma_dir.exists()  # no embedded store, not even for the keywords

    writer.remove(str(docs / "handbook.md"))
    assert all("27 days" not in p.text for p in reader.query("27 days of paid leave", ["global"], 4))
    [path] = elsewhere.resolved_data_dir.glob("keywords-*.sqlite3")
    index = KeywordIndex(path)  # the reader's own index has let go of the removed file's words
    assert index.search("global", "27 days leave", 5) == [] and index.count("global") == writer.count()


async def test_a_server_going_down_is_said_in_the_reply_and_used_again_once_back(
    on_server: Settings, chroma_server: ServerProcess, history: SqlHistory, model: FakeModel, docs: Path
) -> None:
    store = DocumentStore.open(on_server)
    store.ingest([docs])
    engine = Engine(model, history, on_server, store)
    # Replies drawn from the passage: a reply that takes nothing from them is declined (grounding).
    model.enqueue("The limit is 120 a minute for each key [1].")
    _, done = await turn(engine)
    assert done.metadata["sources"]

    chroma_server.stop()
    model.enqueue("I cannot look that up right now.")
    events, done = await turn(engine)
    # The answer comes, without documents, and says so: while it is written and under it.
    assert done.text == "I cannot look that up right now." and done.status == "complete"
    assert Notice(DOCUMENTS_UNAVAILABLE) in events
    assert done.metadata["documents"] == "unavailable" and done.metadata["sources"] == []
    assert all("120 requests" not in m.content for m in model.prompts[-1])
    assert DOCUMENTS_UNAVAILABLE in shown(events)
    [*_, reply] = await history.load(done.conversation_id)
    assert reply.metadata["documents"] == "unavailable"  # kept with the stored reply

    chroma_server.start()  # the same port and data; chinwag is not restarted
    model.enqueue("The limit is 120 a minute for each key [1].")
    _, done = await turn(engine)
    assert "120 requests per minute" in model.prompts[-1][-2].content
    assert done.metadata["sources"] and "documents" not in done.metadata


async def test_a_server_down_when_chinwag_starts_is_used_once_it_answers(
    on_server: Settings,
    chroma_server: ServerProcess,
    model: FakeModel,
    docs: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    DocumentStore.open(on_server).ingest([docs])
    chroma_server.stop()
    caplog.set_level(logging.INFO)
    # What `chinwag serve` and `chinwag ask` start with.
    async with running(on_server, model=model) as app:
        assert app.retriever is not None
        assert "document search resumes as soon as it answers" in caplog.text
        events, done = await turn(app.engine)
        assert done.metadata["documents"] == "unavailable"
        assert DOCUMENTS_UNAVAILABLE in shown(events)

        chroma_server.start()
        model.enqueue("The limit is 120 a minute for each key [1].")  # drawn from the passage
        events, done = await turn(app.engine)
        assert done.metadata["sources"][0]["title"] == "Shipment API"
        assert DOCUMENTS_UNAVAILABLE not in shown(events)
        assert "answers again" in caplog.text


async def test_a_server_that_never_answers_costs_its_time_limit_not_the_answer(
    settings: Settings, history: SqlHistory, model: FakeModel
) -> None:
    # A port that takes connections and never says a word (a hung server, a black hole): the
    # kernel completes the handshakes into the backlog, nobody ever reads or answers.
    with socket.create_server(("127.0.0.1", 0), backlog=64) as silent:
        settings.retrieval.chroma_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings.retrieval.chroma_timeout_s = 1.0
        # Bounded only so that a hang fails the test instead of stalling the run.
        store = await asyncio.wait_for(asyncio.to_thread(DocumentStore.open, settings), 120)
        engine = Engine(model, history, settings, store)
        events, done = await asyncio.wait_for(turn(engine), 120)
        assert done.metadata["documents"] == "unavailable" and Notice(DOCUMENTS_UNAVAILABLE) in events
        with pytest.raises(DocumentsUnavailableError, match="no answer within 1 s"):
            await asyncio.wait_for(asyncio.to_thread(store.connect), 120)


async def test_the_search_tool_tells_the_model_that_the_documents_are_unavailable(
    settings: Settings, history: SqlHistory, model: FakeModel
) -> None:
    from bot.app import default_tools

    settings.retrieval.chroma_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    engine = Engine(model, history, settings, DocumentStore.open(settings), default_tools(settings))
    model.enqueue('{"name": "search_documents", "arguments": {"query": "rate limit"}}')
    model.enqueue("The documents cannot be searched right now.")
    events, done = await turn(engine)
    [call] = [e for e in events if isinstance(e, ToolCall)]
    assert call.status == "error" and DOCUMENTS_UNAVAILABLE in call.result
    assert done.metadata["documents"] == "unavailable"


def test_tenant_and_database_choose_where_the_documents_go(
    on_server: Settings, chroma_server: ServerProcess, docs: Path
) -> None:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    admin = chromadb.AdminClient(
        ChromaSettings(
            chroma_api_impl="chromadb.api.fastapi.FastAPI",
            chroma_server_host="127.0.0.1",
            chroma_server_http_port=chroma_server.port,
            anonymized_telemetry=False,
        )
    )
    admin.create_tenant("acme")
    admin.create_database("docs", tenant="acme")
    on_server.retrieval.chroma_tenant = "acme"
    on_server.retrieval.chroma_database = "docs"
    store = DocumentStore.open(on_server)
    store.ingest([docs])
    name = store.collection_name("global")

    def names(tenant: str, database: str) -> list[str]:
        client = chromadb.HttpClient(
            host="127.0.0.1", port=chroma_server.port, settings=offline(), tenant=tenant, database=database
        )
        return [c.name for c in client.list_collections()]

    assert name in names("acme", "docs")
    assert name not in names("default_tenant", "default_database")

    on_server.retrieval.chroma_database = "nope"
    with pytest.raises(DocumentsUnavailableError) as missing:
        DocumentStore.open(on_server).connect()
    assert "retrieval.chroma_database 'nope'" in str(missing.value)


# Chroma's Python server, with chinwag's embedding function known to it: this server checks a
# collection's embedding function by name when the collection is created.
PYTHON_SERVER = """
import sys
from pathlib import Path

import uvicorn

from retrieval.embeddings import chroma_embedding_function

chroma_embedding_function("all-minilm-l6-v2", Path("."))
uvicorn.run("chromadb.app:app", host="127.0.0.1", port=int(sys.argv[1]))
"""


@pytest.fixture
def token_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """Chroma's Python server (chromadb.app) checking a token in the header `request.param`;
    `chroma run` checks no credentials."""
    for module in ("fastapi", "opentelemetry.instrumentation.fastapi"):
        pytest.importorskip(module, reason=f"Chroma's Python server needs {module} (the dev extra)")
    port = free_port()
    env = {
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "IS_PERSISTENT": "TRUE",
        "PERSIST_DIRECTORY": str(tmp_path / "chroma-auth"),
        "CHROMA_SERVER_AUTHN_PROVIDER": "chromadb.auth.token_authn.TokenAuthenticationServerProvider",
        "CHROMA_SERVER_AUTHN_CREDENTIALS": "s3cret-chroma-token",
        "CHROMA_AUTH_TOKEN_TRANSPORT_HEADER": request.param,
    }
    command = [sys.executable, "-c", PYTHON_SERVER, str(port)]
    server = ServerProcess(command, port, tmp_path / "chroma-auth.log", env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("token_server", ["Authorization", "X-Chroma-Token"], indirect=True)
def test_a_token_from_the_environment_signs_in_and_is_never_logged(
    settings: Settings,
    token_server: ServerProcess,
    docs: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings.retrieval.chroma_url = token_server.url
    settings.retrieval.chroma_auth = "token"
    in_x_header = token_server.env["CHROMA_AUTH_TOKEN_TRANSPORT_HEADER"] == "X-Chroma-Token"
    settings.retrieval.chroma_token_header = "X-Chroma-Token" if in_x_header else "Authorization"

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError, match=TOKEN_ENV):
        DocumentStore.open(settings)

    monkeypatch.setenv(TOKEN_ENV, "not-the-token")
    refused = DocumentStore.open(settings)
    with pytest.raises(DocumentsUnavailableError, match="refused chinwag's credentials") as error:
        refused.connect()
    assert "not-the-token" not in str(error.value)

    monkeypatch.setenv(TOKEN_ENV, "s3cret-chroma-token")
    store = DocumentStore.open(settings)
    assert store.ingest([docs]).added
    assert "120 requests per minute" in store.query(QUESTION, ["global"], 1)[0].text

    logged = "\n".join(r.getMessage() + str(r.exc_info or "") for r in caplog.records)
    assert "s3cret-chroma-token" not in logged and "not-the-token" not in logged


def test_settings_that_cannot_work_are_one_line_naming_the_key(settings: Settings) -> None:
    from config import load_settings

    with pytest.raises(ConfigError, match="chroma_user"):
        load_settings(retrieval={"chroma_auth": "basic"})
    settings.retrieval.chroma_url = "ftp://chroma.example.com"
    with pytest.raises(ConfigError, match=r"retrieval\.chroma_url"):
        DocumentStore.open(settings)


# The `chinwag` command ----------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([chinwag_bin(), *args], capture_output=True, text=True, env=env, timeout=600)


def test_docs_commands_with_the_server_down_say_so_in_one_line(
    tmp_path: Path, chroma_server: ServerProcess, docs: Path
) -> None:
    env = cli_env(tmp_path / "data", CHINWAG_RETRIEVAL__CHROMA_URL=chroma_server.url)
    added = run_cli("ingest", str(docs), env=env)
    assert added.returncode == 0 and "2 added" in added.stdout, added.stderr
    chroma_server.stop()
    for args in (["docs", "list"], ["ingest", str(docs)], ["docs", "search", "rate limit"]):
        down = run_cli(*args, env=env)
        assert down.returncode == 1 and "Traceback" not in down.stderr, down.stderr
        assert f"The Chroma server at {chroma_server.url} is unavailable" in down.stderr
    chroma_server.start()
    listed = run_cli("docs", "list", env=env)
    assert listed.returncode == 0 and "2 documents" in listed.stdout


@pytest.mark.model
def test_chinwag_ask_says_when_the_documents_are_unavailable_and_uses_them_once_back(
    tmp_path: Path, chroma_server: ServerProcess, docs: Path
) -> None:
    env = cli_env(tmp_path / "data", CHINWAG_RETRIEVAL__CHROMA_URL=chroma_server.url)
    assert run_cli("ingest", str(docs), env=env).returncode == 0
    chroma_server.stop()
    down = run_cli("ask", QUESTION, env=env)
    assert down.returncode == 0, down.stderr  # answered, without the documents
    assert f"({DOCUMENTS_UNAVAILABLE})" in down.stdout
    as_json = json.loads(run_cli("ask", "--json", QUESTION, env=env).stdout)
    assert as_json["documents"] == "unavailable" and as_json["sources"] == [] and as_json["text"]

    chroma_server.start()
    back = json.loads(run_cli("ask", "--json", QUESTION, env=env).stdout)
    assert back["documents"] == "on"
    assert "120 requests per minute" in back["sources"][0]["text"]
