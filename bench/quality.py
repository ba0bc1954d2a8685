"""Answer quality of the model's weight formats, side by side in one run: does quantization cost answers?

    python bench/quality.py [--formats none,int8,int4] [--documents 24] [--tools 41] [--no-leanings] [--json]

Each format (`model.quantization`: none = the model's own float32, int8, int4) answers, through the
engine with the real document store and the default tools, greedy:
- document questions from bench/eval_questions.json (the reply must contain the fact), scored
  overall and per kind (`document_accuracy_<kind>`: paraphrase, name, acronym, table, list, long);
- unanswerable questions (bench/eval_unanswerable.json, 24 near misses): the documents are close
  to the topic but do not hold the answer, and the reply must say so rather than invent one
  (dynamic int8 quantization of activations was seen to make the 0.5B model answer such a
  question). The 0.5B model invents in every format, float32
  included, so each format also scores, after each of these prompts and through the decode steps
  the server uses, a reply that declines (`DECLINE`) and its own reply: their mean log-probability
  per token (unanswerable_decline_logprob, unanswerable_own_reply_logprob). A format that moves
  away from declining shows as a lower first figure, though no greedy reply changes;
- the tool-use prompts of bench/tools_eval.py (constrained decoding, as shipped);
and reports, besides each score, how many document replies are word for word the same as the first
format's (greedy decoding, so differences come from the weights alone) and the decode speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tools_eval

from bot.app import default_tools
from bot.engine import Engine
from bot.inference.decoder import LeanStep
from bot.inference.local import TransformersModel
from bot.inference.scheduler import watched_logprob
from bot.seams.model import ChatModel, Chunk, Finish, Queued
from bot.threads import run_apart
from bot.types import ChatMessage, GenerationParams, Incoming, ToolCall, TurnDone
from config import load_settings
from retrieval.store import DocumentStore
from storage import SqlHistory

HERE = Path(__file__).resolve().parent
# Near the documents' topics, answered by none of them (checked against bench/eval_corpus).
UNANSWERABLE = [item["question"] for item in json.loads((HERE / "eval_unanswerable.json").read_text())]
_ADMITS = re.compile(
    r"(do not|don't|doesn't|does not|did not|didn't|cannot|can't|could not|couldn't|unable to|no)"
    r"\s+(\w+\s+){0,3}?(know|find|found|mention|mentioned|say|says|specify|specified|provide|"
    r"provided|information|info|details|access|answer|determine|sure)\b"
    r"|not (mentioned|specified|provided|available|stated|listed|found|sure|clear)\b"
    r"|no (mention|information|details)\b|unknown",
    re.IGNORECASE,
)


def admits_not_knowing(reply: str) -> bool:
    """Whether a reply says the answer is not known / not in the documents."""
    return bool(_ADMITS.search(reply))


# A reply that declines, scored after each unanswerable question's prompt: how readily a format
# would say it does not know, even where its greedy reply invents (the 0.5B model invents in every
# format, float32 included, so the count of admissions alone cannot show a format moving away from
# declining).
DECLINE = "The passages do not say, so I do not know."


class _Recorded:
    """The model as the engine sees it, keeping each prompt it is asked to answer (and its tools)."""

    def __init__(self, model: TransformersModel) -> None:
        self.model = model
        self.asked: list[tuple[list[ChatMessage], list[dict[str, Any]]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        tools: Sequence[dict[str, Any]] | None = None,
        constrain: bool = False,
    ) -> AsyncGenerator[Chunk | Finish | Queued, None]:
        self.asked.append((list(messages), list(tools or [])))
        return self.model.stream(messages, params, tools, constrain)


def _mean_logprob(model: TransformersModel, prompt: list[int], reply: list[int]) -> float | None:
    """The mean log-probability per token of `reply` after `prompt`, through the steps the scheduler
    decodes with (the prompt encoded as it encodes one, then one token a step), or None without them."""
    import torch

    scheduler = model.scheduler
    if scheduler is None or not isinstance(scheduler.step, LeanStep) or not reply:
        return None
    step = scheduler.step
    total = 0.0
    with torch.inference_mode():
        cache = step.start(None)
        logits = step.feed(cache, 0, prompt)
        for n, token in enumerate(reply):
            total += watched_logprob(logits, token)
            if n + 1 < len(reply):
                logits = step(cache, torch.tensor([[token]]), torch.tensor([[len(prompt) + n]]))[0]
    return total / len(reply)


def _leanings(
    model: TransformersModel, asked: list[tuple[list[ChatMessage], list[dict[str, Any]]]], replies: list[str]
) -> tuple[float | None, float | None]:
    """Over the unanswerable questions' last prompts: the mean log-probability per token of
    `DECLINE`, and of the format's own replies."""
    declines: list[float] = []
    owns: list[float] = []
    for (messages, tools), reply in zip(asked, replies, strict=True):
        prompt = model._encode(messages, tools)
        tokens = model._tokenizer  # a reply's text as ids, as the template's reply opens
        decline = _mean_logprob(model, prompt, tokens(DECLINE, add_special_tokens=False)["input_ids"])
        own = _mean_logprob(model, prompt, tokens(reply, add_special_tokens=False)["input_ids"])
        if decline is None or own is None:
            return None, None
        declines.append(decline)
        owns.append(own)
    return round(statistics.mean(declines), 3), round(statistics.mean(owns), 3)


