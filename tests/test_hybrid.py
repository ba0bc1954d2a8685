"""Hybrid retrieval on a real Chroma store and a real SQLite FTS5 index in tmp_path.

Questions that hinge on one word (an acronym, a number in a table) are found; ingestion, removal
and re-ingestion keep the keyword index in step with Chroma; the keyword index keeps scopes apart;
a store whose keyword index is missing (an upgrade, a lost file) rebuilds it from Chroma.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config import Settings, load_settings
from retrieval.keyword import KeywordIndex, query_terms
from retrieval.store import DocumentStore

EVAL_CORPUS = Path(__file__).resolve().parent.parent / "bench" / "eval_corpus"

SERVICES = """# Service catalogue

## Shipping

Label printing is handled by a service that renders shipping labels for every parcel we send.

## Routing

Drivers' routes are planned overnight by a service that reads the next day's deliveries.

## Money

KVR owns the monthly invoices: it turns shipment counts into one invoice per customer.

## Payments

Card payments are reconciled with the bank every night by a batch job.

## People

New hires are copied from the HR system into the identity provider each morning.
"""

VENDORS = """# Vendor contracts

Procurement keeps the list of vendors current and negotiates renewals.

## Table

| Vendor | Service | Annual cost (EUR) |
|---|---|---|
| Nordlicht Cloud | Object storage | 84,000 |
| Pellucid Maps | Geocoding | 132,000 |
| Sablewire | SMS notifications | 41,200 |

## Renewals

