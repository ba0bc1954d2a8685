"""Serving benchmark: one model answering many conversations, scheduler against the naive path.

    python bench/serving.py [--model NAME] [--tokens N] [--json]

Side by side in one run, on the same weights:
- single_tps: decode tokens/s of one reply as shipped (scheduler, the default weight format);
  single_tps_by_format: the same for each `model.quantization` (none = float32, int8, int4, auto).
- single_tps_by_kernels / agg8_tps_by_kernels: the same reply alone and 8 at once, by
  `model.kernels` (auto: chinwag's; where the CPU has AVX512-VNNI the decode step rounds the
  activations to int8 but for the MLP's down projection, prompts to 16 bits; to bf16 where it has
  AVX512-BF16 only; int16: 16 bits everywhere (AVX512-VNNI); float32: chinwag's in float32; torch:
  torch's int8/int4 kernels), default weight
  format.
- naive_single_tps: the naive path, float32 and one `generate` at a time.
- agg8_tps / naive_agg8_tps: total tokens/s of 8 conversations asking at once; p95_ttft8_s /
  naive_p95_ttft8_s: the 95th-percentile time to first token among them. single_tps, agg8_tps and
  p95_ttft8_s are the medians of `--rounds` rounds (one reply, then 8 at once, each round on a
  freshly loaded model); single_tps_by_round, agg8_tps_by_round, agg8_over_single_by_round: each
  round's figures and ratio; machine_by_round: what the machine did just before the round's one
  reply and just before its 8, a float32 matmul in cache (GFLOP/s: what bounds 8 replies) and a
  sum over 256 MB (GB/s: what bounds one). A VM may switch between states that favour one or the
  other, and the ratio moves with them (bench/RESULTS.md records such a VM).
- ttft_turn1_s / ttft_turn10_s: time to first token of a conversation's first and tenth turn
  (scheduler, prefix reuse on; half a second before each question; the median of six
  conversations, whose first and last questions have as many tokens); encoded_turn1 /
  encoded_turn10: the prompt tokens those turns encoded (the rest came from the prefix cache);
  naive_*: the naive path (one conversation).
- docs_ttft_turn1_s / docs_ttft_turn10_s / docs_encoded_turn1 / docs_encoded_turn10: the same
  through the engine with the document store (bench/eval_corpus), every turn bringing new
  passages: time to first token (retrieval included) and the prompt tokens the turn encoded (the
  rest came from the prefix cache).
- long_single_tps_by_kv_cache / long_agg8_tps_by_kv_cache: one reply alone (decode rate) and 8 at
  once (total tokens/s) over document-length prompts (long_prompt_tokens, each conversation its own
  documents from bench/eval_corpus), by `scheduler.kv_cache`; each prompt was asked once before,
  so the 8 reuse their kept caches as follow-up questions do and decoding dominates
  (long_encoded8: the prompt tokens the 8 encoded); long_kv_mb_per_1k_tokens: a conversation's
  keys and values per 1,000 tokens.
- start_to_first_token_s, rss_mb, peak_rss_mb: a fresh process with a warm model cache, from start
  to the first token of a reply; its resident memory then, and the peak while loading.
- llamacpp_tps: llama-cpp-python (when installed) on the GGUF the embedded model ships as, with
  as many threads as cores (else null).
- simd (`--parts simd`): side by side, round by round (each variant once per round, in the same
  order: A, B, C, A, B, C), one reply and 8 at once on each path of chinwag's kernels this CPU runs
  (`model.simd`: single_tps_by_simd / agg8_tps_by_simd, the medians of the rounds, and _by_round),
  torch's kernels (key "torch"), and llama.cpp's one reply on the same GGUF run by each Python
  given with `--llama NAME=PYTHON` (a venv with llama-cpp-python, e.g. a build without AVX-512),
  in a process of its own; and the one reply and 8 at once of another checkout of chinwag given
  with `--baseline NAME=DIR` (e.g. the commit before a change, `git archive` into DIR), as shipped
  there, in a process of its own (key NAME); load_by_round: the 1-minute load average at each
  round's start.
All replies are greedy; the `decode` rate excludes the first token (the prompt's encoding).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.engine import Engine
from bot.inference.local import TransformersModel
from bot.inference.weights import prepare_model
from bot.seams.model import Chunk, Finish
from bot.threads import run_apart
from bot.types import ChatMessage, GenerationParams, Incoming, TextDelta, TurnDone
from config.settings import SchedulerSettings, load_settings
from retrieval.store import DocumentStore
from storage import SqlHistory

HERE = Path(__file__).resolve().parent

SYSTEM = "You are a helpful assistant. Answer in detail."
QUESTIONS = [
    "Explain how a hash map works.",
    "Describe the water cycle.",
    "What are the benefits of unit tests?",
    "How does HTTPS keep a connection private?",
    "Explain what a database index is.",
    "Describe how a compiler turns code into a program.",
    "What is the difference between a process and a thread?",
    "How do vaccines train the immune system?",
    "Explain recursion with an example.",
    "What makes a good code review?",
]


async def _reply(model: TransformersModel, messages: list[ChatMessage], tokens: int) -> dict[str, Any]:
    """One greedy reply: time to first token, decode rate, text."""
    params = GenerationParams(temperature=0.0, max_tokens=tokens, repetition_penalty=1.0)
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    finish: Finish | None = None
    async for item in model.stream(messages, params):
        if isinstance(item, Chunk):
            first = first or time.perf_counter()
            parts.append(item.text)
        elif isinstance(item, Finish):  # not a Queued notice of the reply's place in the queue
            finish = item
    ended = time.perf_counter()
    count = finish.completion_tokens if finish else 0
    first = first or ended
    decode = (count - 1) / (ended - first) if count > 1 and ended > first else 0.0
    return {
        "ttft": first - started,
        "prompt_tokens": finish.prompt_tokens if finish else 0,
        "tokens": count,
        "decode_tps": decode,
        "text": "".join(parts),
        "end": ended,
    }


def _ask(question: str) -> list[ChatMessage]:
    return [ChatMessage("system", SYSTEM), ChatMessage("user", question)]


async def _single(model: TransformersModel, tokens: int, messages: list[ChatMessage] | None = None) -> float:
    """One reply's decode rate (of `messages`, else the first question): the median of two."""
    await _reply(model, _ask("Say hello."), 8)  # warm-up
    runs = [await _reply(model, messages or _ask(QUESTIONS[0]), tokens) for _ in range(2)]
    return statistics.median(r["decode_tps"] for r in runs)


