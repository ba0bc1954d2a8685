"""The embedded model: a transformers causal LM running in this process, streamed off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from bot.errors import ChinwagError, ModelError
from bot.inference.planner import Request, RowProcessor
from bot.inference.scheduler import Scheduler
from bot.inference.weights import prepare_model, quiet_transformers
from bot.seams.model import Chunk, Constrain, Finish, FinishReason, Queued
from bot.tools.grammar import RELEASED, ToolCallGrammar
from bot.types import ChatMessage, GenerationParams, ModelInfo
from config.settings import ModelSettings, SchedulerSettings

log = logging.getLogger(__name__)

# End-of-turn markers of the common chat templates; whichever exist in a vocabulary stop generation.
END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")
_DEFAULT_CONTEXT = 2048


class _Mailbox:
    """Items from the scheduler's thread for one event loop's queues, delivered together: one wake-up
    of the loop for whatever was posted before it ran (a decode step's tokens for 8 replies: one
    call into the loop, not eight).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # not kept alive by the model's mailboxes (weak keys)
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue[Any], Any]] = []

    def post(self, queue: asyncio.Queue[Any], item: Any) -> None:
        with self._lock:
            self._items.append((queue, item))
            if len(self._items) > 1:
                return  # a delivery is already on its way
        loop = self._loop()
        try:
            if loop is None:
                raise RuntimeError("the event loop is gone")
            loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed or gone: nobody is left to read
            with self._lock:
                self._items.clear()

    def _deliver(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for queue, item in items:
            queue.put_nowait(item)


class TransformersModel:
    """A `ChatModel` backed by a transformers causal LM; concurrent replies batched by a `Scheduler`."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        device: str,
        scheduler: SchedulerSettings | None = None,
        quantization: str | None = None,
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        config = model.config
        window = getattr(config, "max_position_embeddings", None) or _DEFAULT_CONTEXT
        self._info = ModelInfo(
            name=name,
            device=device,
            dtype=_describe_dtype(model, quantization),
            context_window=int(window),
            notes=_kernel_notes(model, quantization),
        )
        self._eos_ids = self._end_of_turn_ids()
        self._tokens = TokenPrefixes(tokenizer)
        pad = tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else self._eos_ids[0]
        # Without the scheduler (scheduler.enabled = false, or a model whose cache it cannot
        # batch), one worker thread runs one `generate` at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chinwag-generate")
        # One mailbox per event loop that streams replies (`_stream_scheduled`).
        self._mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = (
            weakref.WeakKeyDictionary()
        )
        self._pieces: list[str] | None = None
        self._groups: dict[str, list[int]] = {}
        self._scheduler: Scheduler | None = None
        self._follow: list[int] | None = None
        self._plain_prompts = False  # the template refused a prompt once (logged) and renders plainly
        config = scheduler or SchedulerSettings()
        if config.enabled and Scheduler.supports(model):
            self._scheduler = Scheduler(
                model,
                tokenizer,
                self._eos_ids,
                max_batch=config.max_batch,
                max_queue=config.max_queue,
                prefix_cache_mb=config.prefix_cache_mb,
                half_cache=config.kv_cache == "float16",
            )

    @classmethod
    def load(
        cls,
        settings: ModelSettings,
        cache_dir: Path,
        progress: bool = True,
        scheduler: SchedulerSettings | None = None,
    ) -> TransformersModel:
        """Prepare the model if needed and load it on the configured device."""
        if settings.kernels != "torch" and resolve_quantization(
            settings.quantization, resolve_device(settings.device)
        ):
            from bot.inference.kernels import choose

            choose(settings.simd)  # a forced path this CPU cannot run: said before anything loads
        path = prepare_model(settings, cache_dir, progress)
        quiet_transformers()
        import torch
        from transformers import AutoModelForCausalLM

        if settings.threads:
            torch.set_num_threads(settings.threads)
        device = resolve_device(settings.device)
        scheme = resolve_quantization(settings.quantization, device)
        started = time.perf_counter()
        try:
            tokenizer = load_tokenizer(path)
            if tokenizer.chat_template is None:
                raise ModelError(f"{settings.name} has no chat template, so it cannot chat")
            if scheme is not None:
                from bot.inference.kernels import Kernels
                from bot.inference.quantize import load_quantized, use_kernels

                model = load_quantized(path, scheme, cache_dir, progress)
                # This model's own choice of kernels: others in the process keep theirs.
                kernels = Kernels.load(settings.kernels, cache_dir, progress, settings.simd)
                use_kernels(model, kernels)
                log.info("kernels: %s", kernels.why)
            else:
                dtype = _resolve_dtype(settings.dtype, device)
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
                model.to(device)  # type: ignore[arg-type]
        except OSError as error:
            raise ModelError(f"Could not load the model from {path}: {error}") from error
        model.eval()
        log.info(
            "loaded %s (%s) from %s in %.1f s",
            settings.name,
            scheme or "unquantized",
            path,
            time.perf_counter() - started,
        )
        return cls(model, tokenizer, Path(settings.name).name, device, scheduler, scheme)

    @property
    def scheduler(self) -> Scheduler | None:
        """The scheduler batching this model's replies (None when it runs one at a time)."""
        return self._scheduler

    def close(self) -> None:
        """Stop the scheduler's worker; unfinished replies end with an error. The one-at-a-time
        worker thread ends after its current reply, taking its OpenMP workers with it (see
        `bot.threads`: left behind, they slow any other model's decoding in the process)."""
        if self._scheduler is not None:
            self._scheduler.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def info(self) -> ModelInfo:
        """Name, device, dtype and context window."""
        return self._info

    def count_tokens(
        self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]] | None = None
    ) -> int:
        """Tokens of the prompt these messages (and tool schemas) render to, generation prompt included."""
        return len(self._encode(messages, tools))

    def count_text_tokens(self, text: str) -> int:
        """Tokens of a bare piece of text."""
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        tools: Sequence[dict[str, Any]] | None = None,
        constrain: Constrain = False,
    ) -> AsyncGenerator[Chunk | Finish | Queued, None]:
        """Generate in the worker thread; deltas arrive through a queue; closing cancels.

        With `constrain`, a reply that starts a tool call can only be a well-formed call of one
        of `tools` (see `bot.tools.grammar`); any other reply is generated freely. A reply that has
        to wait for the scheduler yields `Queued` (its place in line) before its first `Chunk`.
        """
        if self._scheduler is not None:
            async with contextlib.aclosing(
                self._stream_scheduled(self._scheduler, messages, params, tools, constrain)
            ) as scheduled:
                async for produced in scheduled:
                    yield produced
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Chunk | Finish | BaseException] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: Chunk | Finish | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        job = loop.run_in_executor(
            self._executor,
            self._generate,
            list(messages),
            params,
            cancel,
            emit,
            list(tools or []),
            constrain,
        )
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise ModelError(f"The model failed: {type(item).__name__}: {item}") from item
                yield item
                if isinstance(item, Finish):
                    return
        finally:
            cancel.set()
            # Let the worker stop at its next token before returning, without blocking the loop.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([job])

    async def _stream_scheduled(
        self,
        scheduler: Scheduler,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        tools: Sequence[dict[str, Any]] | None,
        constrain: Constrain,
    ) -> AsyncGenerator[Chunk | Finish | Queued, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Chunk | Finish | Queued | BaseException] = asyncio.Queue()

        mailbox = self._mailboxes.get(loop)
        if mailbox is None:
            mailbox = self._mailboxes.setdefault(loop, _Mailbox(loop))

        def emit(item: Chunk | Finish | Queued | BaseException) -> None:
            # A closed loop has nobody left to read; the worker carries on for the others.
            mailbox.post(queue, item)

        # Templating, tokenising and (once) the token table take real CPU time: off the loop.
        prompt, processors = await asyncio.to_thread(
            self._prepare, list(messages), params, list(tools or []), constrain
        )
        watch = self._first_token(params.watch) if params.watch else None
        request = Request(prompt, params, emit, processors, follow=self._follow or (), watch=watch)
        scheduler.submit(request)  # BusyError (a ChinwagError) when the queue is full
        over = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    over = True
                    if isinstance(item, ChinwagError):
                        raise item
                    raise ModelError(f"The model failed: {type(item).__name__}: {item}") from item
                yield item
                if isinstance(item, Finish):
                    over = True
                    return
        finally:
            if not over:
                scheduler.cancel(request)
                # The worker answers a cancel with a last Finish; waiting for it means the request
                # has left the batch when the stream is closed.
                with contextlib.suppress(asyncio.CancelledError):
                    while not isinstance(await queue.get(), Finish | BaseException):
                        pass

    def _prepare(
        self,
        messages: list[ChatMessage],
        params: GenerationParams,
        tools: list[dict[str, Any]],
        constrain: Constrain,
    ) -> tuple[list[int], list[RowProcessor]]:
        processors: list[RowProcessor] = []
        if constrain and tools:
            processors.append(self._constraint(tools, params, constrain == "required"))
        if self._follow is None:
            self._follow = self._next_turn_opening()
        return self._encode(messages, tools), processors

    def _next_turn_opening(self) -> list[int]:
        """The tokens the template puts between a reply and the next user message's text.

        Empty when they do not start with an end-of-turn token (the scheduler has nothing to add).
        """
        reply, question = "\u2063reply\u2063", "\u2063question\u2063"
        try:
            text = self._tokenizer.apply_chat_template(
                [
                    {"role": "user", "content": "hello"},
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": question},
                ],
                tokenize=False,
            )
            between = text[text.index(reply) + len(reply) : text.index(question)]
        except (TemplateError, ValueError, TypeError, KeyError) as error:
            # A template that cannot render this: no head start for the next turn, nothing else lost.
            log.info("the chat template gives no next-turn opening (%s)", error)
            return []
        ids = list(self._tokenizer(between, add_special_tokens=False)["input_ids"])
        return ids if ids and ids[0] in self._eos_ids else []

    # Inside the worker thread ----------------------------------------------------------

    def _generate(
        self,
        messages: list[ChatMessage],
        params: GenerationParams,
        cancel: threading.Event,
        emit: Any,
        tools: list[dict[str, Any]],
        constrain: Constrain = False,
    ) -> None:
        try:
            if cancel.is_set():
                return
            import torch
            from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

            class Cancelled(StoppingCriteria):
                def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                    return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool)

            prompt = self._encode(messages, tools)
            streamer = _DeltaStreamer(self._tokenizer, emit)
            input_ids = torch.tensor([prompt], device=self._model.device)
            config = self._generation_config(params)
            if params.seed is not None:
                torch.manual_seed(params.seed)
            processors = LogitsProcessorList()
            if constrain and tools:
                processors.append(self._constraint(tools, params, constrain == "required"))
            with torch.inference_mode():
                output = self._model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=config,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([Cancelled()]),
                    logits_processor=processors,
                )
            generated = output[0, len(prompt) :].tolist()
            streamer.flush()
            reason: FinishReason
            if cancel.is_set():
                reason = "cancelled"
            elif generated and generated[-1] in self._eos_ids:
                reason = "stop"
            elif len(generated) >= params.max_tokens:
                reason = "length"
            else:
                reason = "stop"
            completion = len(generated) - (1 if reason == "stop" and generated else 0)
            emit(Finish(prompt_tokens=len(prompt), completion_tokens=max(completion, 0), reason=reason))
        except BaseException as error:
            log.exception("generation failed")
            emit(error)

    def _constraint(
        self, tools: list[dict[str, Any]], params: GenerationParams, required: bool = False
    ) -> ToolCallConstraint:
        """A tool-call constraint for one reply, on this model's token table (built once);
        `required`: the reply must be a call (structured output), not free text."""
        if self._pieces is None:
            # The text of every token on its own: about a second for a 150k vocabulary.
            size = max(len(self._tokenizer), int(self._model.config.vocab_size))
            known = len(self._tokenizer)
            pieces = self._tokenizer.batch_decode([[i] for i in range(known)], skip_special_tokens=False)
            self._pieces = list(pieces) + [""] * (size - known)
            self._groups = first_character_groups(self._pieces)
        return ToolCallConstraint(
            ToolCallGrammar(tools, required),
            self._pieces,
            self._eos_ids,
            params.temperature <= 0,
            groups=self._groups,
        )

    def _generation_config(self, params: GenerationParams) -> Any:
        config = copy.deepcopy(self._model.generation_config)
        config.max_new_tokens = params.max_tokens
        config.max_length = None
        config.min_new_tokens = None
        config.eos_token_id = list(self._eos_ids)
        config.pad_token_id = self._pad_id
        config.repetition_penalty = params.repetition_penalty
        config.num_beams = 1
        if params.temperature <= 0:
            # Greedy: unset the sampling knobs so transformers does not warn about them.
            config.do_sample = False
            config.temperature = None
            config.top_p = None
            config.top_k = None
        else:
            config.do_sample = True
            config.temperature = params.temperature
            config.top_p = params.top_p
            config.top_k = params.top_k if params.top_k > 0 else None
        return config

    def _first_token(self, text: str) -> int | None:
        """The token a reply opening with `text` starts with (None: it has none)."""
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return int(ids[0]) if ids else None

    def _encode(
        self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        rendered = [message.as_dict() for message in messages]
        try:
            text = self._tokenizer.apply_chat_template(
                rendered, tools=list(tools) if tools else None, tokenize=False, add_generation_prompt=True
            )
        except (TemplateError, ValueError, TypeError, KeyError) as error:
            # A template without a "tool" role, tools support or later system messages: the prompt
            # is rendered as plain user/assistant turns instead, and the log says so once.
            if not self._plain_prompts:
                self._plain_prompts = True
                log.warning(
                    "%s's chat template refused this prompt (%s); rendering it plainly", self.info.name, error
                )
            text = self._tokenizer.apply_chat_template(
                _plain(rendered), tokenize=False, add_generation_prompt=True
            )
        return self._tokens.encode(text)

    def _end_of_turn_ids(self) -> list[int]:
        ids: list[int] = []

        def add(value: Any) -> None:
            values = value if isinstance(value, list | tuple) else [value]
            for item in values:
                if isinstance(item, int) and item >= 0 and item not in ids:
                    ids.append(item)

        add(self._model.generation_config.eos_token_id)
        add(self._tokenizer.eos_token_id)
        # Looked up one by one: the whole vocabulary as a dict costs a fifth of a second at start.
        for marker in END_OF_TURN:
            found = self._tokenizer.convert_tokens_to_ids(marker)
            # An unknown token maps to the unknown id, which is not the marker.
            if isinstance(found, int) and self._tokenizer.convert_ids_to_tokens(found) == marker:
                add(found)
        if not ids:
            raise ModelError("The model defines no end-of-turn token")
        return ids


def _plain(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Messages for a strict template: tool results as user messages, and a system message after
    the first (the documents' passages) put at the head of the user message that follows it."""
    plain: list[dict[str, str]] = []
    carried: list[str] = []
    for n, message in enumerate(messages):
        if message["role"] == "tool":
            message = {"role": "user", "content": f"Tool result:\n{message['content']}"}
        if message["role"] == "system" and n > 0:
            carried.append(message["content"])
            continue
        if carried and message["role"] == "user":
            message = {"role": "user", "content": "\n\n".join([*carried, message["content"]])}
            carried = []
        plain.append(message)
    if carried:
        plain.append({"role": "user", "content": "\n\n".join(carried)})
    return plain


class ToolCallConstraint:
    """A transformers logits processor that keeps a tool call well-formed (batch of one).

    Candidates are tried in order of score against the grammar, so the usual cost is a few dozen
    grammar steps per token; when none of the best `scan` is allowed, every token is tried, those
    sharing a first character that cannot follow being skipped together. Once the grammar is
    released (the reply is not a call) it costs nothing more.
    """

    def __init__(
        self,
        grammar: ToolCallGrammar,
        pieces: list[str],
        eos_ids: Sequence[int],
        greedy: bool,
        want: int = 40,
        scan: int = 256,
        groups: dict[str, list[int]] | None = None,
    ) -> None:
        self._grammar = grammar
        self._pieces = pieces
        self._eos = set(eos_ids)
        self._greedy = greedy
        self._want = want
        self._scan = min(scan, len(pieces))
        self._state: Any = grammar.start()
        self._prompt_length: int | None = None
        self._consumed = 0
        # Tokens by first character, for the full scan (the model keeps one table for all replies).
        self._by_first = groups

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """Mask every token that cannot continue the call."""
        if self._prompt_length is None:
            self._prompt_length = int(input_ids.shape[1])
        new = input_ids[0, self._prompt_length + self._consumed :].tolist()
        self._consumed += len(new)
        for token in new:
            if self._state == RELEASED:
                break
            self._state = self._grammar.feed(
                self._state, self._pieces[token] if token < len(self._pieces) else ""
            )
            if self._state is None:  # cannot happen with the mask applied; never block a reply on it
                self._state = RELEASED
        if self._state == RELEASED:
            return scores
        import torch

        row = scores[0]
        allowed: list[int] = []
        for token in torch.topk(row, self._scan).indices.tolist():
            if self._allows(token):
                allowed.append(token)
                if self._greedy or len(allowed) >= self._want:
                    break
        if not allowed:
            allowed = self._all_allowed()
        if not allowed:  # the grammar is stuck (it never should be): let the model finish freely
            self._state = RELEASED
            return scores
        masked = torch.full_like(row, float("-inf"))
        index = torch.tensor(allowed, device=row.device)
        kept = row[index]
        masked[index] = torch.where(torch.isfinite(kept), kept, torch.zeros_like(kept))
        out = scores.clone()
        out[0] = masked
        return out

    def _allows(self, token: int) -> bool:
        if token in self._eos:
            return self._grammar.complete(self._state)
        piece = self._pieces[token] if token < len(self._pieces) else ""
        return bool(piece) and self._grammar.feed(self._state, piece) is not None

    def _all_allowed(self) -> list[int]:
        if self._by_first is None:
            self._by_first = first_character_groups(self._pieces)
        allowed = [token for token in self._eos if self._grammar.complete(self._state)]
        for first, tokens in self._by_first.items():
            if self._grammar.feed(self._state, first) is None:
                continue
            allowed += [token for token in tokens if token not in self._eos and self._allows(token)]
        return allowed


def first_character_groups(pieces: list[str]) -> dict[str, list[int]]:
    """Token ids grouped by the first character of their text (empty pieces left out)."""
    groups: dict[str, list[int]] = {}
    for token, piece in enumerate(pieces):
        if piece:
            groups.setdefault(piece[0], []).append(token)
    return groups


class _DeltaStreamer:
    """Receives token ids from `generate` and emits text deltas (a transformers streamer)."""

    def __init__(self, tokenizer: Any, emit: Any) -> None:
        self._tokenizer = tokenizer
        self._emit = emit
        self._ids: list[int] = []
        self._sent = 0
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        """Called with the prompt first, then with each new token."""
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self._ids.extend(int(token) for token in value.reshape(-1).tolist())
        self._send(final=False)

    def end(self) -> None:
        """Called once generation is over."""
        self._send(final=True)

    def flush(self) -> None:
        """Send whatever is still held back."""
        self._send(final=True)

    def _send(self, final: bool) -> None:
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        # A multi-byte character split across tokens decodes as U+FFFD until it is complete.
        if not final and text.endswith("\ufffd"):
            return
        delta = text[self._sent :]
        if delta:
            self._sent = len(text)
            self._emit(Chunk(delta))


# Tokenizer classes that transformers (v5) builds as the `tokenizers` backend over the vocabulary
# and merges of the model's tokenizer.json: for them that file alone is the tokenizer.
_BACKEND_TOKENIZERS = {"TokenizersBackend", "PreTrainedTokenizerFast", "Qwen2Tokenizer"}


def load_tokenizer(path: Path) -> Any:
    """The model's tokenizer, as `AutoTokenizer.from_pretrained` gives it.

    For the classes that are the `tokenizers` backend over tokenizer.json (the embedded models'),
    straight from that file: `from_pretrained` also parses it in Python (twice for Qwen), a large
    part of the time from start to first token. The same ids, special tokens, chat template and
    decoding (`tests/test_tokenizer_load.py`). Anything else goes through
    `AutoTokenizer`.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    try:
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if (
        not isinstance(config, dict)
        or config.get("tokenizer_class") not in _BACKEND_TOKENIZERS
        or "auto_map" in config
        or not (path / "tokenizer.json").is_file()
    ):
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    template = config.pop("chat_template", None)
    config.pop("tokenizer_class")
    template_file = path / "chat_template.jinja"
    if template_file.is_file():  # it takes priority over the config's entry, as in `from_pretrained`
        template = template_file.read_text(encoding="utf-8")
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path / "tokenizer.json"), chat_template=template, name_or_path=str(path), **config
    )


def resolve_device(name: str) -> str:
    """ "auto" → cuda when available, else cpu; "cuda" without a CUDA device is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("model.device is 'cuda' but no CUDA device is available")
    return name


def resolve_quantization(name: str, device: str) -> Any:
    """The weight format to load: "int8", "int4" or None (the model's own floats)."""
    from bot.inference.quantize import available

    if name == "none":
        return None
    if name == "auto":
        # The fastest format that kept every answer-quality score: int4 for the MLP's input
        # projections and where the weights already are 4-bit, int8 elsewhere (int4 throughout
        # measurably cost the default model tool-use answers; see bot.inference.quantize.INT4_LAYERS).
        return "mixed" if available("mixed", device) else None
    if not available(name, device):  # type: ignore[arg-type]
        raise ModelError(
            f"model.quantization = {name!r} works on a CPU only (this model runs on {device}); "
            'use "none" or "auto"'
        )
    return name


class TokenPrefixes:
    """Tokenizing a rendered prompt, the conversation's earlier turns from a cache.

    Each turn renders the whole conversation again; tokenizing all of it would grow with the
    conversation and show in the time to the first token. A prompt is cut before its last
    special token (the template's marks between messages, which the tokenizer splits off before
    anything else), so the next turn's prompt, which starts with that text, only tokenizes what
    follows. Thread-safe: prompts are prepared on worker threads.
    """

    CAPACITY = 64

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._cuts: dict[int, str] = {}
        for token_id, token in getattr(tokenizer, "added_tokens_decoder", {}).items():
            # Only marks nothing can merge with or strip around: the text before one tokenizes alone.
            if token.special and not token.lstrip and not token.normalized and token.content:
                self._cuts[int(token_id)] = token.content
        self._known: OrderedDict[str, list[int]] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        """`text`'s token ids (the template already wrote any BOS it wants), as the tokenizer
        gives them for the whole text."""
        with self._lock:
            start = max((known for known in self._known if text.startswith(known)), key=len, default="")
            head = list(self._known[start]) if start else []
            if start:
                self._known.move_to_end(start)
        ids = head + self._ids(text[len(start) :])
        self._remember(text, ids, len(start), len(head))
        return ids

    def _ids(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _remember(self, text: str, ids: list[int], start: int, head: int) -> None:
        """Keep `text` up to its last cut mark, with its ids, when that lies in the part just
        tokenized and the text from the mark on tokenizes to the same ids on its own."""
        for index in range(len(ids) - 1, head, -1):
            mark = self._cuts.get(ids[index])
            if mark is None:
                continue
            at = text.rfind(mark)
            if at <= start or self._ids(text[at:]) != ids[index:]:
                return
            with self._lock:
                self._known[text[:at]] = ids[:index]
                self._known.move_to_end(text[:at])
                while len(self._known) > self.CAPACITY:
                    self._known.popitem(last=False)
            return


def _kernel_notes(model: Any, quantization: Any) -> tuple[str, ...]:
    """What `/model` says of the quantized layers' kernels: which path runs them, and why."""
    if not quantization:
        return ()
    from bot.inference.quantize import kernels_of

    kernels = kernels_of(model)
    if kernels.ready:
        return (f"kernels: chinwag's, {kernels.why} (model.kernels = {kernels.setting!r})",)
    return (f"kernels: {kernels.why}",)


def _describe_dtype(model: Any, quantization: Any) -> str:
    dtype = str(model.dtype).removeprefix("torch.")
    if not quantization:
        return dtype
    from bot.inference.quantize import label

    return f"{label(quantization)} weights, {dtype}"


def _resolve_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        # fp32 on CPU: bf16 matmuls are slower on most CPUs and fp16 is not supported well.
        if device == "cpu":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
