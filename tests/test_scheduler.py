"""The generation scheduler with the real small model: batched replies match one-at-a-time replies.

The reference is the same model with the scheduler off (one `generate` at a time); the scheduled
models share its weights, so every comparison is the same network run two ways. They run with
`model.kernels = "int16"` and `scheduler.kv_cache = "float32"`: the decode step then rounds its
activations as transformers' forward does (to 16 bits) and keeps its keys and values as the forward
does, and a greedy reply is the same token for token. With the defaults, the decode step rounds
activations to int8 and keeps keys and values in float16, where transformers' forward keeps 16 bits
and float32, so the 135M model's replies part after a few dozen tokens; there batched replies are
checked against the scheduler's own one at a time
(`test_with_int8_steps_batched_replies_equal_the_schedulers_one_at_a_time`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import pytest
import torch

from bot.app import default_tools
from bot.errors import BusyError
from bot.inference.decoder import LeanStep
from bot.inference.local import TransformersModel
from bot.inference.planner import Request, RequestState
from bot.inference.quantize import kernels_of, use_kernels
from bot.inference.scheduler import choose, penalize
from bot.seams.model import Chunk, Finish, Queued
from bot.tools.calls import parse_tool_calls
from bot.types import ChatMessage, GenerationParams
from config import load_settings
from config.settings import SchedulerSettings

pytestmark = pytest.mark.model

SMALL = "smollm2-135m-instruct"
# The engine's default repetition penalty, so the penalty's per-row history is exercised too.
GREEDY = GenerationParams(temperature=0.0, max_tokens=24, repetition_penalty=1.05)


def _ask(text: str, system: str | None = None) -> list[ChatMessage]:
    return ([ChatMessage("system", system)] if system else []) + [ChatMessage("user", text)]


PROMPTS = [
    (_ask("What is 2+2?"), replace(GREEDY, max_tokens=12)),
    (
        _ask(
            "Write a short poem about a harbour town, its lighthouse, its fishing boats and the "
            "clerks who kept the ledgers of every ship that came in.",
            system="You are a poet who writes in plain words.",
        ),
        replace(GREEDY, max_tokens=28),
    ),
    (_ask("Name three colours."), replace(GREEDY, max_tokens=14)),
    (_ask("Explain what a queue is, in one sentence.", system="Be brief."), replace(GREEDY, max_tokens=16)),
]


@pytest.fixture(scope="module")
def naive() -> Iterator[TransformersModel]:
    """SmolLM2 with the scheduler off: the one-at-a-time reference."""
    settings = load_settings(model={"name": SMALL, "threads": 0, "kernels": "int16"})
    model = TransformersModel.load(
        settings.model, settings.model_cache_dir, progress=False, scheduler=SchedulerSettings(enabled=False)
    )
    yield model
    model.close()


_references: dict[int, tuple[str, Finish]] = {}


async def _reference(naive: TransformersModel, i: int) -> tuple[str, Finish]:
    """PROMPTS[i] answered one at a time, computed once per module (the slow path)."""
    if i not in _references:
        _references[i] = await _collect(naive, *PROMPTS[i])
    return _references[i]


@pytest.fixture
def scheduled(naive: TransformersModel) -> Iterator[TransformersModel]:
    """The same weights behind a scheduler (batch of 8)."""
    model = _scheduled(naive, SchedulerSettings(max_batch=8))
    yield model
    model.close()


def _scheduled(naive: TransformersModel, settings: SchedulerSettings) -> TransformersModel:
    """A scheduler over the reference's weights (not loaded again). Its keys and values are kept in
    float32 unless `settings` says otherwise: a float16 cache rounds them where transformers'
    forward does not, and greedy replies may then part."""
    if "kv_cache" not in settings.model_fields_set:
        settings = settings.model_copy(update={"kv_cache": "float32"})
    return TransformersModel(naive._model, naive._tokenizer, SMALL, "cpu", settings)


async def _collect(
    model: TransformersModel,
    messages: list[ChatMessage],
    params: GenerationParams,
    tools: list[dict[str, object]] | None = None,
    places: list[int] | None = None,
) -> tuple[str, Finish]:
    """The whole reply; `places` collects the queue positions it was told (all before its text)."""
    text, finish = "", None
    async with aclosing(model.stream(messages, params, tools, constrain=bool(tools))) as stream:
        async for item in stream:
            if isinstance(item, Chunk):
                text += item.text
            elif isinstance(item, Queued):
                assert not text, "a queue position after the reply started"
                if places is not None:
                    places.append(item.position)
            else:
                finish = item
    assert finish is not None
    return text, finish


async def _until(condition: Callable[[], object]) -> None:
    """Wait until `condition` holds; fail (not hang) if it has not within a minute."""
    async with asyncio.timeout(60):
        while not condition():
            await asyncio.sleep(0.005)


async def _peak_running(model: TransformersModel, until: asyncio.Future[Any]) -> int:
    """The most requests the scheduler generated at once while `until` was pending."""
    assert model.scheduler is not None
    peak = 0
    while not until.done():
        peak = max(peak, model.scheduler.load()[1])
        await asyncio.sleep(0.005)
    return peak


async def test_batched_greedy_replies_equal_one_at_a_time(
    naive: TransformersModel, scheduled: TransformersModel
) -> None:
    expected = [await _reference(naive, i) for i in range(len(PROMPTS))]

    async def staggered(i: int) -> tuple[str, Finish]:
        await asyncio.sleep(0.2 * i)  # later requests join a batch that is already decoding
        return await _collect(scheduled, *PROMPTS[i])

    everything = asyncio.gather(*(staggered(i) for i in range(len(PROMPTS))))
    peak = await _peak_running(scheduled, everything)
    assert await everything == expected
    assert peak >= 2  # they really were decoded together


async def test_with_int8_steps_batched_replies_equal_the_schedulers_one_at_a_time(
    naive: TransformersModel,
) -> None:
    """The default (`model.kernels = "auto"`) where the CPU has AVX512-VNNI: the decode step rounds
    most layers' activations to int8, row by row, so a reply is the same whichever others share its
    steps, and prompts arriving together are encoded as each alone (prompts keep 16 bits)."""
    chosen = kernels_of(naive._model)  # "int16", as loaded
    if not chosen.vnni or chosen.simd != "avx512":
        # The AVX2 path emulates the int8 products; there (measured on an AVX2-only CPU) a reply
        # batched with others parted from the same reply alone after a few tokens.
        pytest.skip("this CPU lacks AVX512-VNNI: the decode step keeps 16 bits or bf16")
    q_proj = naive._model.model.layers[0].self_attn.q_proj
    use_kernels(naive._model, replace(chosen, int8=True))  # as "auto" chooses them
    # As shipped: keys and values kept in float16 too (`scheduler.kv_cache`).
    one = _scheduled(naive, SchedulerSettings(max_batch=1, kv_cache="float16"))
    many = _scheduled(naive, SchedulerSettings(max_batch=8, kv_cache="float16"))
    try:
        assert q_proj.activation_bits() == 8
        assert many.scheduler is not None and isinstance(many.scheduler.step, LeanStep)
        assert many.scheduler.step.cache_dtype == torch.float16
        expected = [await _collect(one, *prompt) for prompt in PROMPTS]

        async def staggered(i: int) -> tuple[str, Finish]:
            await asyncio.sleep(0.2 * i)
            return await _collect(many, *PROMPTS[i])

        everything = asyncio.gather(*(staggered(i) for i in range(len(PROMPTS))))
        peak = await _peak_running(many, everything)
        assert await everything == expected and peak >= 2

        system = "You are a helpful assistant. Answer every question in one short sentence."
        params = replace(GREEDY, max_tokens=10)
        for model in (one, many):  # each keeps the system prompt: only the questions are encoded
            await _collect(model, _ask("Hello!", system=system), params)
        questions = [_ask(q, system=system) for q in ("What is 3+4?", "Name a fruit.", "Is ice cold?")]
        alone = [await _collect(one, q, params) for q in questions]
        assert many.scheduler is not None
        before = many.scheduler.encoded_together
        assert list(await asyncio.gather(*(_collect(many, q, params) for q in questions))) == alone
        assert many.scheduler.encoded_together - before >= 2 or not many.scheduler.step.can_feed_many()
    finally:
        use_kernels(naive._model, chosen)
        one.close()
        many.close()


async def test_short_prompts_arriving_together_are_encoded_together_as_each_alone(
    naive: TransformersModel, scheduled: TransformersModel
) -> None:
    """Questions arriving at once, their shared system prompt already kept: their new tokens are
    encoded in one pass over the weights, and each reply is still the one-at-a-time reply."""
    scheduler = scheduled.scheduler
    assert scheduler is not None
    if not scheduler.step.can_feed_many():
        pytest.skip("chinwag's kernels are not in use here: prompts are encoded one at a time")
    system = "You are a helpful assistant. Answer every question in one short sentence."
    params = replace(GREEDY, max_tokens=10)
    await _collect(scheduled, _ask("Hello!", system=system), params)  # keeps the system prompt
    questions = [_ask(q, system=system) for q in ("What is 3+4?", "Name a fruit.", "Is ice cold?")]
    expected = [await _collect(naive, q, params) for q in questions]
    before = scheduler.encoded_together
    assert list(await asyncio.gather(*(_collect(scheduled, q, params) for q in questions))) == expected
    assert scheduler.encoded_together - before >= 2


async def test_cancelling_one_reply_leaves_the_others_intact(
    naive: TransformersModel, scheduled: TransformersModel
) -> None:
    expected = [await _reference(naive, i) for i in (1, 3)]
    story = _ask("Write a long story about a lighthouse keeper.")

    async def cancelled() -> int:
        received = 0
        async with aclosing(scheduled.stream(story, replace(GREEDY, max_tokens=300))) as stream:
            async for item in stream:
                assert isinstance(item, Chunk)
                received += 1
                if received == 3:
                    break  # closing the stream cancels it
        return received

    results = await asyncio.gather(
        _collect(scheduled, *PROMPTS[1]), cancelled(), _collect(scheduled, *PROMPTS[3])
    )
    assert [results[0], results[2]] == expected and results[1] == 3
    assert scheduled.scheduler is not None and scheduled.scheduler.load() == (0, 0)


async def test_a_full_queue_says_busy_and_drops_nothing(naive: TransformersModel) -> None:
    model = _scheduled(naive, SchedulerSettings(max_batch=1, max_queue=1))
    try:
        expected = [await _reference(naive, i) for i in (1, 2)]
        running = asyncio.ensure_future(_collect(model, *PROMPTS[1]))
        waiting = asyncio.ensure_future(_collect(model, *PROMPTS[2]))
        assert model.scheduler is not None
        while model.scheduler.load() != (1, 1):
            await asyncio.sleep(0.005)
        with pytest.raises(BusyError, match="busy"):
            await _collect(model, *PROMPTS[0])
        assert [await running, await waiting] == expected
    finally:
        model.close()


async def test_a_waiting_request_is_told_its_place_as_it_moves_up(naive: TransformersModel) -> None:
    model = _scheduled(naive, SchedulerSettings(max_batch=1, max_queue=4))
    assert model.scheduler is not None
    scheduler = model.scheduler
    try:
        expected = [await _reference(naive, i) for i in (2, 0)]
        # A reply that holds the only slot until it is closed, so the two others wait in this order.
        story = _ask("Write a long story about a lighthouse keeper.")
        # Closed below; it must not end on its own first (4000 tokens: far longer than this test).
        blocker = model.stream(story, replace(GREEDY, max_tokens=4000))
        assert isinstance(await anext(blocker), Chunk)  # it started at once: no place in a queue
        first: list[int] = []
        second: list[int] = []
        waiting_first = asyncio.ensure_future(_collect(model, *PROMPTS[2], places=first))
        await _until(lambda: scheduler.load() == (1, 1))
        waiting_second = asyncio.ensure_future(_collect(model, *PROMPTS[0], places=second))
        await _until(lambda: scheduler.load() == (2, 1))
        await asyncio.wait_for(_until(lambda: first and second), 30)
        assert (first, second) == ([1], [2])
        await blocker.aclose()  # the slot frees: each moves up one place
        assert [await waiting_first, await waiting_second] == expected
        assert first == [1, 0]  # it started
        assert second == [2, 1, 0]
    finally:
        model.close()


async def test_each_reply_keeps_its_own_sampling_parameters(
    naive: TransformersModel, scheduled: TransformersModel
) -> None:
    sea = _ask("Tell me something about the sea.")
    sampled = GenerationParams(temperature=1.0, top_p=0.95, top_k=50, max_tokens=16, seed=7)
    greedy_alone = await _reference(naive, 2)
    first, second, greedy, other_seed = await asyncio.gather(
        _collect(scheduled, sea, sampled),
        _collect(scheduled, sea, sampled),
        _collect(scheduled, *PROMPTS[2]),
        _collect(scheduled, sea, replace(sampled, seed=8)),
    )
    assert first == second and first[0]  # the same seed samples the same reply, even side by side
    assert other_seed[0] != first[0]
    assert greedy == greedy_alone  # greedy rows are untouched by sampled neighbours
    alone = await _collect(scheduled, sea, sampled)
    assert alone == first  # and batched or alone makes no difference to a seeded reply


async def test_a_constrained_tool_call_and_a_free_reply_share_a_batch(
    naive: TransformersModel, scheduled: TransformersModel
) -> None:
    tools = default_tools().schemas()
    # SmolLM2's template ignores tools=, so the call is asked for in words.
    call = _ask(
        'Reply with only this JSON and nothing else: {"name": "calculator", "arguments": '
        '{"expression": "12*7"}}'
    )
    params = replace(GREEDY, max_tokens=40)
    # The call alone, through a scheduler of its own (nothing cached, nothing beside it).
    alone = _scheduled(naive, SchedulerSettings(max_batch=8))
    try:
        expected_call = await _collect(alone, call, params, tools)
    finally:
        alone.close()
    expected_free = await _reference(naive, 1)
    got_call, got_free = await asyncio.gather(
        _collect(scheduled, call, params, tools), _collect(scheduled, *PROMPTS[1])
    )
    assert (got_call, got_free) == (expected_call, expected_free)
    [parsed] = parse_tool_calls(got_call[0]).calls
    assert (parsed.name, parsed.arguments) == ("calculator", {"expression": "12*7"})
    # The same call as the naive path's. Not always the same text: with chinwag's kernels the
    # decode step rounds differently from transformers' forward, and SmolLM2 indents this JSON by
    # 2 or 4 spaces on a near tie.
    [naive_call] = parse_tool_calls((await _collect(naive, call, params, tools))[0]).calls
    assert (naive_call.name, naive_call.arguments) == (parsed.name, parsed.arguments)


async def test_a_follow_up_reuses_the_conversation_prefix_and_an_edit_does_not(
    scheduled: TransformersModel,
) -> None:
    scheduler = scheduled.scheduler
    assert scheduler is not None
    first = _ask("Name three colours.", system="You are a helpful assistant who answers in lists.")
    reply, _ = await _collect(scheduled, first, GREEDY)
    assert scheduler.prefix_hits == 0
    follow_up = [*first, ChatMessage("assistant", reply), ChatMessage("user", "And three animals?")]
    before = scheduler.prefix_hits
    _, finish = await _collect(scheduled, follow_up, GREEDY)
    reused = scheduler.prefix_hits - before
    # Most of the follow-up's prompt was the first turn's: only the new tokens were encoded.
    assert reused >= scheduled.count_tokens(first) - 1 and reused < finish.prompt_tokens

    edited = [ChatMessage("system", "You are terse."), *follow_up[1:]]
    tokens = scheduled._encode(edited)
    original = scheduled._encode(follow_up)
    unchanged = next(i for i, (a, b) in enumerate(zip(tokens, original, strict=False)) if a != b)
    before = scheduler.prefix_hits
    await _collect(scheduled, edited, GREEDY)
    assert scheduler.prefix_hits - before <= unchanged  # nothing after the edit is reused


# 1: a reply over at its first token never joins the batch; its cache is kept all the same.
@pytest.mark.parametrize(("max_tokens", "reason"), [(64, "stop"), (4, "length"), (1, "length")])
async def test_a_reply_that_ends_leaves_the_next_turns_opening_encoded(
    naive: TransformersModel, scheduled: TransformersModel, max_tokens: int, reason: str
) -> None:
    scheduler = scheduled.scheduler
    assert scheduler is not None
    params = replace(GREEDY, max_tokens=max_tokens)
    first = _ask("What is the capital of France?", system="Be brief.")
    extended = scheduler.extended
    reply, finish = await _collect(scheduled, first, params)
    assert finish.reason == reason
    await _until(lambda: scheduler.extended > extended)  # the worker does it once idle
    follow_up = [*first, ChatMessage("assistant", reply), ChatMessage("user", "And of Spain?")]
    before, lent = scheduler.prefix_hits, scheduler.prefix_lent
    text, _ = await _collect(scheduled, follow_up, params)
    # Encoded for turn 2: its own words and the template's closing, as for a first turn; the end
    # of the reply and the opening of the new message came from the cache.
    new = len(scheduled._encode(follow_up)) - (scheduler.prefix_hits - before)
    assert new <= scheduled.count_text_tokens("And of Spain?") + 6
    # and the cache that was extended after the reply answers exactly as a full encoding does.
    assert text == (await _collect(naive, follow_up, params))[0]
    assert scheduler.prefix_lent > lent  # turn 2 was encoded into the kept cache's room, no copy


async def test_kept_caches_lent_to_later_turns_stay_intact(
    naive: TransformersModel, scheduled: TransformersModel
) -> None:
    """A kept cache is lent (encoded into its room, no copy) only to a prompt continuing all of it;
    whatever the borrowers write, the turns it serves afterwards answer as full encodings do."""
    scheduler = scheduled.scheduler
    assert scheduler is not None
    first = _ask("What is the capital of France?", system="Be brief.")

    async def turn(messages: list[ChatMessage]) -> str:
        extended = scheduler.extended
        text, _ = await _collect(scheduled, messages, GREEDY)
        await _until(lambda: scheduler.extended > extended)  # its cache kept with the next opening
        assert text == (await _collect(naive, messages, GREEDY))[0]
        return text

    reply = await turn(first)
    spain = [*first, ChatMessage("assistant", reply), ChatMessage("user", "And Spain?")]
    lent = scheduler.prefix_lent
    spain_reply = await turn(spain)
    assert scheduler.prefix_lent == lent + 1
    # The same point with another question shares only part of Spain's kept cache: a copy of that
    # part, so the rest of it is intact when Spain's conversation goes on.
    await turn([*spain[:-1], ChatMessage("user", "And Peru?")])
    assert scheduler.prefix_lent == lent + 1
    # Two turns continuing Spain's kept cache at once: each is encoded into its room in turn (the
    # second after the first has joined the batch, done with it).
    turns = [
        [*spain, ChatMessage("assistant", spain_reply), ChatMessage("user", q)]
        for q in ("Repeat my last question.", "Which country did I ask about last?")
    ]
    texts = await asyncio.gather(*(_collect(scheduled, t, GREEDY) for t in turns))
    assert scheduler.prefix_lent == lent + 3
    for messages, (text, _) in zip(turns, texts, strict=True):
        assert text == (await _collect(naive, messages, GREEDY))[0]


def test_a_reply_streams_the_text_its_tokens_decode_to(scheduled: TransformersModel) -> None:
    """Each token adds what it adds to the reply's text (decoded a few tokens at a time), characters
    split across tokens included, and the pieces make the text the whole reply decodes to."""
    scheduler, tokenizer = scheduled.scheduler, scheduled._tokenizer
    assert scheduler is not None
    text = "Ça coûte 5 € — 東京 🙂👍🏽 naïve\n  spaced   out\tand <b>tags</b>!"
    pieces: list[str] = []
    state = RequestState(Request(prompt=[1], params=GREEDY, emit=lambda _: None))
    ids = tokenizer.encode(text, add_special_tokens=False)
    for i, token in enumerate(ids):
        state.generated.append(token)
        added = scheduler.detokenizer.added(state, final=i == len(ids) - 1)
        if added:
            pieces.append(added)
        assert tokenizer.decode(state.generated).startswith("".join(pieces))
    assert "".join(pieces) == text
    assert len(pieces) > len(ids) // 2  # streamed as it went, not at the end


async def test_closing_a_model_ends_its_threads(naive: TransformersModel) -> None:
    """Its worker threads go with it: a thread that ran torch's parallel operations keeps OpenMP
    workers that slow every other model's decoding in the process (`bot.threads`)."""
    for settings in (SchedulerSettings(enabled=False), SchedulerSettings()):
        model = _scheduled(naive, settings)
        await _collect(model, *PROMPTS[0])
        threads = list(model._executor._threads)
        if model.scheduler is not None:
            assert model.scheduler.worker is not None
            threads.append(model.scheduler.worker)
        assert threads and all(thread.is_alive() for thread in threads)
        model.close()
        for thread in threads:
            thread.join(10)
            assert not thread.is_alive()