def _machine() -> dict[str, float]:
    """The machine's speed now: a float32 matmul in cache (GFLOP/s) and a sum over 256 MB (GB/s)."""
    import torch

    side = 384
    a, b = torch.randn(side, side), torch.randn(side, side)
    big = torch.ones(64 * 1024 * 1024)
    times: dict[str, list[float]] = {"mm": [], "sum": []}
    for name, work, repeats in (("mm", lambda: torch.mm(a, b), 40), ("sum", big.sum, 5)):
        work()
        for _ in range(repeats):
            began = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - began)
    return {
        "matmul_gflops": round(2 * side**3 / statistics.median(times["mm"]) / 1e9, 1),
        "memory_gbs": round(big.numel() * 4 / statistics.median(times["sum"]) / 1e9, 1),
    }


async def _together(
    model: TransformersModel, prompts: list[list[ChatMessage]], tokens: int
) -> tuple[list[dict[str, Any]], float]:
    """Every prompt asked at once: each reply's figures, and the seconds until the last ended."""
    started = time.perf_counter()
    results = await asyncio.gather(*(_reply(model, prompt, tokens) for prompt in prompts))
    return results, max(r["end"] for r in results) - started


async def _concurrent(model: TransformersModel, tokens: int, n: int = 8) -> tuple[float, float]:
    results, wall = await _together(model, [_ask(q) for q in QUESTIONS[:n]], tokens)
    ttfts = sorted(r["ttft"] for r in results)
    p95 = ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))]
    return sum(r["tokens"] for r in results) / wall, p95