Renewals are negotiated by the owner at least 60 days before a contract ends.
"""


@pytest.fixture
def small_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in [n for n in os.environ if n.startswith("CHINWAG_")]:
        monkeypatch.delenv(name)
    # Small chunks: each section its own passage, so a rank says which one was found.
    return load_settings(data_dir=tmp_path / "data", retrieval={"chunk_size": 200, "chunk_overlap": 0})


def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "services.md").write_text(SERVICES)
    (folder / "vendors.md").write_text(VENDORS)
    return folder


def keyword_index(settings: Settings) -> KeywordIndex:
    return KeywordIndex(settings.chroma_dir / f"{settings.retrieval.collection}-keywords.sqlite3")


def test_an_acronym_alone_finds_its_passage_where_meaning_alone_does_not(
    tmp_path: Path, settings: Settings
) -> None:
    # The evaluation corpus: real files of every kind, where passages compete as they do in use.
    store = DocumentStore.open(settings)
    store.ingest([EVAL_CORPUS])
    question = "At what time does PSR run?"  # the passage spells it out once: "PSR (Payment ...)"
    [best] = store.query(question, ["global"], 1)
    assert "(Payment Settlement Runner)" in best.text and "03:00" in best.text
    assert best.keyword is not None and best.fused > 0
    # The same question by meaning alone: nightly jobs in other documents rank above it.
    settings.retrieval.hybrid = False
    dense = DocumentStore.open(settings)
    assert "PSR" not in dense.query(question, ["global"], 1)[0].text


def test_a_number_in_a_markdown_table_is_found(small_chunks: Settings, tmp_path: Path) -> None:
    store = DocumentStore.open(small_chunks)
    store.ingest([corpus(tmp_path)])
    [best] = store.query("What does Pellucid Maps cost per year?", ["global"], 1)
    assert "| Pellucid Maps | Geocoding | 132,000 |" in best.text
    # And the other way round: the number finds its row.
    [row] = store.query("Which vendor costs 41,200 euros?", ["global"], 1)
    assert "Sablewire" in row.text


def test_removal_and_reingest_keep_both_indexes_in_step(small_chunks: Settings, tmp_path: Path) -> None:
    store = DocumentStore.open(small_chunks)
    folder = corpus(tmp_path)
    store.ingest([folder])
    index = keyword_index(small_chunks)
    assert index.count("global") == store.count() > 2
    assert {d.id for d in store.documents()} == set(index.documents())

    store.remove(str(folder / "vendors.md"))
    assert index.count("global") == store.count()
    assert index.search("global", "Pellucid", 5) == []
    assert all("Pellucid" not in p.text for p in store.query("Pellucid Maps", ["global"], 10))

    (folder / "services.md").write_text(SERVICES.replace("KVR", "QBS"))
    again = store.ingest([folder])
    assert again.updated == [str(folder / "services.md")] and again.added == [str(folder / "vendors.md")]
    assert index.count("global") == store.count()
    assert index.search("global", "KVR", 5) == []
    [best] = store.query("What does QBS do?", ["global"], 1)
    assert "QBS owns the monthly invoices" in best.text
    [doc] = [d for d in store.documents() if d.path.endswith("services.md")]
    assert index.documents()[doc.id].sha256 == doc.sha256


def test_a_lost_keyword_index_is_rebuilt_from_chroma(small_chunks: Settings, tmp_path: Path) -> None:
    store = DocumentStore.open(small_chunks)
    store.ingest([corpus(tmp_path)])
    chunks = store.count()
    path = keyword_index(small_chunks).path
    for leftover in path.parent.glob(path.name + "*"):  # the file and its WAL
        leftover.unlink()
    reopened = DocumentStore.open(small_chunks)
    assert keyword_index(small_chunks).count("global") == chunks
    [best] = reopened.query("What does KVR do?", ["global"], 1)
    assert "KVR" in best.text


def test_the_keyword_index_keeps_scopes_apart(small_chunks: Settings, tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Team A\n\nThe zanzibar vault code is 4471.\n")
    (tmp_path / "b.md").write_text("# Team B\n\nThe quokka vault code is 9902.\n")
    (tmp_path / "shared.md").write_text("# Everyone\n\nThe office vault is in room 12.\n")
    store = DocumentStore.open(small_chunks)
    store.ingest([tmp_path / "a.md"], scope="team-a")
    store.ingest([tmp_path / "b.md"], scope="team-b")
    store.ingest([tmp_path / "shared.md"])

    index = keyword_index(small_chunks)
    assert index.search("team-b", "zanzibar 4471", 10) == []
    assert [h.chunk_id.split(":")[0] for h in index.search("team-a", "zanzibar 4471", 10)] == [
        d.id for d in store.documents("team-a")
    ]
    # Asked by team B with team A's own words: none of team A's chunks, by meaning or by words.
    seen = store.query("zanzibar vault code 4471", ["team-b", "global"], 10)
    assert seen and {p.scope for p in seen} <= {"team-b", "global"}
    assert not any("4471" in p.text or "zanzibar" in p.text for p in seen)


def test_query_terms_keep_names_acronyms_and_numbers() -> None:
    assert query_terms("What does the QBS do with 132,000 euros?") == ["qbs", "132", "000", "euros"]
    # FTS5's own syntax in a question is taken as words.
    assert query_terms('"QBS" NEAR(PSR*) -FXR') == ["qbs", "near", "psr", "fxr"]
    assert query_terms("what is it?") == []


def test_in_a_large_index_words_in_most_chunks_are_left_out_of_the_query(tmp_path: Path) -> None:
    index = KeywordIndex(tmp_path / "k.sqlite3")
    rows = [
        (f"d:{n}", "d", "Deliveries", f"Every delivery leaves the warehouse; parcel {n}.")
        for n in range(1200)
    ]
    rows[700] = (
        "d:700",
        "d",
        "Deliveries",
        "Every delivery leaves the warehouse; the Quokka depot is closed.",
    )
    index.replace("global", [], rows, [("d", "sha", len(rows))])
    # "deliveries" and "warehouses" (stemmed in the index) are in every chunk: only "quokka" counts.
    assert [h.chunk_id for h in index.search("global", "Which warehouses' deliveries go to Quokka?", 5)] == [
        "d:700"
    ]
    assert index.search("global", "deliveries warehouses", 5) == []
    # A small index keeps every word: there, they cost nothing.
    small = KeywordIndex(tmp_path / "small.sqlite3")
    small.replace("global", [], rows[:10], [("d", "sha", 10)])
    assert len(small.search("global", "deliveries warehouses", 5)) == 5


def test_only_a_chunk_both_searches_rank_first_is_marked_agreed(tmp_path: Path, settings: Settings) -> None:
    store = DocumentStore.open(settings)
    store.ingest([EVAL_CORPUS])
    # A table row: first by its words, and by meaning too, though its cosine is low (~0.4).
    best, *others = store.query("What does Nordlicht Cloud cost us a year?", ["global"], 4)
    assert best.agreed and "Nordlicht Cloud" in best.text and best.score < 0.5
    assert not any(p.agreed for p in others)
    # The acronym the meaning alone misses: the two searches disagree, nothing is marked.
    assert not any(p.agreed for p in store.query("At what time does PSR run?", ["global"], 4))
    settings.retrieval.hybrid = False
    assert not any(p.agreed for p in store.query("What does Nordlicht Cloud cost us a year?", ["global"], 4))
