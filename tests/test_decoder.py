"""The batch's KV cache (plain tensors) and the lean decode step against the model's own forward."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch

from bot.inference.decoder import _GROW, BatchCache, LeanStep, ModelStep
from bot.inference.local import TransformersModel
from bot.inference.quantize import kernels_of, use_kernels
from config import load_settings
from config.settings import SchedulerSettings


def _layers(length: int, seed: int, count: int = 2) -> list[tuple[Any, Any]]:
    """A request's cache: per layer, keys and values [1, 2 heads, length, 4]."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(1, 2, length, 4, generator=generator), torch.randn(1, 2, length, 4, generator=generator))
        for _ in range(count)
    ]


def test_rows_of_different_lengths_are_left_padded_and_read_back_as_added() -> None:
    short, long = _layers(3, 1), _layers(5, 2)
    cache = BatchCache(short)
    cache.add(long)
    assert (cache.rows, cache.columns) == (2, 5)
    assert cache.mask.tolist() == [[False, False, True, True, True], [True] * 5]
    for i in range(2):
        keys, values = cache.layer(i)
        assert torch.equal(keys[0, :, 2:], short[i][0][0]) and torch.equal(values[1], long[i][1][0])
        assert not keys[0, :, :2].any()
    assert all(torch.equal(k, short[i][0]) for i, (k, _) in enumerate(cache.row(0, 3)))


def test_rows_added_together_are_the_rows_added_one_by_one() -> None:
    rows = [_layers(6, 2), _layers(2, 3), _layers(4, 4)]
    apart, together = BatchCache(_layers(3, 1)), BatchCache(_layers(3, 1))
    for row in rows:
        apart.add(row)
    together.add(*rows)
    assert (together.rows, together.columns) == (apart.rows, apart.columns) == (4, 6)
    assert torch.equal(together.mask, apart.mask)
    for i in range(2):
        assert all(torch.equal(a, b) for a, b in zip(together.layer(i), apart.layer(i), strict=True))
    keys = together.layer(0)[0]
    assert not keys[0, :, :3].any() and not keys[2, :, :4].any()  # padding is zeros


def test_leaving_rows_drops_columns_nobody_uses() -> None:
    cache = BatchCache(_layers(3, 1))
    long = _layers(6, 2)
    cache.add(long)
    cache.add(_layers(4, 3))
    cache.keep([0, 2])  # the longest row leaves: two columns were padding in both others
    assert (cache.rows, cache.columns) == (2, 4)
    assert cache.mask.tolist() == [[False, True, True, True], [True] * 4]
    cache.keep([1])
    assert cache.mask.tolist() == [[True] * 4]
    assert cache.rows == 1


def test_columns_are_opened_in_place_and_the_buffers_grow_when_full() -> None:
    first = _layers(_GROW - 1, 1)
    cache = BatchCache(first)
    buffer = cache.keys[0]
    for _ in range(_GROW):  # fits in the room made at the start: written in place
        cache.keys[0][:, :, cache.open_columns()] = 7.0
    assert cache.keys[0] is buffer
    column = cache.open_columns()  # full: the buffers grow, what was there stays
    assert cache.keys[0] is not buffer and cache.capacity > column
    assert torch.equal(cache.layer(0)[0][:, :, : _GROW - 1], first[0][0])
    assert cache.columns == 2 * _GROW and bool(cache.mask.all())


# With the real small model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def small() -> Iterator[Any]:
    settings = load_settings(model={"name": "smollm2-135m-instruct", "threads": 0})
    model = TransformersModel.load(
        settings.model, settings.model_cache_dir, progress=False, scheduler=SchedulerSettings(enabled=False)
    )
    yield model._model
    model.close()


def _prefill(model: Any, length: int, seed: int) -> list[tuple[Any, Any]]:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ids = torch.randint(100, 10_000, (1, length), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]  # type: ignore[union-attr]


def _decode(step: Any, cache: BatchCache, tokens: list[int], positions: list[int], steps: int) -> list[Any]:
    """Greedy decoding for `steps` steps; every step's logits."""
    ids, where = torch.tensor([[t] for t in tokens]), torch.tensor([[p] for p in positions])
    out = []
    with torch.inference_mode():
        for _ in range(steps):
            logits = step(cache, ids, where)
            out.append(logits)
            ids, where = logits.argmax(-1, keepdim=True), where + 1
    return out


@contextlib.contextmanager
def _float32_products(model: Any) -> Iterator[None]:
    """The model's layers, and the decode steps made for it meanwhile, multiplying exact float32
    activations with chinwag's kernels where in use (not bf16, nor rounded by the VNNI kernel)."""
    chosen = kernels_of(model)
    use_kernels(model, replace(chosen, bf16=False, vnni=False, int8=False))
    try:
        yield
    finally:
        use_kernels(model, chosen)