# Conversations of their own. Each first question starts with a word no earlier prompt of the run
# starts with, so turn 1 encodes its whole question, as a new conversation does (only the system
# prompt, shared by every conversation, comes from the cache); and it has as many tokens as the last
# one ("Summarise what we discussed.", 7 with Qwen's and SmolLM2's tokenizers), so turns 1 and 10
# encode as many new tokens and their ratio measures the history, not the questions' lengths (a feed
# of a dozen tokens is compute-bound: its time grows with each token).
CONVERSATIONS = [
    [
        "So what is a linked list?",
        "How is it different from an array?",
        "When would you pick one over the other?",
        "What about memory use?",
        "Can you show the idea in Python?",
        "How do I reverse it?",
        "What is the time complexity of that?",
        "And a doubly linked list?",
        "Where are they used in practice?",
        "Summarise what we discussed.",
    ],
    [
        "Why does the internet use TCP?",
        "How does it differ from UDP?",
        "What is the three-way handshake?",
        "Why can a connection be slow to start?",
        "How does it recover a lost packet?",
        "What is a port number?",
        "Can two programs share a port?",
        "What does a firewall do with it?",
        "When would you choose UDP instead?",
        "Summarise what we discussed.",
    ],
    [
        "Could you explain a binary search?",
        "Why must the list be sorted?",
        "How many steps does it take for a million items?",
        "Can you write it in Python?",
        "What happens with duplicate values?",
        "How do I find the first match then?",
        "Is recursion a good idea here?",
        "What is a common bug in it?",
        "Where is it used in real programs?",
        "Summarise what we discussed.",
    ],
    [
        "Which problem do git branches solve?",
        "How do I create one?",
        "What does merging do?",
        "And what is a rebase?",
        "Which should I use on a team?",
        "How do I undo a bad commit?",
        "What is a merge conflict?",
        "How do I resolve one?",
        "What is a pull request for?",
        "Summarise what we discussed.",
    ],
    [
        "Define a virtual machine for me.",
        "How is a container different?",
        "Why do containers start faster?",
        "What is an image?",
        "Where are images stored?",
        "How do two containers talk?",
        "What is a volume for?",
        "Are containers secure?",
        "When is a VM the better choice?",
        "Summarise what we discussed.",
    ],
    [
        "Give an overview of neural networks.",
        "What does a layer do?",
        "How does it learn?",
        "What is overfitting?",
        "How can I prevent it?",
        "What is a learning rate?",
        "Why use a GPU for training?",
        "What is inference?",
        "Can a small model run on a laptop?",
        "Summarise what we discussed.",
    ],
]

# Before each message a person reads and types (seconds, in practice); the scheduler uses such idle
# time to encode the end of the last reply's turn ahead of the next message.
THINK_S = 0.5


async def _turns(model: TransformersModel, tokens: int, conversations: int = 6) -> dict[str, float]:
    """TTFT of turn 1 and turn 10 of a conversation (earlier replies kept in the prompt), each the
    median over `conversations` conversations (a single time to first token varies by a sizeable
    share of itself once the model is fast), and the prompt tokens those turns encoded (the rest
    came from the prefix cache)."""
    scheduler = model.scheduler
    first: list[float] = []
    tenth: list[float] = []
    encoded: list[tuple[int, int]] = []
    for questions in CONVERSATIONS[:conversations]:
        messages = [ChatMessage("system", SYSTEM)]
        ttft: list[float] = []
        new: list[int] = []
        for question in questions:
            await asyncio.sleep(THINK_S)
            messages.append(ChatMessage("user", question))
            reused = scheduler.prefix_hits if scheduler else 0
            result = await _reply(model, messages, tokens)
            ttft.append(result["ttft"])
            new.append(result["prompt_tokens"] - ((scheduler.prefix_hits if scheduler else 0) - reused))
            messages.append(ChatMessage("assistant", result["text"]))
        first.append(ttft[0])
        tenth.append(ttft[-1])
        encoded.append((new[0], new[-1]))
    return {
        "ttft_turn1_s": statistics.median(first),
        "ttft_turn10_s": statistics.median(tenth),
        "encoded_turn1": statistics.median(e[0] for e in encoded),
        "encoded_turn10": statistics.median(e[1] for e in encoded),
    }


