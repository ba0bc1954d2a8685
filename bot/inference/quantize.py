"""Weight-only quantization for CPU decoding: fewer bytes per weight, more tokens per second.

Decoding one token reads every weight of the model once, so on a CPU its speed is bound by memory
bandwidth. Storing the linear layers' weights as int4 (groups of 32 along the input, a bf16 scale
and zero point per group) or int8 (one bf16 scale per output channel) reads an eighth or a quarter
of float32's bytes. The layers multiply with chinwag's own kernels where the model's `Kernels` say
so (bot/inference/kernels.py: faster, float32 in and out) and otherwise with torch's
(`_weight_int4pack_mm_for_cpu`, `_weight_int8pack_mm`); both read the stored tensors as they are.
Only weights are stored quantized, never what flows between layers (quantizing activations for
good, as `quantize_dynamic` does, made the 0.5B model answer a question it should have declined):
the kernels round a layer's inputs for its products only, and everything else stays float32.

Quantizing takes seconds, so the result is kept in the model cache next to the prepared model and
later starts load it directly: a skeleton of the model is built without memory for its weights and
the stored tensors are put in place.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from bot.errors import ModelError
from bot.inference.kernels import TORCH, Kernels, cpu_flags
from bot.inference.weights import building, locked, say
from bot.threads import run_apart

log = logging.getLogger(__name__)

# "mixed": int4 for the MLP's gate and up projections (`INT4_LAYERS`) and for layers whose weights
# already sit on a 4-bit grid (nothing is lost there), int8 for the rest. It is what
# `model.quantization = "auto"` picks on a CPU.
Scheme = Literal["int8", "int4", "mixed"]
# Bumped when the stored format changes, so older copies are rebuilt.
QUANT_VERSION = 11
# Layers "mixed" stores as int4 even when their weights are not on a 4-bit grid: the larger part of
# the default model's layer weights, so it decodes faster, with the same scores on every
# answer-quality evaluation (bench/quality.py); int4 for every layer (the attention projections
# too) cost tool-use answers.
INT4_LAYERS = frozenset({"gate_proj", "up_proj"})
GROUP = 32  # int4: weights per scale/zero pair along the input dimension
_INNER_K_TILES = 2
_INT4_BLOCK = 64  # the CPU int4 kernel's packed layout: output channels in blocks of this many
MARKER = "chinwag-quantized.json"
# What the quantized layers multiply in. Everything else (embeddings, norms, attention, the
# residual stream) computes in float32: with bf16 there, a greedy reply's tokens depended on which
# other replies shared its batch (attention over padded rows rounds differently), and the cost in
# speed of float32 there is small (the bytes are in the linear layers' weights). The scheduler's KV
# cache may store float16 numbers (`scheduler.kv_cache`), read as float32.
COMPUTE = torch.bfloat16
# From this many rows (a prompt's tokens being encoded), an int8 layer expands its weight for one
# plain matmul instead of using the kernel, which is compute-bound there (in bf16 on CPUs with bf16
# arithmetic, `native_bf16`; else float32). Decoding (a row per reply, at most
# `scheduler.max_batch`) stays on the kernels.
PREFILL_ROWS = 32
# The same for int4 layers on CPUs with bf16 arithmetic (their weights unpacked to bf16): unpacking
# costs more, so it pays from more rows. Elsewhere int4 keeps its kernel.
INT4_PREFILL_ROWS = 256
# torch's own format: it aligns every tensor to 64 bytes, so the weights are used straight from the
# memory-mapped file (safetensors aligns to 8, and the int8 kernel's vector loads crashed on that).
WEIGHTS = "model.pt"


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic itself (AVX512-BF16 or AMX), where a bf16 matmul over
    many rows is about twice as fast as a float32 one (elsewhere bf16 is emulated, and slower)."""
    return bool((cpu_flags() or frozenset()) & {"avx512_bf16", "amx_bf16"})


def label(scheme: Scheme) -> str:
    """How a scheme is shown to people ("mixed" is int4 and int8 layers)."""
    return "int4/int8" if scheme == "mixed" else scheme


def available(scheme: Scheme, device: str) -> bool:
    """Whether this torch has the kernel for `scheme` on `device` (CPU only, for now)."""
    if device != "cpu":
        return False
    ops = {
        "int4": ["_weight_int4pack_mm_for_cpu"],
        "int8": ["_weight_int8pack_mm"],
        "mixed": ["_weight_int4pack_mm_for_cpu", "_weight_int8pack_mm"],
    }[scheme]
    return all(hasattr(torch.ops.aten, op) for op in ops)


