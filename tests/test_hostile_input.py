"""Input nothing else accepts is kept, and private data stays private: text that is not valid
UTF-8, lone surrogates, a turn that fails before its message is stored, the data directory's
permissions, message text in DEBUG logs."""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.app import configure_logging, open_history
from bot.engine import Engine
from bot.seams.history import ConversationKey, NewMessage
from bot.text import repair
from bot.types import Event, Incoming, TurnDone, TurnFailed
from config import Settings, load_settings
from storage import SqlHistory
from tests.fakes import FakeModel


def said(text: str) -> Incoming:
    return Incoming(text=text, platform="slack", scope="T1", channel="C1", thread="t1")


async def run(engine: Engine, incoming: Incoming) -> list[Event]:
    return [event async for event in engine.handle(incoming)]


def test_repair_replaces_only_lone_surrogates_and_keeps_the_original() -> None:
    assert repair("plain é 😀") == ("plain é 😀", None)
    fixed, original = repair("What is \udcff 2+2?")  # the byte 0xff, decoded with surrogateescape
    assert fixed == "What is \ufffd 2+2?"
    assert original is not None and json.loads(original).encode("utf-8", "surrogateescape") == (
        b"What is \xff 2+2?"
    )
    assert repair("a\ud800b")[0] == "a\ufffdb"
    assert repair("x\ud83d\ude00y") == ("x😀y", None)  # a pair that belongs together is joined


@pytest.mark.parametrize("text", ["What is \udcff 2+2?", "lone \ud800 surrogate", "\udc80\udcff"])
async def test_text_with_lone_surrogates_is_stored_repaired_and_answered(
    engine: Engine, model: FakeModel, history: SqlHistory, text: str
) -> None:
    model.enqueue("It", " is", " 4.")
    events = await run(engine, said(text))
    done = events[-1]
    assert isinstance(done, TurnDone), events
    question, answer = await history.load(done.conversation_id)
    assert question.content == repair(text)[0].strip() and "\ufffd" in question.content
    assert json.loads(question.metadata["original_text"]) == text
    assert answer.content == "It is 4."
    assert "\ufffd" in model.prompts[0][-1].content


class UntokenizableModel(FakeModel):
    """A model whose tokenizer refuses the text: the turn fails before the message is stored."""

    def count_text_tokens(self, text: str) -> int:
        raise TypeError("TextEncodeInput must be Union[TextInputSequence, ...]")


async def test_a_message_that_was_not_stored_is_never_said_to_be_kept(
    history: SqlHistory, settings: Settings
) -> None:
    engine = Engine(UntokenizableModel(), history, settings)
    [failed] = await run(engine, said("hello"))
    assert isinstance(failed, TurnFailed)
    assert "kept" not in failed.message and "could not be saved" in failed.message
    conv = await history.find(ConversationKey("slack", "T1", "C1", "t1"))
    assert conv is None or await history.load(conv.id) == []


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[None]:
    """Restore the root logger after a test that configures chinwag's logging."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_data_directory_database_and_log_are_private(tmp_path: Path, logged: None) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    configure_logging(settings)
    logging.getLogger("bot.test").warning("hello")
    store = await open_history(settings)
    await store.close()
    assert mode(tmp_path / "data") == 0o700
    assert mode(tmp_path / "data" / "logs") == 0o700
    assert mode(tmp_path / "data" / "chinwag.db") == 0o600
    assert mode(tmp_path / "data" / "logs" / "chinwag.log") == 0o600


@pytest.mark.parametrize("message_text", [False, True])
async def test_debug_logs_hold_message_text_only_when_turned_on(
    tmp_path: Path, logged: None, message_text: bool
) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data", logging={"level": "DEBUG", "message_text": message_text}
    )
    configure_logging(settings)
    store = await open_history(settings)
    try:
        conv = await store.resolve(ConversationKey("cli", "local", "ask", "x"))
        await store.append(conv.id, NewMessage("user", "my password is ZEBRA-4242"))
    finally:
        await store.close()
    logging.getLogger("bot.engine").debug("chinwag's own debug line")
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = settings.log_file.read_text()
    assert "chinwag's own debug line" in text
    assert ("ZEBRA-4242" in text) is message_text