async def _document_turns(model: TransformersModel, tokens: int, turns: int = 10) -> dict[str, Any]:
    """Turn 1 and turn `turns` of one conversation through the engine, each question bringing
    its own passages: time to first token and prompt tokens encoded (not from the prefix cache)."""
    questions = [q["question"] for q in json.loads((HERE / "eval_questions.json").read_text())]
    questions = questions[:: max(1, len(questions) // turns)][:turns]  # spread over the documents
    scheduler = model.scheduler
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(data_dir=Path(tmp), generation={"temperature": 0.0, "max_tokens": tokens})
        store = DocumentStore.open(settings)
        store.ingest([HERE / "eval_corpus"])
        history = await SqlHistory.open(settings)
        try:
            engine = Engine(model, history, settings, store)  # no tools: one round per turn
            # Warm-up in another conversation: the embedding model loads on its first query.
            warm = Incoming(text="Where is the office?", platform="bench", channel="warm-up")
            [_ async for _ in engine.handle(warm)]
            ttft: list[float] = []
            encoded: list[int] = []
            for question in questions:
                await asyncio.sleep(THINK_S)
                reused = scheduler.prefix_hits if scheduler else 0
                started = time.perf_counter()
                first: float | None = None
                prompt = 0
                incoming = Incoming(text=question, platform="bench", channel="docs", thread="1")
                async for event in engine.handle(incoming):
                    if isinstance(event, TextDelta) and first is None:
                        first = time.perf_counter()
                    elif isinstance(event, TurnDone):
                        prompt = event.usage.prompt_tokens
                ttft.append((first or time.perf_counter()) - started)
                encoded.append(prompt - ((scheduler.prefix_hits if scheduler else 0) - reused))
        finally:
            await history.close()
    return {
        "docs_ttft_turn1_s": ttft[0],
        "docs_ttft_turn10_s": ttft[-1],
        "docs_encoded_turn1": encoded[0],
        "docs_encoded_turn10": encoded[-1],
    }


def _long_prompts(n: int, chars: int = 4000) -> list[list[ChatMessage]]:
    """`n` conversations whose system prompt carries `chars` of documents (about 1,100 tokens),
    each from its own place in bench/eval_corpus, and a question."""
    corpus = "\n\n".join(path.read_text() for path in sorted((HERE / "eval_corpus").iterdir()))
    prompts = []
    for i in range(n):
        start = i * len(corpus) // n
        documents = (corpus[start:] + "\n\n" + corpus)[:chars]
        system = f"{SYSTEM}\n\nDocuments:\n{documents}"
        prompts.append([ChatMessage("system", system), ChatMessage("user", QUESTIONS[i % len(QUESTIONS)])])
    return prompts


async def _long(model: TransformersModel, tokens: int) -> dict[str, Any]:
    """One reply, then 8 at once, over document-length prompts asked once before."""
    prompts = _long_prompts(8)
    for prompt in prompts:  # each conversation's first question: its cache is kept
        await _reply(model, prompt, 2)
    single = await _single(model, tokens, prompts[0])
    scheduler = model.scheduler
    reused = scheduler.prefix_hits if scheduler else 0
    results, wall = await _together(model, prompts, tokens)
    prompt_tokens = sum(r["prompt_tokens"] for r in results)
    kv = None
    if scheduler is not None:
        step: Any = scheduler.step
        config = model._model.config
        dtype = getattr(step, "cache_dtype", model._model.dtype)
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * dim * dtype.itemsize
        kv = per_token * 1000 / 2**20
    return {
        "prompt_tokens": results[0]["prompt_tokens"],
        "single": single,
        "agg8": sum(r["tokens"] for r in results) / wall,
        "encoded8": prompt_tokens - ((scheduler.prefix_hits if scheduler else 0) - reused),
        "kv_mb_per_1k_tokens": kv,
    }


_CHILD = """
import asyncio, resource, sys, time
started = float(sys.argv[2])
from pathlib import Path
from config.settings import load_settings
from bot.inference.local import TransformersModel
from bot.types import ChatMessage, GenerationParams
from bot.seams.model import Chunk
s = load_settings(model={"name": sys.argv[1]})
model = TransformersModel.load(s.model, s.model_cache_dir, progress=False, scheduler=s.scheduler)
params = GenerationParams(temperature=0.0, max_tokens=4)
async def main():
    async for item in model.stream([ChatMessage("user", "Hello!")], params):
        if isinstance(item, Chunk):
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            status = Path("/proc/self/status")
            rss = peak
            if status.exists():
                line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
                rss = int(line.split()[1]) / 1024
            print(time.time() - started, rss, peak, flush=True)
            return
asyncio.run(main())
model.close()
"""


def _fresh_process(name: str) -> tuple[float, float, float]:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, name, str(time.time())],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"the fresh process failed ({out.returncode}): {out.stderr[-2000:]}")
    seconds, rss, peak = out.stdout.split()[:3]
    return float(seconds), float(rss), float(peak)


def _gguf(name: str, workdir: Path) -> Path | None:
    """The GGUF file a model comes from: a local .gguf, or the embedded model's parts assembled."""
    from bot.inference.weights import EMBEDDED, _assemble

    if name.lower().endswith(".gguf") and Path(name).expanduser().is_file():
        return Path(name).expanduser()
    model = EMBEDDED.get(name)
    parts = model.locate_parts() if model else None
    if model is None or not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    out = workdir / "model.gguf"
    _assemble(parts, out, model, progress=False)
    return out