async def _decode_tps(model: TransformersModel) -> float:
    messages = [ChatMessage("user", "Explain how a hash map works.")]
    params = GenerationParams(temperature=0.0, max_tokens=64, repetition_penalty=1.0)
    first = ended = 0.0
    count = 0
    async for item in model.stream(messages, params):
        if isinstance(item, Chunk):
            first = first or time.perf_counter()
        elif isinstance(item, Finish):
            count = item.completion_tokens
    ended = time.perf_counter()
    return (count - 1) / (ended - first) if count > 1 and ended > first else 0.0


async def _one_format(
    quantization: str,
    documents: list[dict[str, Any]],
    tool_cases: list[Any],
    tmp: Path,
    threads: int,
    leanings: bool = True,
    max_tokens: int = 160,
    tools_min_score: float | None = None,
    unanswerable: int = len(UNANSWERABLE),
) -> dict[str, Any]:
    # "auto:int16": model.quantization "auto" with model.kernels "int16"; "auto::float32": with
    # scheduler.kv_cache "float32".
    quantization, kernels, kv_cache = [*quantization.split(":"), "", ""][:3]
    settings = load_settings(
        data_dir=tmp / "data",
        model={"quantization": quantization, "threads": threads, **({"kernels": kernels} if kernels else {})},
        generation={"temperature": 0.0, "max_tokens": max_tokens},
        scheduler={"kv_cache": kv_cache} if kv_cache else {},
    )
    store = DocumentStore.open(settings)
    store.ingest([HERE / "eval_corpus"])
    if tools_min_score is not None:
        # Only the tool prompts some passage matches this well: the others get the same prompt
        # whatever retrieval does, so a change to retrieval cannot move their scores.
        tool_cases = [
            case
            for case in tool_cases
            if max((p.score for p in store.query(case.prompt, ["global"], 20)), default=-1.0)
            >= tools_min_score
        ]
    started = time.perf_counter()
    model = await asyncio.to_thread(
        TransformersModel.load, settings.model, settings.model_cache_dir, False, settings.scheduler
    )
    result: dict[str, Any] = {"load_s": round(time.perf_counter() - started, 2), "dtype": model.info.dtype}
    history = await SqlHistory.open(settings)
    try:
        result["decode_tps"] = round(await _decode_tps(model), 2)
        recorded = _Recorded(model)
        engine = Engine(cast(ChatModel, recorded), history, settings, store, default_tools(settings))

        async def ask(text: str, channel: str, n: int) -> tuple[str, list[ToolCall]]:
            where = f"{quantization}-{channel}"
            incoming = Incoming(text=text, platform="bench", channel=where, thread=str(n))
            events = [event async for event in engine.handle(incoming)]
            done = events[-1]
            calls = [e for e in events if isinstance(e, ToolCall)]
            return (done.text if isinstance(done, TurnDone) else ""), calls

        replies = []
        for n, item in enumerate(documents):
            reply, _ = await ask(item["question"], "docs", n)
            replies.append(reply)
            ok = item["answer"].lower() in reply.lower()
            _log(quantization, ok, "MISS", item["question"], reply)
        result["replies"] = replies
        pairs = zip(documents, replies, strict=True)
        hits = [item["answer"].lower() in reply.lower() for item, reply in pairs]
        result["document_accuracy"] = round(sum(hits) / len(hits), 3) if hits else None
        for kind in sorted({item.get("kind", "paraphrase") for item in documents}):
            mine = [hit for item, hit in zip(documents, hits, strict=True) if item.get("kind") == kind]
            result[f"document_accuracy_{kind}"] = f"{sum(mine)}/{len(mine)}"
        admitted = 0
        last_prompts, unanswered = [], []
        asked_unanswerable = UNANSWERABLE[:unanswerable]
        for n, question in enumerate(asked_unanswerable):
            reply, _ = await ask(question, "unanswerable", n)
            last_prompts.append(recorded.asked[-1])  # the prompt its reply answers
            unanswered.append(reply)
            ok = admits_not_knowing(reply)
            admitted += ok
            _log(quantization, ok, "INVENTED", question, reply)
        result["unanswerable_admitted"] = round(admitted / max(1, len(asked_unanswerable)), 3)
        result["unanswerable_declined"] = f"{admitted}/{len(asked_unanswerable)}"
        if leanings and asked_unanswerable:
            # In a thread of its own: its OpenMP workers must not outlive it (bot/threads.py).
            declines, owns = run_apart(_leanings, model, last_prompts, unanswered)
            result["unanswerable_decline_logprob"] = declines
            result["unanswerable_own_reply_logprob"] = owns
        settings.tools.constrained = True
        rows = []
        for n, case in enumerate(tool_cases):
            began = time.perf_counter()
            reply, calls = await ask(case.prompt, "tools", n)
            rows.append(tools_eval._score(case, calls, reply, time.perf_counter() - began, "constrained"))
        summary = tools_eval._summary(rows, settings.model.name) if rows else {}
        for key in ("tool_choice_accuracy", "args_valid_rate", "answer_accuracy", "false_call_rate"):
            result[f"tools_{key}"] = summary.get(key)
        with_answer = [r for r in rows if r["answered"] is not None]
        result["tools_chose"] = f"{sum(r['chose'] for r in rows)}/{len(rows)}"
        result["tools_answered"] = f"{sum(bool(r['answered']) for r in with_answer)}/{len(with_answer)}"
    finally:
        await history.close()
        model.close()
    return result