def _unfused(model: Any) -> LeanStep:
    """The lean step through the layers' modules (as on a machine without chinwag's kernels)."""
    step = LeanStep(model)
    step._fused = step._fused_vnni = None
    return step


@pytest.mark.model
def test_the_lean_step_computes_what_the_models_forward_does(small: Any) -> None:
    assert LeanStep.supports(small)
    prompt = _prefill(small, 40, 1)
    lean = _decode(_unfused(small), BatchCache(prompt), [5], [40], 6)
    full = _decode(ModelStep(small), BatchCache(prompt), [5], [40], 6)
    assert all(torch.equal(a, b) for a, b in zip(lean, full, strict=True))


@pytest.mark.model
def test_the_fused_layers_compute_the_same_up_to_rounding(small: Any) -> None:
    if LeanStep(small)._fused is None or not kernels_of(small).ready:
        pytest.skip("chinwag's kernels are not in use here")
    # In float32: in bf16 or 16 bits both paths round their activations, and a difference of 1e-7
    # upstream may round a value the other way (the kernels' own tests check those products).
    with _float32_products(small):
        step = LeanStep(small)
        prompt = _prefill(small, 40, 1)
        fused = _decode(step, BatchCache(prompt), [5], [40], 8)
        full = _decode(ModelStep(small), BatchCache(prompt), [5], [40], 8)
    for a, b in zip(fused, full, strict=True):
        assert not torch.equal(a, b)  # a different computation...
        assert float((a - b).abs().max()) < 1e-4 * float(b.abs().max()) + 1e-4  # ...of the same logits
        assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.model
@pytest.mark.parametrize("make", [LeanStep, _unfused], ids=["fused", "modules"])
def test_a_row_decodes_bit_for_bit_the_same_alone_or_padded_in_a_batch(small: Any, make: Any) -> None:
    first, second = _prefill(small, 40, 1), _prefill(small, 23, 2)
    alone = [_decode(make(small), BatchCache(p), [5], [n], 5) for p, n in ((first, 40), (second, 23))]
    batch = BatchCache(first)
    batch.add(second)
    together = _decode(make(small), batch, [5, 5], [40, 23], 5)
    for row in range(2):
        assert all(torch.equal(t[row], a[0]) for t, a in zip(together, alone[row], strict=True))


