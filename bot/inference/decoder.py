"""The batch's KV cache and its decode step: one token for every active request in one pass.

`BatchCache` keeps every layer's keys and values in buffers with room to grow, left-padded so that
all rows end at the same column; a decode step writes its new column in place (transformers'
`DynamicCache` concatenates a layer's whole cache to add one column, a cost growing with the
conversation).

For the decoder-only architectures it knows (Llama, Qwen2: the default model and the test model),
`LeanStep` runs the layers' own modules without transformers' per-call machinery (mask building,
cache bookkeeping, keyword plumbing through every layer). It computes what the forward computes, op
for op, and attends each padded row over its own tokens only, so a row's logits do not depend on
the rest of the batch (`tests/test_decoder.py`, `tests/test_scheduler.py`). Any other architecture
goes through the model's own forward (`ModelStep`).

Where the model's kernels (its `Kernels`, bot/inference/kernels.py) are chinwag's and every
projection is int8 or int4, a decode step runs each layer in one call of `chinwag::decode_layer`
(norms, projections, rotary, attention over each row's own columns, MLP) instead of dozens of torch
calls from Python. It rounds differently from the forward (in float32, logits within 1e-5 of their
scale) and is batch-invariant too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bot.inference.kernels import Kernels
from bot.inference.quantize import QuantizedLinear, kernels_of

# Columns added at a time when the buffers are full.
_GROW = 256
# The most new tokens times columns whose attention `chinwag::attend` computes (it keeps every
# score, so the area bounds its memory per thread); beyond, torch's attention.
_ATTEND_AREA = 1 << 22


class BatchCache:
    """Keys and values of every row of the batch, per layer [rows, kv_heads, capacity, head_dim].

    The first `columns` columns are in use; a row shorter than the others is padded on the left
    (`mask` False there), so every row's latest token is in the last used column.
    """

    def __init__(self, layers: list[tuple[Any, Any]]) -> None:
        """A batch of one row from a request's cache (per layer: keys, values [1, kv_heads, n, dim])."""
        columns = layers[0][0].shape[2]
        self._own(
            [_room(k, columns + _GROW) for k, _ in layers],
            [_room(v, columns + _GROW) for _, v in layers],
            columns,
        )

    @classmethod
    def adopt(cls, layers: list[tuple[Any, Any]], columns: int) -> BatchCache:
        """A batch of one row made of these buffers themselves (per layer: keys, values
        [1, kv_heads, capacity, dim]), not copies: `columns` in use, the rest room to grow into."""
        cache = cls.__new__(cls)
        cache._own([k for k, _ in layers], [v for _, v in layers], columns)
        return cache

    def _own(self, keys: list[Any], values: list[Any], columns: int) -> None:
        self.columns = columns
        self.keys = keys
        self.values = values
        self._mask = torch.zeros((1, keys[0].shape[2]), dtype=torch.bool, device=keys[0].device)
        self._mask[:, :columns] = True

    @property
    def rows(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def mask(self) -> Any:
        """[rows, columns]: False where a row is padding."""
        return self._mask[:, : self.columns]

    def layer(self, index: int) -> tuple[Any, Any]:
        """One layer's keys and values in use: [rows, kv_heads, columns, dim] views."""
        return self.keys[index][:, :, : self.columns], self.values[index][:, :, : self.columns]

    def layers(self) -> list[tuple[Any, Any]]:
        """Every layer's keys and values in use (views)."""
        return [self.layer(i) for i in range(len(self.keys))]

    def add(self, *rows: list[tuple[Any, Any]]) -> None:
        """Append rows (each, per layer: keys, values [1, kv_heads, n, dim]), padding on the left
        whichever are shorter. Several at once are one copy of the batch (added one by one, each
        would copy and zero the whole batch again)."""
        lengths = [row[0][0].shape[2] for row in rows]
        width = max(self.columns, *lengths)
        shift = width - self.columns  # existing rows move right when a new one is longer
        capacity = max(self.capacity, width + _GROW)
        before = self.rows
        total = before + len(rows)

        def joined(old: Any, new: list[Any]) -> Any:
            # Padding is zeros (a masked column is still multiplied by its attention weight, 0);
            # the room after `width` is written before anything reads it.
            grown = old.new_empty((total, old.shape[1], capacity, old.shape[3]))
            grown[:before, :, :shift] = 0
            grown[:before, :, shift:width] = old[:, :, : self.columns]
            for i, (tensor, length) in enumerate(zip(new, lengths, strict=True)):
                grown[before + i, :, : width - length] = 0
                grown[before + i, :, width - length : width] = tensor[0]
            return grown

        self.keys = [joined(old, [row[i][0] for row in rows]) for i, old in enumerate(self.keys)]
        self.values = [joined(old, [row[i][1] for row in rows]) for i, old in enumerate(self.values)]
        mask = self._mask.new_zeros((total, capacity))
        mask[:before, shift:width] = self._mask[:, : self.columns]
        for i, length in enumerate(lengths):
            mask[before + i, width - length : width] = True
        self._mask = mask
        self.columns = width

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows; columns that are padding in all of them are dropped."""
        index = torch.tensor(rows, device=self._mask.device)
        mask = self._mask[index, : self.columns]
        start = int(mask.any(0).nonzero()[0])
        width = self.columns - start
        capacity = width + _GROW
        self.keys = [_room(k[index, :, start : self.columns], capacity) for k in self.keys]
        self.values = [_room(v[index, :, start : self.columns], capacity) for v in self.values]
        self._mask = _room(mask[:, start:], capacity, dim=1, zero=True)
        self.columns = width

    def row(self, row: int, length: int) -> list[tuple[Any, Any]]:
        """Copies of one row's last `length` columns of keys and values, per layer."""
        start = self.columns - length
        return [
            (
                k[row : row + 1, :, start : self.columns].clone(),
                v[row : row + 1, :, start : self.columns].clone(),
            )
            for k, v in zip(self.keys, self.values, strict=True)
        ]

    @classmethod
    def empty(cls, layers: int, kv_heads: int, dim: int, dtype: Any, device: Any) -> BatchCache:
        """A row with nothing in it yet (a prompt encoded from its first token)."""
        blank = torch.zeros((1, kv_heads, 0, dim), dtype=dtype, device=device)
        return cls([(blank, blank)] * layers)

    def open_columns(self, count: int = 1) -> int:
        """Make room for `count` more columns (valid in every row); the index of the first."""
        if self.columns + count > self.capacity:
            capacity = self.columns + count + _GROW
            self.keys = [_room(k, capacity) for k in self.keys]
            self.values = [_room(v, capacity) for v in self.values]
            self._mask = _room(self._mask, capacity, dim=1, zero=True)
        start = self.columns
        self._mask[:, start : start + count] = True
        self.columns += count
        return start


def _room(tensor: Any, capacity: int, dim: int = 2, zero: bool = False) -> Any:
    """`tensor` copied into a buffer of `capacity` along `dim` (at its start). The rest is left as
    it comes unless `zero`: keys and values beyond the columns in use are written before anything
    reads them (zeroing them would cost time on every turn)."""
    shape = list(tensor.shape)
    used = shape[dim]
    shape[dim] = capacity
    buffer = tensor.new_zeros(shape) if zero else tensor.new_empty(shape)
    buffer.narrow(dim, 0, used).copy_(tensor)
    return buffer


class ModelStep:
    """A decode step through the model's own forward: works for any architecture the batch supports."""

    def __init__(self, model: Any, kernels: Kernels | None = None) -> None:
        self._model = model
        # The model's kernels (its layers use them in the forward; the scheduler's greedy choice).
        self.kernels = kernels if kernels is not None else kernels_of(model)

    def start(self, prefix: list[tuple[Any, Any]] | None, used: int | None = None) -> Any:
        """A request's own cache, holding `prefix` (per layer: keys, values) if given; with `used`,
        only its first `used` columns (the rest is room, which this step does not write into)."""
        from transformers import DynamicCache

        if prefix is None:
            return DynamicCache(config=self._model.config)
        if used is not None:
            prefix = [(k[:, :, :used], v[:, :, :used]) for k, v in prefix]
        return DynamicCache(ddp_cache_data=prefix, config=self._model.config)

    def kept(self, cache: Any) -> list[tuple[Any, Any]]:
        """A request's keys and values to keep once it is done with them (copies: the next
        request's cache grows by concatenation, never into these)."""
        return [(k.clone(), v.clone()) for k, v in self.layers(cache)]

    def feed(self, cache: Any, fed: int, tokens: list[int]) -> Any:
        """Encode `tokens` into a request's cache, which holds `fed` tokens; the last one's logits."""
        device = self._model.device
        out = self._model(
            input_ids=torch.tensor([tokens], device=device),
            attention_mask=torch.ones((1, fed + len(tokens)), dtype=torch.long, device=device),
            position_ids=torch.arange(fed, fed + len(tokens), device=device)[None],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[0, -1]

    def can_feed_many(self) -> bool:
        """Whether `feed_many` encodes several requests in one pass (never, here)."""
        return False

    def feed_many(self, requests: list[tuple[Any, int, list[int]]]) -> list[Any]:
        """`feed` for several requests, one after the other."""
        return [self.feed(*request) for request in requests]

    def layers(self, cache: Any) -> list[tuple[Any, Any]]:
        """A request's cache as keys and values [1, kv_heads, tokens, dim] per layer."""
        return [(layer.keys, layer.values) for layer in cache.layers]

    def __call__(self, cache: BatchCache, ids: Any, positions: Any) -> Any:
        """Logits [rows, vocab] for one new token per row; its keys and values go into `cache`."""
        from transformers import DynamicCache

        mask = torch.cat([cache.mask, cache.mask.new_ones((cache.rows, 1))], 1).long()
        dynamic: Any = DynamicCache(ddp_cache_data=cache.layers(), config=self._model.config)
        out = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=dynamic,
            use_cache=True,
        )
        column = cache.open_columns()
        for i, layer in enumerate(dynamic.layers):
            cache.keys[i][:, :, column] = layer.keys[:, :, -1]
            cache.values[i][:, :, column] = layer.values[:, :, -1]
        return out.logits[:, -1]


class LeanStep:
    """A decode step for Llama-family models that calls their modules directly (see the module doc)."""

    ARCHITECTURES = ("llama", "qwen2")

    def __init__(self, model: Any, half_cache: bool = False, kernels: Kernels | None = None) -> None:
        self._model = model
        # The model's own kernels (`kernels_of`) unless told otherwise.
        self.kernels = kernels if kernels is not None else kernels_of(model)
        base = model.model
        self._embed = base.embed_tokens
        self._rotary = base.rotary_emb
        self._layers = list(base.layers)
        self._norm = base.norm
        self._head = model.lm_head
        attention = self._layers[0].self_attn
        self._head_dim = attention.head_dim
        self._scaling = attention.scaling
        self._heads = model.config.num_attention_heads
        self._kv_heads = model.config.num_key_value_heads
        # The layers for chinwag's fused kernel: with the weights as they are, and (where they have
        # them) laid out for its VNNI products, used wherever those run (`Kernels.vnni`).
        self._fused: list[_Fused] | None = _fused_layers(model)
        self._fused_vnni: list[_Fused] | None = _fused_layers(model, vnni=True)
        # The dtype of the keys and values it keeps: with `half_cache` and its fused kernel in use,
        # float16 (half the memory of a conversation's cache; attention computes in float32 all the
        # same); else the model's own.
        weight = self._embed.weight
        half = half_cache and self._fused is not None and self.kernels.ready
        self.cache_dtype = torch.float16 if half else weight.dtype

    @classmethod
    def supports(cls, model: Any) -> bool:
        """Whether `model` is one this step computes exactly as its own forward does."""
        config = model.config
        if getattr(config, "model_type", None) not in cls.ARCHITECTURES:
            return False
        if getattr(config, "use_sliding_window", False) or any(
            kind != "full_attention" for kind in getattr(config, "layer_types", None) or []
        ):
            return False
        if getattr(config, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
            return False
        base = getattr(model, "model", None)
        needed = ("embed_tokens", "rotary_emb", "layers", "norm")
        return base is not None and all(hasattr(base, name) for name in needed) and hasattr(model, "lm_head")

    def start(self, prefix: list[tuple[Any, Any]] | None, used: int | None = None) -> BatchCache:
        """A request's own cache (a batch of one row), holding `prefix` (per layer: keys, values).

        With `used`, `prefix` is buffers with room after their first `used` columns, and the cache
        is made of them, writing its new tokens into that room (no copy of the history).
        """
        if prefix is not None:
            return BatchCache(prefix) if used is None else BatchCache.adopt(prefix, used)
        return BatchCache.empty(
            len(self._layers), self._kv_heads, self._head_dim, self.cache_dtype, self._embed.weight.device
        )

    def layers(self, cache: BatchCache) -> list[tuple[Any, Any]]:
        """A request's cache as keys and values [1, kv_heads, tokens, dim] per layer (views)."""
        return cache.layers()

    def kept(self, cache: BatchCache) -> list[tuple[Any, Any]]:
        """A request's keys and values to keep once it is done with them: its buffers themselves,
        room included (`start` with `used` can grow a later request's cache into that room)."""
        return list(zip(cache.keys, cache.values, strict=True))

    def feed(self, cache: BatchCache, fed: int, tokens: list[int]) -> Any:
        """Encode `tokens` into a request's cache, which holds `fed` tokens; the last one's logits.

        As the model's own forward computes it, but the keys and values are written in place (no
        copy of the cache per layer) and a group of heads attends over its shared keys (no copy of
        them per head). A prompt from its first token is computed exactly as the forward does; onto
        a cache (a follow-up turn), with chinwag's kernels loaded, the attention is theirs (the same
        up to rounding).
        """
        return self._encode([(cache, fed, tokens)], _module)[0]

    def can_feed_many(self) -> bool:
        """Whether `feed_many` encodes several requests in one pass (chinwag's kernels in use for
        every projection), rather than one after the other."""
        return self._fused is not None and self.kernels.ready

    def feed_many(self, requests: list[tuple[BatchCache, int, list[int]]]) -> list[Any]:
        """`feed` for several requests (each: its cache, the tokens it holds, the tokens to encode),
        in one pass over the weights: each request's logits.

        The projections go through chinwag's kernels whatever the number of rows (`rowwise`), so
        each request's keys, values and logits are bit for bit those `feed` gives it alone as long
        as its tokens are fewer than `PREFILL_ROWS` (from there `feed` expands the int8 weights for
        one matmul instead). Without the kernels, one request after the other.
        """
        if len(requests) == 1 or not self.can_feed_many():
            return [self.feed(*request) for request in requests]
        return list(self._encode(requests, _rowwise))

    def _encode(self, requests: list[tuple[BatchCache, int, list[int]]], product: _Product) -> Any:
        """Logits [requests, vocab] of each request's last new token; their keys and values go into
        the requests' caches. The projections by `product`, the attention request by request."""
        heads, kv_heads, dim = self._heads, self._kv_heads, self._head_dim
        device = self._embed.weight.device
        spans: list[tuple[int, int]] = []
        positions: list[Any] = []
        tokens: list[int] = []
        for cache, fed, new in requests:
            start = cache.open_columns(len(new))
            assert start == fed, "the cache does not hold what the request has fed"
            spans.append((len(tokens), len(new)))
            positions.append(torch.arange(fed, fed + len(new), device=device))
            tokens.extend(new)
        where = torch.cat(positions)[None]
        x = self._embed(torch.tensor([tokens], device=device))  # [1, tokens, hidden]
        cos, sin = self._rotary(x, where)
        cos, sin = cos[:, None], sin[:, None]  # [1, 1, tokens, dim]
        for i, layer in enumerate(self._layers):
            attention = layer.self_attn
            q, k, v = self._project(layer, x, cos, sin, product)
            outs = []
            for (cache, fed, _), (first, count), own in zip(requests, spans, positions, strict=True):
                cache.keys[i][:, :, fed : fed + count] = k[:, :, first : first + count]
                cache.values[i][:, :, fed : fed + count] = v[:, :, first : first + count]
                mine = q[:, :, first : first + count]
                if fed and self.kernels.ready and dim % 16 == 0 and count * (fed + count) <= _ATTEND_AREA:
                    # chinwag's kernel: faster than torch's masked attention over a cache.
                    out = self.kernels.ops.attend(
                        mine[0].contiguous(), cache.keys[i][0], cache.values[i][0], fed, self._scaling
                    )
                else:
                    # Each new token sees the cache and the new tokens up to itself. A prompt from its
                    # first token attends over its own keys and values as computed (the cache may
                    # keep them in float16).
                    mask = torch.arange(fed + count, device=device)[None, :] <= own[:, None] if fed else None
                    if fed:
                        keys, values = cache.layer(i)
                    else:
                        keys, values = k[:, :, first : first + count], v[:, :, first : first + count]
                    out = _attend(
                        mine, keys, values, self._scaling, heads // kv_heads, mask, mask is None and count > 1
                    )
                    out = out.transpose(1, 2).reshape(1, count, heads * dim)
                outs.append(out.view(1, count, heads * dim))
            x = x + product(attention.o_proj, outs[0] if len(outs) == 1 else torch.cat(outs, dim=1))
            h = layer.post_attention_layernorm(x)
            mlp = layer.mlp  # what the MLP's forward computes (Llama, Qwen2), by `product`
            x = x + product(mlp.down_proj, mlp.act_fn(product(mlp.gate_proj, h)) * product(mlp.up_proj, h))
        last = [first + count - 1 for first, count in spans]
        return self._head(self._norm(x[:, last]))[0]

    def _project(
        self, layer: Any, x: Any, cos: Any, sin: Any, product: _Product | None = None
    ) -> tuple[Any, Any, Any]:
        """A layer's queries, keys and values for `x` [rows, tokens, hidden], rotated to their
        positions: [rows, heads, tokens, dim]. The projections one by one, as the forward does
        (over many rows, one fused float matmul may add up in another order)."""
        product = product or _module
        rows, count = x.shape[:2]
        attention = layer.self_attn
        h = layer.input_layernorm(x)
        q = product(attention.q_proj, h).view(rows, count, self._heads, self._head_dim).transpose(1, 2)
        k = product(attention.k_proj, h).view(rows, count, self._kv_heads, self._head_dim).transpose(1, 2)
        v = product(attention.v_proj, h).view(rows, count, self._kv_heads, self._head_dim).transpose(1, 2)
        q = (q * cos) + (_rotate_half(q) * sin)
        k = (k * cos) + (_rotate_half(k) * sin)
        return q, k, v

    def __call__(self, cache: BatchCache, ids: Any, positions: Any) -> Any:
        """Logits [rows, vocab] for one new token per row; its keys and values go into `cache`."""
        rows = ids.shape[0]
        heads, kv_heads, dim = self._heads, self._kv_heads, self._head_dim
        groups = heads // kv_heads
        column = cache.open_columns()
        # Where each row's own tokens start: a padded row attends to its own columns only, as if it
        # were alone, so its logits are bit for bit those of the same reply decoded on its own
        # (masking the padding instead rounds differently, and greedy replies then depended on
        # which others shared their batch).
        starts = (~cache.mask).sum(1).tolist() if not bool(cache.mask.all()) else None
        x = self._embed(ids)  # [rows, 1, hidden]
        cos, sin = self._rotary(x, positions)
        fused = self._fused_vnni if self.kernels.vnni and self._fused_vnni is not None else self._fused
        if fused is not None and self.kernels.ready:
            # Each layer in one call of chinwag's kernels (kernels.cpp).
            x, cos, sin = x[:, 0].contiguous(), cos[:, 0].contiguous(), sin[:, 0].contiguous()
            first = starts or [0] * rows
            for i, (*layer, linears) in enumerate(fused):
                self.kernels.ops.decode_layer(
                    x,
                    *layer,
                    [linear.activation_bits() for linear in linears],
                    self.kernels.bf16,
                    cos,
                    sin,
                    cache.keys[i],
                    cache.values[i],
                    column,
                    first,
                    heads,
                    kv_heads,
                    self._scaling,
                )
            return self._head(self._norm(x))
        cos, sin = cos[:, None], sin[:, None]  # [rows, 1, 1, dim]
        for i, layer in enumerate(self._layers):
            attention = layer.self_attn
            q, k, v = self._project(layer, x, cos, sin)
            cache.keys[i][:, :, column] = k[:, :, 0]
            cache.values[i][:, :, column] = v[:, :, 0]
            keys, values = cache.layer(i)
            if starts is None:
                out = _attend(q, keys, values, self._scaling, groups)
            else:
                out = torch.cat(
                    [
                        _attend(
                            q[r : r + 1],
                            keys[r : r + 1, :, start:],
                            values[r : r + 1, :, start:],
                            self._scaling,
                            groups,
                        )
                        for r, start in enumerate(starts)
                    ]
                )
            x = x + attention.o_proj(out.reshape(rows, 1, heads * dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self._head(self._norm(x))[:, -1]


# How a projection is computed: (the layer, its input) -> its output.
_Product = Callable[[Any, Any], Any]


def _module(linear: Any, x: Any) -> Any:
    """The layer's own forward."""
    return linear(x)


def _rowwise(linear: Any, x: Any) -> Any:
    """The layer by chinwag's kernels at any number of rows (quantized layers; see `rowwise`)."""
    return linear.rowwise(x)


# What `chinwag::decode_layer` takes of a layer: its norms' weights and epsilon, and its projections'
# weights, scales and biases (q, k, v, o, gate, up, down); and the projections themselves, which say
# what their activations are rounded to (`activation_bits`).
_Fused = tuple[Any, Any, float, list[Any], list[Any], list[Any], list[Any]]
_PROJECTIONS = (
    ("self_attn", "q_proj"),
    ("self_attn", "k_proj"),
    ("self_attn", "v_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_proj"),
    ("mlp", "up_proj"),
    ("mlp", "down_proj"),
)


def _fused_layers(model: Any, vnni: bool = False) -> list[_Fused] | None:
    """Every layer's tensors for chinwag's fused decode kernel, or None when it does not apply: the
    projections must all be int8 or int4 layers of shapes the kernels take, float32 elsewhere, with
    a SiLU MLP and RMSNorms of float32 weights. With `vnni`, the copies laid out for the
    VNNI kernel of the projections that have one."""
    if getattr(model.config, "hidden_act", None) != "silu" or model.config.hidden_size % 16:
        return None
    if model.model.embed_tokens.weight.dtype != torch.float32:  # the residual stream must be float32
        return None
    fused = []
    for layer in model.model.layers:
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        if any(getattr(n, "weight", None) is None or n.weight.dtype != torch.float32 for n in norms):
            return None
        weights, scales, biases, linears = [], [], [], []
        for part, name in _PROJECTIONS:
            linear = getattr(getattr(layer, part, None), name, None)
            if not isinstance(linear, QuantizedLinear):
                return None
            stored = linear.native()
            if vnni and getattr(linear, "vnni_weight", None) is not None:
                stored = (linear.vnni_weight, linear.vnni_scales)
            if stored is None or (linear.bias is not None and linear.bias.dtype != torch.float32):
                return None
            weights.append(stored[0])
            scales.append(stored[1])
            biases.append(linear.bias)
            linears.append(linear)
        eps: set[float] = {float(getattr(n, "variance_epsilon", "nan")) for n in norms}
        if len(eps) != 1 or any(e != e for e in eps):  # one epsilon for both, as Llama and Qwen2 have
            return None
        fused.append((norms[0].weight, norms[1].weight, eps.pop(), weights, scales, biases, linears))
    return fused


def _attend(
    q: Any, keys: Any, values: Any, scale: float, groups: int, mask: Any = None, causal: bool = False
) -> Any:
    """Attention of [rows, heads, tokens, dim] queries over their keys, each group of heads over its
    shared keys (`groups` query heads per key head; transformers' sdpa attention computes one
    unpadded sequence this way). `mask` [tokens, keys]: True where a query may look. Keys and values
    kept in another dtype (a float16 cache) are computed in the queries'."""
    if keys.dtype != q.dtype:
        keys, values = keys.to(q.dtype), values.to(q.dtype)
    return torch.nn.functional.scaled_dot_product_attention(
        q, keys, values, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=groups > 1
    )


def _rotate_half(x: Any) -> Any:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def step_for(model: Any, half_cache: bool = False, kernels: Kernels | None = None) -> ModelStep | LeanStep:
    """The fastest decode step that computes `model` exactly (with `half_cache`, up to keys and
    values kept in float16 where chinwag's kernels run it; see `LeanStep`), with the model's own
    kernels (`kernels_of`) unless given others."""
    if LeanStep.supports(model):
        return LeanStep(model, half_cache, kernels)
    return ModelStep(model, kernels)
