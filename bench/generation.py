"""Generation benchmark: model load (cold from GGUF, warm from the safetensors copy), TTFT, decode speed, RSS.

    python bench/generation.py [--model NAME] [--runs N] [--skip-cold] [--json]

Prints a table by default; with `--json`, one JSON object. Everything goes through
`TransformersModel.stream` on the one-at-a-time `generate` path (scheduler off, so every run
decodes exactly the same number of tokens). The cold load converts the GGUF into a throwaway
cache in a child process, so its memory peak does not hide the serving process's own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.inference.local import TransformersModel
from bot.inference.weights import prepare_model
from bot.seams.model import Chunk, Finish
from bot.types import ChatMessage, GenerationParams
from config.settings import SchedulerSettings, load_settings

PROMPT_TOKENS = 500
NEW_TOKENS = 128

PASSAGE = (
    "The harbour town kept its records in a long stone building by the quay. Every ship that came "
    "in was written down: its name, its master, its cargo and the day it left. Over two centuries "
    "the ledgers filled three rooms, and the clerks who kept them learned to read the weather from "
    "the handwriting of their predecessors, cramped in winter and loose in summer. "
)


class _FixedLength(TransformersModel):
    """Generates exactly `NEW_TOKENS` tokens, so every run decodes the same amount."""

    def _generation_config(self, params: GenerationParams) -> Any:
        config = super()._generation_config(params)
        config.min_new_tokens = params.max_tokens
        return config


def _prompt(model: TransformersModel) -> list[ChatMessage]:
    """A system prompt and a long user message, about `PROMPT_TOKENS` tokens in all."""
    system = ChatMessage("system", "You are a helpful assistant.")

    def build(words: list[str]) -> list[ChatMessage]:
        return [system, ChatMessage("user", " ".join(words) + "\n\nSummarise this text in detail.")]

    words: list[str] = []
    while model.count_tokens(build(words)) < PROMPT_TOKENS:
        words.extend(PASSAGE.split())
    while model.count_tokens(build(words)) > PROMPT_TOKENS:
        words.pop()
    return build(words)


async def _one_run(
    model: TransformersModel, messages: list[ChatMessage], new_tokens: int
) -> dict[str, float]:
    params = GenerationParams(temperature=0.0, max_tokens=new_tokens, repetition_penalty=1.0)
    started = time.perf_counter()
    first: float | None = None
    completion = prompt = 0
    async for item in model.stream(messages, params):
        if first is None and isinstance(item, Chunk):
            first = time.perf_counter()
        if isinstance(item, Finish):
            completion, prompt = item.completion_tokens, item.prompt_tokens
    ended = time.perf_counter()
    assert first is not None
    return {
        "ttft_s": first - started,
        "decode_tps": (completion - 1) / (ended - first) if completion > 1 else 0.0,
        "prefill_tps": prompt / (first - started),
        "prompt_tokens": prompt,
        "new_tokens": completion,
    }


def _cold_load(name: str) -> dict[str, float]:
    """Convert from GGUF into an empty cache and load, in a child process; returns seconds and peak RSS."""
    code = (
        "import json, resource, sys, time\n"
        "from pathlib import Path\n"
        "from config.settings import load_settings\n"
        "from bot.inference.local import TransformersModel\n"
        "s = load_settings(model={'name': sys.argv[1]})\n"
        "t = time.perf_counter()\n"
        "TransformersModel.load(s.model, Path(sys.argv[2]), progress=False)\n"
        "seconds = time.perf_counter() - t\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps({'s': seconds, 'rss': peak}))\n"
    )
    with tempfile.TemporaryDirectory(prefix="chinwag-bench-") as cache:
        done = subprocess.run(
            [sys.executable, "-c", code, name, cache],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"load_cold_s": result["s"], "convert_rss_mb": result["rss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name (default: the configured one)")
    parser.add_argument("--runs", type=int, default=2, help="measured runs after one warm-up (median)")
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold load from GGUF")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    settings = load_settings(model={"name": args.model})
    result: dict[str, Any] = {"model": settings.model.name}
    if not args.skip_cold:
        result.update(_cold_load(settings.model.name))
    # The real cache must be ready before the warm load is timed.
    prepare_model(settings.model, settings.model_cache_dir, progress=not args.json)
    started = time.perf_counter()
    model = _FixedLength.load(
        settings.model, settings.model_cache_dir, progress=False, scheduler=SchedulerSettings(enabled=False)
    )
    result["load_warm_s"] = time.perf_counter() - started
    result["threads"] = __import__("torch").get_num_threads()

    messages = _prompt(model)

    async def runs() -> list[dict[str, float]]:
        await _one_run(model, messages, 8)  # warm-up: first-call allocations are not generation speed
        return [await _one_run(model, messages, args.new_tokens) for _ in range(args.runs)]

    measured = asyncio.run(runs())
    for key in ("ttft_s", "decode_tps", "prefill_tps"):
        result[key] = statistics.median(run[key] for run in measured)
    result["prompt_tokens"] = measured[0]["prompt_tokens"]
    result["new_tokens"] = measured[0]["new_tokens"]
    result["runs"] = len(measured)
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    if args.json:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))
        return
    rows = [
        ("model", result["model"]),
        ("load, cold from GGUF", _fmt(result.get("load_cold_s"), "s")),
        ("peak RSS while converting", _fmt(result.get("convert_rss_mb"), "MB", 0)),
        ("load, warm from safetensors", _fmt(result["load_warm_s"], "s")),
        ("prompt / new tokens", f"{result['prompt_tokens']} / {result['new_tokens']}"),
        ("time to first token", _fmt(result["ttft_s"], "s", 2)),
        ("prefill", _fmt(result["prefill_tps"], "tok/s")),
        ("decode", _fmt(result["decode_tps"], "tok/s")),
        ("peak RSS serving", _fmt(result["rss_mb"], "MB", 0)),
        ("torch threads / runs", f"{result['threads']} / {result['runs']}"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def _fmt(value: float | None, unit: str, digits: int = 1) -> str:
    return "skipped" if value is None else f"{value:,.{digits}f} {unit}"


if __name__ == "__main__":
    main()
