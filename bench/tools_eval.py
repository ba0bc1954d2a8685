"""Tool-use evaluation: does the model pick the right tool, pass valid arguments, answer correctly,
and leave tools alone when none is needed?

    python bench/tools_eval.py [--model NAME] [--limit N] [--mode MODE] [--json]

41 prompts: arithmetic a small model cannot do in its head, time zones, date differences, document
lookups (bench/eval_corpus ingested), prompts that need no tool, and prompts asking for tools that
do not exist. Each runs through the engine (greedy) with the built-in tools and the document store.

- tool_choice_accuracy: the expected tool was called (document questions may also be answered from
  the passages the engine puts in the prompt); for no-tool and non-existent-tool prompts, no tool ran.
- args_valid_rate: calls whose name and arguments validated, of all calls made.
- answer_accuracy: replies containing the expected fact, of prompts that have one.
- false_call_rate: no-tool prompts on which the model called a tool anyway.

Every prompt runs twice on the same loaded model, with constrained decoding off and on
(`tools.constrained`), or once with --mode. A table by default; one JSON object with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.app import default_tools
from bot.engine import Engine
from bot.types import Incoming, ToolCall, TurnDone
from config import load_settings
from retrieval.store import DocumentStore
from storage import SqlHistory

CORPUS = Path(__file__).resolve().parent / "eval_corpus"


@dataclass(frozen=True)
class Case:
    """One prompt and what a good turn looks like."""

    kind: str
    prompt: str
    tool: str | None  # expected tool; None: no tool should run
    answer: str | Callable[[str, list[ToolCall]], bool] | None = None


def _clock_answer(reply: str, calls: list[ToolCall]) -> bool:
    # The reply must give the hour and minute the clock tool returned.
    for call in calls:
        match = re.search(r" (\d\d):(\d\d):\d\d ", call.result) if call.status == "ok" else None
        if match and re.search(rf"\b0?{int(match.group(1))}:{match.group(2)}\b", reply):
            return True
    return False


CASES = [
    Case("arithmetic", "What is 1234 * 5678?", "calculator", "7006652"),
    Case("arithmetic", "What is 987654 multiplied by 123?", "calculator", "121481442"),
    Case("arithmetic", "Compute 2 to the power of 40.", "calculator", "1099511627776"),
    Case("arithmetic", "What is 17% of 2340?", "calculator", "397.8"),
    Case("arithmetic", "What is the square root of 1521?", "calculator", "39"),
    Case("arithmetic", "What is the factorial of 15?", "calculator", "1307674368000"),
    Case("arithmetic", "Calculate (4521 - 1789) * 37.", "calculator", "101084"),
    Case("arithmetic", "What is 123456789 divided by 3?", "calculator", "41152263"),
    Case("arithmetic", "What is 999 squared?", "calculator", "998001"),
    Case("arithmetic", "Add 48213, 97656 and 12009.", "calculator", "157878"),
    Case("arithmetic", "What is 3.75 times 12.4?", "calculator", "46.5"),
    Case("arithmetic", "How much is 65536 * 65536?", "calculator", "4294967296"),
    Case("time", "What time is it in Tokyo right now?", "clock", _clock_answer),
    Case("time", "What's the current time in New York?", "clock", _clock_answer),
    Case("time", "Tell me the time in Europe/Lisbon.", "clock", _clock_answer),
    Case("time", "What time is it in UTC?", "clock", _clock_answer),
    Case("time", "Is it morning or evening in Sydney now? Tell me the time there.", "clock", _clock_answer),
    Case("time", "Current date and time in Berlin, please.", "clock", _clock_answer),
    Case("date", "How many days are there from 2026-01-01 to 2026-12-25?", "days_between", "358"),
    Case("date", "How many days between 2026-03-03 and 2026-07-04?", "days_between", "123"),
    Case("date", "How many days from 2025-11-22 to 2026-11-22?", "days_between", "365"),
    Case("date", "Count the days from 2024-02-01 to 2024-03-01.", "days_between", "29"),
    Case(
        "documents",
        "Search our documents: what is the guest wifi network in Lisbon?",
        "search_documents",
        "LARK-GUEST",
    ),
    Case(
        "documents",
        "Look up in the docs how long nightly database snapshots are kept.",
        "search_documents",
        "35",
    ),
    Case(
        "documents",
        "Find in our documentation the rate limit of the bulk API endpoints.",
        "search_documents",
        "10",
    ),
    Case(
        "documents",
        "What does our handbook say about the meal allowance when travelling?",
        "search_documents",
        "55",
    ),
    Case("documents", "Check the docs: which carrier handles Poland?", "search_documents", "Vistula"),
    Case(
        "documents",
        "According to our runbook, what command rolls back production?",
        "search_documents",
        "rollback",
    ),
    Case("no tool", "Hi! How are you today?", None),
    Case("no tool", "Write a haiku about the sea.", None),
    Case("no tool", "What is the capital of France?", None, "Paris"),
    Case("no tool", "Explain in one sentence what a Python list is.", None),
    Case("no tool", "How do you say thank you in Spanish?", None, "gracias"),
    Case("no tool", "Give me a synonym for happy.", None),
    Case("no tool", "What colour is the sky on a clear day?", None, "blue"),
    Case("no tool", "Write a Python function that reverses a string.", None, "def "),
    Case("no such tool", "Use the weather tool to get the forecast for Oslo.", None),
    Case("no such tool", "Send an email to Bob saying the meeting moved to 3pm.", None),
    Case("no such tool", "Book meeting room Spree for tomorrow at 10 with the calendar tool.", None),
    Case("no such tool", "Translate 'good morning' into German with the translate tool.", None),
    Case("no such tool", "Call the stock_price tool for ACME.", None),
]


def _is_document_answer(case: Case, calls: list[ToolCall]) -> bool:
    return case.kind == "documents" and not calls


async def _run(model_name: str | None, limit: int | None, modes: list[str]) -> dict[str, dict[str, Any]]:
    from bot.inference.local import TransformersModel

    cases = CASES[:limit] if limit else CASES
    with tempfile.TemporaryDirectory(prefix="chinwag-tools-eval-") as tmp:
        settings = load_settings(
            data_dir=Path(tmp) / "data",
            model={"name": model_name},
            generation={"temperature": 0.0, "max_tokens": 160},
        )
        store = DocumentStore.open(settings)
        store.ingest([CORPUS])
        model = await asyncio.to_thread(
            TransformersModel.load, settings.model, settings.model_cache_dir, progress=False
        )
        history = await SqlHistory.open(settings)
        results: dict[str, dict[str, Any]] = {}
        try:
            for mode in modes:
                settings.tools.constrained = mode == "constrained"
                engine = Engine(model, history, settings, store, default_tools(settings))
                rows = []
                for n, case in enumerate(cases):
                    started = time.perf_counter()
                    incoming = Incoming(text=case.prompt, platform="bench", channel=mode, thread=str(n))
                    events = [event async for event in engine.handle(incoming)]
                    calls = [e for e in events if isinstance(e, ToolCall)]
                    done = events[-1]
                    reply = done.text if isinstance(done, TurnDone) else ""
                    rows.append(_score(case, calls, reply, time.perf_counter() - started, mode))
                results[mode] = _summary(rows, settings.model.name)
        finally:
            await history.close()
    return results


def _score(case: Case, calls: list[ToolCall], reply: str, seconds: float, mode: str) -> dict[str, Any]:
    names = [c.name for c in calls]
    if case.tool is None:
        chose = not any(c.status == "ok" for c in calls)
    else:
        chose = case.tool in names or (case.tool == "search_documents" and _is_document_answer(case, calls))
    answered: bool | None = None
    if callable(case.answer):
        answered = case.answer(reply, calls)
    elif case.answer is not None:
        answered = case.answer.lower() in reply.replace(",", "").lower()
    mark = "ok  " if chose and answered is not False else "MISS"
    print(
        f"{mark} {mode[:5]} [{case.kind}] {case.prompt} -> calls={names} reply={reply[:120]!r}",
        file=sys.stderr,
    )
    return {
        "kind": case.kind,
        "chose": chose,
        "calls": len(calls),
        "valid_calls": sum(c.status != "invalid" for c in calls),
        "answered": answered,
        "false_call": case.kind == "no tool" and bool(calls),
        "seconds": seconds,
    }


def _summary(rows: list[dict[str, Any]], model: str) -> dict[str, Any]:
    calls = sum(r["calls"] for r in rows)
    with_answer = [r for r in rows if r["answered"] is not None]
    no_tool = [r for r in rows if r["kind"] == "no tool"]
    return {
        "tool_choice_accuracy": sum(r["chose"] for r in rows) / len(rows),
        "args_valid_rate": (sum(r["valid_calls"] for r in rows) / calls) if calls else None,
        "answer_accuracy": sum(bool(r["answered"]) for r in with_answer) / len(with_answer)
        if with_answer
        else None,
        "false_call_rate": sum(r["false_call"] for r in no_tool) / len(no_tool) if no_tool else None,
        "prompts": len(rows),
        "calls": calls,
        "seconds_per_prompt": sum(r["seconds"] for r in rows) / len(rows),
        "model": model,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="chat model (default: the configured one)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    parser.add_argument(
        "--mode", choices=["unconstrained", "constrained"], default=None, help="only this decoding mode"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    modes = [args.mode] if args.mode else ["unconstrained", "constrained"]
    result = asyncio.run(_run(args.model, args.limit, modes))
    if args.json or len(modes) == 1:
        print(json.dumps(result))
        return

    def cell(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    print(f"{'':<22}  {'unconstrained':>13}  {'constrained':>13}")
    for key in (
        "tool_choice_accuracy",
        "args_valid_rate",
        "answer_accuracy",
        "false_call_rate",
        "calls",
        "seconds_per_prompt",
    ):
        print(f"{key:<22}  {cell(result['unconstrained'][key]):>13}  {cell(result['constrained'][key]):>13}")
    print(f"{'prompts':<22}  {result['unconstrained']['prompts']}, model {result['unconstrained']['model']}")


if __name__ == "__main__":
    main()