def _llamacpp(name: str, tokens: int) -> float | None:
    try:
        from llama_cpp import Llama  # type: ignore[import-not-found]
    except ImportError:
        return None
    with tempfile.TemporaryDirectory(prefix="chinwag-bench-gguf-") as tmp:
        gguf = _gguf(name, Path(tmp))
        if gguf is None:
            return None
        llm = Llama(model_path=str(gguf), n_threads=os.cpu_count() or 2, n_ctx=2048, verbose=False)
        messages: Any = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}]
        rates = []
        for _ in range(2):
            first: float | None = None
            count = 0
            stream = llm.create_chat_completion(
                messages=messages, max_tokens=tokens, temperature=0.0, stream=True
            )
            for _chunk in stream:
                first = first or time.perf_counter()
                count += 1
            if first and count > 1:
                rates.append((count - 1) / (time.perf_counter() - first))
        del llm
    return max(rates) if rates else None


# llama.cpp's one reply in a process of its own (another venv's Python): the decode rate of the
# better of two replies, as `_llamacpp` measures it.
_LLAMA_SCRIPT = """
import json, sys, time
from llama_cpp import Llama
gguf, tokens, threads, messages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
llm = Llama(model_path=gguf, n_threads=threads, n_ctx=2048, verbose=False)
rates = []
for _ in range(2):
    first, count = None, 0
    stream = llm.create_chat_completion(messages=messages, max_tokens=tokens, temperature=0.0, stream=True)
    for _chunk in stream:
        first = first or time.perf_counter()
        count += 1
    rates.append((count - 1) / (time.perf_counter() - first))
print(max(rates))
"""


# Another checkout's one reply and 8 at once, as shipped there, with its own bench/serving.py.
_BASELINE_SCRIPT = """
import asyncio, sys
sys.path.insert(0, sys.argv[1] + "/bench")
import serving
from config.settings import load_settings
tokens = int(sys.argv[2])
async def main():
    model = serving._load(load_settings(model={"name": None}))
    single = await serving._single(model, tokens)
    await asyncio.sleep(0.1)
    agg8 = (await serving._concurrent(model, tokens))[0]
    model.close()
    print(single, agg8)
asyncio.run(main())
"""


def _baseline_apart(checkout: str, tokens: int) -> tuple[float, float] | None:
    command = [sys.executable, "-c", _BASELINE_SCRIPT, checkout, str(tokens)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=checkout)
    if out.returncode != 0:
        print(f"baseline ({checkout}) failed: {out.stderr[-500:]}", file=sys.stderr)
        return None
    single, agg8 = out.stdout.split()[-2:]
    return float(single), float(agg8)


