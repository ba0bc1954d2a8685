"""Retrieval on a real Chroma store in tmp_path, with the real embedding model and real files.

Ingest, re-ingest, removal, scope isolation, a reopened collection, and turns through the engine
(with the FakeModel at the model seam) that put passages in the prompt and sources in the reply.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.citations import PASSAGES_INTRO, sources_footer
from bot.engine import Engine
from bot.types import ChatMessage, CommandResult, Event, Incoming, TurnDone
from config import Settings, load_settings
from retrieval.store import DocumentStore
from storage import SqlHistory
from tests.fakes import FakeModel

HANDBOOK = """# Larkspur handbook

## Leave

Every employee gets 27 days of paid leave a year, plus public holidays.
Unused leave carries over until the end of March.

## Expenses

Meals on business trips are reimbursed up to 45 euros a day with receipts.
"""

RUNBOOK = """Deploy runbook

Deploys to production happen from the release branch only, on Tuesdays and Thursdays.
The on-call engineer must approve every deploy with the command deployctl approve.
"""

API_PAGE = """<html><head><title>Shipment API</title><script>var tracking = "ignore me";</script></head>
<body><nav>Home | Docs</nav>
<h1>Shipment API</h1>
<h2>Rate limits</h2>
<p>The public API allows 120 requests per minute for each API key.</p>
<h2>Errors</h2>
<p>Error code LRK-409 means the shipment was already delivered.</p>
</body></html>
"""

RETRY_CODE = '''"""Client settings for the tracking service."""

# Give up on a webhook delivery after seven attempts with exponential backoff.
MAX_WEBHOOK_ATTEMPTS = 7


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt`."""
    return min(2.0**attempt, 300.0)
