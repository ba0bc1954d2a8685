"""The scheduler's decisions without a model: admission, places in line, cancellation, prompts
encoded together, prefix reuse, which finished caches are kept and which are dropped for room.

A kept cache is opaque to the planner (a value with a size and its columns): here, a string.
"""

from __future__ import annotations

import pytest

from bot.errors import BusyError
from bot.inference.planner import (
    MIN_PREFIX,
    Keep,
    Planner,
    PrefixCache,
    Request,
    RequestState,
    completion_tokens,
    finish_reason,
)
from bot.seams.model import Chunk, Finish, Queued
from bot.types import GenerationParams

ROWS = 32  # prompts with fewer tokens left than this are encoded together
PARAMS = GenerationParams(temperature=0.0, max_tokens=4)
EOS = frozenset({0})


def _request(prompt: list[int] | int = 40, follow: tuple[int, ...] = (), **params: object) -> Request:
    tokens = list(range(100, 100 + prompt)) if isinstance(prompt, int) else prompt
    got: list[Chunk | Finish | Queued | BaseException] = []
    return Request(tokens, GenerationParams(**{**PARAMS.__dict__, **params}), got.append, follow=follow)


def _planner(max_batch: int = 2, max_queue: int = 3, prefix_bytes: int = 1000) -> Planner:
    return Planner(max_batch, max_queue, prefix_bytes, ROWS)


def _started(planner: Planner, *states: RequestState) -> None:
    """Move admitted requests on as the worker does: given a cache, encoded, joined the batch."""
    for state in states:
        state.started, state.fed = True, len(state.request.prompt)
    planner.joined(list(states))


# Admission and places in line -------------------------------------------------------------


def test_requests_beyond_the_free_slots_wait_and_are_told_their_place() -> None:
    planner = _planner(max_batch=2, max_queue=3)
    states = [planner.add(_request()) for _ in range(5)]
    assert [s.position for s in states] == [0, 0, 1, 2, 3]
    assert planner.load() == (5, 0)
    with pytest.raises(BusyError, match="5 requests already waiting"):
        planner.add(_request())

    plan = planner.schedule()
    assert planner.prefilling == states[:2] and list(planner.waiting) == states[2:]
    assert plan.told == [] and plan.cancelled == [] and plan.cancelled_rows == []
    assert planner.load() == (3, 2)
    with pytest.raises(BusyError, match="3 requests already waiting"):
        planner.add(_request())


def test_a_waiting_request_is_told_its_new_place_as_the_line_moves() -> None:
    planner = _planner(max_batch=1, max_queue=4)
    running, first, second = (planner.add(_request()) for _ in range(3))
    planner.schedule()
    _started(planner, running)
    assert (first.position, second.position) == (1, 2)
    assert planner.schedule().told == []  # nothing moved: nothing said again

    planner.leave([0])  # the running reply ends: the first waiting takes its slot
    plan = planner.schedule()
    assert plan.told == [(first, 0), (second, 1)]
    assert planner.prefilling == [first] and (first.position, second.position) == (0, 1)


def test_cancelled_requests_leave_wherever_they_are() -> None:
    planner = _planner(max_batch=3, max_queue=3)
    rows = [planner.add(_request()) for _ in range(2)]
    planner.schedule()
    _started(planner, *rows)
    prefilling = planner.add(_request())
    planner.schedule()
    waiting = [planner.add(_request()) for _ in range(2)]
    for state in (rows[1], prefilling, waiting[0]):
        state.request.cancel.set()

    plan = planner.schedule()
    assert plan.cancelled == [waiting[0], prefilling]
    assert plan.cancelled_rows == [1]  # the worker removes rows, whose caches it may keep
    # The cancelled held their slots while the free ones were given out: the other still waits.
    assert list(planner.waiting) == [waiting[1]] and plan.told == [(waiting[1], 1)]
    assert planner.prefilling == [] and planner.running == rows

    assert planner.leave(plan.cancelled_rows) == [0]
    assert planner.running == [rows[0]]
    assert planner.schedule().told == [(waiting[1], 0)]
    assert planner.prefilling == [waiting[1]]


