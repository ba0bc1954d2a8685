"""The generation scheduler: requests from many conversations decoded together (continuous batching).

One worker thread owns the model. Each request is prefilled on its own KV cache (in chunks, between
decode steps, so a long prompt never stalls the others for long), then joins a shared, left-padded
batch cache (`bot.inference.decoder.BatchCache`); every decode step feeds one token per active request in a
single forward pass (`bot.inference.decoder`'s lean step for the architectures it knows), and a request
leaves the batch as soon as it stops, is cancelled or fails. Admission is first come, first
served; every active request gets one token per step, so a long answer cannot starve a short one.

transformers' own continuous batching (v5 `ContinuousBatchingManager`) was not used: it supports only
temperature/top-k/top-p per request, not a per-request seed, repetition penalty or a stateful logits
processor such as `ToolCallConstraint`.

Finished requests leave their KV cache in a small LRU (`prefix_cache_mb`): a later prompt sharing a
token prefix with one of them (the next turn of the same conversation) encodes only what is new. A
changed history (a summary, an edit) shares a shorter prefix, or none, and simply misses. A reply that
ends (at its end-of-turn token or at max_tokens) also gets the end of its turn and the template's
opening of the next user message encoded into its kept cache (`Request.follow`) once the worker is
idle, so the next turn encodes only its own words, like a first turn; a request that comes first
is never kept waiting for that.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.errors import BusyError
from bot.seams.model import Chunk, Finish, FinishReason, Queued
from bot.types import GenerationParams

if TYPE_CHECKING:
    from bot.inference.decoder import BatchCache, LeanStep, ModelStep

log = logging.getLogger(__name__)

Emit = Callable[[Chunk | Finish | Queued | BaseException], None]
# A per-request logits processor: (that request's prompt and generated ids [1, n], its scores [1, vocab]).
RowProcessor = Callable[[Any, Any], Any]

# Prompts shorter than this are not worth a prefix-cache lookup.
_MIN_PREFIX = 16


@dataclass(eq=False)
class Request:
    """One generation: a tokenised prompt, its sampling parameters, and where its output goes."""

    prompt: list[int]
    params: GenerationParams
    emit: Emit
    processors: Sequence[RowProcessor] = ()
    # What the chat template puts after a reply when the conversation goes on, starting with the
    # end-of-turn token (Qwen: <|im_end|> \n <|im_start|> user \n). A reply that ends has these
    # encoded into the cache it leaves behind, so the next turn starts at its text.
    follow: Sequence[int] = ()
    cancel: threading.Event = field(default_factory=threading.Event)
    # Worker-side state.
    generated: list[int] = field(default_factory=list)
    fed: int = 0  # tokens already in this request's KV cache
    cache: Any = None  # the request's own cache while it is prefilled
    reused: int = 0  # prompt tokens taken from the prefix cache
    generator: Any = None
    lent: tuple[int, ...] | None = None  # the kept cache whose room its cache grows into, if any
    # The distinct tokens of its prompt and reply so far (for the repetition penalty), how many of
    # prompt + generated they cover, and as a tensor (None: changed since).
    seen: set[int] = field(default_factory=set)
    seen_upto: int = 0
    seen_ids: Any = None
    text_sent: int = 0  # characters of the reply streamed so far
    # The reply's tokens decoded last for streaming: from `text_from` (the window's start) up to
    # `text_upto` (what it had streamed then); see `Scheduler._send_text`.
    text_from: int = 0
    text_upto: int = 0
    position: int = 0  # the place in the queue the request was last told (0: not waiting)


class Scheduler:
    """Continuous batching over one causal LM; thread-safe `submit`, one worker thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        eos_ids: Sequence[int],
        max_batch: int = 8,
        max_queue: int = 64,
        prefix_cache_mb: int = 256,
        prefill_chunk: int = 512,
        half_cache: bool = False,
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._eos = set(eos_ids)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._prefill_chunk = prefill_chunk
        self._prefix = _PrefixCache(prefix_cache_mb * 1024 * 1024)
        # Finished replies' caches to extend with `Request.follow` while the worker is idle.
        self.extended = 0  # caches extended so far (for tests and benchmarks)
        self.encoded_together = 0  # prompts encoded in a pass with others (for tests and benchmarks)
        self._pending: deque[tuple[list[int], list[tuple[Any, Any]], list[int]]] = deque(maxlen=2 * max_batch)
        self._lock = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._prefilling: list[Request] = []
        self._rows: list[Request] = []
        from bot.inference.decoder import step_for

        self._batch: BatchCache | None = None  # the active rows' keys and values
        # How a decode step runs; replaceable by `ModelStep(model)`, which any model supports.
        # With `half_cache`, keys and values in float16 where chinwag's kernels run the step.
        self.step: LeanStep | ModelStep = step_for(model, half_cache)
        self._closed = False
        self._thread: threading.Thread | None = None

    @staticmethod
    def supports(model: Any) -> bool:
        """Whether this model's KV cache is one the batch can pad and stack (full attention only)."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        try:
            layers = DynamicCache(config=model.config).layers
        except Exception:  # an architecture with its own cache type
            return False
        return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)

    @property
    def prefix_hits(self) -> int:
        """Prompt tokens served from the prefix cache so far (for tests and benchmarks)."""
        return self._prefix.tokens_reused

    @property
    def prefix_lent(self) -> int:
        """Prompts encoded into a kept cache's room instead of a copy of it (for tests and benchmarks)."""
        return self._prefix.lent

    def load(self) -> tuple[int, int]:
        """(requests waiting for a slot, requests being generated)."""
        with self._lock:
            return len(self._waiting), len(self._prefilling) + len(self._rows)

    def submit(self, request: Request) -> None:
        """Queue a request; `BusyError` when `max_batch` are running and `max_queue` more are waiting."""
        with self._lock:
            if self._closed:
                raise BusyError("The model is shutting down; try again in a moment.")
            running = len(self._prefilling) + len(self._rows)
            if len(self._waiting) + running >= self.max_batch + self.max_queue:
                raise BusyError(
                    f"The bot is busy ({len(self._waiting)} requests already waiting); "
                    "please try again in a moment."
                )
            # The slots free now go to those already waiting first (FIFO).
            position = len(self._waiting) + running + 1 - self.max_batch
            if position > 0:
                log.info("request queued at position %d", position)
                request.position = position
                request.emit(Queued(position))
            self._waiting.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="chinwag-scheduler", daemon=True)
                self._thread.start()
                # A process that exits while the worker is inside a forward pass (a finished
                # reply's cache is still being extended, say) is aborted by the C++ runtime.
                atexit.register(self.close)
            self._lock.notify()

    def cancel(self, request: Request) -> None:
        """Stop a request at the next step; it still ends with a `Finish(reason="cancelled")`."""
        request.cancel.set()
        with self._lock:
            self._lock.notify()

    def close(self) -> None:
        """Stop the worker after the current step; every unfinished request gets an error."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()

    # The worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._lock:
                    while not self._closed and not (self._waiting or self._prefilling or self._rows):
                        if self._pending:
                            break
                        self._lock.wait()
                    if self._closed:
                        break
                    idle = not (self._waiting or self._prefilling or self._rows)
                if idle:
                    # Nobody is waiting for the model: extend a finished reply's cache meanwhile.
                    self._extend(*self._pending.popleft())
                    continue
                with self._lock:
                    for request in [r for r in self._waiting if r.cancel.is_set()]:
                        self._waiting.remove(request)
                        self._finish(request, "cancelled")
                    while self._waiting and len(self._prefilling) + len(self._rows) < self.max_batch:
                        admitted = self._waiting.popleft()
                        if admitted.position:
                            admitted.position = 0
                            admitted.emit(Queued(0))
                        self._prefilling.append(admitted)
                    self._tell_positions()
                try:
                    self._drop_cancelled()
                    if self._prefilling:
                        self._prefill_step()
                    if self._rows:
                        self._decode_step()
                except Exception as error:  # a bug here must not leave anyone waiting forever
                    log.exception("scheduler step failed")
                    for request in [*self._prefilling, *self._rows]:
                        request.emit(error)
                    with self._lock:
                        self._prefilling.clear()
                    self._rows, self._batch = [], None
        closing = BusyError("The model was shut down before this answer finished.")
        with self._lock:
            for request in [*self._waiting, *self._prefilling, *self._rows]:
                request.emit(closing)
            self._waiting.clear()
            self._prefilling.clear()
        self._rows = []
        self._batch = None

    def _tell_positions(self) -> None:
        """Tell each waiting request its place when it has changed (called with the lock held).

        `submit` tells a request its place when it arrives; this tells it again as the line moves.
        """
        for place, request in enumerate(self._waiting, start=1):
            if place != request.position:
                request.position = place
                request.emit(Queued(place))

    def _drop_cancelled(self) -> None:
        for request in [r for r in self._prefilling if r.cancel.is_set()]:
            with self._lock:
                self._prefilling.remove(request)
            self._finish(request, "cancelled")
        gone = [i for i, r in enumerate(self._rows) if r.cancel.is_set()]
        if gone:
            self._remove_rows(gone, "cancelled")

    def _prefill_step(self) -> None:
        """Encode the next chunk of the first prompt waiting to be encoded, and with it every other
        short one (`_together`); a prompt encoded to its end gets its first token and joins."""
        group = self._together()
        if len(group) > 1:
            self.encoded_together += len(group)
        try:
            chunks = [r.prompt[r.fed : r.fed + self._prefill_chunk] for r in group]
            logits = self.step.feed_many(
                [(r.cache, r.fed, chunk) for r, chunk in zip(group, chunks, strict=True)]
            )
        except Exception as error:
            log.exception("prefill failed")
            for request in group:
                self._prefill_failed(request, error)
            return
        ready: list[Request] = []
        for request, chunk, last in zip(group, chunks, logits, strict=True):
            request.fed += len(chunk)
            if request.fed < len(request.prompt):
                continue
            try:
                token = self._choose(request, last)
            except Exception as error:
                log.exception("choosing a first token failed")
                self._prefill_failed(request, error)
                continue
            if self._accept(request, token):
                ready.append(request)
            else:
                # Over at its first token: it never joins the batch, whose leaving rows keep their
                # caches, so its prompt's cache is kept here (a copy, as a row's is).
                if self._keeps(request):
                    layers = [(k.clone(), v.clone()) for k, v in self.step.layers(request.cache)]
                    self._keep(self._prefix_of(request, layers, self._reason(request)))
                self._done_prefilling(request)
        if ready:
            self._join(ready)
            for request in ready:
                self._done_prefilling(request)

    def _done_prefilling(self, request: Request) -> None:
        # Only once it has joined the batch (or finished), under the lock: `submit` counting the
        # slots in use never sees this request in neither list (it would admit one too many and
        # tell a wrong place in the queue).
        with self._lock:
            self._prefilling.remove(request)
        request.cache = None

    def _together(self) -> list[Request]:
        """The requests to encode in this pass: the first one waiting to be encoded, and when its
        next chunk is short (fewer tokens than a prompt's many rows, `PREFILL_ROWS`) and the step
        can encode several in one pass over the weights, every other whose whole remaining prompt
        is short too (8 questions arriving at once: one pass instead of 8)."""
        from bot.inference.quantize import PREFILL_ROWS

        first = self._prefilling[0]
        self._start(first)
        if len(first.prompt) - first.fed >= PREFILL_ROWS or not self.step.can_feed_many():
            return [first]
        group = [first]
        # A kept cache is lent to one request at a time: another prompt continuing it waits for the
        # next pass (the first has joined the batch then, done with it), not a copy of it.
        lent = {r.lent for r in self._prefilling if r.lent is not None}
        for request in self._prefilling[1:]:
            if request.cache is None:
                length, key = self._prefix.peek(request.prompt)
                if (key is not None and key in lent) or len(request.prompt) - length >= PREFILL_ROWS:
                    continue
                self._start(request)
                if request.lent is not None:
                    lent.add(request.lent)
            if len(request.prompt) - request.fed < PREFILL_ROWS:
                group.append(request)
        return group

    def _start(self, request: Request) -> None:
        """Give a request its own cache (once), holding the longest kept prefix of its prompt."""
        import torch

        if request.cache is not None:
            return
        # A kept cache with room after its tokens is lent, not copied, when the prompt continues
        # all of it (the next turn of a conversation): to one request at a time (`_together`), which
        # drops its own cache when it joins the batch, so no two write into that room at once, and
        # nothing else reads it.
        prefix, request.fed, request.lent = self._prefix.take(request.prompt)
        request.reused = request.fed
        request.cache = self.step.start(prefix, request.fed if request.lent is not None else None)
        request.generator = torch.Generator(device=self._model.device)
        if request.params.seed is not None:
            request.generator.manual_seed(request.params.seed)
        else:
            request.generator.seed()

    def _prefill_failed(self, request: Request, error: BaseException) -> None:
        with self._lock:
            if request in self._prefilling:
                self._prefilling.remove(request)
        request.cache = None
        request.emit(error)

    def _decode_step(self) -> None:
        """One forward pass over every active request: each gets its next token."""
        import torch

        device = self._model.device
        rows = self._rows
        assert self._batch is not None
        try:
            ids = torch.tensor([[r.generated[-1]] for r in rows], device=device)
            positions = torch.tensor([[r.fed] for r in rows], device=device)
            logits = self.step(self._batch, ids, positions)
        except Exception as error:
            log.exception("decode step failed")
            for request in rows:
                request.emit(error)
            self._rows, self._batch = [], None
            return
        done: dict[int, FinishReason | BaseException] = {}
        # The step's logits are this step's alone: repetition penalties go into them in place (a
        # copy of a row per reply took a third of a millisecond), and greedy rows without
        # constraints then take their best token from one argmax.
        logits = logits.to(torch.float32)
        penalized = [r.params.repetition_penalty != 1.0 for r in rows]
        for i, request in enumerate(rows):
            if penalized[i]:
                self._penalize(request, logits[i])
        plain = [_plain_greedy(r) for r in rows]
        best = self.step.kernels.argmax(logits) if any(plain) else []
        for i, request in enumerate(rows):
            request.fed += 1
            try:
                token = best[i] if plain[i] else self._choose(request, logits[i], penalized[i])
            except Exception as error:
                log.exception("choosing a token failed")
                done[i] = error
                continue
            if not self._accept(request, token, finish=False):
                done[i] = self._reason(request)
        if done:
            self._remove_rows(list(done), done)

    def _choose(self, request: Request, logits: Any, penalized: bool = False) -> int:
        """The request's next token, processed in the order `generate` uses (`penalized`: the
        repetition penalty is already in `logits`)."""
        import torch
        from transformers import (
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        params = request.params
        penalize = params.repetition_penalty != 1.0 and not penalized
        scores = logits[None].to(dtype=torch.float32, copy=penalize)
        if penalize:
            self._penalize(request, scores[0])
        # The warpers below take the ids and ignore them; the processors (tool-call constraints) read them.
        ids = torch.tensor(
            [request.prompt + request.generated] if request.processors else [[]], device=scores.device
        )
        for processor in request.processors:
            scores = processor(ids, scores)
        if params.temperature <= 0:
            return int(scores[0].argmax())
        if params.temperature != 1.0:
            scores = TemperatureLogitsWarper(params.temperature)(ids, scores)
        if params.top_k > 0:
            scores = TopKLogitsWarper(params.top_k)(ids, scores)
        if params.top_p < 1.0:
            scores = TopPLogitsWarper(params.top_p)(ids, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs[0], 1, generator=request.generator))

    def _penalize(self, request: Request, scores: Any) -> None:
        """Apply the request's repetition penalty to its float32 `scores` [vocab] in place: as
        transformers' RepetitionPenaltyLogitsProcessor, over the distinct tokens of its prompt and
        reply (kept as the reply grows, not a tensor of the whole conversation per token)."""
        import torch

        penalty = request.params.repetition_penalty
        seen = self._seen(request, scores.shape[-1]).to(scores.device)
        score = scores[seen]
        scores[seen] = torch.where(score < 0, score * penalty, score / penalty)

    @staticmethod
    def _seen(request: Request, vocab: int) -> Any:
        """The distinct tokens (below `vocab`) of the request's prompt and reply so far, as a tensor."""
        import torch

        total = len(request.prompt) + len(request.generated)
        if request.seen_upto < total:
            tokens = request.prompt[request.seen_upto :] if request.seen_upto < len(request.prompt) else []
            tokens += request.generated[max(0, request.seen_upto - len(request.prompt)) :]
            new = {t for t in tokens if t < vocab} - request.seen
            if new:
                request.seen |= new
                request.seen_ids = None
            request.seen_upto = total
        if request.seen_ids is None:
            request.seen_ids = torch.tensor(sorted(request.seen), dtype=torch.long)
        return request.seen_ids

    def _accept(self, request: Request, token: int, finish: bool = True) -> bool:
        """Record and stream a token; False when the request is over (finished here when `finish`)."""
        request.generated.append(token)
        if token not in self._eos:
            self._send_text(request, final=False)
        over = token in self._eos or len(request.generated) >= request.params.max_tokens
        if over and finish:
            self._finish(request, self._reason(request))
        return not over

    def _reason(self, request: Request) -> FinishReason:
        if request.generated and request.generated[-1] in self._eos:
            return "stop"
        return "length"

    def _send_text(self, request: Request, final: bool) -> None:
        """Stream what the reply's newest tokens add to its text.

        While it goes on, only a window of its last few tokens is decoded (the whole reply, at every
        token, took time growing with its length): the text the window's newest tokens add to the
        window's earlier ones, as vLLM and TGI do. At the end the whole reply is decoded once for
        whatever is left.
        """
        decode = self._tokenizer.decode
        # Only a reply's last token can end it (an end-of-turn token is never shown).
        ids = (
            request.generated[:-1]
            if request.generated[-1:] and request.generated[-1] in self._eos
            else request.generated
        )
        if final:
            text = decode(ids, skip_special_tokens=True)
            if len(text) > request.text_sent:
                request.emit(Chunk(text[request.text_sent :]))
                request.text_sent = len(text)
            return
        start, upto = request.text_from, request.text_upto
        before = decode(ids[start:upto], skip_special_tokens=True) if upto > start else ""
        window = decode(ids[start:], skip_special_tokens=True)
        # A multi-byte character split across tokens decodes as U+FFFD until it is complete.
        if len(window) <= len(before) or window.endswith("\ufffd"):
            return
        if window.startswith(before):
            added = window[len(before) :]
        else:  # a tokenizer whose text depends on what came before: the whole reply this once
            added = decode(ids, skip_special_tokens=True)[request.text_sent :]
        if added:
            request.emit(Chunk(added))
            request.text_sent += len(added)
        request.text_from, request.text_upto = upto, len(ids)

    def _finish(self, request: Request, reason: FinishReason) -> None:
        self._send_text(request, final=True)
        completion = len(request.generated) - (1 if reason == "stop" and request.generated else 0)
        request.emit(Finish(prompt_tokens=len(request.prompt), completion_tokens=completion, reason=reason))

    # The batch cache ----------------------------------------------------------------------

    def _join(self, requests: list[Request]) -> None:
        """Add prefilled requests to the batch in one copy, left-padding whichever are shorter."""
        from bot.inference.decoder import BatchCache

        rows = [self.step.layers(request.cache) for request in requests]
        if self._batch is None:
            self._batch = BatchCache(rows[0])
            rows = rows[1:]
        if rows:
            self._batch.add(*rows)
        self._rows.extend(requests)

    def _remove_rows(
        self, indices: list[int], outcome: FinishReason | dict[int, FinishReason | BaseException]
    ) -> None:
        """Finish these rows, keep their caches for prefix reuse, and shrink the batch."""
        leaving = [(self._rows[i], outcome[i] if isinstance(outcome, dict) else outcome) for i in indices]
        kept = [
            self._row_prefix(i, request, result)
            for i, (request, result) in zip(indices, leaving, strict=True)
            if not isinstance(result, BaseException)
        ]
        keep = [i for i in range(len(self._rows)) if i not in set(indices)]
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._batch = None
        elif self._batch is not None:
            self._batch.keep(keep)
        # Told last, so a reader that sees its Finish also sees the request gone from the batch.
        for request, result in leaving:
            if isinstance(result, BaseException):
                request.emit(result)
            else:
                self._finish(request, result)
        for prefix in kept:
            self._keep(prefix)

    def _keep(self, prefix: tuple[list[int], list[tuple[Any, Any]], list[int]] | None) -> None:
        """Keep a finished request's cache for prefix reuse; extend it with `tail` when idle."""
        if prefix is not None:
            tokens, layers, tail = prefix
            self._prefix.put(tokens, layers)
            if tail:
                self._pending.append(prefix)

    def _row_prefix(
        self, row: int, request: Request, reason: FinishReason
    ) -> tuple[list[int], list[tuple[Any, Any]], list[int]] | None:
        """A copy of one row's cache to keep (see `_prefix_of`)."""
        if self._batch is None or not self._keeps(request):
            return None
        return self._prefix_of(request, self._batch.row(row, request.fed), reason)

    def _keeps(self, request: Request) -> bool:
        """Whether a finished request's cache is worth keeping."""
        return self._prefix.capacity > 0 and request.fed >= _MIN_PREFIX

    def _prefix_of(
        self, request: Request, layers: list[tuple[Any, Any]], reason: FinishReason
    ) -> tuple[list[int], list[tuple[Any, Any]], list[int]]:
        """A finished request's cache to keep (the tokens it holds and `layers`, their keys and
        values; `_keeps` says whether to), and the tokens to encode into it first: the rest of the
        reply and the template's opening of the next user message, for a reply that ended (not one
        that was cancelled)."""
        tokens = (request.prompt + request.generated)[: request.fed]
        tail: list[int] = []
        if request.follow and reason in ("stop", "length"):
            # The last token chosen was never fed. An end-of-turn token is not part of the stored
            # reply; the template writes its own (follow[0]). A reply cut at max_tokens is stored as
            # it stands, so its last token comes first.
            unfed = [] if reason == "stop" else request.generated[-1:]
            tail = [*unfed, *request.follow]
        return tokens, layers, tail

    def _extend(self, tokens: list[int], layers: list[tuple[Any, Any]], tail: list[int]) -> None:
        """Replace a kept cache by one with `tail` encoded into it (unless it is gone or superseded)."""
        if not self._prefix.holds(tokens):
            return
        try:
            cache = self.step.start(layers)
            self.step.feed(cache, len(tokens), tail)
        except Exception:  # the plain prefix is still there
            log.exception("encoding the next turn's opening failed")
            return
        # It extends the plain entry, which `put` therefore drops; kept with its room to grow, so
        # that the next turn's prompt is encoded into it without a copy.
        self._prefix.put(tokens + tail, self.step.kept(cache))
        self.extended += 1