'''


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    (folder / "eng").mkdir(parents=True)
    (folder / "handbook.md").write_text(HANDBOOK)
    (folder / "eng" / "deploys.txt").write_text(RUNBOOK)
    (folder / "api.html").write_text(API_PAGE)
    (folder / "eng" / "retry.py").write_text(RETRY_CODE)
    (folder / "broken.pdf").write_bytes(b"this is not a pdf at all")
    (folder / "image.bin").write_bytes(b"\x00\x01")
    return folder


@pytest.fixture
def store(settings: Settings) -> Iterator[DocumentStore]:
    yield DocumentStore.open(settings)


def names(paths: list[str]) -> list[str]:
    return sorted(Path(p).name for p in paths)


def test_ingest_reads_every_format_and_reports_what_it_skipped(store: DocumentStore, docs: Path) -> None:
    report = store.ingest([docs])
    assert names(report.added) == ["api.html", "deploys.txt", "handbook.md", "retry.py"]
    assert [Path(p).name for p, _ in report.skipped] == ["broken.pdf"]  # .bin is not even offered
    assert "broken.pdf" in report.skipped[0][1]
    assert report.chunks == store.count() >= 4 and report.tokens > 0

    [best] = store.query("How many requests per minute can one key make?", ["global"], 1)
    assert "120 requests per minute" in best.text and best.title == "Shipment API"
    assert "Rate limits" in best.location
    assert "ignore me" not in best.text and "Home | Docs" not in best.text

    [code] = store.query("How many times is a webhook delivery retried?", ["global"], 1)
    assert "seven attempts" in code.text and code.location.startswith("lines ")

    [leave] = store.query("how many vacation days do I get", ["global"], 1)
    assert "27 days" in leave.text and "Leave" in leave.location


def test_reingest_skips_unchanged_files_and_replaces_changed_ones(store: DocumentStore, docs: Path) -> None:
    store.ingest([docs])
    before = store.count()
    again = store.ingest([docs])
    assert names(again.unchanged) == ["api.html", "deploys.txt", "handbook.md", "retry.py"]
    assert again.added == again.updated == [] and again.chunks == 0 and store.count() == before

    (docs / "handbook.md").write_text(HANDBOOK.replace("27 days", "31 days"))
    changed = store.ingest([docs])
    assert names(changed.updated) == ["handbook.md"] and store.count() == before
    texts = [p.text for p in store.query("paid leave days per year", ["global"], 10)]
    assert any("31 days" in t for t in texts) and not any("27 days" in t for t in texts)


def test_documents_are_listed_and_removed_by_path_or_id(store: DocumentStore, docs: Path) -> None:
    store.ingest([docs])
    listed = store.documents()
    assert names([d.path for d in listed]) == ["api.html", "deploys.txt", "handbook.md", "retry.py"]
    assert all(d.scope == "global" and d.chunks > 0 and len(d.sha256) == 64 for d in listed)

    removed = store.remove(str(docs / "eng"))  # a folder removes what was ingested under it
    assert names([d.path for d in removed]) == ["deploys.txt", "retry.py"]
    api = next(d for d in store.documents() if d.path.endswith("api.html"))
    assert [d.id for d in store.remove(api.id)] == [api.id]
    assert names([d.path for d in store.documents()]) == ["handbook.md"]
    assert store.count() == store.documents()[0].chunks
    assert store.remove("/no/such/file") == []


def test_a_scope_never_sees_another_scopes_documents(store: DocumentStore, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "secret.md").write_text("# Team A\n\nThe team A vault code is 4471.\n")
    (tmp_path / "b" / "secret.md").write_text("# Team B\n\nThe team B vault code is 9902.\n")
    (tmp_path / "shared.md").write_text("# Everyone\n\nThe office vault is in room 12.\n")
    store.ingest([tmp_path / "a"], scope="team-a")
    store.ingest([tmp_path / "b"], scope="team-b")
    store.ingest([tmp_path / "shared.md"])

    seen_by_a = store.query("what is the vault code", ["team-a", "global"], 10)
    assert {p.scope for p in seen_by_a} == {"team-a", "global"}
    assert not any("9902" in p.text for p in seen_by_a)
    seen_by_b = store.query("what is the vault code", ["team-b", "global"], 10)
    assert not any("4471" in p.text for p in seen_by_b)
    assert [d.scope for d in store.documents("team-a")] == ["team-a"]


def test_a_reopened_collection_embeds_offline_with_the_registered_function(
    store: DocumentStore, docs: Path, settings: Settings
) -> None:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    store.ingest([docs])
    reopened = DocumentStore.open(settings)
    assert reopened.count() == store.count()
    # Any client of the collection: Chroma rebuilds our embedding function from its config.
    client = chromadb.PersistentClient(
        path=str(settings.chroma_dir), settings=ChromaSettings(anonymized_telemetry=False)
    )
    collection = client.get_collection(store.collection_name("global"))
    found = collection.query(query_texts=["error code for an already delivered shipment"], n_results=1)
    assert found["documents"] is not None and "LRK-409" in found["documents"][0][0]


# Through the engine -----------------------------------------------------------------------


def said(text: str, scope: str = "local") -> Incoming:
    return Incoming(text=text, platform="terminal", scope=scope, channel="c", thread="t")


async def run(engine: Engine, incoming: Incoming) -> list[Event]:
    return [event async for event in engine.handle(incoming)]


@pytest.fixture
def engine_with_docs(
    model: FakeModel, history: SqlHistory, settings: Settings, store: DocumentStore, docs: Path
) -> Engine:
    store.ingest([docs])
    return Engine(model, history, settings, store)


async def test_relevant_passages_reach_the_prompt_and_sources_end_the_reply(
    engine_with_docs: Engine, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue("Each key may make 120 requests per minute [1].")
    events = await run(engine_with_docs, said("What is the API rate limit per key?"))
    done = events[-1]
    assert isinstance(done, TurnDone)

    prompt = model.prompts[-1]
    # The persona leads as always; the passages come in a system message of their own just before
    # the message they answer.
    assert prompt[0] == ChatMessage("system", engine_with_docs.settings.chat.system_prompt)
    passages, message = prompt[-2], prompt[-1]
    assert passages.role == "system" and passages.content.startswith(PASSAGES_INTRO)
    assert (
        "Passage [1] (from Shipment API, Rate limits)" in passages.content
        and "120 requests per minute" in passages.content
    )
    assert message == ChatMessage("user", "What is the API rate limit per key?")
    sources = done.metadata["sources"]
    assert sources[0]["n"] == 1 and sources[0]["cited"] is True and sources[0]["title"] == "Shipment API"
    assert all(s["score"] >= 0.3 for s in sources)
    assert sources_footer(sources).startswith("Sources: [1] Shipment API — Rate limits")

    [_, reply] = await history.load(done.conversation_id)
    assert reply.metadata["sources"] == sources  # stored with the reply

    shown = await run(engine_with_docs, said("/sources"))
    result = shown[-1]
    assert isinstance(result, CommandResult) and result.ok
    assert "120 requests per minute" in result.text and "score 0." in result.text


async def test_when_nothing_is_relevant_the_prompt_is_the_one_without_documents(
    engine_with_docs: Engine, model: FakeModel, settings: Settings
) -> None:
    events = await run(engine_with_docs, said("Write a haiku about autumn leaves falling in Kyoto."))
    assert model.prompts[-1] == [
        ChatMessage("system", settings.chat.system_prompt),
        ChatMessage("user", "Write a haiku about autumn leaves falling in Kyoto."),
    ]
    done = events[-1]
    assert isinstance(done, TurnDone) and done.metadata["sources"] == []


async def test_earlier_turns_and_the_system_prompt_stay_as_they_were_for_the_prefix_cache(
    engine_with_docs: Engine, model: FakeModel
) -> None:
    model.enqueue("Each key may make 120 requests per minute [1].")
    await run(engine_with_docs, said("What is the API rate limit per key?"))
    first = model.prompts[-1]
    model.enqueue("Ask for a higher limit in the developer portal.")
    await run(engine_with_docs, said("And how do I raise it?"))
    second = model.prompts[-1]
    # The same system prompt on both turns, and the first exchange as stored, without its
    # passages: all of turn 2's prompt up to that exchange is a prefix of turn 1's.
    assert second[0] == first[0]
    assert [(m.role, m.content) for m in second[1:3]] == [
        ("user", "What is the API rate limit per key?"),
        ("assistant", "Each key may make 120 requests per minute [1]."),
    ]
    assert second[-1] == ChatMessage("user", "And how do I raise it?")


async def test_with_the_search_tool_offered_only_clear_matches_enter_the_prompt(
    model: FakeModel, history: SqlHistory, settings: Settings, store: DocumentStore, docs: Path
) -> None:
    from bot.app import default_tools

    store.ingest([docs])
    settings.retrieval.min_score_with_tools = 0.99
    settings.retrieval.hybrid = False  # by meaning alone: no chunk is first by words as well
    engine = Engine(model, history, settings, store, default_tools(settings))
    await run(engine, said("What is the API rate limit per key?"))
    assert all("120 requests" not in m.content for m in model.prompts[-1])
    assert "search_documents" in [t["function"]["name"] for t in model.tools[-1] or []]
    # Hybrid: the chunk both searches rank first passes at min_score, and only that one.
    settings.retrieval.hybrid = True
    [best, *others] = store.query("What is the API rate limit per key?", ["global"], 4)
    assert best.agreed and "120 requests" in best.text and not any(p.agreed for p in others)
    await run(engine, said("What is the API rate limit per key?"))
    passages = model.prompts[-1][-2].content
    assert "120 requests" in passages and "Passage [2]" not in passages
    settings.retrieval.hybrid = False
    settings.tools.enabled = False  # no tool to search with: the passages come to the model
    await run(engine, said("What is the API rate limit per key?"))
    assert "120 requests" in model.prompts[-1][-2].content


async def test_docs_off_keeps_the_documents_out_of_the_conversation(
    engine_with_docs: Engine, model: FakeModel
) -> None:
    off = await run(engine_with_docs, said("/docs off"))
    assert isinstance(off[-1], CommandResult) and "off" in off[-1].text
    events = await run(engine_with_docs, said("What is the API rate limit per key?"))
    assert all("120 requests" not in m.content and PASSAGES_INTRO not in m.content for m in model.prompts[-1])
    done = events[-1]
    assert isinstance(done, TurnDone) and "sources" not in done.metadata
    await run(engine_with_docs, said("/docs on"))
    await run(engine_with_docs, said("What is the API rate limit per key?"))
    assert "120 requests" in model.prompts[-1][-2].content


async def test_a_conversation_in_another_scope_gets_nothing_from_a_private_scope(
    model: FakeModel, history: SqlHistory, settings: Settings, store: DocumentStore, tmp_path: Path
) -> None:
    (tmp_path / "secret.md").write_text("# Payroll\n\nPayroll runs on the 25th of each month.\n")
    store.ingest([tmp_path / "secret.md"], scope="T-finance")
    engine = Engine(model, history, settings, store)
    await run(engine, said("When does payroll run?", scope="T-sales"))
    assert all("25th" not in m.content for m in model.prompts[-1])
    await run(engine, said("When does payroll run?", scope="T-finance"))
    assert "25th" in model.prompts[-1][-2].content


def test_retrieval_settings_reject_overlap_not_below_size() -> None:
    from config import ConfigError

    with pytest.raises(ConfigError, match="chunk_overlap"):
        load_settings(retrieval={"chunk_size": 200, "chunk_overlap": 200})


def test_the_onnx_embedder_matches_the_pytorch_model(settings: Settings) -> None:
    import numpy as np

    from retrieval.embeddings import Embedder, _torch_runner

    onnx = Embedder.load("all-minilm-l6-v2", settings.model_cache_dir)
    assert onnx.runtime == "onnxruntime" and onnx.dimensions == 384
    reference = Embedder(
        onnx.name, onnx.model_dir, _torch_runner(onnx.model_dir, 0), "torch", onnx.max_tokens
    )
    texts = ["short", "The public API allows 120 requests per minute for each API key. " * 3, "x " * 400]
    a, b = np.array(onnx.embed(texts, batch_size=3)), np.array(reference.embed(texts, batch_size=3))
    assert np.abs(a - b).max() < 1e-4
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_a_strict_chat_template_gets_the_passages_with_the_message_they_answer() -> None:
    from bot.inference.local import _plain

    messages = [
        {"role": "system", "content": "persona"},
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "reply"},
        {"role": "system", "content": "Passage [1] ..."},
        {"role": "user", "content": "question"},
    ]
    assert _plain(messages) == [
        *messages[:3],
        {"role": "user", "content": "Passage [1] ...\n\nquestion"},
    ]


@pytest.mark.slow
def test_a_file_of_many_batches_streams_in_and_a_shorter_version_leaves_nothing_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("CHINWAG_")]:
        monkeypatch.delenv(name)
    settings = load_settings(data_dir=tmp_path / "data", retrieval={"chunk_size": 100, "chunk_overlap": 0})
    store = DocumentStore.open(settings)
    notes = tmp_path / "notes.txt"
    notes.write_text("\n\n".join(f"Note {n}: the locker code for room {n} is {n * 7}." for n in range(600)))
    report = store.ingest([notes])
    assert report.added == [str(notes)] and report.chunks > 256  # more than one batch
    [doc] = store.documents()
    assert doc.chunks == report.chunks == store.count()
    [hit] = store.query("locker code for room 599", ["global"], 1)
    assert "room 599 is 4193" in hit.text

    notes.write_text("Note 1: the locker code for room 1 is 7.")
    assert store.ingest([notes]).updated == [str(notes)]
    [doc] = store.documents()
    assert doc.chunks == 1
    assert [p.text for p in store.query("locker code for room 599", ["global"], 5)] == [
        "Note 1: the locker code for room 1 is 7."
    ]


def test_ingesting_a_device_or_pipe_is_refused_not_read(store: DocumentStore, tmp_path: Path) -> None:
    fifo = tmp_path / "docs" / "waiting.md"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    report = store.ingest([Path("/dev/zero"), fifo.parent])
    assert report.added == [] and store.count() == 0
    reasons = {Path(path).name: why for path, why in report.skipped}
    assert "character device" in reasons["zero"] and "named pipe" in reasons["waiting.md"]
