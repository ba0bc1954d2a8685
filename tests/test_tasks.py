"""Language tasks through the engine with the FakeModel at its seam, on a real SQLite history:
what the model is given (every part of a long thread, names not ids, no bots), what is stored,
and the one-line answers to bad input."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest

from bot.engine import Engine
from bot.tasks.actions import TOOL_SCHEMA, fits
from bot.tasks.dates import resolve_date
from bot.tasks.languages import flag_language, language
from bot.tasks.protect import protect, restore
from bot.tools.grammar import ToolCallGrammar
from bot.types import (
    ChatMessage,
    Event,
    Incoming,
    Notice,
    SourceMessage,
    TextDelta,
    TurnDone,
    TurnFailed,
    TurnStarted,
)
from config import Settings
from storage import SqlHistory
from tests.fakes import FakeModel

MONDAY = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)


def thread(n: int, start: datetime = MONDAY) -> tuple[SourceMessage, ...]:
    people = ["Ana", "Raj", "Mei"]
    return tuple(
        SourceMessage(
            f"message number {i} about the db-2 migration plan",
            author=people[i % 3],
            id=f"T1:C1:{1000 + i}.0",
            timestamp=start + timedelta(minutes=i),
            link=f"https://example.slack.com/archives/C1/p{1000 + i}0",
        )
        for i in range(1, n + 1)
    )


def asked(text: str, source: tuple[SourceMessage, ...] | None = None, **kw: object) -> Incoming:
    fields: dict[str, object] = {"platform": "terminal", "channel": "repl", "thread": "t1"}
    fields.update(kw)
    return Incoming(text=text, source=source, source_label="#ops" if source is not None else None, **fields)  # type: ignore[arg-type]


async def run(engine: Engine, incoming: Incoming) -> list[Event]:
    return [event async for event in engine.handle(incoming)]


def user_prompt(prompt: list[ChatMessage]) -> str:
    """What the model was given to read: the last user message (after any worked example)."""
    return [m.content for m in prompt if m.role == "user"][-1]


def read_lines(prompt: list[ChatMessage]) -> list[str]:
    return [line for line in user_prompt(prompt).splitlines() if line.startswith("[")]


async def test_summary_reads_names_leaves_bots_out_links_citations_and_is_stored(
    engine: Engine, model: FakeModel, history: SqlHistory
) -> None:
    source = (
        *thread(3),
        SourceMessage("deploy bot: build 512 passed", author="CI", id="T1:C1:2000.0", bot=True),
    )
    model.enqueue("- Ana plans the migration ", "[1][3]")
    events = await run(engine, asked("/summarize", source))

    assert isinstance(events[0], TurnStarted)
    prompt = user_prompt(model.prompts[0])
    assert "[1] Raj: message number 1" in prompt and "[2] Mei:" in prompt and "[3] Ana:" in prompt
    assert "build 512" not in prompt  # bots are left out unless asked
    done = events[-1]
    assert isinstance(done, TurnDone)
    assert done.text == (
        "- Ana plans the migration [1](https://example.slack.com/archives/C1/p10010)"
        "[3](https://example.slack.com/archives/C1/p10030)"
    )
    stored = await history.load(done.conversation_id)
    request, answer = stored
    assert request.metadata["read"] == ["T1:C1:1001.0", "T1:C1:1002.0", "T1:C1:1003.0"]
    assert request.metadata["task"] == "summarize" and "[2] Mei: message number 2" in request.content
    assert answer.metadata["task"] == "summarize" and answer.metadata["reply_to"] == request.id

    # A follow-up sees what was read and what was said.
    model.enqueue("Nobody disagreed.")
    await run(engine, asked("and who disagreed?"))
    follow_up = "\n".join(m.content for m in model.prompts[-1])
    assert "[3] Ana: message number 3" in follow_up and "Ana plans the migration" in follow_up


async def test_bots_are_read_when_asked(engine: Engine, model: FakeModel) -> None:
    source = (*thread(1), SourceMessage("build 512 passed", author="CI", bot=True))
    await run(engine, asked("/summarize bots", source))
    assert "[2] CI: build 512 passed" in user_prompt(model.prompts[0])


async def test_a_thread_longer_than_the_window_is_read_in_parts_then_combined(
    settings: Settings, history: SqlHistory
) -> None:
    model = FakeModel(context_window=900)
    settings.tasks.summary_tokens = 100
    engine = Engine(model, history, settings)
    source = thread(120)  # ~1,400 words: several pieces of at most 640 tokens
    model.responder = lambda prompt: ["notes", " [7]"] if "one part" in prompt[0].content else None
    model.enqueue("- the whole thread [7]")
    events = await run(engine, asked("/summarize", source))

    notices = [e.text for e in events if isinstance(e, Notice)]
    parts = [t for t in notices if t.startswith("Reading 120 messages… part")]
    assert len(parts) >= 3 and parts[0].endswith(f"part 1 of {len(parts)}")
    map_prompts = [p for p in model.prompts if "one part" in p[0].content]
    assert len(map_prompts) == len(parts)
    # Every message went to the model exactly once, in order, and no prompt overflowed the window.
    seen = [line for p in map_prompts for line in read_lines(p)]
    assert seen == [f"[{i}] {m.author}: {m.text}" for i, m in enumerate(source, start=1)]
    assert all(model.count_tokens(p) + 100 <= 900 for p in model.prompts)
    final = model.prompts[-1]
    assert "consecutive parts" in final[0].content and "Notes on part 1:" in user_prompt(final)
    done = events[-1]
    assert isinstance(done, TurnDone) and done.metadata["parts"] == len(parts)
    assert done.text.startswith("- the whole thread [7](https://")


async def test_combining_ends_even_when_a_piece_holds_little_and_notes_run_long(
    settings: Settings, history: SqlHistory
) -> None:
    import asyncio

    model = FakeModel()
    settings.tasks.piece_tokens = 256  # the smallest allowed
    engine = Engine(model, history, settings)
    wordy = [" note"] * 1000  # a model that writes until it is stopped
    model.responder = lambda prompt: (
        wordy if "one part" in prompt[0].content or "consecutive" in prompt[0].content else None
    )
    model.enqueue("- the whole thread")
    events = await asyncio.wait_for(run(engine, asked("/summarize", thread(120))), 60)
    assert isinstance(events[-1], TurnDone)
    notes = [p for p, q in zip(model.prompts, model.params, strict=True) if "one part" in p[0].content]
    assert notes and all(
        q.max_tokens <= 64 for p, q in zip(model.prompts, model.params, strict=True) if p in notes
    )
    rounds = [e.text for e in events if isinstance(e, Notice) and "round" in e.text]
    assert len(rounds) <= 4  # each round reads at least four notes


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ((), "Nothing to summarise: #ops has no messages."),
        ((SourceMessage("ci: green", author="CI", bot=True),), "1 from bots are left out"),
    ],
)
async def test_an_empty_thread_gets_one_line_and_nothing_is_stored(
    engine: Engine, model: FakeModel, history: SqlHistory, source: tuple[SourceMessage, ...], says: str
) -> None:
    events = await run(engine, asked("/summarize", source))
    assert len(events) == 1 and isinstance(events[0], TurnFailed) and says in events[0].message
    assert "\n" not in events[0].message and model.prompts == []


async def test_too_many_messages_are_refused_before_any_work(
    engine: Engine, model: FakeModel, settings: Settings
) -> None:
    events = await run(engine, asked("/summarize", thread(settings.tasks.max_messages + 1)))
    assert len(events) == 1 and isinstance(events[0], TurnFailed)
    assert "5001 messages; one task reads at most 5000" in events[0].message and model.prompts == []


async def test_translation_passes_code_mentions_links_and_emoji_through(
    engine: Engine, model: FakeModel
) -> None:
    text = "Hi <@U123>, the fix is `make test` 🎉 see https://example.com/x\n```\nrm -rf build\n```"
    model.responder = lambda prompt: (
        ["Salut ⟦1⟧, le correctif est ⟦2⟧ ⟦3⟧ voir ⟦4⟧\n⟦5⟧"] if "French" in prompt[0].content else None
    )
    events = await run(engine, asked(f"/translate fr {text}"))

    given = user_prompt(model.prompts[0])
    assert "make test" not in given and "U123" not in given and "rm -rf" not in given and "⟦5⟧" in given
    done = events[-1]
    assert isinstance(done, TurnDone)
    assert (
        done.text
        == "Salut <@U123>, le correctif est `make test` 🎉 voir https://example.com/x\n```\nrm -rf build\n```"
    )
    assert done.metadata["language"] == "fr"


@pytest.mark.parametrize("lang", ["klingonese", "zz"])
async def test_an_unknown_language_is_one_clear_line(engine: Engine, model: FakeModel, lang: str) -> None:
    events = await run(engine, asked(f"/translate {lang} hello"))
    assert len(events) == 1 and isinstance(events[0], TurnFailed)
    assert f"I don't know the language '{lang}'" in events[0].message and model.prompts == []


def call(items: list[dict[str, object]]) -> str:
    return json.dumps({"name": "record_action_items", "arguments": {"items": items}})


async def test_actions_are_a_checklist_with_dates_resolved_against_their_message(
    engine: Engine, model: FakeModel, history: SqlHistory
) -> None:
    source = (
        SourceMessage("can you rotate the keys tomorrow?", author="Ana", timestamp=MONDAY),
        SourceMessage(
            "sure, and I'll file the report by Friday", author="Raj", timestamp=MONDAY + timedelta(days=2)
        ),
    )
    model.enqueue(
        call(
            [
                {"what": "Rotate the keys", "who": "Raj", "when": "tomorrow", "message": 1},
                {"what": "File the report", "who": "Raj", "when": "by Friday", "message": 2},
                {"what": "Buy cake", "who": None, "when": None, "message": 2},
            ]
        )
    )
    events = await run(engine, asked("/actions", source))

    assert model.constrained == ["required"] and model.tools[0] == [TOOL_SCHEMA]
    done = events[-1]
    assert isinstance(done, TurnDone)
    assert done.text.splitlines() == [
        "- [ ] Rotate the keys — **Raj** · due 2026-12-08 [1]",
        "- [ ] File the report — **Raj** · due 2026-12-11 [2]",
        "- [ ] Buy cake — _unassigned_ [2]",
    ]
    assert done.metadata["action_items"][0] == {
        "what": "Rotate the keys",
        "who": "Raj",
        "when": "2026-12-08",
        "message": 1,
    }


async def test_malformed_action_output_is_asked_again_and_never_shown(
    engine: Engine, model: FakeModel
) -> None:
    model.enqueue('{"name": "record_action_items", "arguments": {"items": [{"what": "x"')  # cut short
    model.enqueue(call([{"what": "Ship it", "who": "Mei", "when": None, "message": 1}]))
    events = await run(engine, asked("/actions Mei: I will ship it"))
    done = events[-1]
    assert isinstance(done, TurnDone) and done.text == "- [ ] Ship it — **Mei** [1]"
    assert len(model.prompts) == 2

    model.enqueue("Sure! Here are the items: ship it")
    model.enqueue('{"name": "record_action_items", "arguments": {"items": "ship it"}}')  # wrong type
    events = await run(engine, asked("/actions Mei: I will ship it"))
    failed = events[-1]
    assert isinstance(failed, TurnFailed) and "did not fit the expected form" in failed.message
    assert not any(isinstance(e, TextDelta) for e in events)


async def test_a_custom_command_fills_its_template_with_few_shot_examples(
    settings: Settings, history: SqlHistory
) -> None:
    model = FakeModel()
    engine = Engine(model, history, settings)
    model.enqueue("The deploy moved to tomorrow.")
    events = await run(engine, asked("/tldr", thread(2)))
    prompt = model.prompts[0]
    assert [m.role for m in prompt] == ["system", "user", "assistant", "user"]
    assert "db-2 ran out of disk" in prompt[2].content  # the shipped example's answer
    assert prompt[3].content.endswith(
        "[1] Raj: message number 1 about the db-2 migration plan\n"
        "[2] Mei: message number 2 about the db-2 migration plan"
    )
    assert model.params[0].max_tokens == 120 and model.params[0].temperature == 0.0
    assert isinstance(events[-1], TurnDone) and events[-1].text == "The deploy moved to tomorrow."


async def test_a_custom_command_with_a_schema_answers_json_through_the_constraint(
    settings: Settings, history: SqlHistory
) -> None:
    from config.settings import CustomCommand

    schema = {"type": "object", "properties": {"risk": {"type": "string"}}, "required": ["risk"]}
    settings.tasks.commands = [CustomCommand(name="risks", prompt="Risks in:\n{text}", output_schema=schema)]
    model = FakeModel()
    engine = Engine(model, history, settings)
    model.enqueue('<tool_call>{"name": "risks", "arguments": {"risk": "disk"}}</tool_call>')
    events = await run(engine, asked("/risks the disk is nearly full"))
    assert model.constrained == ["required"]
    assert isinstance(events[-1], TurnDone) and json.loads(events[-1].text.strip("`json\n")) == {
        "risk": "disk"
    }
    help_events = await run(engine, asked("/help"))
    assert "/risks [TEXT]" in help_events[-1].text and "/summarize" in help_events[-1].text  # type: ignore[union-attr]


async def test_summarize_in_the_terminal_reads_the_conversation_itself(
    engine: Engine, model: FakeModel
) -> None:
    model.enqueue("Use a mutex.")
    await run(engine, asked("how do I guard a counter?", user_name="sam"))
    model.enqueue("- sam asked about counters [1]")
    await run(engine, asked("/summarize"))
    assert read_lines(model.prompts[-1]) == [
        "[1] sam: how do I guard a counter?",
        "[2] chinwag: Use a mutex.",
    ]


# Pieces ---------------------------------------------------------------------------------


def test_the_required_grammar_never_releases() -> None:
    grammar = ToolCallGrammar([TOOL_SCHEMA], required=True)
    assert grammar.feed(grammar.start(), "Sure") is None
    assert grammar.feed(grammar.start(), '{"items"') is None
    assert not grammar.complete(grammar.start())  # an empty reply is no answer
    free = ToolCallGrammar([TOOL_SCHEMA])
    assert free.feed(free.start(), "Sure") == "released"
    assert fits(call([{"what": "x", "who": None, "when": "Friday", "message": 1}]))
    assert not fits(call([{"what": "x", "who": None, "message": 1}]))  # "when" is required


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tomorrow", "2026-12-08"),
        ("by Friday", "2026-12-11"),
        ("next Friday", "2026-12-18"),
        ("Monday", "2026-12-14"),
        ("EOD", "2026-12-07"),
        ("end of week", "2026-12-11"),
        ("next week", "2026-12-14"),
        ("in 3 days", "2026-12-10"),
        ("Dec 24", "2026-12-24"),
        ("3 January", "2027-01-03"),
        ("2026-12-31", "2026-12-31"),
        ("when it is ready", None),
        (None, None),
    ],
)
def test_deadlines_are_resolved_against_the_day_they_were_said(
    text: str | None, expected: str | None
) -> None:
    assert resolve_date(text, date(2026, 12, 7)) == expected  # a Monday


def test_languages_by_name_code_and_flag() -> None:
    assert language("French").code == language("fr").code == language("Français").code == "fr"
    assert language("pt-BR").name == "Portuguese" and language("jp").name == "Japanese"
    assert flag_language("🇧🇷").name == "Portuguese" and flag_language("flag-de").name == "German"
    assert flag_language("jp").name == "Japanese"
    for flag in ("🏴\u200d☠️", "pirate_flag", "🇪🇺"):
        with pytest.raises(Exception, match="No language goes with the flag"):
            flag_language(flag)


def test_protected_spans_come_back_even_when_the_model_drops_their_mark() -> None:
    text, kept = protect("ping <@U1> about `x` :tada:")
    assert text == "ping ⟦1⟧ about ⟦2⟧ ⟦3⟧"
    assert restore("salut ⟦1⟧ ⟦3⟧", kept) == "salut <@U1> :tada:\n\n`x`"