class _PrefixCache:
    """KV caches of finished requests by token sequence, least recently used dropped first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.tokens_reused = 0
        self.lent = 0
        self._entries: OrderedDict[tuple[int, ...], list[tuple[Any, Any]]] = OrderedDict()
        self._size = 0

    def put(self, tokens: list[int], layers: list[tuple[Any, Any]]) -> None:
        """Keep a cache (per layer: keys, values [1, kv_heads, n, dim], `n` at least the number of
        tokens; columns beyond are room, counted in the size); entries it extends are dropped (it
        serves their prompts as well)."""
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        if size > self.capacity:
            return
        key = tuple(tokens)
        for other in [o for o in self._entries if len(o) <= len(key) and key[: len(o)] == o]:
            self._drop(other)
        self._entries[key] = layers
        self._size += size
        while self._size > self.capacity:
            self._drop(next(iter(self._entries)))

    def holds(self, tokens: list[int]) -> bool:
        """Whether exactly this token sequence is kept."""
        return tuple(tokens) in self._entries

    def take(self, prompt: list[int]) -> tuple[list[tuple[Any, Any]] | None, int, tuple[int, ...] | None]:
        """The keys and values of the longest cached prefix of `prompt` (at least one token left to
        encode), per layer, its length, and the entry's tokens if they are lent: when `prompt`
        continues a whole entry that has room after its tokens, the entry's own buffers (room
        included), which the caller may grow into (that room is no part of the entry); otherwise
        views of `length` columns, not to be written."""
        best, length = self._best(prompt)
        if best is None:
            return None, 0, None
        self._entries.move_to_end(best)
        self.tokens_reused += length
        layers = self._entries[best]
        if self._lends(best, length):
            self.lent += 1
            return layers, length, best
        return [(k[:, :, :length], v[:, :, :length]) for k, v in layers], length, None

    def peek(self, prompt: list[int]) -> tuple[int, tuple[int, ...] | None]:
        """How many tokens of `prompt` `take` would serve, and the entry it would lend, if any
        (nothing changes)."""
        best, length = self._best(prompt)
        return length, best if best is not None and self._lends(best, length) else None

    def _best(self, prompt: list[int]) -> tuple[tuple[int, ...] | None, int]:
        best, length = None, 0
        for key in self._entries:
            shared = _common_prefix(key, prompt)
            if shared > length:
                best, length = key, shared
        length = min(length, len(prompt) - 1)
        if best is None or length < _MIN_PREFIX:
            return None, 0
        return best, length

    def _lends(self, key: tuple[int, ...], length: int) -> bool:
        return length == len(key) and self._entries[key][0][0].shape[2] > length

    def _drop(self, key: tuple[int, ...]) -> None:
        layers = self._entries.pop(key)
        self._size -= sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


def _plain_greedy(request: Request) -> bool:
    """Whether the request's next token is simply the best-scoring one (once its repetition penalty
    is applied)."""
    return request.params.temperature <= 0 and not request.processors


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
