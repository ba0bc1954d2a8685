"""The tool loop in the engine, with scripted FakeModel calls in every syntax and every way to fail."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bot.app import default_tools
from bot.engine import Engine
from bot.tools.registry import Tool, ToolRegistry
from bot.types import CommandResult, Event, Incoming, TextDelta, ToolCall, TurnDone
from config import Settings
from storage import SqlHistory
from tests.fakes import FakeModel

CALL = '{"name": "calculator", "arguments": {"expression": "1234*5678"}}'


def said(text: str) -> Incoming:
    return Incoming(text=text, platform="terminal", channel="c", thread="t")


async def run(engine: Engine, text: str) -> list[Event]:
    return [event async for event in engine.handle(said(text))]


@pytest.fixture
def tool_engine(model: FakeModel, history: SqlHistory, settings: Settings) -> Engine:
    return Engine(model, history, settings, tools=default_tools())


@pytest.mark.parametrize(
    "call",
    [
        f"```json\n{CALL}\n```",
        f"<tool_call>\n{CALL}\n</tool_call>",
        CALL,
    ],
)
async def test_a_call_in_any_syntax_runs_the_tool_and_the_model_answers_with_its_result(
    tool_engine: Engine, model: FakeModel, history: SqlHistory, call: str
) -> None:
    model.enqueue(*call.split(" "))
    model.enqueue("1234", " times", " 5678", " is", " 7006652.")
    events = await run(tool_engine, "What is 1234 * 5678?")

    [tool] = [e for e in events if isinstance(e, ToolCall)]
    assert (tool.name, tool.arguments, tool.result, tool.status) == (
        "calculator",
        {"expression": "1234*5678"},
        "7006652",
        "ok",
    )
    assert tool.summary() == 'calculator(expression="1234*5678") → 7006652'
    streamed = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert streamed == "1234 times 5678 is 7006652."  # the call itself never reaches the chat
    done = events[-1]
    assert isinstance(done, TurnDone) and done.text == streamed

    assert model.tools[0] is not None and {t["function"]["name"] for t in model.tools[0]} >= {"calculator"}
    second = model.prompts[1]
    assert (second[-2].role, second[-1].role, second[-1].content) == ("assistant", "tool", "7006652")
    [_, reply] = await history.load(done.conversation_id)
    [stored] = reply.metadata["tool_calls"]
    assert stored["name"] == "calculator" and stored["status"] == "ok" and stored["duration_ms"] >= 0
    assert done.usage.completion_tokens == len(call.split(" ")) + 5


async def test_an_invented_tool_gets_one_correction_naming_the_real_ones(
    tool_engine: Engine, model: FakeModel
) -> None:
    model.enqueue('{"name": "weather", "arguments": {"city": "Oslo"}}')
    model.enqueue("I cannot check the weather.")
    events = await run(tool_engine, "Weather in Oslo?")
    [tool] = [e for e in events if isinstance(e, ToolCall)]
    assert tool.status == "invalid" and "the tools are: calculator, clock, days_between" in tool.result
    hint = model.prompts[1][-1]
    assert hint.role == "tool" and "Call a tool again with valid JSON" in hint.content
    assert isinstance(events[-1], TurnDone) and events[-1].text == "I cannot check the weather."


async def test_bad_arguments_then_broken_json_end_with_an_answer_without_tools(
    tool_engine: Engine, model: FakeModel
) -> None:
    model.enqueue('{"name": "calculator", "arguments": {"expr": "2+2"}}')
    model.enqueue('<tool_call>{"name": "calculator", "arguments": {"expression": 2+</tool_call>')
    model.enqueue("It is 4.")
    events = await run(tool_engine, "2+2?")
    [tool] = [e for e in events if isinstance(e, ToolCall)]
    assert tool.status == "invalid" and "expression: Field required" in tool.result
    # Nothing came of the tools: the answer is generated from the original prompt, without tools.
    assert model.prompts[2] == model.prompts[0]
    assert model.tools[2] is None
    assert isinstance(events[-1], TurnDone) and events[-1].text == "It is 4."


async def test_a_slow_or_failing_tool_never_breaks_the_turn(
    model: FakeModel, history: SqlHistory, settings: Settings
) -> None:
    def slow(seconds: float) -> str:
        """Sleep a while."""
        time.sleep(seconds)
        return "awake"

    def broken(value: int) -> str:
        """Always fails."""
        raise RuntimeError("disk on fire")

    registry = ToolRegistry()
    registry.add(Tool.from_function(slow, timeout_s=0.2))
    registry.add(Tool.from_function(broken))
    engine = Engine(model, history, settings, tools=registry)
    model.enqueue('<tool_call>{"name": "slow", "arguments": {"seconds": 3}}</tool_call>')
    model.enqueue('<tool_call>{"name": "broken", "arguments": {"value": 1}}</tool_call>')
    model.enqueue("Sorry, the tools failed.")
    started = time.monotonic()
    events = await run(engine, "try the tools")
    assert time.monotonic() - started < 2.5
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, c.status) for c in calls] == [("slow", "timeout"), ("broken", "error")]
    assert "did not finish within 0.2 s" in calls[0].result and "RuntimeError" in calls[1].result
    assert "disk on fire" not in calls[1].result  # internals stay in the log
    assert isinstance(events[-1], TurnDone) and events[-1].text == "Sorry, the tools failed."


async def test_rounds_are_bounded(tool_engine: Engine, model: FakeModel, settings: Settings) -> None:
    for n in range(settings.tools.max_rounds):
        model.enqueue(f'{{"name": "calculator", "arguments": {{"expression": "{n}+1"}}}}')
    model.enqueue("Done calculating.")
    events = await run(tool_engine, "keep calculating")
    assert len([e for e in events if isinstance(e, ToolCall)]) == settings.tools.max_rounds
    assert model.tools[-1] is None and len(model.prompts) == settings.tools.max_rounds + 1
    assert isinstance(events[-1], TurnDone) and events[-1].text == "Done calculating."


async def test_a_repeated_call_is_not_run_again_and_json_never_becomes_the_answer(
    tool_engine: Engine, model: FakeModel
) -> None:
    model.enqueue(CALL)
    model.enqueue(f"```json\n{CALL}\n```")  # the same call again, after its result
    model.enqueue(CALL)  # and again, with no tools offered any more
    events = await run(tool_engine, "What is 1234 * 5678?")
    assert len([e for e in events if isinstance(e, ToolCall)]) == 1
    # The answer round: the original prompt, the result as plain context, no tools.
    answer_prompt = model.prompts[2]
    assert model.tools[2] is None and answer_prompt[1:] == model.prompts[0][1:]
    assert 'calculator(expression="1234*5678") → 7006652' in answer_prompt[0].content
    assert "Do not write a tool call" in answer_prompt[0].content
    streamed = "".join(e.text for e in events if isinstance(e, TextDelta))
    done = events[-1]
    assert isinstance(done, TurnDone)
    assert streamed == done.text == 'calculator(expression="1234*5678") → 7006652'


async def test_a_tool_result_cannot_grant_new_tools(tool_engine: Engine, model: FakeModel) -> None:
    model.enqueue('{"name": "clock", "arguments": {"timezone": "UTC"}}')
    # As if the result had told the model to do something else: the tool set does not change.
    model.enqueue('{"name": "delete_everything", "arguments": {}}')
    model.enqueue("I will not do that.")
    events = await run(tool_engine, "what time is it")
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, c.status) for c in calls] == [("clock", "ok"), ("delete_everything", "invalid")]


async def test_plain_answers_still_stream_while_tools_are_offered(
    tool_engine: Engine, model: FakeModel
) -> None:
    model.enqueue("Hello", " there,", " friend!")
    events = await run(tool_engine, "hi")
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert "".join(deltas) == "Hello there, friend!" and len(deltas) == 3
    assert not any(isinstance(e, ToolCall) for e in events)


async def test_tools_command_lists_and_switches_tools(tool_engine: Engine, model: FakeModel) -> None:
    listed = (await run(tool_engine, "/tools"))[-1]
    assert isinstance(listed, CommandResult) and "`calculator(expression)`" in listed.text
    off = (await run(tool_engine, "/tools off"))[-1]
    assert isinstance(off, CommandResult) and "off" in off.text
    await run(tool_engine, "hello")
    assert model.tools[-1] is None


async def test_document_search_is_a_tool_bound_to_the_conversations_scopes(
    model: FakeModel, history: SqlHistory, settings: Settings, tmp_path: Path
) -> None:
    from retrieval.store import DocumentStore

    (tmp_path / "mine.md").write_text("# Depot\n\nThe depot gate code is 7781.\n")
    (tmp_path / "theirs.md").write_text("# Depot\n\nThe other depot gate code is 5520.\n")
    store = DocumentStore.open(settings)
    store.ingest([tmp_path / "mine.md"], scope="local")
    store.ingest([tmp_path / "theirs.md"], scope="T-other")
    engine = Engine(model, history, settings, store, default_tools())
    model.enqueue('{"name": "search_documents", "arguments": {"query": "depot gate code"}}')
    model.enqueue("The code is 7781.")
    events = await run(engine, "What is the depot gate code?")
    [call] = [e for e in events if isinstance(e, ToolCall)]
    assert call.status == "ok" and "7781" in call.result and "5520" not in call.result
    assert "[Depot]" in call.result


async def test_operator_tools_come_from_a_module(
    model: FakeModel, history: SqlHistory, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "acme_tools.py").write_text(
        "from bot.tools import tool\n\n\n"
        "@tool\n"
        "def stock_level(sku: str) -> int:\n"
        '    """Units of a product in the warehouse."""\n'
        "    return {'A-1': 12}.get(sku, 0)\n\n\n"
        "@tool(needs_approval=True)\n"
        "def cancel_order(order_id: int) -> str:\n"
        '    """Cancel an order."""\n'
        "    raise AssertionError('must not run without approval')\n\n\n"
        "def helper(x: int) -> int:\n"
        '    """Not marked, so not a tool when others are marked."""\n'
        "    return x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    configured = settings.model_copy(
        update={"tools": settings.tools.model_copy(update={"modules": ["acme_tools"]})}
    )
    registry = default_tools(configured)
    assert {"stock_level", "cancel_order"} <= set(registry.tools) and "helper" not in registry.tools
    engine = Engine(model, history, configured, tools=registry)
    model.enqueue('{"name": "stock_level", "arguments": {"sku": "A-1"}}')
    model.enqueue('{"name": "cancel_order", "arguments": {"order_id": 9}}')
    model.enqueue("Done.")
    calls = [e for e in await run(engine, "check stock then cancel 9") if isinstance(e, ToolCall)]
    assert (calls[0].name, calls[0].status, calls[0].result) == ("stock_level", "ok", "12")
    assert calls[1].status == "error" and "needs the user's approval" in calls[1].result


def test_a_broken_tools_module_is_a_clear_error(settings: Settings) -> None:
    from bot.errors import ChinwagError

    configured = settings.model_copy(
        update={"tools": settings.tools.model_copy(update={"modules": ["no_such_mod"]})}
    )
    with pytest.raises(ChinwagError, match=r"tools\.modules: cannot import 'no_such_mod'"):
        default_tools(configured)


async def test_a_tool_that_needs_approval_runs_only_when_the_user_says_yes(
    model: FakeModel, history: SqlHistory, settings: Settings
) -> None:
    ran: list[int] = []

    def cancel_order(order_id: int) -> str:
        """Cancel an order."""
        ran.append(order_id)
        return f"order {order_id} cancelled"

    registry = ToolRegistry()
    registry.add(Tool.from_function(cancel_order, needs_approval=True))
    engine = Engine(model, history, settings, tools=registry)
    asked: list[tuple[str, dict[str, object]]] = []

    def answering(answer: bool):  # type: ignore[no-untyped-def]
        async def approve(request):  # type: ignore[no-untyped-def]
            asked.append((request.name, request.arguments))
            return answer

        return approve

    call = '{"name": "cancel_order", "arguments": {"order_id": 7}}'
    model.enqueue(call)
    model.enqueue("Not cancelled.")
    no = [e async for e in engine.handle(said("cancel 7"), answering(False))]
    model.enqueue(call)
    model.enqueue("Cancelled.")
    yes = [e async for e in engine.handle(said("cancel 7, really"), answering(True))]

    assert asked == [("cancel_order", {"order_id": 7})] * 2
    [declined] = [e for e in no if isinstance(e, ToolCall)]
    [accepted] = [e for e in yes if isinstance(e, ToolCall)]
    assert (declined.status, declined.result) == ("error", "The user declined to run cancel_order")
    assert (accepted.status, accepted.result) == ("ok", "order 7 cancelled") and ran == [7]


async def test_a_call_that_only_restates_a_result_ends_the_tool_rounds(
    tool_engine: Engine, model: FakeModel
) -> None:
    model.enqueue(CALL)
    model.enqueue('{"name": "calculator", "arguments": {"expression": "7006652", "type": "string"}}')
    model.enqueue("It is 7006652.")
    events = await run(tool_engine, "What is 1234 * 5678?")
    assert len([e for e in events if isinstance(e, ToolCall)]) == 1
    assert model.tools[2] is None
    assert isinstance(events[-1], TurnDone) and events[-1].text == "It is 7006652."


async def test_tool_rounds_are_constrained_by_config_and_plain_rounds_never(
    model: FakeModel, history: SqlHistory, settings: Settings
) -> None:
    engine = Engine(model, history, settings, tools=default_tools())
    model.enqueue(CALL)
    model.enqueue("7006652.")
    await run(engine, "1234*5678?")
    assert model.constrained == [True, True]
    settings.tools.constrained = False
    model.enqueue("Hi.")
    await run(engine, "hello")
    assert model.constrained[-1] is False
    settings.tools.constrained = True
    settings.tools.enabled = False
    model.enqueue("Hi.")
    await run(engine, "hello")
    assert model.constrained[-1] is False and model.tools[-1] is None


async def test_tools_enabled_per_scope(model: FakeModel, history: SqlHistory, settings: Settings) -> None:
    settings.tools.scopes = {"T-acme": ["clock"], "T-locked": False}
    engine = Engine(model, history, settings, tools=default_tools(settings))

    async def offered(scope: str) -> list[str]:
        conv = await engine.conversation(Incoming(text="x", platform="slack", scope=scope, channel="c"))
        return sorted(engine.tools_for(conv).tools)

    assert await offered("T-acme") == ["clock"]
    assert await offered("T-locked") == []
    assert await offered("T-other") == ["calculator", "clock", "days_between"]
    settings.tools.enabled = ["calculator"]
    assert await offered("T-other") == ["calculator"]
    assert await offered("T-acme") == ["clock"]


def test_a_misspelt_tool_in_a_scope_is_a_clear_error(settings: Settings) -> None:
    from bot.errors import ChinwagError

    settings.tools.scopes = {"T1": ["calculater"]}
    with pytest.raises(ChinwagError, match=r"tools\.scopes\.T1: there is no tool named 'calculater'"):
        default_tools(settings)


async def test_installed_packages_offer_tools_through_entry_points(
    model: FakeModel, history: SqlHistory, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real installed distribution (a .dist-info on sys.path), found by importlib.metadata.
    (tmp_path / "acme_plugin.py").write_text(
        "def shipping_days(country: str) -> int:\n"
        '    """Days a parcel takes to reach a country.\n\n'
        "    Args:\n"
        "        country: the destination, as an ISO code\n"
        '            such as "PL" or "PT".\n'
        '    """\n'
        "    return {'PL': 3}.get(country, 7)\n"
    )
    info = tmp_path / "acme_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[chinwag.tools]\nshipping = acme_plugin:shipping_days\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = default_tools(settings)
    shipping = registry.get("shipping_days")
    described = shipping.schema()["function"]["parameters"]["properties"]["country"]["description"]
    assert described == 'the destination, as an ISO code such as "PL" or "PT".'
    engine = Engine(model, history, settings, tools=registry)
    model.enqueue('{"name": "shipping_days", "arguments": {"country": "PL"}}')
    model.enqueue("Three days.")
    [call] = [e for e in await run(engine, "How long to Poland?") if isinstance(e, ToolCall)]
    assert (call.status, call.result) == ("ok", "3")


async def test_a_tool_that_fails_every_round_ends_in_a_plain_answer(
    tool_engine: Engine, model: FakeModel, settings: Settings
) -> None:
    bad = '{"name": "clock", "arguments": {"timezone": "Atlantis"}}'
    for _ in range(settings.tools.max_rounds):
        model.enqueue(bad)
    model.enqueue("I could not find that time zone.")
    events = await run(tool_engine, "Time in Atlantis?")
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert calls and all(c.status == "error" for c in calls)
    last = settings.tools.max_rounds
    assert model.prompts[last] == model.prompts[0] and model.tools[last] is None
    assert isinstance(events[-1], TurnDone) and events[-1].text == "I could not find that time zone."


def test_the_clock_understands_city_names() -> None:
    from bot.tools.builtin import clock

    assert " in Europe/Berlin, UTC+0" in clock("Berlin")
    assert " in America/New_York, UTC-0" in clock("new york")
    assert " in Asia/Tokyo, " in clock("Asia/Tokyo")
