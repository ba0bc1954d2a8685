"""The generation scheduler: requests from many conversations decoded together (continuous batching).

One worker thread owns the model. Each request is prefilled on its own KV cache (in chunks, between
decode steps, so a long prompt never stalls the others for long), then joins a shared, left-padded
batch cache (`bot.inference.decoder.BatchCache`); every decode step feeds one token per active request in a
single forward pass (`bot.inference.decoder`'s lean step for the architectures it knows), and a request
leaves the batch as soon as it stops, is cancelled or fails. Admission is first come, first
served; every active request gets one token per step, so a long answer cannot starve a short one.

What to do next is decided by `bot.inference.planner.Planner` (admission, prompts encoded together,
prefix reuse, which caches are kept); `Scheduler` does it: runs the model, samples, detokenizes and
streams, and reports back to the planner.

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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bot.errors import BusyError
from bot.inference.planner import (
    Keep,
    Planner,
    Request,
    RequestState,
    Reuse,
    completion_tokens,
    finish_reason,
)
from bot.seams.model import Chunk, Finish, FinishReason, Queued

if TYPE_CHECKING:
    from bot.inference.decoder import BatchCache, LeanStep, ModelStep

log = logging.getLogger(__name__)


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
        from bot.inference.decoder import step_for
        from bot.inference.quantize import PREFILL_ROWS

        self._model = model
        self._eos = set(eos_ids)
        self.detokenizer = Detokenizer(tokenizer, eos_ids)
        self._prefill_chunk = prefill_chunk
        # Prompts shorter than a prompt's many rows (`PREFILL_ROWS`) are encoded together.
        self.planner = Planner(max_batch, max_queue, prefix_cache_mb * 1024 * 1024, PREFILL_ROWS)
        self.extended = 0  # kept caches extended with the next turn's opening (for tests and benchmarks)
        self.encoded_together = 0  # prompts encoded in a pass with others (for tests and benchmarks)
        self._lock = threading.Condition()
        self._batch: BatchCache | None = None  # the running rows' keys and values
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
    def max_batch(self) -> int:
        """Requests generated at once."""
        return self.planner.max_batch

    @property
    def max_queue(self) -> int:
        """Requests waiting for a slot before `submit` says busy."""
        return self.planner.max_queue

    @property
    def prefix_hits(self) -> int:
        """Prompt tokens served from the prefix cache so far (for tests and benchmarks)."""
        return self.planner.prefix.tokens_reused

    @property
    def prefix_lent(self) -> int:
        """Prompts encoded into a kept cache's room instead of a copy of it (for tests and benchmarks)."""
        return self.planner.prefix.lent

    @property
    def worker(self) -> threading.Thread | None:
        """The worker thread (None until the first request)."""
        return self._thread

    def load(self) -> tuple[int, int]:
        """(requests waiting for a slot, requests being generated)."""
        with self._lock:
            return self.planner.load()

    def submit(self, request: Request) -> None:
        """Queue a request; `BusyError` when `max_batch` are running and `max_queue` more are waiting."""
        with self._lock:
            if self._closed:
                raise BusyError("The model is shutting down; try again in a moment.")
            state = self.planner.add(request)
            if state.position:
                log.info("request queued at position %d", state.position)
                request.emit(Queued(state.position))
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

        planner = self.planner
        with torch.inference_mode():
            while True:
                plan, extension = None, None
                with self._lock:
                    while not (self._closed or planner.busy() or planner.pending):
                        self._lock.wait()
                    if self._closed:
                        break
                    if not planner.busy():
                        # Nobody is waiting for the model: extend a finished reply's cache meanwhile.
                        extension = planner.extension()
                    else:
                        plan = planner.schedule()
                        # Told under the lock: after the place `submit` told, before any later one.
                        for state, place in plan.told:
                            state.request.emit(Queued(place))
                if plan is None:
                    if extension is not None:
                        self._extend(*extension)
                    continue
                try:
                    for state in plan.cancelled:
                        self._finish(state, "cancelled")
                    if plan.cancelled_rows:
                        self._remove_rows(plan.cancelled_rows, "cancelled")
                    if planner.prefilling:
                        self._prefill_step()
                    if planner.running:
                        self._decode_step()
                except Exception as error:  # a bug here must not leave anyone waiting forever
                    log.exception("scheduler step failed")
                    with self._lock:
                        failed = planner.clear(waiting=False)
                    for state in failed:
                        state.request.emit(error)
                    self._batch = None
        closing = BusyError("The model was shut down before this answer finished.")
        with self._lock:
            for state in planner.clear():
                state.request.emit(closing)
        self._batch = None

    def _prefill_step(self) -> None:
        """Encode the next chunk of the first prompt waiting to be encoded, and with it every other
        short one (`Planner.group`); a prompt encoded to its end gets its first token and joins."""
        chosen = self.planner.group(self.step.can_feed_many())
        for state, reuse in chosen.start:
            self._start(state, reuse)
        group = chosen.encode
        if len(group) > 1:
            self.encoded_together += len(group)
        try:
            chunks = [s.request.prompt[s.fed : s.fed + self._prefill_chunk] for s in group]
            logits = self.step.feed_many(
                [(s.cache, s.fed, chunk) for s, chunk in zip(group, chunks, strict=True)]
            )
        except Exception as error:
            log.exception("prefill failed")
            for state in group:
                self._prefill_failed(state, error)
            return
        ready: list[RequestState] = []
        for state, chunk, last in zip(group, chunks, logits, strict=True):
            state.fed += len(chunk)
            if state.fed < len(state.request.prompt):
                continue
            try:
                if state.request.watch is not None:
                    state.watched = watched_logprob(last, state.request.watch)
                token = choose(state, last)
            except Exception as error:
                log.exception("choosing a first token failed")
                self._prefill_failed(state, error)
                continue
            reason = self._accept(state, token)
            if reason is None:
                ready.append(state)
                continue
            self._finish(state, reason)
            # Over at its first token: it never joins the batch, whose leaving rows keep their
            # caches, so its prompt's cache is kept here (a copy, as a row's is).
            keep = self.planner.to_keep(state, reason)
            if keep is not None:
                self._keep(keep, [(k.clone(), v.clone()) for k, v in self.step.layers(state.cache)])
            with self._lock:
                self.planner.left(state)
            state.cache = None
        if ready:
            self._join(ready)

    def _start(self, state: RequestState, reuse: Reuse | None) -> None:
        """Give a request its own cache, holding the kept prefix the planner chose (if any)."""
        import torch

        prefix = None
        if reuse is not None:
            layers = reuse.cache
            # A lent cache is grown into; otherwise views of the shared columns, not to be written.
            prefix = (
                layers
                if reuse.lent
                else [(k[:, :, : reuse.length], v[:, :, : reuse.length]) for k, v in layers]
            )
        state.cache = self.step.start(prefix, state.fed if state.lent is not None else None)
        state.generator = torch.Generator(device=self._model.device)
        if state.request.params.seed is not None:
            state.generator.manual_seed(state.request.params.seed)
        else:
            state.generator.seed()

    def _prefill_failed(self, state: RequestState, error: BaseException) -> None:
        with self._lock:
            self.planner.left(state)
        state.cache = None
        state.request.emit(error)

    def _decode_step(self) -> None:
        """One forward pass over every running request: each gets its next token."""
        import torch

        device = self._model.device
        rows = self.planner.running
        assert self._batch is not None
        try:
            ids = torch.tensor([[r.generated[-1]] for r in rows], device=device)
            positions = torch.tensor([[r.fed] for r in rows], device=device)
            logits = self.step(self._batch, ids, positions)
        except Exception as error:
            log.exception("decode step failed")
            with self._lock:
                self.planner.leave(list(range(len(rows))))
            for state in rows:
                state.request.emit(error)
            self._batch = None
            return
        done: dict[int, FinishReason | BaseException] = {}
        # The step's logits are this step's alone: repetition penalties go into them in place (not
        # a copy of a row per reply), and greedy rows without constraints then take their best
        # token from one argmax.
        logits = logits.to(torch.float32)
        penalized = [r.request.params.repetition_penalty != 1.0 for r in rows]
        for i, state in enumerate(rows):
            if penalized[i]:
                penalize(state, logits[i])
        plain = [_plain_greedy(r.request) for r in rows]
        best = self.step.kernels.argmax(logits) if any(plain) else []
        for i, state in enumerate(rows):
            state.fed += 1
            try:
                token = best[i] if plain[i] else choose(state, logits[i], penalized[i])
            except Exception as error:
                log.exception("choosing a token failed")
                done[i] = error
                continue
            reason = self._accept(state, token)
            if reason is not None:
                done[i] = reason
        if done:
            self._remove_rows(list(done), done)

    def _accept(self, state: RequestState, token: int) -> FinishReason | None:
        """Record and stream a token; why the request is over, if it is."""
        state.generated.append(token)
        if token not in self._eos:
            self._send(state, final=False)
        return finish_reason(state, self._eos)

    def _send(self, state: RequestState, final: bool) -> None:
        text = self.detokenizer.added(state, final)
        if text:
            state.request.emit(Chunk(text))

    def _finish(self, state: RequestState, reason: FinishReason) -> None:
        self._send(state, final=True)
        state.request.emit(
            Finish(
                prompt_tokens=len(state.request.prompt),
                completion_tokens=completion_tokens(state, reason),
                reason=reason,
                watched=state.watched,
            )
        )

    # The batch cache ----------------------------------------------------------------------

    def _join(self, states: list[RequestState]) -> None:
        """Add prefilled requests to the batch in one copy, left-padding whichever are shorter."""
        from bot.inference.decoder import BatchCache

        rows = [self.step.layers(state.cache) for state in states]
        if self._batch is None:
            self._batch = BatchCache(rows[0])
            rows = rows[1:]
        if rows:
            self._batch.add(*rows)
        # Under the lock, in one move: `submit` counting the slots in use sees each request once.
        with self._lock:
            self.planner.joined(states)
        for state in states:
            state.cache = None

    def _remove_rows(
        self, indices: list[int], outcome: FinishReason | dict[int, FinishReason | BaseException]
    ) -> None:
        """Finish these rows, keep their caches for prefix reuse, and shrink the batch."""
        rows = self.planner.running
        leaving = [(rows[i], outcome[i] if isinstance(outcome, dict) else outcome) for i in indices]
        kept: list[tuple[Keep, list[tuple[Any, Any]]]] = []
        for i, (state, result) in zip(indices, leaving, strict=True):
            if isinstance(result, BaseException) or self._batch is None:
                continue
            keep = self.planner.to_keep(state, result)
            if keep is not None:
                kept.append((keep, self._batch.row(i, state.fed)))
        with self._lock:
            stay = self.planner.leave(indices)
        if not stay:
            self._batch = None
        elif self._batch is not None:
            self._batch.keep(stay)
        # Told last, so a reader that sees its Finish also sees the request gone from the batch.
        for state, result in leaving:
            if isinstance(result, BaseException):
                state.request.emit(result)
            else:
                self._finish(state, result)
        for keep, layers in kept:
            self._keep(keep, layers)

    def _keep(self, keep: Keep, layers: list[tuple[Any, Any]]) -> None:
        """Keep a finished request's cache (per layer: keys, values [1, kv_heads, n, dim], `n` at
        least its tokens; columns beyond are room, counted in its size)."""
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        self.planner.kept(keep, layers, size, layers[0][0].shape[2])

    def _extend(self, keep: Keep, layers: list[tuple[Any, Any]]) -> None:
        """Replace a kept cache by one with its tail encoded into it."""
        try:
            cache = self.step.start(layers)
            self.step.feed(cache, len(keep.tokens), keep.tail)
        except Exception:  # the plain prefix is still there
            log.exception("encoding the next turn's opening failed")
            return
        # It extends the plain entry, which is therefore dropped; kept with its room to grow, so
        # that the next turn's prompt is encoded into it without a copy.
        self._keep(Keep(keep.tokens + keep.tail, []), self.step.kept(cache))
        self.extended += 1


