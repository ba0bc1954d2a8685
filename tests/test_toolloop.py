"""ToolLoop on its own, with a scripted FakeModel: what it shows, holds back, runs and keeps.

tests/test_tool_loop.py drives the same loop through Engine.handle, with storage around it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any

from bot.seams.model import Chunk, Finish, Queued
from bot.toolloop import ApprovalRequest, LoopEvent, ToolLoop
from bot.tools.registry import Tool, ToolRegistry
from bot.types import ChatMessage, GenerationParams, Notice, TextDelta, ToolCall
from config.settings import ToolsSettings
from tests.fakes import FakeModel

PROMPT = [ChatMessage("system", "You help."), ChatMessage("user", "What is 6 * 7?")]
CALL = '{"name": "multiply", "arguments": {"a": 6, "b": 7}}'


def calculator(ran: list[tuple[int, int]] | None = None) -> ToolRegistry:
    """A registry with one tool that notes each time it runs."""

    def multiply(a: int, b: int) -> int:
        """Multiply two numbers."""
        if ran is not None:
            ran.append((a, b))
        return a * b

    tools = ToolRegistry()
    tools.add(Tool.from_function(multiply))
    return tools


def loop_of(model: FakeModel, tools: ToolRegistry | None = None, **config: Any) -> ToolLoop:
    return ToolLoop(model, GenerationParams(), tools or ToolRegistry(), ToolsSettings(**config), 11)


async def events_of(loop: ToolLoop) -> list[LoopEvent]:
    return [event async for event in loop.run(PROMPT)]


def deltas(events: list[LoopEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextDelta)]


async def test_without_tools_the_reply_streams_chunk_by_chunk() -> None:
    model = FakeModel()
    model.enqueue("Forty", " two", ".")
    loop = loop_of(model)
    events = await events_of(loop)
    assert deltas(events) == ["Forty", " two", "."] and len(events) == 3
    assert loop.text == "Forty two." and loop.calls == []
    assert loop.finish is not None and loop.finish.reason == "stop"
    usage = loop.usage()
    assert usage.completion_tokens == 3 and usage.prompt_tokens == model.count_tokens(PROMPT)
    assert usage.first_token_ms is not None and usage.latency_ms >= usage.first_token_ms
    assert model.tools == [None] and model.constrained == [False]


async def test_with_tools_offered_text_that_may_be_a_call_waits_until_it_cannot_be() -> None:
    model = FakeModel()
    # Blank, then a backtick (a ``` fence may follow), then text that no call starts with.
    model.enqueue("\n", "`", "x`", " is", " code.")
    loop = loop_of(model, calculator())
    events = await events_of(loop)
    assert deltas(events) == ["\n`x`", " is", " code."]
    assert loop.text == "\n`x` is code." and loop.calls == []
    assert model.tools[0] is not None and model.constrained == [True]


async def test_a_reply_that_starts_like_a_call_but_is_none_is_shown_whole_at_its_end() -> None:
    model = FakeModel()
    model.enqueue('{"id":', " 7}", " is", " JSON.")  # "id" may open an OpenAI-style call
    events = await events_of(loop_of(model, calculator()))
    assert deltas(events) == ['{"id": 7} is JSON.']


async def test_a_call_runs_its_tool_and_the_next_round_answers_with_the_result() -> None:
    model = FakeModel()
    model.enqueue(CALL[:10], CALL[10:30], CALL[30:])
    model.enqueue("It", " is", " 42.")
    loop = loop_of(model, calculator())
    events = await events_of(loop)

    [call] = [e for e in events if isinstance(e, ToolCall)]
    assert (call.name, call.arguments, call.result, call.status) == ("multiply", {"a": 6, "b": 7}, "42", "ok")
    # The call itself is never shown; the answer after a tool round is held until it is plainly text.
    assert deltas(events) == ["It", " is", " 42."]
    assert loop.text == "It is 42." and loop.calls == [call]
    assert model.prompts[1][len(PROMPT) :] == [ChatMessage("assistant", CALL), ChatMessage("tool", "42")]
    assert loop.usage().completion_tokens == 3 + 3


async def test_a_repeated_call_is_answered_from_its_first_result_not_run_again() -> None:
    model = FakeModel()
    ran: list[tuple[int, int]] = []
    model.enqueue(CALL)
    both = f'[{CALL}, {{"name": "multiply", "arguments": {{"a": 2, "b": 3}}}}]'
    model.enqueue(both)
    model.enqueue("42 and 6.")
    loop = loop_of(model, calculator(ran))
    events = await events_of(loop)
    assert ran == [(6, 7), (2, 3)] and [c.result for c in events if isinstance(c, ToolCall)] == ["42", "6"]
    assert model.prompts[2][-3:] == [
        ChatMessage("assistant", both),
        ChatMessage("tool", "42"),
        ChatMessage("tool", "6"),
    ]
    assert model.tools[2] is not None and loop.text == "42 and 6."


async def test_a_round_of_only_repeated_calls_ends_the_tool_rounds() -> None:
    model = FakeModel()
    ran: list[tuple[int, int]] = []
    model.enqueue(CALL)
    model.enqueue(CALL)
    model.enqueue("42.")
    loop = loop_of(model, calculator(ran))
    events = await events_of(loop)
    assert ran == [(6, 7)] and len([e for e in events if isinstance(e, ToolCall)]) == 1
    # The model goes round in circles: the next round is the answer round, without tools.
    assert model.tools[2] is None and "multiply(a=6, b=7) → 42" in model.prompts[2][0].content
    assert loop.text == "42."


async def test_out_of_rounds_the_answer_round_has_the_results_and_no_tools() -> None:
    model = FakeModel()
    model.enqueue(CALL)
    model.enqueue(CALL)  # still calling, with no tools offered any more
    loop = loop_of(model, calculator(), max_rounds=1)
    events = await events_of(loop)
    answer_prompt = model.prompts[1]
    assert model.tools[1] is None and answer_prompt[1:] == PROMPT[1:]
    assert "multiply(a=6, b=7) → 42" in answer_prompt[0].content
    # What the tools found, instead of the JSON of a call that cannot run.
    assert deltas(events) == ["multiply(a=6, b=7) → 42"] and loop.text == "multiply(a=6, b=7) → 42"


async def test_an_unusable_call_is_corrected_once_then_the_answer_comes_without_tools() -> None:
    model = FakeModel()
    model.enqueue('{"name": "multiply", "arguments": {"a": 6}}')
    model.enqueue('<tool_call>{"name": "multiply", "arguments": {"a": 6, </tool_call>')
    model.enqueue("42.")
    loop = loop_of(model, calculator())
    events = await events_of(loop)
    [call] = [e for e in events if isinstance(e, ToolCall)]
    assert call.status == "invalid" and "b: Field required" in call.result
    first_hint = model.prompts[1][-1]
    assert first_hint.role == "tool" and first_hint.content.startswith("Your tool call could not be used")
    assert "Call a tool again" in first_hint.content
    # Nothing came of the tools: the answer round starts again from the prompt.
    assert model.prompts[2] == PROMPT and model.tools[2] is None
    assert loop.text == "42."


async def test_a_tool_needing_approval_asks_and_runs_only_on_yes() -> None:
    ran: list[int] = []

    def cancel_order(order_id: int) -> str:
        """Cancel an order."""
        ran.append(order_id)
        return "cancelled"

    tools = ToolRegistry()
    tools.add(Tool.from_function(cancel_order, needs_approval=True))
    asked: list[ApprovalRequest] = []

    async def approve(request: ApprovalRequest) -> bool:
        asked.append(request)
        return request.arguments["order_id"] == 2

    model = FakeModel()
    model.enqueue('{"name": "cancel_order", "arguments": {"order_id": 1}}')
    model.enqueue('{"name": "cancel_order", "arguments": {"order_id": 2}}')
    model.enqueue("Done.")
    loop = ToolLoop(model, GenerationParams(), tools, ToolsSettings(), 11, approve)
    await events_of(loop)
    assert [r.arguments for r in asked] == [{"order_id": 1}, {"order_id": 2}]
    assert [(c.status, c.result) for c in loop.calls] == [
        ("error", "The user declined to run cancel_order"),
        ("ok", "cancelled"),
    ]
    assert ran == [2]


async def test_waiting_in_the_models_queue_is_a_notice_not_text() -> None:
    model = FakeModel()
    model.enqueue("Hi.", queued=(2, 0))
    loop = loop_of(model)
    events = await events_of(loop)
    assert events == [Notice("Waiting for the model — 1 ahead of you"), Notice("Thinking…"), TextDelta("Hi.")]
    assert loop.text == "Hi."


async def test_a_reply_cut_short_keeps_what_its_round_said() -> None:
    model = FakeModel()
    model.enqueue("one ", "two ", "three ")
    loop = loop_of(model)
    async with aclosing(loop.run(PROMPT)) as events:
        async for event in events:
            if event == TextDelta("two "):
                break
    assert model.cancelled == 1
    assert loop.text == "one two " and loop.finish is None
    assert loop.usage().completion_tokens == 2 and loop.usage().prompt_tokens == 11


class _NoFinish(FakeModel):
    """A backend that ends its stream without the Finish the seam promises."""

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        tools: Sequence[dict[str, Any]] | None = None,
        constrain: bool = False,
    ) -> AsyncGenerator[Chunk | Finish | Queued, None]:
        async with aclosing(super().stream(messages, params, tools, constrain)) as items:
            async for item in items:
                if not isinstance(item, Finish):
                    yield item


async def test_a_round_without_a_finish_counts_its_chunks_once() -> None:
    model = _NoFinish()
    model.enqueue(CALL)
    model.enqueue("It", " is", " 42.")
    loop = loop_of(model, calculator())
    await events_of(loop)
    assert loop.finish is None and loop.text == "It is 42."
    assert loop.usage().completion_tokens == 1 + 3