def test_a_penalty_applied_in_place_chooses_as_transformers_processor_does() -> None:
    """The decode step puts each reply's repetition penalty into the step's logits in place; the
    token chosen from them, greedy or sampled, is the one transformers' processor leads to."""
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = torch.randn(2, 500, generator=torch.Generator().manual_seed(5)) * 4
    prompt, generated = [3, 17, 17, 250, 499], [42, 3, 7]
    for params in (GREEDY, GenerationParams(temperature=0.8, top_k=40, top_p=0.9, repetition_penalty=1.3)):
        state = RequestState(Request(list(prompt), params, emit=lambda _: None), generated=list(generated))
        expected = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(
            torch.tensor([prompt + generated]), logits[:1].clone()
        )[0]
        row = logits[0].clone()
        penalize(state, row)
        assert torch.equal(row, expected)
        chosen = []
        for penalized in (False, True):  # the first token's path (a copy), and the step's (in place)
            state.generator = torch.Generator().manual_seed(11)
            chosen.append(choose(state, row if penalized else logits[0].clone(), penalized))
        assert chosen[0] == chosen[1]
        if params.temperature <= 0:
            assert chosen[0] == int(expected.argmax())


async def test_a_watched_opening_is_reported_without_changing_the_reply(
    scheduled: TransformersModel, naive: TransformersModel
) -> None:
    messages, params = PROMPTS[0]
    plain, unwatched = await _collect(scheduled, messages, params)
    assert unwatched.watched is None
    own, finish = await _collect(scheduled, messages, replace(params, watch=plain))
    other, elsewhere = await _collect(scheduled, messages, replace(params, watch="Zebra crossings"))
    assert own == other == plain  # watching is reading, not steering
    # Greedy: the reply's own first token is the likeliest, so no other opening scores higher.
    assert finish.watched is not None and elsewhere.watched is not None
    assert elsewhere.watched < finish.watched <= 0.0
    # The reply's first token is likely, a zebra unlikely, after "What is 2+2?".
    assert finish.watched > -2.0 and elsewhere.watched < -5.0
    # One `generate` at a time cannot tell.
    assert (await _collect(naive, messages, replace(params, watch=plain)))[1].watched is None
