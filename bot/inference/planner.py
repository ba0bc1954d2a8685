"""What the generation scheduler decides, apart from what it does (`bot.inference.scheduler`).

The worker asks the `Planner` what to do next: which requests leave the queue for a slot and which
are told their new place, which are dropped as cancelled, which prompts are encoded together and
from which kept cache, when a request is over, which finished caches are kept and which are
dropped for room. It runs the model as told and reports back. Nothing here touches a tensor or the
model (a kept cache is an opaque value with a size), so every decision is tested without weights.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.errors import BusyError
from bot.seams.model import Chunk, Finish, FinishReason, Queued
from bot.types import GenerationParams

Emit = Callable[[Chunk | Finish | Queued | BaseException], None]
# A per-request logits processor: (that request's prompt and generated ids [1, n], its scores [1, vocab]).
RowProcessor = Callable[[Any, Any], Any]

# Prompts shorter than this are not worth a prefix-cache lookup (nor their caches worth keeping).
MIN_PREFIX = 16


@dataclass(eq=False)
class Request:
    """One generation as the caller asks for it: a tokenised prompt, its sampling parameters, and
    where its output goes."""

    prompt: list[int]
    params: GenerationParams
    emit: Emit
    processors: Sequence[RowProcessor] = ()
    # What the chat template puts after a reply when the conversation goes on, starting with the
    # end-of-turn token (Qwen: <|im_end|> \n <|im_start|> user \n). A reply that ends has these
    # encoded into the cache it leaves behind, so the next turn starts at its text.
    follow: Sequence[int] = ()
    cancel: threading.Event = field(default_factory=threading.Event)
    # A token whose log-probability as the reply's first token the Finish reports (`Finish.watched`).
    watch: int | None = None


@dataclass(eq=False)
class RequestState:
    """The worker's state of one request: its place in line, how far its prompt is encoded, what it
    has generated, and what the worker keeps for it while it runs."""

    request: Request
    generated: list[int] = field(default_factory=list)
    fed: int = 0  # tokens already in this request's KV cache
    reused: int = 0  # prompt tokens taken from the prefix cache
    started: bool = False  # given its own cache (`Planner.group`)
    lent: tuple[int, ...] | None = None  # the kept cache whose room its cache grows into, if any
    position: int = 0  # the place in the queue the request was last told (0: not waiting)
    # The worker's own: the request's cache while it is prefilled, and its random generator.
    cache: Any = None
    generator: Any = None
    # The distinct tokens of its prompt and reply so far (for the repetition penalty), how many of
    # prompt + generated they cover, and as a tensor (None: changed since).
    seen: set[int] = field(default_factory=set)
    seen_upto: int = 0
    seen_ids: Any = None
    text_sent: int = 0  # characters of the reply streamed so far
    watched: float | None = None  # the watched token's log-probability at the first token
    # The reply's tokens decoded last for streaming: from `text_from` (the window's start) up to
    # `text_upto` (what it had streamed then); see `scheduler.Detokenizer`.
    text_from: int = 0
    text_upto: int = 0


@dataclass
class Plan:
    """What the worker does before this step's passes over the model."""

    cancelled: list[RequestState] = field(default_factory=list)  # to finish as cancelled
    told: list[tuple[RequestState, int]] = field(default_factory=list)  # new places in line (0: started)
    cancelled_rows: list[int] = field(default_factory=list)  # rows of the batch to finish as cancelled


@dataclass
class Reuse:
    """A kept cache a prompt starts from: the first `length` tokens of `tokens`' cache; `lent` when
    the prompt continues all of it into its room (the cache itself, not a view of it)."""

    tokens: tuple[int, ...]
    length: int
    lent: bool
    cache: Any


@dataclass
class Group:
    """The prompts to encode in one pass, and those to give their own cache first (in order)."""

    encode: list[RequestState]
    start: list[tuple[RequestState, Reuse | None]]


@dataclass
class Keep:
    """A finished request's cache to keep: the tokens it holds, and the tokens to encode into it
    once the worker is idle (the rest of the reply and the next turn's opening)."""

    tokens: list[int]
    tail: list[int]


