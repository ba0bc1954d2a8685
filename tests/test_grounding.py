"""Grounded answers: a reply written from passages is shown only if they support it.

The check itself on replies of the kinds small models write; then turns through the engine with a
real Chroma store (real files, real embeddings) and the FakeModel scripted to answer or to invent;
then the default model on a table and a near miss.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.citations import NOT_IN_DOCUMENTS
from bot.engine import Engine
from bot.grounding import leans_to_decline, not_found, support
from bot.types import CommandResult, Event, Incoming, TextDelta, TurnDone
from config import Settings, load_settings
from retrieval.store import DocumentStore, Passage
from storage import SqlHistory
from tests.fakes import FakeModel

OFFICE = """# Berlin office guide

## Getting there

The Berlin office is in Kreuzberg, at Oranienstrasse 21, second courtyard. It opens at 8:00 and
closes at 19:00.

## Rooms

Meeting rooms are booked in the calendar; the largest room, called Spree, seats 16 people.
"""

LAPTOPS = """# Laptops

| Role | Model | Memory | Replaced after |
|---|---|---|---|
| Engineering | ThinkPad P16s | 64 GB | 3 years |
| Design | MacBook Pro 14 | 36 GB | 4 years |
| Support | ThinkPad T14 | 32 GB | 4 years |
"""


def passage(text: str, title: str = "Berlin office guide") -> Passage:
    return Passage("d:0", text, 0.6, title, "/docs/berlin.md", "", "global", "d")


ROOMS = [
    passage("Meeting rooms are booked in the calendar; the largest room, called Spree, seats 16 people.")
]


@pytest.mark.parametrize(
    "reply",
    [
        "The largest room, Spree, seats 16 people [1].",
        "It seats 16 people.",
        "The biggest meeting room is called Spree [1].",
        "Rooms are booked in the calendar.",
    ],
)
def test_a_reply_that_takes_its_facts_from_the_passages_is_grounded(reply: str) -> None:
    assert support(reply, "How many people fit in the largest meeting room?", ROOMS).grounded


@pytest.mark.parametrize(
    ("reply", "invented"),
    [
        ("The largest room seats 20 people [1].", "20"),  # a number the passages do not hold
        ("The largest room is called Havel.", "Havel"),  # a name they do not hold
        ("It is booked through ServiceNow.", "ServiceNow"),
    ],
)
def test_a_reply_stating_what_the_passages_do_not_hold_is_not_grounded(reply: str, invented: str) -> None:
    found = support(reply, "How many people fit in the largest meeting room?", ROOMS)
    assert not found.grounded and invented in found.unsupported


def test_a_reply_that_only_echoes_the_question_is_not_grounded() -> None:
    # "Yes, dogs are allowed": nothing in it comes from the passages.
    found = support(
        "Yes, dogs are allowed in the Berlin office.", "Are dogs allowed in the Berlin office?", ROOMS
    )
    assert not found.grounded and found.supported == ()
    assert not support("I don't know.", "Are dogs allowed?", ROOMS).grounded


def test_the_not_found_reply_names_the_documents_searched() -> None:
    other = passage("Parking is in the basement.", title="Lisbon office guide")
    assert not_found([ROOMS[0], ROOMS[0]]) == (
        "I could not find that in the team's documents. I looked in Berlin office guide, and it does not say."
    )
    assert "Berlin office guide and Lisbon office guide" in not_found([ROOMS[0], other])


# Through the engine, real store ------------------------------------------------------------


def said(text: str) -> Incoming:
    return Incoming(text=text, platform="terminal", scope="local", channel="c", thread="t")


async def run(engine: Engine, incoming: Incoming) -> list[Event]:
    return [event async for event in engine.handle(incoming)]


@pytest.fixture
def engine(model: FakeModel, history: SqlHistory, settings: Settings, tmp_path: Path) -> Engine:
    (tmp_path / "berlin.md").write_text(OFFICE)
    (tmp_path / "laptops.md").write_text(LAPTOPS)
    store = DocumentStore.open(settings)
    store.ingest([tmp_path / "berlin.md", tmp_path / "laptops.md"])
    return Engine(model, history, settings, store)


async def test_an_unanswerable_question_gets_the_could_not_find_reply_and_no_citation(
    engine: Engine, model: FakeModel, history: SqlHistory
) -> None:
    model.enqueue("The ", "Berlin ", "office ", "has ", "40 ", "parking ", "spaces ", "[1].")
    events = await run(engine, said("How many parking spaces does the Berlin office have?"))
    assert "Berlin office guide" in model.prompts[-1][-2].content  # the passages were there
    done = events[-1]
    assert isinstance(done, TurnDone) and done.status == "complete"
    assert done.text.startswith("I could not find that in the team's documents.")
    assert "Berlin office guide" in done.text and "40" not in done.text
    # The invented reply was never shown, and nothing is cited.
    assert [e.text for e in events if isinstance(e, TextDelta)] == [done.text]
    assert done.metadata["sources"] == [] and "[1]" not in done.text
    assert done.metadata["searched"][0]["title"] == "Berlin office guide"
    assert done.metadata["grounding"]["unsupported"] == ["40"]
    [_, stored] = await history.load(done.conversation_id)
    assert stored.content == done.text and stored.metadata["sources"] == []
    shown = (await run(engine, said("/sources")))[-1]
    assert isinstance(shown, CommandResult) and "none of them held the answer" in shown.text
    assert "Berlin office guide" in shown.text


async def test_an_answer_from_the_passages_is_shown_with_its_citation(
    engine: Engine, model: FakeModel
) -> None:
    model.enqueue("A ", "design ", "laptop ", "has ", "36 ", "GB ", "of ", "memory ", "[1].")
    events = await run(engine, said("How much memory does a design laptop have?"))
    done = events[-1]
    assert isinstance(done, TurnDone)
    assert done.text == "A design laptop has 36 GB of memory [1]."
    assert done.metadata["grounding"]["grounded"] is True
    assert done.metadata["sources"][0]["title"] == "Laptops" and done.metadata["sources"][0]["cited"]


async def test_plain_chat_not_about_the_documents_streams_as_before(
    engine: Engine, model: FakeModel, settings: Settings
) -> None:
    model.enqueue("Light ", "travels ", "at ", "about ", "300,000 ", "km/s.")
    events = await run(engine, said("Write a haiku about autumn leaves falling in Kyoto."))
    assert len(model.prompts[-1]) == 2  # no passages
    assert [e.text for e in events if isinstance(e, TextDelta)] == [
        "Light ",
        "travels ",
        "at ",
        "about ",
        "300,000 ",
        "km/s.",
    ]
    done = events[-1]
    assert isinstance(done, TurnDone) and "grounding" not in done.metadata


async def test_a_model_leaning_to_decline_gets_the_could_not_find_reply_whatever_it_wrote(
    engine: Engine, model: FakeModel
) -> None:
    # Words all from the passages, so only the model's own leaning can tell: e^-0.9 = 41% "Not".
    engine.settings.retrieval.decline_logprob = -1.2
    model.leaning = -0.9
    model.enqueue("The ", "Spree ", "room ", "seats ", "16 ", "people ", "[1].")
    done = (await run(engine, said("How many people fit in the Berlin office's rooftop bar?")))[-1]
    # Asked in the answer's prompt, its passages' task asking for exactly that opening.
    [scored] = model.scored
    assert scored[:-2] == model.prompts[-1][:-2] and scored[-1] == model.prompts[-1][-1]
    assert f"reply only: {NOT_IN_DOCUMENTS}." in scored[-2].content
    assert "Spree" in scored[-2].content and NOT_IN_DOCUMENTS not in model.prompts[-1][-2].content
    assert isinstance(done, TurnDone)
    assert done.text.startswith("I could not find that in the team's documents.")
    assert done.metadata["grounding"]["decline_logprob"] == -0.9
    assert done.metadata["grounding"]["grounded"] is True and done.metadata["sources"] == []


@pytest.mark.parametrize(
    ("leaning", "threshold"),
    [(-2.5, -1.2), (None, -1.2), (-0.1, 0.0)],
    ids=["unlikely", "not-reported", "off"],
)
async def test_a_model_not_leaning_to_decline_keeps_its_grounded_answer(
    engine: Engine, model: FakeModel, leaning: float | None, threshold: float
) -> None:
    engine.settings.retrieval.decline_logprob = threshold
    model.leaning = leaning
    model.enqueue("The ", "Spree ", "room ", "seats ", "16 ", "people ", "[1].")
    done = (await run(engine, said("How many people does the Spree room seat?")))[-1]
    assert len(model.scored) == (1 if threshold < 0 else 0)
    assert isinstance(done, TurnDone) and done.text == "The Spree room seats 16 people [1]."


async def test_without_passages_the_model_is_not_asked_whether_they_answer(
    engine: Engine, model: FakeModel
) -> None:
    engine.settings.retrieval.decline_logprob = -1.2
    model.leaning = -0.1
    model.enqueue("Leaves ", "drift ", "down.")
    done = (await run(engine, said("Write a haiku about autumn leaves falling in Kyoto.")))[-1]
    assert model.scored == []
    assert isinstance(done, TurnDone) and done.text == "Leaves drift down."


async def test_the_leaning_is_not_asked_for_by_default(engine: Engine, model: FakeModel) -> None:
    model.leaning = -0.1
    model.enqueue("The ", "Spree ", "room ", "seats ", "16 ", "people ", "[1].")
    done = (await run(engine, said("How many people does the Spree room seat?")))[-1]
    assert model.scored == [] and isinstance(done, TurnDone) and done.text.endswith("[1].")


def test_leaning_to_decline_is_at_or_above_the_threshold() -> None:
    assert leans_to_decline(-1.2, -1.2) and leans_to_decline(-0.3, -1.2)
    assert not leans_to_decline(-1.21, -1.2)
    assert not leans_to_decline(None, -1.2) and not leans_to_decline(-0.0, 0.0)


async def test_grounded_false_shows_the_reply_as_written(engine: Engine, model: FakeModel) -> None:
    engine.settings.retrieval.grounded = False
    model.enqueue("The Berlin office has 40 parking spaces.")
    done = (await run(engine, said("How many parking spaces does the Berlin office have?")))[-1]
    assert isinstance(done, TurnDone) and done.text == "The Berlin office has 40 parking spaces."


# The default model ---------------------------------------------------------------------------


@pytest.mark.model
@pytest.mark.default_model
async def test_default_model_answers_from_a_table_and_declines_a_near_miss(tmp_path: Path) -> None:
    from bot.inference.local import TransformersModel

    settings = load_settings(
        data_dir=tmp_path / "data",
        model={"name": "qwen2.5-coder-0.5b-instruct"},
        generation={"temperature": 0.0, "max_tokens": 80},
        retrieval={"decline_logprob": -1.2},
    )
    (tmp_path / "laptops.md").write_text(LAPTOPS)
    (tmp_path / "berlin.md").write_text(OFFICE)
    store = await asyncio.to_thread(DocumentStore.open, settings)
    await asyncio.to_thread(store.ingest, [tmp_path / "laptops.md", tmp_path / "berlin.md"])
    model = await asyncio.to_thread(
        TransformersModel.load, settings.model, settings.model_cache_dir, progress=False
    )
    history = await SqlHistory.open(settings)
    try:
        engine = Engine(model, history, settings, store)
        table = (await run(engine, said("How much memory does a design laptop have?")))[-1]
        miss = (await run(engine, said("How many parking spaces does the Berlin office have?")))[-1]
    finally:
        await history.close()
        model.close()
    assert isinstance(table, TurnDone) and "36" in table.text
    assert table.metadata["sources"] and table.metadata["sources"][0]["title"] == "Laptops"
    assert isinstance(miss, TurnDone) and miss.text.startswith(
        "I could not find that in the team's documents."
    )
    assert miss.metadata["sources"] == []
    # The model was asked how readily it would decline, for both (a log-probability).
    assert table.metadata["grounding"]["decline_logprob"] < miss.metadata["grounding"]["decline_logprob"] <= 0