class QuantizedLinear(nn.Module):
    """A linear layer whose weight is stored quantized; subclasses say how."""

    scheme: Scheme
    # The weight laid out for the int8-activation kernel (None: the layer has no such copy).
    vnni_weight: Any
    # Whether its activations keep 16 bits in the decode step even where the other layers' are
    # rounded to 8 (`WIDE_INPUT_LAYERS`, `Kernels.int8`).
    wide_input = False
    # Rows below which chinwag's kernels (where in use) compute the layer.
    native_rows = PREFILL_ROWS
    # The kernels it multiplies with: its model's (`use_kernels`).
    kernels: Kernels = TORCH

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: Any) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype) if bias else None)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.scheme}"

    def forward(self, x: Any) -> Any:
        return self._product(x, self.native_rows)

    def rowwise(self, x: Any) -> Any:
        """As `forward`, but by chinwag's kernels (where in use) at any number of rows: each row's
        result is then bit for bit what it would be alone (prompts encoded together)."""
        return self._product(x, 1 << 62)

    def _product(self, x: Any, kernel_rows: int) -> Any:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        if (
            rows.shape[0] < kernel_rows
            and self.kernels.ready
            and rows.dtype == torch.float32
            and (stored := self.vnni() or self.native()) is not None
        ):
            # chinwag's kernels (kernels.cpp): float32 in and out, the bias added in the same pass.
            # The activations keep 16 bits here (prompts, and transformers' own forward); only the
            # scheduler's decode step rounds them to `activation_bits`.
            out = self.kernels.linear(rows.contiguous(), *stored, self.bias, 16)
            return out.reshape(*shape[:-1], self.out_features)
        # Many rows at once (a prompt being encoded): the quantized kernels are compute-bound
        # there, and expanding the weight for one plain matmul is the faster way.
        y: Any = self._many(rows) if rows.shape[0] >= PREFILL_ROWS else None
        if y is None:
            # The kernels read bf16 inputs; the rest of the network stays in the model's own dtype.
            y = self._matmul(rows.to(COMPUTE)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    @classmethod
    def supports(cls, in_features: int, out_features: int) -> bool:
        """Whether a layer of this shape can be stored this way."""
        return True

    def quantize(self, weight: Any) -> None:
        """Store `weight` ([out_features, in_features], any float dtype) quantized."""
        raise NotImplementedError

    def _matmul(self, x: Any) -> Any:
        raise NotImplementedError

    def _many(self, rows: Any) -> Any:
        """The product for many rows [rows, in] by a plain matmul (None: use the kernel)."""
        return None

    def native(self) -> tuple[Any, Any] | None:
        """The weight and scales as chinwag's kernels take them (`Kernels.linear`), or None when
        they do not take this layer's shape."""
        return None

    def vnni(self) -> tuple[Any, Any] | None:
        """The weight and scales laid out for chinwag's VNNI kernel, where the layer's kernels use it
        (`Kernels.vnni`), else None."""
        weight = getattr(self, "vnni_weight", None)
        return (weight, self.vnni_scales) if self.kernels.vnni and weight is not None else None

    def activation_bits(self) -> int:
        """What the scheduler's decode step (`chinwag::decode_layer`, one token per reply) rounds this
        layer's activations to in the VNNI kernel: 8 bits where `Kernels.int8` (`model.kernels`
        "auto" or "int8") unless the layer is one of `WIDE_INPUT_LAYERS`, else 16. The layer's own
        forward (prompts being encoded, transformers' forward) always keeps 16 bits."""
        return 8 if self.kernels.int8 and not self.wide_input else 16


class Int8Linear(QuantizedLinear):
    """int8 weights with one scale per output channel."""

    scheme: Scheme = "int8"

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: Any) -> None:
        super().__init__(in_features, out_features, bias, dtype)
        self.register_buffer("weight", torch.empty((out_features, in_features), dtype=torch.int8))
        self.register_buffer("scales", torch.empty(out_features, dtype=COMPUTE))
        # The same weights laid out for the int8-activation kernel (`vnni_pack_int8`); its scales are
        # the layer's own.
        shape = (out_features // 16, in_features // VNNI_GROUP, 8, 64)
        fits = _vnni_fits(self)
        self.register_buffer("vnni_weight", torch.empty(shape, dtype=torch.int8) if fits else None)

    @property
    def vnni_scales(self) -> Any:
        return self.scales

    def quantize(self, weight: Any) -> None:
        w = weight.detach().to(torch.float32)
        # Rounded up to what bf16 holds, so the largest weight still fits in ±127.
        scales = ((w.abs().amax(dim=1) / 127).clamp(min=1e-10) * (1 + 2**-8)).to(COMPUTE)
        q = torch.round(w / scales.float()[:, None]).clamp(-127, 127)
        self.weight = q.to(torch.int8).contiguous()
        self.scales = scales
        if self.vnni_weight is not None:
            self.vnni_weight = vnni_pack_int8(self.weight)

    def _matmul(self, x: Any) -> Any:
        return torch.ops.aten._weight_int8pack_mm(x, self.weight, self.scales)

    def native(self) -> tuple[Any, Any] | None:
        return (self.weight, self.scales) if self.in_features % 16 == 0 else None

    def _many(self, rows: Any) -> Any:
        if native_bf16():
            # int8 values are exact in bf16; the scales apply to the product, as in the kernel.
            y = torch.nn.functional.linear(rows.to(COMPUTE), self.weight.to(COMPUTE))
            return y.to(rows.dtype) * self.scales.to(rows.dtype)
        return torch.nn.functional.linear(rows, self._dequantized(rows.dtype))

    def _dequantized(self, dtype: Any) -> Any:
        """The weight expanded to `dtype`."""
        return self.weight.to(dtype) * self.scales.to(dtype)[:, None]


class Int4Linear(QuantizedLinear):
    """int4 weights in groups of `GROUP` inputs, each with a scale and a zero point (asymmetric)."""

    scheme: Scheme = "int4"
    # chinwag's kernel at any number of rows: it stays ahead of torch's kernel and of the weights
    # unpacked for one matmul (int8's kernel falls behind its bf16 matmul with many rows).
    native_rows = 1 << 62

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: Any) -> None:
        super().__init__(in_features, out_features, bias, dtype)
        # The kernel's packed layout: two 4-bit values per byte.
        self.register_buffer("weight", torch.empty((out_features, in_features // 2), dtype=torch.uint8))
        # [groups, out_features, (scale, zero)], as the kernel takes it.
        self.register_buffer(
            "scales_and_zeros", torch.empty((in_features // GROUP, out_features, 2), dtype=COMPUTE)
        )
        # The same weights, scales and zeros laid out for the int8-activation kernel (`vnni_pack_int4`).
        fits = _vnni_fits(self)
        groups = in_features // GROUP
        shape = (out_features // 16, groups, GROUP // 8, 64)
        self.register_buffer("vnni_weight", torch.empty(shape, dtype=torch.uint8) if fits else None)
        shape = (out_features // 16, groups, 2, 16)
        self.register_buffer("vnni_scales", torch.empty(shape, dtype=COMPUTE) if fits else None)

    @classmethod
    def supports(cls, in_features: int, out_features: int) -> bool:
        return in_features % GROUP == 0 and in_features % (16 * _INNER_K_TILES) == 0

    def quantize(self, weight: Any) -> None:
        w = weight.detach().to(torch.float32)
        n, k = w.shape
        groups = w.reshape(-1, GROUP)
        step, low, _ = on_4bit_grid(groups)
        # Groups not on a grid: 16 levels from their minimum to their maximum.
        off = torch.isnan(step)
        span = (groups.amax(dim=1) - groups.amin(dim=1)).clamp(min=1e-8) / 15
        step = torch.where(off, span, step)[:, None]
        low = low[:, None]
        # Stored in bf16 (what the kernel reads), so quantize against the rounded values.
        scales = step.to(COMPUTE)
        zeros = (low + scales.float() * 8).to(COMPUTE)
        base = zeros.float() - scales.float() * 8
        q = ((groups - base) / scales.float()).round().clamp(0, 15).to(torch.int32).reshape(n, k)
        self.weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, _INNER_K_TILES)
        self.scales_and_zeros = (
            torch.cat([scales.reshape(n, -1, 1), zeros.reshape(n, -1, 1)], dim=2).transpose(0, 1).contiguous()
        )
        if self.vnni_weight is not None:
            self.vnni_weight, self.vnni_scales = vnni_pack_int4(
                q, scales.reshape(n, -1), zeros.reshape(n, -1)
            )

    def _matmul(self, x: Any) -> Any:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.weight, GROUP, self.scales_and_zeros)

    def native(self) -> tuple[Any, Any] | None:
        # chinwag's kernels read the layout torch packs in with AVX-512 (blocks of 64 channels).
        layout = int4_layout()
        if self.out_features % _INT4_BLOCK or layout < 0:
            return None
        if layout == _INT4_BLOCK:
            return self.weight, self.scales_and_zeros
        # Elsewhere (AVX2: blocks of 32) torch's own kernel needs its layout, so chinwag's kernels
        # get a copy in theirs, made once: without it the int4 layers went through torch outside
        # the decode step, and prompts were not encoded together nor the cache kept in float16.
        copy = getattr(self, "_native_weight", None)
        if copy is None or copy[0] is not self.weight:
            n, k = self.out_features, self.in_features
            if layout == _INT4_BLOCK // 2:
                repacked = repack_int4_32_to_64(self.weight, n, k)
            else:
                repacked = pack_int4_blocks(unpack_int4(self.weight, n, k, layout))
            copy = (self.weight, repacked)
            self._native_weight = copy
        return copy[1], self.scales_and_zeros

    def _many(self, rows: Any) -> Any:
        if rows.shape[0] < INT4_PREFILL_ROWS or not native_bf16() or self.out_features % _INT4_BLOCK:
            return None
        return torch.nn.functional.linear(rows.to(COMPUTE), self.unpacked()).to(rows.dtype)

    def unpacked(self) -> Any:
        """The weight [out, in] in bf16, read out of the kernel's packed layout (`int4_layout`; out
        a multiple of 64). Rounded once to bf16 from the exact (q - 8) * scale + zero."""
        n, k = self.out_features, self.in_features
        q = unpack_int4(self.weight, n, k, int4_layout()).reshape(n, k // GROUP, GROUP)
        scales = self.scales_and_zeros[..., 0].t().unsqueeze(-1)  # [out, groups, 1]
        zeros = self.scales_and_zeros[..., 1].t().unsqueeze(-1)
        return torch.addcmul(zeros, q.to(COMPUTE) - 8, scales).reshape(n, k)


def unpack_int4(packed: Any, n: int, k: int, layout: int) -> Any:
    """The levels q [n, k] (0-15) of an int4 weight packed by torch in `layout` (see `int4_layout`;
    n a multiple of the block)."""
    block = layout or 32
    bytes_ = packed.view(n // block, k, block // 2)  # per block of channels and per input
    if layout:  # byte c: channel c in its low nibble, c + block / 2 in its high one
        levels = torch.cat([bytes_ & 0xF, bytes_ >> 4], dim=2)
    else:  # byte c: channels 2c and 2c + 1
        levels = torch.stack([bytes_ & 0xF, bytes_ >> 4], dim=3).reshape(n // block, k, block)
    return levels.transpose(1, 2).reshape(n, k)


def pack_int4_blocks(levels: Any) -> Any:
    """The levels q [n, k] (0-15, n a multiple of 64) packed as torch packs them with AVX-512, the
    layout chinwag's kernels read (`int4_layout` 64): the inverse of `unpack_int4(..., 64)`."""
    n, k = levels.shape
    half = _INT4_BLOCK // 2
    blocks = levels.to(torch.uint8).reshape(n // _INT4_BLOCK, _INT4_BLOCK, k).transpose(1, 2)
    packed = blocks[..., :half] | (blocks[..., half:] << 4)  # [n / 64, k, 32]
    return packed.contiguous().view(torch.uint8).reshape(n, k // 2)


def repack_int4_32_to_64(packed: Any, n: int, k: int) -> Any:
    """`pack_int4_blocks(unpack_int4(packed, n, k, 32))` byte by byte, without the levels: with
    AVX2 torch packs blocks of 32 channels (byte c: channels c and c + 16), so a block of 64 is two
    of them, A then B, and its byte c holds A's channel c and B's channel c (c < 16: the low
    nibbles; else the high ones of byte c - 16). Few and small temporaries: through the levels,
    repacking the default model left about 100 MB more behind in the allocator."""
    pairs = packed.view(n // _INT4_BLOCK, 2, k, _INT4_BLOCK // 4)  # [blocks, (A, B), k, 16]
    a, b = pairs[:, 0], pairs[:, 1]
    out = torch.empty((n // _INT4_BLOCK, k, _INT4_BLOCK // 2), dtype=torch.uint8)
    half = _INT4_BLOCK // 4
    torch.bitwise_or(a & 0xF, (b & 0xF) << 4, out=out[..., :half])
    torch.bitwise_or(a >> 4, b & 0xF0, out=out[..., half:])
    return out.view(n, k // 2)


@functools.cache
def int4_layout() -> int:
    """How torch's `_convert_weight_to_int4pack_for_cpu` packs int4 weights in this process: per
    block of this many output channels and per input, a byte holds channel c in its low nibble and
    c + block / 2 in its high one; 64 where torch's CPU code runs AVX-512, 32 with AVX2; 0: blocks of
    32 whose byte c holds channels 2c and 2c + 1 (no vector code). torch picks the layout by the
    instructions it runs, so a stored copy is for machines of one layout (`_target`), and
    chinwag's kernels read the first only. -1: this torch has no int4 CPU kernel."""
    if not available("int4", "cpu"):
        return -1
    n, k = 64, 2 * GROUP
    q = torch.randint(0, 16, (n, k), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, _INNER_K_TILES)
    for layout in (_INT4_BLOCK, 32, 0):
        if torch.equal(unpack_int4(packed, n, k, layout).to(torch.int32), q):
            return layout
    raise ModelError("torch packs int4 weights in a layout chinwag does not know")


def on_4bit_grid(groups: Any) -> tuple[Any, Any, Any]:
    """Per group of weights: the step of the 16-level grid its values lie on, if they do (else NaN).

    Weights that came from a 4-bit GGUF (Q4_0, Q4_1, Q4_K: 32 weights per scale and offset) were
    dequantized to floats; their values still sit on one grid per group, and that grid stored again
    as int4 loses nothing, where a grid fitted to the minimum and maximum would round a second time.
    Returns (step, lowest value, whether on a grid) per group.
    """
    ordered = groups.sort(dim=1).values
    low = ordered[:, 0]
    gaps = ordered[:, 1:] - ordered[:, :-1]
    scale = ordered.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
    gaps = torch.where(gaps > scale * 1e-5, gaps, torch.inf)
    step = gaps.amin(dim=1)
    index = (groups - low[:, None]) / step[:, None]
    fits = ((index - index.round()).abs() < 1e-2).all(dim=1) & (index.round().amax(dim=1) <= 15)
    fits &= torch.isfinite(step)
    # A group of one repeated value is on every grid.
    step = torch.where(torch.isfinite(step), step, scale[:, 0])
    return torch.where(fits, step, torch.nan), low, fits


class ShortlistHead(nn.Module):
    """The output head: int4 logits over the whole vocabulary choose a shortlist of candidates,
    whose logits are then computed exactly from the float32 weights.

    The head is read in full for every token (the largest single layer of a small model with a large
    vocabulary), but only the best few logits decide a greedy or top-p choice. Exact logits for
    int4's top `SHORTLIST` make those match the float32 model's (the float32 winner is far inside
    int4's top 64); the rest keep int4's close estimate. With tied
    embeddings the float32 weights are the input embedding's, shared: nothing more is stored;
    otherwise they are kept in bf16 (8 significant bits: the same winner in practice).

    Where chinwag's kernels run with AVX512-VNNI, the estimates come from their int8-activation
    kernel instead, over a copy of the weights in int4 groups of `HEAD_GROUP` (`vnni_pack_int4`): as
    good a shortlist, and faster with several replies at once. The int4 layer stays for other
    CPUs; the copy they do not use is never read from the memory-mapped file.
    """

    scheme: Scheme = "int4"
    # The VNNI copy's weight and scales (None where the shape does not suit it).
    vnni_weight: Any
    vnni_scales: Any
    # The kernels it multiplies with: its model's (`use_kernels`).
    kernels: Kernels = TORCH

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: Any) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.coarse = Int4Linear(in_features, out_features, False, dtype)
        # The estimates for chinwag's int8-activation kernel (see `HEAD_GROUP`).
        fits = out_features % 16 == 0 and in_features % HEAD_GROUP == 0
        groups = in_features // HEAD_GROUP
        shape = (out_features // 16, groups, HEAD_GROUP // 8, 64)
        self.register_buffer("vnni_weight", torch.empty(shape, dtype=torch.uint8) if fits else None)
        shape = (out_features // 16, groups, 2, 16)
        self.register_buffer("vnni_scales", torch.empty(shape, dtype=COMPUTE) if fits else None)
        # Loaded with its stored dtype (float32 when tied to the input embedding, else bf16).
        self.register_buffer("weight", torch.empty((out_features, in_features), dtype=dtype))
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype) if bias else None)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, shortlist={SHORTLIST}"

    @classmethod
    def supports(cls, in_features: int, out_features: int) -> bool:
        return Int4Linear.supports(in_features, out_features) and out_features > SHORTLIST

    def quantize(self, weight: Any, tied: bool = False) -> None:
        """Store `weight`: int4 for the shortlist, and for the exact logits the input embedding's
        own tensor when `tied`, else a bf16 copy (half the bytes; rows are read a few at a time)."""
        self.coarse.quantize(weight)
        if self.vnni_weight is not None:
            self.vnni_weight, self.vnni_scales = vnni_pack_int4(
                *int4_levels(weight.detach().float(), HEAD_GROUP)
            )
        self.weight = weight.detach() if tied else weight.detach().to(COMPUTE).contiguous()

    def forward(self, x: Any) -> Any:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        weight: Any = self.weight
        bias: Any = self.bias
        if rows.shape[0] >= PREFILL_ROWS:  # logits for a whole prompt (rare): exact throughout
            logits = torch.nn.functional.linear(rows, weight.to(rows.dtype), bias)
            return logits.reshape(*shape[:-1], self.out_features)
        kernels = self.kernels
        if kernels.ready and kernels.vnni and self.vnni_weight is not None and rows.dtype == torch.float32:
            logits = kernels.linear(rows.contiguous(), self.vnni_weight, self.vnni_scales, None, 8)
        else:
            logits = self.coarse(rows)
        if kernels.ready and rows.dtype == torch.float32 and weight.dtype in (torch.float32, COMPUTE):
            # chinwag's kernel: the shortlist in one pass over the estimates, its logits in place
            # (faster than torch's topk, gather and einsum).
            kernels.ops.shortlist(logits, rows.contiguous(), weight, bias, SHORTLIST)
            return logits.reshape(*shape[:-1], self.out_features)
        shortlist = logits.topk(SHORTLIST, dim=-1).indices  # [rows, SHORTLIST]
        exact = torch.einsum("rk,rsk->rs", rows, weight[shortlist].to(rows.dtype))
        if bias is not None:
            logits = logits + bias
            exact = exact + bias[shortlist]
        logits.scatter_(-1, shortlist, exact)
        return logits.reshape(*shape[:-1], self.out_features)


# Candidates whose logits the output head computes exactly.
SHORTLIST = 64
# The output head's int8-activation estimates: int4 weights in groups of this many inputs. They keep
# the float32 winner and the top 20 within their top 64 on the evaluation documents and questions,
# as the int4 layer's do (coarser groups lost some of the top 20).
HEAD_GROUP = 64
# The VNNI kernel's groups of inputs for int8 weights (one activation scale each), activations rounded
# to int8 (see `activation_group`).
VNNI_GROUP = 32
# The same with 16-bit activations, for layers whose inputs are a multiple of it: the error stays far
# below bf16's, and the kernel converts a group's sums a quarter as often.
WIDE_GROUP = 128
# Layers whose activations keep 16 bits in the decode step where the others' are rounded to 8
# (`Kernels.int8`): the MLP's down projection, whose input (silu(gate) * up) has the largest
# outliers. Rounded to int8 everywhere, it cost a document answer in bench/quality.py; in the decode
# step only, the scores held but the step was barely faster, so it keeps 16 bits.
WIDE_INPUT_LAYERS = frozenset({"down_proj"})


def activation_group(in_features: int, bits: int) -> int:
    """Inputs per activation scale of an int8 layer with `in_features` inputs in the VNNI kernel, its
    activations rounded to `bits` (int4 layers: their weights' own groups)."""
    return WIDE_GROUP if bits == 16 and in_features % WIDE_GROUP == 0 else VNNI_GROUP


def _vnni_fits(layer: QuantizedLinear) -> bool:
    """Whether the int8-activation kernel takes this layer's shape."""
    return layer.out_features % 16 == 0 and layer.in_features % VNNI_GROUP == 0


def int4_levels(weight: Any, group: int) -> tuple[Any, Any, Any]:
    """`weight` [N, K] (float32) on 16 levels from each group's minimum to its maximum: the levels
    q [N, K] (0-15) and per group the bf16 scale and zero [N, K / group], a weight being
    (q - 8) * scale + zero (quantized against the rounded scale and zero)."""
    n, k = weight.shape
    groups = weight.reshape(n, k // group, group)
    low, high = groups.amin(dim=2), groups.amax(dim=2)
    scales = ((high - low) / 15).clamp(min=1e-8).to(COMPUTE)
    zeros = (low + scales.float() * 8).to(COMPUTE)
    base = zeros.float() - scales.float() * 8
    q = ((groups - base[..., None]) / scales.float()[..., None]).round().clamp(0, 15)
    return q.to(torch.uint8).reshape(n, k), scales, zeros


def vnni_pack_int8(weight: Any) -> Any:
    """An int8 weight [N, K] as the int8-activation kernel takes it: [N / 16, K / 32, 8, 64], per
    block of 16 outputs and per group of 32 inputs, 8 words of 64 bytes whose bytes 4c..4c+3 hold
    output c's inputs 4j..4j+3 (the values themselves, reordered)."""
    n, k = weight.shape
    return (
        weight.view(n // 16, 16, k // 32, 8, 4)
        .permute(0, 2, 3, 1, 4)
        .contiguous()
        .view(n // 16, k // 32, 8, 64)
    )


def vnni_pack_int4(q: Any, scales: Any, zeros: Any) -> tuple[Any, Any]:
    """int4 levels q [N, K] (0-15) with per group scales and zeros [N, K / G] (bf16; a weight is
    (q - 8) * scale + zero) as the int8-activation kernel takes them: the weight [N / 16, K / G,
    G / 8, 64], per block of 16 outputs, per group and per 8 inputs j, 64 bytes whose byte 4c + i
    holds output c's input 8j + i in its low nibble and input 8j + 4 + i in its high one; the scales
    and zeros [N / 16, K / G, 2, 16] (16 scales, then 16 zeros). Nothing is rounded again."""
    n, k = q.shape
    g = k // scales.shape[1]
    # [block, c, group, j, half, i] -> [block, group, j, c, i, half]: byte 4c + i, nibble `half`.
    levels = q.to(torch.uint8).view(n // 16, 16, k // g, g // 8, 2, 4).permute(0, 2, 3, 1, 5, 4)
    packed = (levels[..., 0] | (levels[..., 1] << 4)).contiguous().view(n // 16, k // g, g // 8, 64)

    def per_block(t: Any) -> Any:  # [N, groups] -> [N / 16, groups, 16]
        return t.reshape(n // 16, 16, k // g).transpose(1, 2)

    pairs = torch.stack([per_block(scales.to(COMPUTE)), per_block(zeros.to(COMPUTE))], dim=2).contiguous()
    return packed, pairs


_LAYERS: dict[str, type[QuantizedLinear]] = {"int8": Int8Linear, "int4": Int4Linear}


def use_kernels(model: Any, kernels: Kernels) -> None:
    """Have `model`'s quantized layers (and the decode steps made for it afterwards, `kernels_of`)
    multiply with `kernels`: the model's own choice, whatever other models in the process use."""
    for module in model.modules():
        if isinstance(module, QuantizedLinear | ShortlistHead):
            module.kernels = kernels


def kernels_of(model: Any) -> Kernels:
    """The kernels `model`'s quantized layers multiply with (`TORCH` for a model without any)."""
    for module in model.modules():
        if isinstance(module, QuantizedLinear | ShortlistHead):
            return module.kernels
    return TORCH


def quantize_model(model: Any, scheme: Scheme, fill: bool = True, int4_layers: set[str] | None = None) -> int:
    """Replace the model's linear layers (the output head too) by quantized ones; returns how many.

    With `fill`, the weights are quantized from the existing layers; without, the new layers are
    empty shells of the right shapes, to be filled by `load_state_dict(..., assign=True)` (for
    "mixed", `int4_layers` then names the layers stored as int4).
    """
    dtype = model.dtype
    head = model.get_output_embeddings()
    embedding = model.get_input_embeddings()
    tied = head is not None and embedding is not None and embedding.weight is head.weight
    count = 0
    for prefix, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            path = f"{prefix}.{name}" if prefix else name
            layer_type: type[QuantizedLinear] | type[ShortlistHead]
            if child is head and ShortlistHead.supports(child.in_features, child.out_features):
                # The output head decides every token directly: int4 alone cost the most agreement
                # with the full model for the fewest bytes; int4 with exact logits for its best
                # candidates costs nothing and reads less than int8 (see ShortlistHead).
                layer_type = ShortlistHead
            elif child is head:
                layer_type = Int8Linear
            elif scheme != "mixed":
                layer_type = _LAYERS[scheme]
            elif fill:
                int4 = name in INT4_LAYERS or _lossless_as_int4(child)
                layer_type = Int4Linear if int4 else Int8Linear
            else:
                layer_type = Int4Linear if path in (int4_layers or set()) else Int8Linear
            if not layer_type.supports(child.in_features, child.out_features):
                continue
            layer = layer_type(child.in_features, child.out_features, child.bias is not None, dtype)
            if isinstance(layer, QuantizedLinear):
                layer.wide_input = name in WIDE_INPUT_LAYERS
            if fill:
                if isinstance(layer, ShortlistHead):
                    layer.quantize(child.weight, tied)
                else:
                    layer.quantize(child.weight)
                if child.bias is not None:
                    layer.register_buffer("bias", child.bias.detach().to(dtype).clone())
            setattr(parent, name, layer)
            count += 1
    # The output head was tied to the input embeddings; it is now a layer of its own.
    if getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False
    return count


def _lossless_as_int4(linear: Any) -> bool:
    """Whether every group of this layer's weights sits on a 4-bit grid (int4 then loses nothing)."""
    if not Int4Linear.supports(linear.in_features, linear.out_features):
        return False
    return bool(on_4bit_grid(linear.weight.detach().float().reshape(-1, GROUP))[2].all())


def load_quantized(source: Path, scheme: Scheme, cache_dir: Path, progress: bool = True) -> Any:
    """The model in `source` (a transformers directory) with `scheme` linear layers.

    The first time, the model is loaded, quantized and stored under `cache_dir`; afterwards the
    stored copy is loaded, memory-mapped (quickly).
    """
    return _load(source, scheme, prepare_quantized(source, scheme, cache_dir, progress))


def prepare_quantized(source: Path, scheme: Scheme, cache_dir: Path, progress: bool = True) -> Path:
    """Make sure the quantized copy of `source` exists (made once, atomically); its directory."""
    target = _target(source, scheme, cache_dir)
    if not _is_prepared(target, source):
        target.parent.mkdir(parents=True, exist_ok=True)
        with locked(target.parent / f".{target.name}.lock"):
            if not _is_prepared(target, source):
                run_apart(_prepare, source, scheme, target, progress)
    return target


def _target(source: Path, scheme: Scheme, cache_dir: Path) -> Path:
    # int4 weights are stored as torch packs them on this machine (`int4_layout`): a copy made where
    # torch packs otherwise would be read wrongly here, so it is another copy.
    identity = f"{source.resolve()}|{torch.__version__}|int4 layout {int4_layout()}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:10]
    return cache_dir / "quantized" / f"{source.resolve().parent.name}-{source.name}-{scheme}-{key}"


def _fingerprint(source: Path) -> dict[str, Any]:
    """What identifies the source weights: file names, sizes and modification times."""
    files = sorted(p for p in source.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return {
        "files": [[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in files],
        "torch": torch.__version__,
        "version": QUANT_VERSION,
    }


def _is_prepared(target: Path, source: Path) -> bool:
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(marker.get("source") == _fingerprint(source) and (target / WEIGHTS).is_file())


def _prepare(source: Path, scheme: Scheme, target: Path, progress: bool) -> None:
    from transformers import AutoModelForCausalLM

    # Progress goes where the model preparation's goes (stderr): stdout may be `ask --json`.
    say(progress, f"Quantizing the model's weights to {label(scheme)}; this happens once.")
    started = time.perf_counter()
    with building(target, f"Could not quantize {source.name} to {scheme}") as tmp:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, local_files_only=True)
        count = quantize_model(model, scheme)
        state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
        tmp.mkdir(parents=True)
        torch.save(state, tmp / WEIGHTS)
        (tmp / MARKER).write_text(json.dumps({"source": _fingerprint(source), "layers": count}, indent=2))
        del model, state
    log.info("quantized %s to %s in %.1f s", source, scheme, time.perf_counter() - started)


def _load(source: Path, scheme: Scheme, target: Path) -> Any:
    """A skeleton without weight memory, quantized in shape, then given the stored tensors."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(source, local_files_only=True)
    # Buffers computed at construction (rotary frequencies) are not in the file: build them for real.
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    try:
        # Memory-mapped: pages are read as the first forward pass touches them, nothing is copied.
        state = torch.load(target / WEIGHTS, mmap=True, weights_only=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise ModelError(f"The quantized copy in {target} cannot be read: {error}") from error
    for name, tensor in state.items():
        if tensor.data_ptr() % 64:  # never seen; the kernels need it, so copy rather than crash
            state[name] = tensor.clone()
    int4 = {name.removesuffix(".scales_and_zeros") for name in state if name.endswith(".scales_and_zeros")}
    with init_empty_weights(include_buffers=True):
        quantize_model(model, scheme, fill=False, int4_layers=int4)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise ModelError(f"The quantized copy in {target} does not fit the model: {error}") from error
    leftover = [
        name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta
    ]
    if leftover:
        raise ModelError(f"The quantized copy in {target} lacks {', '.join(leftover[:3])}")
    with contextlib.suppress(OSError):
        model.generation_config = GenerationConfig.from_pretrained(source, local_files_only=True)
    return model