def _log(label: str, ok: bool, failure: str, question: str, reply: str) -> None:
    verdict = "ok" if ok else failure
    print(f"[{label}] {verdict:<8} {question} -> {reply[:160]!r}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--formats",
        default="none,int8,int4",
        help="model.quantization values, a,b,c (a:k: with model.kernels k; a:k:c: scheduler.kv_cache c)",
    )
    parser.add_argument("--documents", type=int, default=24, help="document questions per format")
    parser.add_argument("--tools", type=int, default=len(tools_eval.CASES), help="tool prompts per format")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    parser.add_argument(
        "--no-leanings",
        action="store_true",
        help="skip the log-probabilities of declining (two more passes over each unanswerable prompt)",
    )
    parser.add_argument("--max-tokens", type=int, default=160, help="longest reply, in tokens")
    parser.add_argument(
        "--unanswerable", type=int, default=len(UNANSWERABLE), help="unanswerable questions per format"
    )
    parser.add_argument(
        "--tools-min-score",
        type=float,
        default=None,
        help="only the tool prompts whose best passage scores at least this (cosine)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the per-format child
    args = parser.parse_args()
    questions = json.loads((HERE / "eval_questions.json").read_text())
    step = max(1, len(questions) // max(1, args.documents))
    documents = questions[::step][: args.documents]
    tool_cases = tools_eval.CASES[: args.tools]
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if args.one:
        with tempfile.TemporaryDirectory(prefix="chinwag-quality-") as tmp:
            one = asyncio.run(
                _one_format(
                    args.one,
                    documents,
                    tool_cases,
                    Path(tmp),
                    args.threads,
                    leanings=not args.no_leanings,
                    max_tokens=args.max_tokens,
                    tools_min_score=args.tools_min_score,
                    unanswerable=args.unanswerable,
                )
            )
        print(json.dumps(one))
        return
    # Each format in a process of its own: memory is returned between them, and a crash in one
    # format's kernels is a result, not the end of the run.
    results: dict[str, Any] = {}
    for name in formats:
        child = subprocess.run(
            [sys.executable, __file__, "--one", name, *sys.argv[1:]], stdout=subprocess.PIPE, text=True
        )
        if child.returncode != 0 or not child.stdout.strip():
            results[name] = {"failed": f"exit {child.returncode}", "replies": [""] * len(documents)}
            continue
        results[name] = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"[{name}] {json.dumps({k: v for k, v in results[name].items() if k != 'replies'})}",
            file=sys.stderr,
            flush=True,
        )
    reference = results[formats[0]]["replies"]
    for name in formats:
        replies = results[name].pop("replies")
        same = sum(a == b for a, b in zip(reference, replies, strict=True))
        results[name]["same_replies_as_" + formats[0]] = f"{same}/{len(replies)}"
    if args.json:
        print(json.dumps(results))
        return
    keys = list(results[formats[0]])
    print(f"{'':<30}" + "".join(f"{name:>22}" for name in formats))
    for key in keys:
        print(f"{key:<30}" + "".join(f"{results[name].get(key)!s:>22}" for name in formats))


if __name__ == "__main__":
    main()