class Detokenizer:
    """A reply's text as its tokens come, in pieces.

    While it goes on, only a window of its last few tokens is decoded (the whole reply, at every
    token, took time growing with its length): the text the window's newest tokens add to the
    window's earlier ones, as vLLM and TGI do. At the end the whole reply is decoded once for
    whatever is left.
    """

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int]) -> None:
        self._decode = tokenizer.decode
        self._eos = set(eos_ids)

    def added(self, state: RequestState, final: bool) -> str:
        """The text the reply's newest tokens add to what was streamed ("" for now: nothing yet)."""
        decode = self._decode
        # Only a reply's last token can end it (an end-of-turn token is never shown).
        ids = (
            state.generated[:-1]
            if state.generated[-1:] and state.generated[-1] in self._eos
            else state.generated
        )
        if final:
            text = decode(ids, skip_special_tokens=True)
            if len(text) <= state.text_sent:
                return ""
            added = text[state.text_sent :]
            state.text_sent = len(text)
            return added
        start, upto = state.text_from, state.text_upto
        before = decode(ids[start:upto], skip_special_tokens=True) if upto > start else ""
        window = decode(ids[start:], skip_special_tokens=True)
        # A multi-byte character split across tokens decodes as U+FFFD until it is complete.
        if len(window) <= len(before) or window.endswith("\ufffd"):
            return ""
        if window.startswith(before):
            added = window[len(before) :]
        else:  # a tokenizer whose text depends on what came before: the whole reply this once
            added = decode(ids, skip_special_tokens=True)[state.text_sent :]
        state.text_sent += len(added)
        state.text_from, state.text_upto = upto, len(ids)
        return added