def _half(layers: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    return [(k.half(), v.half()) for k, v in layers]


@pytest.mark.model
def test_a_float16_cache_is_decoded_as_the_layers_modules_decode_it(small: Any) -> None:
    """`scheduler.kv_cache = "float16"`: the fused step keeps its keys and values in float16, rounded
    as torch rounds them, and attends over those numbers as the layers' own modules do over the same
    cache; a row still decodes bit for bit the same alone or padded in a batch. (How much float16
    keys and values cost in answers is `bench/quality.py`'s to say: rounding a float32 cache's
    prompt to float16 moves this model's logits by a visible part of their scale at random tokens.)"""
    half = LeanStep(small, half_cache=True)
    if half._fused is None or not half.kernels.ready:
        pytest.skip("chinwag's kernels are not in use here: the cache keeps the model's dtype")
    assert half.cache_dtype == torch.float16 and LeanStep(small).cache_dtype == torch.float32
    assert half.start(None).keys[0].dtype == torch.float16
    prompt = _prefill(small, 40, 1)
    ours, theirs = BatchCache(_half(prompt)), BatchCache(prompt)
    _decode(half, ours, [5], [40], 1)
    _decode(LeanStep(small), theirs, [5], [40], 1)
    # The first layer's new keys and values come from the token alone: the same numbers, rounded.
    assert torch.equal(ours.layer(0)[0][:, :, 40], theirs.layer(0)[0][:, :, 40].half())
    assert torch.equal(ours.layer(0)[1][:, :, 40], theirs.layer(0)[1][:, :, 40].half())
    # In float32 products, as in `test_the_fused_layers_compute_the_same_up_to_rounding`; a new key
    # 1e-7 apart may round to the neighbouring float16, hence the looser bound.
    with _float32_products(small):
        fused = _decode(LeanStep(small, half_cache=True), BatchCache(_half(prompt)), [5], [40], 8)
        modules = _decode(_unfused(small), BatchCache(_half(prompt)), [5], [40], 8)
    for a, b in zip(fused, modules, strict=True):
        assert float((a - b).abs().max()) < 2e-3 * float(b.abs().max()) + 1e-3
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    # Batch-invariant, as with float32.
    second = _prefill(small, 23, 2)
    alone = [_decode(half, BatchCache(_half(p)), [5], [n], 5) for p, n in ((prompt, 40), (second, 23))]
    batch = BatchCache(_half(prompt))
    batch.add(_half(second))
    together = _decode(half, batch, [5, 5], [40, 23], 5)
    for row in range(2):
        assert all(torch.equal(t[row], a[0]) for t, a in zip(together, alone[row], strict=True))


@pytest.mark.model
@pytest.mark.parametrize("half", [False, True], ids=["float32", "float16"])
def test_the_fused_attention_computes_the_same_whatever_the_caches_layout(small: Any, half: bool) -> None:
    """The fused step's attention is compiled for heads of 64 values stored 64 apart (both models
    here); any other layout takes its general form. Keys and values that are views of wider buffers
    (columns 80 values apart) take that form, and it computes the same logits bit for bit."""
    step = LeanStep(small, half_cache=half)
    if step._fused is None or not step.kernels.ready:
        pytest.skip("chinwag's kernels are not in use here")
    prompt = _half(_prefill(small, 40, 1)) if half else _prefill(small, 40, 1)

    def spaced(t: Any) -> Any:  # room for 16 more columns, each 80 values apart, 64 of them used
        wide = t.new_zeros((*t.shape[:2], t.shape[2] + 16, 80))
        wide[:, :, : t.shape[2], : t.shape[3]] = t
        return wide[..., : t.shape[3]]

    views = BatchCache.adopt([(spaced(k), spaced(v)) for k, v in prompt], 40)
    assert views.keys[0].stride(2) == 80
    expected = _decode(step, BatchCache(prompt), [5], [40], 6)
    assert all(torch.equal(a, b) for a, b in zip(_decode(step, views, [5], [40], 6), expected, strict=True))


@pytest.mark.model
@pytest.mark.parametrize("half", [False, True], ids=["float32", "float16"])
def test_prompts_encoded_together_are_bit_for_bit_those_encoded_alone(small: Any, half: bool) -> None:
    lean = LeanStep(small, half_cache=half)
    if not lean.can_feed_many():
        pytest.skip("chinwag's kernels are not in use here")
    kept = _half if half else list  # the cache's dtype, as the scheduler keeps a conversation's
    g = torch.Generator().manual_seed(4)
    # A prompt from its first token, and two onto caches of different lengths (follow-up turns).
    requests = [
        (None, 0, torch.randint(100, 10_000, (12,), generator=g).tolist()),
        (kept(_prefill(small, 40, 1)), 40, [17, 230, 4011, 9, 88, 1200]),
        (kept(_prefill(small, 23, 2)), 23, torch.randint(100, 10_000, (31,), generator=g).tolist()),
    ]
    with torch.inference_mode():
        alone, caches = [], []
        for prefix, fed, tokens in requests:
            cache = lean.start(prefix)
            alone.append(lean.feed(cache, fed, tokens))
            caches.append(cache)
        together = [lean.start(prefix) for prefix, _, _ in requests]
        logits = lean.feed_many([(c, fed, t) for c, (_, fed, t) in zip(together, requests, strict=True)])
    for a, b in zip(alone, logits, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(caches, together, strict=True):
        assert all(
            torch.equal(x, y)
            for pair in zip(a.layers(), b.layers(), strict=True)
            for x, y in zip(*pair, strict=True)
        )


@pytest.mark.model
def test_a_prompt_is_encoded_as_the_models_forward_encodes_it(small: Any) -> None:
    lean, full = LeanStep(small), ModelStep(small)
    prompt = torch.randint(100, 10_000, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    more = [17, 230, 4011, 9]
    with torch.inference_mode():
        ours, theirs = lean.start(None), full.start(None)
        # From the first token: the same computation, bit for bit.
        assert torch.equal(lean.feed(ours, 0, prompt), full.feed(theirs, 0, prompt))
        assert all(
            torch.equal(a, b)
            for pair in zip(lean.layers(ours), full.layers(theirs), strict=True)
            for a, b in zip(*pair, strict=True)
        )
        # Onto a cache (a follow-up turn): the same up to rounding, and the same choice. With
        # chinwag's kernels the attention is theirs: compared with float32 products, as with bf16
        # a difference of 1e-7 may round a layer's input the other way (and random tokens make a
        # prompt whose logits then moved by 2 of 31).
        with _float32_products(small):  # the projections are the layers' own forwards
            a, b = lean.feed(ours, 40, more), full.feed(theirs, 40, more)
        assert torch.allclose(a, b, atol=1e-3) and int(a.argmax()) == int(b.argmax())
        assert lean.layers(ours)[0][0].shape == full.layers(theirs)[0][0].shape == (1, 3, 44, 64)