def test_joined_rows_keep_the_batch_order_and_leaving_rows_say_which_stay() -> None:
    planner = _planner(max_batch=4)
    states = [planner.add(_request()) for _ in range(4)]
    planner.schedule()
    _started(planner, states[2])
    _started(planner, states[0], states[3])
    assert planner.running == [states[2], states[0], states[3]] and planner.prefilling == [states[1]]
    assert planner.leave([0, 2]) == [1]
    assert planner.running == [states[0]]
    assert planner.clear(waiting=False) == [states[1], states[0]]
    assert planner.load() == (0, 0) and not planner.busy()


# Prompts encoded together -----------------------------------------------------------------


def _admitted(planner: Planner, *prompts: list[int] | int) -> list[RequestState]:
    states = [planner.add(_request(p)) for p in prompts]
    planner.schedule()
    return states


def test_short_prompts_are_encoded_together_when_the_model_can() -> None:
    planner = _planner(max_batch=4)
    short, long, other = _admitted(planner, 10, 200, 20)
    group = planner.group(can_feed_many=True)
    assert group.encode == [short, other]  # the long one waits for a pass of its own
    assert [s for s, _ in group.start] == [short, other] and not long.started

    planner = _planner(max_batch=4)
    short, _, other = _admitted(planner, 10, 200, 20)
    group = planner.group(can_feed_many=False)
    assert group.encode == [short] and [s for s, _ in group.start] == [short]


def test_a_long_first_prompt_is_encoded_alone() -> None:
    planner = _planner(max_batch=4)
    long, short = _admitted(planner, 200, 10)
    group = planner.group(can_feed_many=True)
    assert group.encode == [long] and [s for s, _ in group.start] == [long] and not short.started
    long.fed = 190  # its last chunk is short: the other joins it
    assert planner.group(can_feed_many=True).encode == [long, short]


def test_a_prompt_starts_from_the_longest_kept_prefix() -> None:
    planner = _planner(max_batch=4)
    conversation = list(range(100, 140))
    planner.prefix.put(conversation[:20], "short", size=10, columns=20)
    planner.prefix.put([*conversation[:30], 7, 7], "longer", size=10, columns=32)
    [state] = _admitted(planner, [*conversation, 1, 2])
    [(_, reuse)] = planner.group(can_feed_many=True).start
    assert reuse is not None and (reuse.cache, reuse.length, reuse.lent) == ("longer", 30, False)
    assert (state.fed, state.reused, state.lent) == (30, 30, None)
    assert planner.prefix.tokens_reused == 30


def test_a_kept_cache_with_room_is_lent_to_one_prompt_at_a_time() -> None:
    planner = _planner(max_batch=4)
    kept = list(range(100, 130))
    planner.prefix.put(kept, "room", size=10, columns=64)  # room after its 30 tokens
    first, second, third = _admitted(planner, [*kept, 1, 2], [*kept, 3], [*kept[:20], 9, 9])
    group = planner.group(can_feed_many=True)
    # The second continues the same kept cache: it waits for the next pass rather than copy it.
    assert group.encode == [first, third] and not second.started
    assert first.lent == tuple(kept) and third.lent is None  # the third shares only part: a view
    reuse = dict((id(s), r) for s, r in group.start)[id(first)]
    assert reuse is not None and reuse.lent and reuse.cache == "room"
    assert planner.prefix.lent == 1

    _started(planner, first, third)  # joined the batch: done with the lent room
    group = planner.group(can_feed_many=True)
    assert group.encode == [second] and second.lent == tuple(kept) and planner.prefix.lent == 2


# Finishing and what is kept ---------------------------------------------------------------


def test_a_request_stops_at_an_end_of_turn_token_or_its_length() -> None:
    state = RequestState(_request(max_tokens=3))
    for token, reason in [(5, None), (6, None), (0, "stop")]:
        state.generated.append(token)
        assert finish_reason(state, EOS) == reason
    assert completion_tokens(state, "stop") == 2  # the end-of-turn token is not part of the reply
    state = RequestState(_request(max_tokens=2), generated=[5, 6])
    assert finish_reason(state, EOS) == "length" and completion_tokens(state, "length") == 2