def watched_logprob(logits: Any, token: int) -> float:
    """The log-probability of `token` under `logits` [vocab], before any sampling parameter."""
    import torch

    return float(torch.log_softmax(logits.reshape(-1).float(), dim=-1)[token])


def choose(state: RequestState, logits: Any, penalized: bool = False) -> int:
    """The request's next token from its `logits` [vocab], processed in the order `generate` uses
    (`penalized`: the repetition penalty is already in `logits`)."""
    import torch
    from transformers import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    request = state.request
    params = request.params
    penalize_here = params.repetition_penalty != 1.0 and not penalized
    scores = logits[None].to(dtype=torch.float32, copy=penalize_here)
    if penalize_here:
        penalize(state, scores[0])
    # The warpers below take the ids and ignore them; the processors (tool-call constraints) read them.
    ids = torch.tensor(
        [request.prompt + state.generated] if request.processors else [[]], device=scores.device
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
    return int(torch.multinomial(probs[0], 1, generator=state.generator))


def penalize(state: RequestState, scores: Any) -> None:
    """Apply the request's repetition penalty to its float32 `scores` [vocab] in place: as
    transformers' RepetitionPenaltyLogitsProcessor, over the distinct tokens of its prompt and
    reply (kept as the reply grows, not a tensor of the whole conversation per token)."""
    import torch

    penalty = state.request.params.repetition_penalty
    seen = _seen(state, scores.shape[-1]).to(scores.device)
    score = scores[seen]
    scores[seen] = torch.where(score < 0, score * penalty, score / penalty)


def _seen(state: RequestState, vocab: int) -> Any:
    """The distinct tokens (below `vocab`) of the request's prompt and reply so far, as a tensor."""
    import torch

    prompt = state.request.prompt
    total = len(prompt) + len(state.generated)
    if state.seen_upto < total:
        tokens = prompt[state.seen_upto :] if state.seen_upto < len(prompt) else []
        tokens += state.generated[max(0, state.seen_upto - len(prompt)) :]
        new = {t for t in tokens if t < vocab} - state.seen
        if new:
            state.seen |= new
            state.seen_ids = None
        state.seen_upto = total
    if state.seen_ids is None:
        state.seen_ids = torch.tensor(sorted(state.seen), dtype=torch.long)
    return state.seen_ids


def _plain_greedy(request: Request) -> bool:
    """Whether the request's next token is simply the best-scoring one (once its repetition penalty
    is applied)."""
    return request.params.temperature <= 0 and not request.processors