class PrefixCache:
    """KV caches of finished requests by token sequence, least recently used dropped first.

    The caches are opaque here: each comes with its size in bytes and its columns (at least the
    number of its tokens; those beyond are room it may be lent to grow into).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.tokens_reused = 0
        self.lent = 0
        self._entries: OrderedDict[tuple[int, ...], tuple[Any, int, int]] = OrderedDict()
        self._size = 0

    def put(self, tokens: Sequence[int], cache: Any, size: int, columns: int) -> None:
        """Keep a cache; entries it extends are dropped (it serves their prompts as well)."""
        if size > self.capacity:
            return
        key = tuple(tokens)
        for other in [o for o in self._entries if len(o) <= len(key) and key[: len(o)] == o]:
            self._drop(other)
        self._entries[key] = (cache, size, columns)
        self._size += size
        while self._size > self.capacity:
            self._drop(next(iter(self._entries)))

    def holds(self, tokens: Sequence[int]) -> bool:
        """Whether exactly this token sequence is kept."""
        return tuple(tokens) in self._entries

    def keys(self) -> list[tuple[int, ...]]:
        """The kept token sequences, least recently used first."""
        return list(self._entries)

    def take(self, prompt: Sequence[int]) -> Reuse | None:
        """The longest kept prefix of `prompt` (at least one token left to encode), now the most
        recently used; lent when `prompt` continues a whole entry that has room after its tokens."""
        best, length = self._best(prompt)
        if best is None:
            return None
        self._entries.move_to_end(best)
        self.tokens_reused += length
        lent = self._lends(best, length)
        if lent:
            self.lent += 1
        return Reuse(best, length, lent, self._entries[best][0])

    def peek(self, prompt: Sequence[int]) -> tuple[int, tuple[int, ...] | None]:
        """How many tokens of `prompt` `take` would serve, and the entry it would lend, if any
        (nothing changes)."""
        best, length = self._best(prompt)
        return length, best if best is not None and self._lends(best, length) else None

    def _best(self, prompt: Sequence[int]) -> tuple[tuple[int, ...] | None, int]:
        best, length = None, 0
        for key in self._entries:
            shared = _common_prefix(key, prompt)
            if shared > length:
                best, length = key, shared
        length = min(length, len(prompt) - 1)
        if best is None or length < MIN_PREFIX:
            return None, 0
        return best, length

    def _lends(self, key: tuple[int, ...], length: int) -> bool:
        return length == len(key) and self._entries[key][2] > length

    def _drop(self, key: tuple[int, ...]) -> None:
        self._size -= self._entries.pop(key)[1]


class Planner:
    """The scheduler's queues and decisions: first come, first served admission up to `max_batch`
    running, `max_queue` more waiting, and prompts of fewer than `group_rows` tokens encoded together.

    Not thread-safe: `Scheduler` calls it under its lock wherever `submit` and `load` could see the
    change (the queue, the counts); the rest (`group`, the kept caches) only its worker reads.
    """

    def __init__(self, max_batch: int, max_queue: int, prefix_bytes: int, group_rows: int) -> None:
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.group_rows = group_rows
        self.prefix = PrefixCache(prefix_bytes)
        self.waiting: deque[RequestState] = deque()
        self.prefilling: list[RequestState] = []
        self.running: list[RequestState] = []  # the batch's rows, in its order
        # Kept caches to extend once the worker is idle, with the cache each was kept with.
        self.pending: deque[tuple[Keep, Any]] = deque(maxlen=2 * max_batch)

    def load(self) -> tuple[int, int]:
        """(requests waiting for a slot, requests being generated)."""
        return len(self.waiting), len(self.prefilling) + len(self.running)

    def busy(self) -> bool:
        """Whether any request is waiting or being generated."""
        return bool(self.waiting or self.prefilling or self.running)

    def add(self, request: Request) -> RequestState:
        """Queue a request, its place in line in `position` (0: a slot is free for it); `BusyError`
        when `max_batch` are running and `max_queue` more are waiting."""
        running = len(self.prefilling) + len(self.running)
        if len(self.waiting) + running >= self.max_batch + self.max_queue:
            raise BusyError(
                f"The bot is busy ({len(self.waiting)} requests already waiting); "
                "please try again in a moment."
            )
        state = RequestState(request)
        # The slots free now go to those already waiting first (FIFO).
        state.position = max(0, len(self.waiting) + running + 1 - self.max_batch)
        self.waiting.append(state)
        return state

    def schedule(self) -> Plan:
        """Drop the cancelled, admit the first waiting into the free slots, and tell the others
        their places when they have changed."""
        plan = Plan()
        for state in [s for s in self.waiting if s.request.cancel.is_set()]:
            self.waiting.remove(state)
            plan.cancelled.append(state)
        # A cancelled request holds its slot until the end of this call.
        while self.waiting and len(self.prefilling) + len(self.running) < self.max_batch:
            admitted = self.waiting.popleft()
            if admitted.position:
                admitted.position = 0
                plan.told.append((admitted, 0))
            self.prefilling.append(admitted)
        for place, state in enumerate(self.waiting, start=1):
            if place != state.position:
                state.position = place
                plan.told.append((state, place))
        for state in [s for s in self.prefilling if s.request.cancel.is_set()]:
            self.prefilling.remove(state)
            plan.cancelled.append(state)
        plan.cancelled_rows = [i for i, s in enumerate(self.running) if s.request.cancel.is_set()]
        return plan

    def group(self, can_feed_many: bool) -> Group:
        """The prompts to encode in this pass: the first one waiting to be encoded, and when its
        next chunk is short (fewer than `group_rows` tokens) and the model can encode several in
        one pass over the weights, every other whose whole remaining prompt is short too (8
        questions arriving at once: one pass instead of 8). Each is given a kept prefix first."""
        start: list[tuple[RequestState, Reuse | None]] = []
        first = self.prefilling[0]
        if not first.started:
            start.append((first, self._start(first)))
        if len(first.request.prompt) - first.fed >= self.group_rows or not can_feed_many:
            return Group([first], start)
        group = [first]
        # A kept cache is lent to one request at a time: another prompt continuing it waits for the
        # next pass (the first has joined the batch then, done with it), not a copy of it.
        lent = {r.lent for r in self.prefilling if r.lent is not None}
        for state in self.prefilling[1:]:
            prompt = state.request.prompt
            if not state.started:
                length, key = self.prefix.peek(prompt)
                if (key is not None and key in lent) or len(prompt) - length >= self.group_rows:
                    continue
                start.append((state, self._start(state)))
                if state.lent is not None:
                    lent.add(state.lent)
            if len(prompt) - state.fed < self.group_rows:
                group.append(state)
        return Group(group, start)

    def _start(self, state: RequestState) -> Reuse | None:
        """Give a request the longest kept prefix of its prompt. A kept cache with room after its
        tokens is lent, not copied, when the prompt continues all of it (the next turn of a
        conversation): to one request at a time (`group`), which drops its own cache when it joins
        the batch, so no two write into that room at once, and nothing else reads it."""
        reuse = self.prefix.take(state.request.prompt)
        state.started = True
        state.fed = state.reused = reuse.length if reuse else 0
        state.lent = reuse.tokens if reuse and reuse.lent else None
        return reuse

    def joined(self, states: list[RequestState]) -> None:
        """Prefilled requests joined the batch, as its last rows."""
        self.running.extend(states)
        for state in states:
            self.prefilling.remove(state)

    def left(self, state: RequestState) -> None:
        """A request being prefilled is over (finished at its first token, or failed)."""
        if state in self.prefilling:
            self.prefilling.remove(state)

    def leave(self, rows: list[int]) -> list[int]:
        """These rows of the batch are over: the rows that stay, in order."""
        gone = set(rows)
        stay = [i for i in range(len(self.running)) if i not in gone]
        self.running = [self.running[i] for i in stay]
        return stay

    def clear(self, waiting: bool = True) -> list[RequestState]:
        """Every request being generated (and waiting, with `waiting`), no longer."""
        states = [*(self.waiting if waiting else ()), *self.prefilling, *self.running]
        if waiting:
            self.waiting.clear()
        self.prefilling.clear()
        self.running = []
        return states

    def to_keep(self, state: RequestState, reason: FinishReason) -> Keep | None:
        """What to keep of a finished request's cache (None: not worth keeping): the tokens it
        holds, and for a reply that ended (not one that was cancelled) the rest of the reply and
        the template's opening of the next user message to encode into it."""
        if self.prefix.capacity <= 0 or state.fed < MIN_PREFIX:
            return None
        request = state.request
        tokens = (request.prompt + state.generated)[: state.fed]
        tail: list[int] = []
        if request.follow and reason in ("stop", "length"):
            # The last token chosen was never fed. An end-of-turn token is not part of the stored
            # reply; the template writes its own (follow[0]). A reply cut at max_tokens is stored as
            # it stands, so its last token comes first.
            unfed = [] if reason == "stop" else state.generated[-1:]
            tail = [*unfed, *request.follow]
        return Keep(tokens, tail)

    def kept(self, keep: Keep, cache: Any, size: int, columns: int) -> None:
        """A finished request's cache was kept (see `to_keep`); its tail is encoded into it when idle."""
        self.prefix.put(keep.tokens, cache, size, columns)
        if keep.tail:
            self.pending.append((keep, cache))

    def extension(self) -> tuple[Keep, Any] | None:
        """The next kept cache to extend with its tail, unless it is gone or superseded since."""
        keep, cache = self.pending.popleft()
        return (keep, cache) if self.prefix.holds(keep.tokens) else None


def finish_reason(state: RequestState, eos: set[int] | frozenset[int]) -> FinishReason | None:
    """Why a request is over after its newest token (None: it goes on)."""
    if state.generated and state.generated[-1] in eos:
        return "stop"
    if len(state.generated) >= state.request.params.max_tokens:
        return "length"
    return None


def completion_tokens(state: RequestState, reason: FinishReason) -> int:
    """The reply's tokens, not counting the end-of-turn token that stopped it."""
    return len(state.generated) - (1 if reason == "stop" and state.generated else 0)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
