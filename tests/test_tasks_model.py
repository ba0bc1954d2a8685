"""Language tasks with real models: the default model once per task, and the constraint on the
weak test model (whose free output is rarely a well-formed call)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.engine import Engine
from bot.inference.local import TransformersModel
from bot.seams.model import Chunk, Finish
from bot.tasks.actions import TOOL_SCHEMA, fits, read_call
from bot.tools.grammar import ToolCallGrammar
from bot.types import ChatMessage, GenerationParams, Incoming, SourceMessage, TurnDone
from config import load_settings
from storage import SqlHistory

DEFAULT = "qwen2.5-coder-0.5b-instruct"
SMALL = "smollm2-135m-instruct"
MONDAY = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
THREAD = tuple(
    SourceMessage(text, author=author, id=str(n), timestamp=MONDAY + timedelta(minutes=n))
    for n, (author, text) in enumerate(
        [
            ("Ana", "The nightly backup job failed because the S3 bucket policy changed."),
            ("Raj", "I'll restore the old bucket policy today and rerun the backup."),
            ("Mei", "Can someone add a check that alerts us when the backup fails?"),
            ("Raj", "Sure, I'll add the backup alert by Friday."),
        ]
    )
)


@pytest.fixture(scope="module")
def default_model() -> Iterator[TransformersModel]:
    settings = load_settings(model={"name": DEFAULT})
    model = TransformersModel.load(settings.model, settings.model_cache_dir, progress=False)
    yield model
    model.close()


@pytest.fixture
async def engine(default_model: TransformersModel, tmp_path: Path) -> AsyncIterator[Engine]:
    settings = load_settings(data_dir=tmp_path / "data", model={"name": DEFAULT})
    history = await SqlHistory.open(settings)
    try:
        yield Engine(default_model, history, settings)
    finally:
        await history.close()


async def done(engine: Engine, text: str, source: tuple[SourceMessage, ...] | None = None) -> TurnDone:
    incoming = Incoming(
        text=text, platform="terminal", channel="t", thread=text, source=source, source_label="#ops"
    )
    events = [event async for event in engine.handle(incoming)]
    assert isinstance(events[-1], TurnDone), events[-1]
    return events[-1]


@pytest.mark.model
@pytest.mark.default_model
async def test_default_model_summarises_a_thread_in_its_own_words(engine: Engine) -> None:
    summary = (await done(engine, "/summarize", THREAD)).text
    assert "backup" in summary.lower() and "Raj" in summary
    copied = [m.text for m in THREAD if m.text in summary]
    assert len(copied) < len(THREAD)  # a summary, not the thread pasted back


@pytest.mark.model
@pytest.mark.default_model
async def test_default_model_translates_and_leaves_code_and_links_alone(engine: Engine) -> None:
    text = "The meeting is moved to Thursday. Run `make test` first, see https://example.com/notes"
    translated = (await done(engine, f"/translate French {text}")).text
    low = translated.lower()
    # French, not the English back (the 0.5B model rendered "Thursday" as "le 4ème" once: it is
    # held to translating, not to every word).
    assert "is moved" not in low and any(word in low for word in ("déplacé", "réunion", "jeudi"))
    assert "`make test`" in translated and "https://example.com/notes" in translated


@pytest.mark.model
@pytest.mark.default_model
async def test_default_model_extracts_action_items_that_fit_the_schema(engine: Engine) -> None:
    reply = await done(engine, "/actions", THREAD)
    items = reply.metadata["action_items"]
    assert items and all(set(item) == {"what", "who", "when", "message"} for item in items)
    assert any("alert" in item["what"].lower() for item in items)
    assert reply.text.startswith("- [ ] ")


@pytest.fixture(scope="module")
def small_model() -> Iterator[TransformersModel]:
    settings = load_settings(model={"name": SMALL, "threads": 0})
    model = TransformersModel.load(settings.model, settings.model_cache_dir, progress=False)
    yield model
    model.close()


@pytest.mark.model
async def test_the_required_constraint_holds_on_a_weak_model(small_model: TransformersModel) -> None:
    prompt = [
        ChatMessage("system", "List the action items of the chat."),
        ChatMessage("user", "\n".join(f"[{n}] {m.author}: {m.text}" for n, m in enumerate(THREAD, start=1))),
    ]
    params = GenerationParams(temperature=0.0, max_tokens=400)

    async def reply(constrain: bool | str) -> tuple[str, str]:
        text, reason = "", ""
        async for item in small_model.stream(prompt, params, [TOOL_SCHEMA], constrain):  # type: ignore[arg-type]
            if isinstance(item, Chunk):
                text += item.text
            elif isinstance(item, Finish):
                reason = item.reason
        return text, reason

    (free, _), (constrained, reason) = await asyncio.gather(reply(False), reply("required"))
    assert not fits(free)  # left alone, the 135M model does not answer with the call
    # Constrained, every token continued a well-formed call: it is whole, or it was cut off by
    # max_tokens (the engine then asks again, and never shows a call that does not fit).
    grammar = ToolCallGrammar([TOOL_SCHEMA], required=True)
    assert grammar.feed(grammar.start(), constrained) is not None
    assert fits(constrained) or reason == "length"
    if fits(constrained):
        assert read_call(constrained) is not None