@pytest.mark.parametrize(
    ("reason", "tail"), [("stop", [0, 8, 9]), ("length", [6, 0, 8, 9]), ("cancelled", [])]
)
def test_a_finished_cache_is_kept_with_the_next_turns_opening_to_encode(reason: str, tail: list[int]) -> None:
    planner = _planner()
    state = RequestState(_request(20, follow=(0, 8, 9)), generated=[5, 6], fed=21)
    keep = planner.to_keep(state, reason)  # type: ignore[arg-type]
    assert keep == Keep(tokens=[*state.request.prompt, 5], tail=tail)  # the last token was never fed


def test_a_short_or_unwanted_cache_is_not_kept() -> None:
    state = RequestState(_request(MIN_PREFIX - 1), fed=MIN_PREFIX - 1)
    assert _planner().to_keep(state, "stop") is None
    state.fed = MIN_PREFIX
    assert _planner().to_keep(state, "stop") is not None
    assert _planner(prefix_bytes=0).to_keep(state, "stop") is None


def test_a_kept_cache_is_extended_when_idle_unless_superseded() -> None:
    planner = _planner()
    plain = Keep(list(range(100, 120)), [0, 8])
    planner.kept(plain, "plain", size=10, columns=20)
    planner.kept(Keep(list(range(200, 220)), []), "no tail", size=10, columns=20)
    assert [k for k, _ in planner.pending] == [plain]  # only a cache with a tail waits to be extended
    assert planner.extension() == (plain, "plain")

    planner.kept(plain, "plain", size=10, columns=20)
    planner.prefix.put([*plain.tokens, 0, 8], "extended", size=10, columns=64)  # it replaces the plain one
    assert planner.extension() is None and not planner.pending


# The prefix cache -------------------------------------------------------------------------


def test_the_prefix_cache_drops_the_least_recently_used_for_room() -> None:
    cache = PrefixCache(capacity=30)
    a, b, c = (list(range(s, s + 20)) for s in (100, 200, 300))
    cache.put(a, "a", size=10, columns=20)
    cache.put(b, "b", size=10, columns=20)
    assert cache.take([*a, 1]) is not None  # a is now the most recently used
    cache.put(c, "c", size=15, columns=20)
    assert cache.keys() == [tuple(a), tuple(c)]
    cache.put(list(range(400, 420)), "too big", size=31, columns=20)
    assert cache.keys() == [tuple(a), tuple(c)]


def test_the_prefix_cache_keeps_one_entry_per_conversation() -> None:
    cache = PrefixCache(capacity=100)
    turn = list(range(100, 120))
    cache.put(turn, "turn 1", size=10, columns=20)
    cache.put(turn[:18], "an edit", size=10, columns=18)  # shorter: both kept
    cache.put([*turn, 5, 6], "turn 2", size=10, columns=22)  # extends both: they go
    assert cache.keys() == [(*turn, 5, 6)]


def test_the_prefix_cache_serves_a_prefix_only_when_worth_it() -> None:
    cache = PrefixCache(capacity=100)
    kept = list(range(100, 100 + MIN_PREFIX + 4))
    cache.put(kept, "kept", size=10, columns=len(kept))
    assert cache.peek(kept) == (len(kept) - 1, None)  # a token is always left to encode
    assert cache.take([*kept[: MIN_PREFIX - 1], 1, 2]) is None  # too short a share
    assert cache.take([1, *kept]) is None
    assert cache.peek([*kept, 1]) == (len(kept), None)  # all of it, but no room to lend
    assert cache.tokens_reused == 0 and cache.lent == 0  # peeking changes nothing
    reuse = cache.take([*kept, 1])
    assert reuse is not None and (reuse.length, reuse.lent) == (len(kept), False)
    assert cache.tokens_reused == len(kept)