def _llamacpp_apart(python: str, gguf: Path, tokens: int) -> float | None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}]
    command = [
        python,
        "-c",
        _LLAMA_SCRIPT,
        str(gguf),
        str(tokens),
        str(os.cpu_count() or 2),
        json.dumps(messages),
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        print(f"llama.cpp ({python}) failed: {out.stderr[-500:]}", file=sys.stderr)
        return None
    return float(out.stdout.split()[-1])


def _load(
    settings: Any,
    quantization: str | None = None,
    scheduler: bool = True,
    kernels: str | None = None,
    kv_cache: Literal["float16", "float32"] = "float16",
    simd: str | None = None,
) -> TransformersModel:
    model_settings = settings.model
    if quantization is not None:
        model_settings = model_settings.model_copy(update={"quantization": quantization})
    if kernels is not None:
        model_settings = model_settings.model_copy(update={"kernels": kernels})
    if simd is not None:
        model_settings = model_settings.model_copy(update={"simd": simd})
    return TransformersModel.load(
        model_settings,
        settings.model_cache_dir,
        progress=False,
        scheduler=SchedulerSettings(enabled=scheduler, kv_cache=kv_cache),
    )


async def _on_server(settings: Any, tokens: int, conversations: int = 2) -> dict[str, Any]:
    """The same workload on a model server (`--backend openai`): one reply, 8 at once, turns 1 and
    10; and chinwag's own cost on top of the server: the one reply through chinwag's backend
    against the same request from a bare `openai` client (server_overhead_ms: the difference in
    time to the last token; server_overhead_tps_pct: in decode rate; server_overhead_cpu_ms: in
    this process's CPU time, which does not depend on the server sharing its cores), and a whole
    turn through the engine with its SQL history (server_engine_overhead_cpu_ms)."""
    from openai import AsyncOpenAI

    from bot.inference.openai_server import OpenAIServerModel, api_key_from

    model = OpenAIServerModel.load(settings.model, settings.model_cache_dir, api_key_from(os.environ))
    out: dict[str, Any] = {"server": model.server, "server_model": settings.model.name}
    out["server_single_tps"] = await _single(model, tokens)  # type: ignore[arg-type]
    out["server_agg8_tps"], out["server_p95_ttft8_s"] = await _concurrent(model, tokens)  # type: ignore[arg-type]
    first, tenth = [], []
    for questions in CONVERSATIONS[:conversations]:
        messages = [ChatMessage("system", SYSTEM)]
        ttft = []
        for question in questions:
            messages.append(ChatMessage("user", question))
            result = await _reply(model, messages, tokens)  # type: ignore[arg-type]
            ttft.append(result["ttft"])
            messages.append(ChatMessage("assistant", result["text"]))
        first.append(ttft[0])
        tenth.append(ttft[-1])
    out["server_ttft_turn1_s"] = statistics.median(first)
    out["server_ttft_turn10_s"] = statistics.median(tenth)

    client = AsyncOpenAI(base_url=settings.model.base_url, api_key=api_key_from(os.environ) or "no-key")
    messages = _ask(QUESTIONS[0])
    # What chinwag sends for such a reply, minus what the server refused (as chinwag learnt above).
    request = model.request_body(
        messages, GenerationParams(temperature=0.0, max_tokens=tokens, repetition_penalty=1.0), None
    )

    async def raw() -> tuple[float, float, float]:
        cpu, started = time.process_time(), time.perf_counter()
        first_at, count = None, 0
        stream = await client.chat.completions.create(**request)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first_at = first_at or time.perf_counter()
                count += 1
        ended = time.perf_counter()
        tps = (count - 1) / (ended - (first_at or ended)) if count > 1 else 0.0
        return ended - started, tps, time.process_time() - cpu

    async def ours() -> tuple[float, float, float]:
        cpu, started = time.process_time(), time.perf_counter()
        result = await _reply(model, messages, tokens)  # type: ignore[arg-type]
        return result["end"] - started, result["decode_tps"], time.process_time() - cpu

    with tempfile.TemporaryDirectory() as tmp:
        generation = settings.generation.model_copy(
            update={"temperature": 0.0, "max_tokens": tokens, "repetition_penalty": 1.0}
        )
        turn_settings = settings.model_copy(update={"data_dir": Path(tmp), "generation": generation})
        history = await SqlHistory.open(turn_settings)
        engine = Engine(model, history, turn_settings, None)  # no tools, no documents: one round

        async def turn(n: int) -> tuple[float, float, float]:
            # A conversation of its own per turn, so that each prompt is as long as the raw one's.
            incoming = Incoming(text=QUESTIONS[0], platform="bench", channel=f"overhead-{n}")
            cpu, started = time.process_time(), time.perf_counter()
            async for _event in engine.handle(incoming):
                pass
            return time.perf_counter() - started, 0.0, time.process_time() - cpu

        triples = []
        try:
            for n in range(7):  # alternated, so that drift in the server's speed hits all alike
                triples.append((await raw(), await ours(), await turn(n)))
        finally:
            await history.close()
    triples = triples[1:]  # the first of each warms connections and caches up

    def median(which: int, field: int) -> float:
        return statistics.median(t[which][field] for t in triples)

    raw_s, ours_s = median(0, 0), median(1, 0)
    raw_tps, ours_tps = median(0, 1), median(1, 1)
    out["server_raw_reply_s"] = raw_s
    out["server_chinwag_reply_s"] = ours_s
    out["server_overhead_ms"] = (ours_s - raw_s) * 1000
    out["server_overhead_tps_pct"] = (raw_tps - ours_tps) / raw_tps * 100 if raw_tps else None
    out["server_raw_cpu_ms"] = median(0, 2) * 1000
    out["server_chinwag_cpu_ms"] = median(1, 2) * 1000
    out["server_engine_cpu_ms"] = median(2, 2) * 1000
    out["server_engine_turn_s"] = median(2, 0)
    out["server_overhead_cpu_ms"] = out["server_chinwag_cpu_ms"] - out["server_raw_cpu_ms"]
    out["server_engine_overhead_cpu_ms"] = out["server_engine_cpu_ms"] - out["server_raw_cpu_ms"]
    await client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="chat model (default: the configured one)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per reply")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of one reply then 8 at once")
    parser.add_argument(
        "--parts",
        default="start,shipped,naive,docs,formats,kernels,long,llamacpp",
        help="which measurements, a,b,c",
    )
    parser.add_argument(
        "--backend",
        choices=("local", "openai"),
        default="local",
        help="openai: also run the workload on the model server at --base-url (part 'server')",
    )
    parser.add_argument("--base-url", help="the model server's OpenAI-compatible URL (--backend openai)")
    parser.add_argument("--server-model", help="the model's id on that server (default: --model)")
    parser.add_argument(
        "--llama",
        action="append",
        default=[],
        metavar="NAME=PYTHON",
        help="part 'simd': also llama.cpp's one reply, by this Python's llama-cpp-python (repeatable)",
    )
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="part 'simd': also another checkout's one reply and 8 at once, as shipped (repeatable)",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if args.backend == "openai":
        if not args.base_url:
            parser.error("--backend openai needs --base-url")
        parts.add("server")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    settings = load_settings(model={"name": args.model})
    prepare_model(settings.model, settings.model_cache_dir, progress=not args.json)
    result: dict[str, Any] = {"model": settings.model.name, "tokens": args.tokens}

    async def shipped() -> None:
        # One reply then 8 at once, each round with a model of its own (so every round's 8 prompts
        # find only the system prompt kept, as the first's do): a VM's speed drifts over minutes,
        # and the medians of rounds measured side by side drift less.
        singles, aggs, p95s, machine = [], [], [], []
        for _ in range(args.rounds):
            model = _load(settings)
            result["weights"] = model.info.dtype
            # The machine's state just before each measurement (in a thread of its own: its OpenMP
            # workers must not outlive it, bot/threads.py).
            before_single = run_apart(_machine)
            singles.append(await _single(model, args.tokens))
            await asyncio.sleep(0.1)  # the decoding's OpenMP workers spin a while before they sleep
            machine.append({"before_single": before_single, "before_agg8": run_apart(_machine)})
            agg, p95 = await _concurrent(model, args.tokens)
            aggs.append(agg)
            p95s.append(p95)
            model.close()
        result["single_tps"] = statistics.median(singles)
        result["agg8_tps"] = statistics.median(aggs)
        result["p95_ttft8_s"] = statistics.median(p95s)
        result["agg8_over_single_by_round"] = [round(a / s, 2) for a, s in zip(aggs, singles, strict=True)]
        result["single_tps_by_round"] = [round(s, 1) for s in singles]
        result["agg8_tps_by_round"] = [round(a, 1) for a in aggs]
        result["machine_by_round"] = machine
        model = _load(settings)
        result.update(await _turns(model, args.tokens))
        model.close()

    async def naive() -> None:
        model = _load(settings, "none", scheduler=False)
        result["naive_single_tps"] = await _single(model, args.tokens)
        result["naive_agg8_tps"], result["naive_p95_ttft8_s"] = await _concurrent(model, args.tokens)
        # One conversation: the naive path's slowdown at turn 10 is large enough without a median.
        turns = await _turns(model, args.tokens, 1)
        result.update({f"naive_{key}": value for key, value in turns.items()})
        model.close()

    async def docs() -> None:
        model = _load(settings)
        result.update(await _document_turns(model, args.tokens))
        model.close()
        model = _load(settings, "none", scheduler=False)
        naive_docs = await _document_turns(model, args.tokens)
        result.update({f"naive_{key}": value for key, value in naive_docs.items()})
        model.close()

    async def formats() -> None:
        by_format: dict[str, float | str] = {}
        for name in ("int8", "int4", "auto", "none"):  # auto: as shipped, measured beside the rest
            try:
                model = _load(settings, name)
            except Exception as error:  # a format this machine cannot run
                by_format[name] = f"unavailable: {error}"
                continue
            by_format[name] = await _single(model, args.tokens)
            model.close()
        result["single_tps_by_format"] = by_format

    async def kernels() -> None:
        single: dict[str, float] = {}
        agg8: dict[str, float] = {}
        for name in ("auto", "int16", "float32", "torch"):
            model = _load(settings, kernels=name)
            single[name] = await _single(model, args.tokens)
            agg8[name] = (await _concurrent(model, args.tokens))[0]
            model.close()
        result["single_tps_by_kernels"] = single
        result["agg8_tps_by_kernels"] = agg8

    async def simd() -> None:
        from bot.inference import kernels as paths

        # (name, model.simd, model.kernels)
        variants: list[tuple[str, str | None, str | None]] = [
            (name, name, None) for name in paths.ISAS if paths.unsupported(name) is None
        ]
        variants.append(("torch", None, "torch"))
        llamas = dict(entry.split("=", 1) for entry in args.llama)
        baselines = dict(entry.split("=", 1) for entry in args.baseline)
        names = [name for name, _, _ in variants] + list(baselines)
        single: dict[str, list[float]] = {name: [] for name in names}
        agg8: dict[str, list[float]] = {name: [] for name in names}
        llama: dict[str, list[float | None]] = {name: [] for name in llamas}
        loads = []
        with tempfile.TemporaryDirectory(prefix="chinwag-bench-gguf-") as tmp:
            gguf = _gguf(settings.model.name, Path(tmp)) if llamas else None
            for _ in range(args.rounds):
                loads.append(os.getloadavg()[0])
                for name, simd_path, kernel_setting in variants:
                    model = _load(settings, kernels=kernel_setting, simd=simd_path)
                    single[name].append(await _single(model, args.tokens))
                    await asyncio.sleep(0.1)
                    agg8[name].append((await _concurrent(model, args.tokens))[0])
                    model.close()
                for name, checkout in baselines.items():
                    figures = _baseline_apart(checkout, args.tokens)
                    if figures is not None:
                        single[name].append(figures[0])
                        agg8[name].append(figures[1])
                for name, python in llamas.items():
                    llama[name].append(_llamacpp_apart(python, gguf, args.tokens) if gguf else None)
        result["single_tps_by_simd"] = {name: statistics.median(v) for name, v in single.items() if v}
        result["agg8_tps_by_simd"] = {name: statistics.median(v) for name, v in agg8.items() if v}
        result["single_tps_by_simd_by_round"] = {name: [round(x, 1) for x in v] for name, v in single.items()}
        result["agg8_tps_by_simd_by_round"] = {name: [round(x, 1) for x in v] for name, v in agg8.items()}
        result["llamacpp_tps_by_build"] = {
            name: statistics.median(x for x in v if x is not None) if any(v) else None
            for name, v in llama.items()
        }
        result["llamacpp_tps_by_build_by_round"] = {
            name: [round(x, 1) if x is not None else None for x in v] for name, v in llama.items()
        }
        result["load_by_round"] = [round(x, 2) for x in loads]

    async def long() -> None:
        single: dict[str, float] = {}
        agg8: dict[str, float] = {}
        encoded: dict[str, int] = {}
        size: dict[str, float | None] = {}
        for name in ("float16", "float32"):
            model = _load(settings, kv_cache=name)
            figures = await _long(model, args.tokens)
            model.close()
            result["long_prompt_tokens"] = figures["prompt_tokens"]
            single[name], agg8[name] = figures["single"], figures["agg8"]
            encoded[name], size[name] = figures["encoded8"], figures["kv_mb_per_1k_tokens"]
        result["long_single_tps_by_kv_cache"] = single
        result["long_agg8_tps_by_kv_cache"] = agg8
        result["long_encoded8_by_kv_cache"] = encoded
        result["long_kv_mb_per_1k_tokens_by_kv_cache"] = size

    # First, while this process is small: a child's peak memory counts its parent's at the fork.
    # Start time is the median of three starts (the page cache makes single starts vary).
    try:
        if "start" in parts:
            starts = [_fresh_process(settings.model.name) for _ in range(3)]
            result["start_to_first_token_s"] = statistics.median(s[0] for s in starts)
            result["rss_mb"] = max(s[1] for s in starts)
            result["peak_rss_mb"] = max(s[2] for s in starts)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        result["start_to_first_token_s"] = result["rss_mb"] = result["peak_rss_mb"] = None
    # Each part's figures go to stderr as they come, so a failure late in the run loses nothing.
    # The quantized parts first: once this process has loaded the float32 model (naive, docs, the
    # "none" format), the quantized figures move. Later parts still move with what the process
    # allocated before, so compare figures within a part.
    for part in (shipped, simd, kernels, long, formats, naive, docs):
        if part.__name__ in parts:
            asyncio.run(part())
            print(json.dumps(result), file=sys.stderr, flush=True)
    if "llamacpp" in parts:
        result["llamacpp_tps"] = _llamacpp(settings.model.name, args.tokens)
    if "server" in parts:
        server = {
            "backend": "openai",
            "base_url": args.base_url,
            "name": args.server_model or settings.model.name,
        }
        result.update(asyncio.run(_on_server(load_settings(model=server), args.tokens)))
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"{key:<24} {shown}")


if __name__ == "__main__":
    main()
