"""chinwag's CPU kernels (kernels.cpp): built for real, checked against plain float32 matmuls; each
loaded model's own choice of them (`Kernels`).

Compiling needs only a C++ compiler and torch's headers. Every test that runs the kernels runs once
per path (`model.simd`: avx512, avx2, neon) this CPU can execute, and skips the others; the paths
are also checked against each other, bit for bit where they do the same arithmetic.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest
import torch

from bot.inference import kernels
from bot.inference.decoder import step_for
from bot.inference.kernels import TORCH, Kernels
from bot.inference.local import TransformersModel
from bot.inference.quantize import (
    HEAD_GROUP,
    VNNI_GROUP,
    Int4Linear,
    Int8Linear,
    QuantizedLinear,
    ShortlistHead,
    activation_group,
    int4_layout,
    kernels_of,
    unpack_int4,
    use_kernels,
)
from config import load_settings
from config.settings import SchedulerSettings

Layer = TypeVar("Layer", Int8Linear, Int4Linear)

# Every test here compiles the kernels (seconds to a minute) or loads a model.
pytestmark = pytest.mark.slow

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ here")


# The paths whose libraries this CPU runs.
RUNNABLE = [name for name in kernels.ISAS if kernels.unsupported(name) is None]


@pytest.fixture(scope="session")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache of the test run's own with the libraries built into it (on any CPU): the
    path "auto" chooses, and every other path this CPU runs."""
    cache = tmp_path_factory.getbasetemp() / "kernel-cache"
    kernels.build(cache)
    for name in RUNNABLE:
        kernels.build(cache, isa=kernels.ISAS[name])
    return cache


def _path(library: Path, simd: str, setting: str = "auto") -> Kernels:
    reason = kernels.unsupported(simd)
    if reason is not None:
        pytest.skip(f"the {simd} path does not run here: {reason}")
    chosen = Kernels.load(setting, library, simd=simd)
    assert chosen.ready and chosen.simd == simd
    return chosen


@pytest.fixture(params=list(kernels.ISAS))
def native(request: pytest.FixtureRequest, library: Path) -> Kernels:
    """The kernels `model.kernels = "auto"` chooses on each path (`model.simd`), loaded and in use;
    skipped for paths this CPU cannot run."""
    return _path(library, request.param)


def _layer(kind: type[Layer], n: int, k: int, seed: int, bias: bool, chosen: Kernels) -> Layer:
    """A layer of `kind` quantized from random weights (and a random bias), multiplying with `chosen`."""
    g = torch.Generator().manual_seed(seed)
    layer = kind(k, n, bias, torch.float32)
    layer.quantize(torch.randn(n, k, generator=g))
    if bias:
        layer.bias = torch.randn(n, generator=g)
    layer.kernels = chosen
    return layer


def _int8(n: int, k: int, seed: int, chosen: Kernels, bias: bool = True) -> Int8Linear:
    return _layer(Int8Linear, n, k, seed, bias, chosen)


def _int4(n: int, k: int, seed: int, chosen: Kernels, bias: bool = False) -> Int4Linear:
    return _layer(Int4Linear, n, k, seed, bias, chosen)


def _bias(layer: Int8Linear | Int4Linear) -> torch.Tensor:
    """The layer's bias in float64 (the tests' layers have one)."""
    assert isinstance(layer.bias, torch.Tensor)
    return layer.bias.double()


def _rows(m: int, k: int, seed: int) -> torch.Tensor:
    return torch.randn(m, k, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.fixture(params=["wide", "bf16", "float32"])
def variant(request: pytest.FixtureRequest, native: Kernels) -> Kernels:
    """The kernels' ways of multiplying a layer's activations (not the decode step's int8):
    rounded to 16 bits by the VNNI kernel (CPUs with AVX512-VNNI, layers with a copy for it), to
    bf16 (CPUs with AVX512-BF16, without VNNI or a copy for it), or exact in float32."""
    if request.param == "wide" and not native.vnni:
        pytest.skip("this CPU lacks AVX512-VNNI")
    if request.param == "bf16" and not native.ops.has_bf16():
        pytest.skip("no bf16 products on this path (AVX512-BF16 only)")
    rounded = request.param != "float32"
    return replace(native, bf16=rounded, vnni=request.param == "wide", int8=False)


def _as_multiplied(variant: Kernels, layer: Int8Linear | Int4Linear, x: torch.Tensor) -> torch.Tensor:
    """The activations as `variant` multiplies them by this layer (float64)."""
    if variant.vnni and layer.vnni() is not None:
        group = activation_group(layer.in_features, 16) if isinstance(layer, Int8Linear) else VNNI_GROUP
        return _rounded_rows(x, group, 16)
    if variant.bf16 and variant.ops.has_bf16() and layer.in_features % 32 == 0:
        return x.bfloat16().double()
    return x.double()


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 9])
@pytest.mark.parametrize(("n", "k"), [(96, 64), (131, 80), (64, 320), (7, 96)])
def test_int8_layers_compute_what_their_float_weights_do(variant: Kernels, rows: int, n: int, k: int) -> None:
    layer = _int8(n, k, rows, variant)
    x = _rows(rows, k, n)
    expected = _as_multiplied(variant, layer, x) @ layer._dequantized(torch.float32).double().t()
    assert torch.allclose(layer(x).double(), expected + layer.bias.double(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 3, 4, 7])
@pytest.mark.parametrize(("n", "k"), [(64, 32), (192, 96), (128, 512)])
def test_int4_layers_compute_what_their_float_weights_do(variant: Kernels, rows: int, n: int, k: int) -> None:
    layer = _int4(n, k, rows, variant, bias=True)
    x = _rows(rows, k, n)
    if variant.vnni:  # the zero points multiply the exact sums of the activations
        pairs = layer.scales_and_zeros.transpose(0, 1)
        expected = _int4_product(x, VNNI_GROUP, _int4_levels(layer), pairs[..., 0], pairs[..., 1], 16)
    else:
        expected = _as_multiplied(variant, layer, x) @ _int4_exact(layer).t()
    assert torch.allclose(layer(x).double(), expected + _bias(layer), rtol=1e-5, atol=1e-3)


def test_a_row_comes_out_bit_for_bit_the_same_whatever_else_is_in_the_batch(variant: Kernels) -> None:
    for layer in (_int8(136, 96, 1, variant), _int4(128, 96, 2, variant, bias=True)):
        x = _rows(9, 96, 3)
        together = layer(x)
        for row in range(9):
            assert torch.equal(layer(x[row : row + 1]), together[row : row + 1])
            assert torch.equal(layer(x[row:]), together[row:])


def test_the_kernels_agree_with_torchs_up_to_its_bf16_inputs(native: Kernels) -> None:
    for layer in (_int8(256, 128, 4, native), _int4(256, 128, 5, native)):
        x = _rows(3, 128, 6)
        ours = layer(x)
        layer.kernels = TORCH
        theirs = layer(x)
        assert not torch.equal(ours, theirs)  # different kernels, different rounding
        # torch's kernel rounds its inputs and outputs to bf16 (8 significant bits).
        assert float((ours - theirs).abs().max()) <= 2**-7 * float(theirs.abs().max())


def test_a_prompts_many_rows_keep_the_plain_matmul(native: Kernels) -> None:
    layer = _int8(64, 64, 9, native)
    x = _rows(40, 64, 10)  # a prompt's rows: the weight expanded for one matmul
    expected = x @ layer._dequantized(torch.float32).t() + layer.bias
    # On CPUs with bf16 arithmetic the prompt's rows are rounded to bf16 for that matmul.
    assert float((layer(x) - expected).abs().max()) <= 2**-6 * float(expected.abs().max())
    assert not torch.equal(layer(x[:1]), layer(x)[:1])  # one row: the kernel, rounded differently


def test_rowwise_computes_many_rows_each_as_alone(variant: Kernels) -> None:
    """Prompts encoded together (`LeanStep.feed_many`): the kernel at any number of rows, where the
    layer's forward multiplies a prompt's many rows by its expanded weight."""
    for layer in (_int8(64, 64, 16, variant), _int4(64, 64, 17, variant, bias=True)):
        x = _rows(40, 64, 18)
        together = layer.rowwise(x)
        for row in (0, 17, 39):
            assert torch.equal(together[row : row + 1], layer(x[row : row + 1]))
    assert not torch.equal(_int8(64, 64, 16, variant)(x), _int8(64, 64, 16, variant).rowwise(x))


def test_the_output_head_shortlists_with_the_kernel_and_keeps_exact_winners(native: Kernels) -> None:
    g = torch.Generator().manual_seed(11)
    weight = torch.randn(640, 64, generator=g)
    head = ShortlistHead(64, 640, False, torch.float32)
    head.quantize(weight, tied=True)  # exact logits from these float32 weights
    use_kernels(head, native)
    x = torch.randn(3, 64, generator=g)
    logits, exact = head(x), x @ weight.t()
    assert torch.equal(logits.argmax(-1), exact.argmax(-1))
    top = exact.topk(5, dim=-1).indices
    assert torch.allclose(logits.gather(-1, top), exact.gather(-1, top), atol=1e-4)


def _rounded_rows(x: torch.Tensor, group: int, bits: int = 8) -> torch.Tensor:
    """x rounded per group of inputs as the VNNI kernel rounds it (in float32: to `bits` 8, max |x|
    / 127 of the group, x times 127 / max rounded to nearest even; to 16, the same with 32639),
    returned as float64 values."""
    most = 127 if bits == 8 else 32639
    groups = x.reshape(len(x), -1, group)
    top = groups.abs().amax(dim=2, keepdim=True)
    # A float32 division, as the kernel's (torch computes a number over a tensor as its reciprocal
    # times the number, which rounds a product on a tie differently now and then).
    inverse = torch.where(top > 0, torch.full_like(top, most) / top, torch.zeros_like(top))
    q = (groups * inverse).round().clamp(-most, most)
    return (q.double() * (top / most).double()).reshape(x.shape)


def _int4_product(
    x: torch.Tensor, group: int, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int = 8
) -> torch.Tensor:
    """What the VNNI kernel computes for int4 weights, in float64: a weight (q - 8) * scale + zero
    is q * scale + low (levels [N, K], per group scales and zeros [N, K / G]); the activations
    rounded to `bits` multiply q * scale, the exact ones the lows (their sums are exact)."""
    expand = lambda t: t.double().repeat_interleave(q.shape[1] // scales.shape[1], dim=1)  # noqa: E731
    low = expand(zeros) - 8 * expand(scales)
    return _rounded_rows(x, group, bits) @ (q.double() * expand(scales)).t() + x.double() @ low.t()


def _int4_levels(layer: Int4Linear) -> torch.Tensor:
    """The levels (0-15) of the layer's weights, read from torch's layout on this machine (blocks
    of 64 channels with AVX-512, of 32 with AVX2: chinwag's kernels then read a repacked copy)."""
    return unpack_int4(layer.weight, layer.out_features, layer.in_features, int4_layout())


def _int4_exact(layer: Int4Linear) -> torch.Tensor:
    """The exact weights: (q - 8) * scale + zero in float64, from the kernel's packed layout."""
    pairs = layer.scales_and_zeros.transpose(0, 1).double()  # [N, groups, (scale, zero)]
    expand = lambda t: t.repeat_interleave(32, dim=1)  # noqa: E731
    return (_int4_levels(layer).double() - 8) * expand(pairs[..., 0]) + expand(pairs[..., 1])


@pytest.fixture(params=["auto", "int16"])
def vnni(request: pytest.FixtureRequest, native: Kernels, library: Path) -> Kernels:
    """The decode step multiplying the layers' activations rounded to 8 bits (`Kernels.int8`,
    `model.kernels` "auto") or to 16 ("int16") by the VNNI kernel."""
    if not native.vnni:
        pytest.skip("this CPU lacks AVX512-VNNI")
    return _path(library, native.simd, request.param)


@pytest.mark.parametrize("rows", [1, 2, 5, 8, 9, 17])
@pytest.mark.parametrize(("n", "k"), [(16, 64), (96, 192), (4864, 896), (896, 4864)])
@pytest.mark.parametrize("kind", [Int8Linear, Int4Linear])
def test_the_vnni_kernel_computes_its_reference(
    vnni: Kernels, kind: type[Layer], rows: int, n: int, k: int
) -> None:
    if kind is Int4Linear and n % 64:
        pytest.skip("int4 layers: blocks of 64 outputs")
    chosen, vnni_bits = vnni, 8 if vnni.int8 else 16
    layer = _layer(kind, n, k, rows + n, True, chosen)
    x = _rows(rows, k, rows)
    x[0, :7] = 0  # zeros round to zero
    x[0, 32:64] = 0  # a group of zeros
    x[-1, 3] = 300.0  # an outlier rounds its own group only
    stored = layer.vnni()
    assert stored is not None and stored[0].dim() == 4 and layer.activation_bits() == vnni_bits
    out = chosen.linear(x, *stored, layer.bias, vnni_bits)
    # The layer's own forward (prompts, transformers' forward) keeps 16 bits whatever the step's.
    assert torch.equal(layer(x), chosen.linear(x, *stored, layer.bias, 16))
    if isinstance(layer, Int8Linear):
        weight = layer.weight.double() * layer.scales.double()[:, None]
    else:
        pairs = layer.scales_and_zeros.transpose(0, 1)  # [N, groups, (scale, zero)]
        q, scales, zeros = _int4_levels(layer), pairs[..., 0], pairs[..., 1]
        weight = _int4_exact(layer)
    if isinstance(layer, Int8Linear):
        expected = _rounded_rows(x, activation_group(k, vnni_bits), vnni_bits) @ weight.t() + _bias(layer)
    else:
        expected = _int4_product(x, VNNI_GROUP, q, scales, zeros, vnni_bits) + _bias(layer)
    assert float((out.double() - expected).abs().max()) <= 1e-5 * float(expected.abs().max())
    # Each row alone: bit for bit what it is among the others.
    for i in (0, rows - 1):
        assert torch.equal(
            chosen.linear(x[i : i + 1].contiguous(), *stored, layer.bias, vnni_bits), out[i : i + 1]
        )
    # The rounding is the activations' only (the outlier's group rounds coarsely): near the exact
    # product, and with 16 bits very near.
    exact = x.double() @ weight.t() + layer.bias.double()
    error = float((out.double() - exact).abs().max())
    assert error <= (0.05 if vnni_bits == 8 else 2e-4) * float(exact.abs().max())


def test_a_layer_that_keeps_wide_activations_keeps_them_with_int8(native: Kernels) -> None:
    if not native.vnni:
        pytest.skip("this CPU lacks AVX512-VNNI")
    layer = _int8(96, 192, 14, replace(native, int8=True))
    layer.wide_input = True  # the MLP's down projection (WIDE_INPUT_LAYERS)
    x = _rows(3, 192, 15)
    assert layer.activation_bits() == 16
    layer.wide_input = False
    assert layer.activation_bits() == 8
    stored = layer.vnni()
    assert stored is not None
    assert not torch.equal(
        native.linear(x, *stored, layer.bias, 16), native.linear(x, *stored, layer.bias, 8)
    )


def test_the_output_head_shortlists_with_int8_activations_and_keeps_exact_winners(native: Kernels) -> None:
    if not native.vnni:
        pytest.skip("this CPU lacks AVX512-VNNI")
    g = torch.Generator().manual_seed(12)
    weight = torch.randn(4096, 128, generator=g)
    head = ShortlistHead(128, 4096, False, torch.float32)
    head.quantize(weight, tied=True)
    use_kernels(head, native)
    assert head.vnni_weight is not None and head.vnni_weight.shape[2] * 8 == HEAD_GROUP
    x = torch.randn(8, 128, generator=g)
    logits, exact = head(x), x @ weight.t()
    assert torch.equal(logits.argmax(-1), exact.argmax(-1))
    top = exact.topk(8, dim=-1).indices
    assert torch.allclose(logits.gather(-1, top), exact.gather(-1, top), atol=1e-4)
    # The rest are the kernel's estimates (not the int4 layer's): the activations rounded per group
    # of 64 by the head's own int4 copy.
    estimates = native.linear(x, head.vnni_weight, head.vnni_scales, None, 8)
    pairs = head.vnni_scales.permute(0, 3, 2, 1).reshape(4096, 2, -1)  # [N, (scale, zero), groups]
    levels = head.vnni_weight.view(256, 2, 8, 16, 4)  # [block, group, j, c, i]
    q = torch.stack([levels & 0xF, levels >> 4], dim=-2)  # [block, group, j, c, half, i]
    q = q.permute(0, 3, 1, 2, 4, 5).reshape(4096, 128)
    reference = _int4_product(x, HEAD_GROUP, q, pairs[:, 0], pairs[:, 1])
    assert float((estimates.double() - reference).abs().max()) <= 1e-5 * float(reference.abs().max())
    rest = torch.ones_like(logits, dtype=torch.bool).scatter_(-1, estimates.topk(64, dim=-1).indices, False)
    assert torch.equal(logits[rest], estimates[rest])
    # Without AVX512-VNNI's kernel (or with model.kernels = "float32"): the int4 layer's estimates.
    use_kernels(head, replace(native, vnni=False))
    coarse = head.coarse(x)
    rest = torch.ones_like(logits, dtype=torch.bool).scatter_(-1, coarse.topk(64, dim=-1).indices, False)
    assert torch.equal(head(x)[rest], coarse[rest])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_the_shortlist_kernel_makes_the_largest_estimates_exact(
    native: Kernels, dtype: torch.dtype, bias: bool
) -> None:
    g = torch.Generator().manual_seed(7)
    vocab, k, count = 5000, 96, 64  # not a multiple of the kernel's runs of 64 (a small vocabulary below)
    weight = torch.randn(vocab, k, generator=g).to(dtype)
    offsets = torch.randn(vocab, generator=g) if bias else None
    x = torch.randn(3, k, generator=g)
    estimates = torch.randn(3, vocab, generator=g)
    estimates[0, 100:200] = 5.0  # ties across the shortlist's edge: the lower indices first
    estimates[1] = estimates[1].clamp(max=0.5)  # many equal to the 64th
    estimates[2, -3:] = 9.0  # the best in the last, short run
    logits = estimates.clone()
    native.ops.shortlist(logits, x, weight, offsets, count)
    exact = x.double() @ weight.double().t() + (offsets.double() if offsets is not None else 0)
    for row in range(3):
        # The largest estimates, the lower index first among equals.
        order = sorted(range(vocab), key=lambda i: (-float(estimates[row, i]), i))[:count]
        chosen = torch.zeros(vocab, dtype=torch.bool)
        chosen[order] = True
        assert torch.allclose(logits[row, chosen].double(), exact[row, chosen], rtol=1e-5, atol=1e-5)
        rest = estimates[row, ~chosen] + (offsets[~chosen] if offsets is not None else 0)
        assert torch.equal(logits[row, ~chosen], rest)
    # Fewer runs of 64 than candidates, and NaN estimates (never chosen).
    small = torch.randn(2, 300, generator=g)
    small[1, ::2] = torch.nan
    logits = small.clone()
    native.ops.shortlist(logits, x[:2].contiguous(), weight[:300].contiguous(), None, count)
    for row in range(2):
        chosen = small[row].nan_to_num(-torch.inf).topk(count).indices
        expected = x[row].double() @ weight[chosen].double().t()
        assert torch.allclose(logits[row, chosen].double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "dim", "fed", "count"),
    [(14, 2, 64, 30, 12), (14, 2, 64, 690, 12), (9, 3, 64, 5, 1), (4, 4, 128, 17, 40), (6, 2, 80, 100, 315)],
)
def test_the_attention_of_new_tokens_over_a_cache_is_torchs(
    native: Kernels, heads: int, kv_heads: int, dim: int, fed: int, count: int
) -> None:
    g = torch.Generator().manual_seed(fed + count)
    columns = fed + count
    q = torch.randn(1, heads, count, dim, generator=g)
    # Buffers with room after the columns in use, as the batch cache keeps them.
    keys = torch.randn(1, kv_heads, columns + 50, dim, generator=g)
    values = torch.randn(1, kv_heads, columns + 50, dim, generator=g)
    own = torch.arange(columns)[None, :] <= torch.arange(fed, columns)[:, None]  # up to its own column
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, keys[:, :, :columns], values[:, :, :columns], attn_mask=own, scale=dim**-0.5, enable_gqa=True
    )
    out = native.ops.attend(q[0].contiguous(), keys[0], values[0], fed, dim**-0.5)
    assert out.shape == (count, heads * dim)
    assert torch.allclose(out, expected.transpose(1, 2).reshape(count, heads * dim), atol=1e-5)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "dim", "fed", "count"), [(14, 2, 64, 690, 12), (6, 2, 80, 100, 7)]
)
def test_the_attention_over_a_float16_cache_is_the_attention_over_its_values(
    native: Kernels, heads: int, kv_heads: int, dim: int, fed: int, count: int
) -> None:
    """Keys and values kept in float16 (`scheduler.kv_cache`) are read as the float32 numbers they
    hold: the same attention, bit for bit, as over those numbers kept in float32."""
    g = torch.Generator().manual_seed(fed)
    q = torch.randn(heads, count, dim, generator=g)
    keys = (torch.randn(kv_heads, fed + count + 9, dim, generator=g) * 4).half()
    values = torch.randn(kv_heads, fed + count + 9, dim, generator=g).half()
    half = native.ops.attend(q, keys, values, fed, dim**-0.5)
    assert torch.equal(half, native.ops.attend(q, keys.float(), values.float(), fed, dim**-0.5))


def test_the_best_token_of_each_row_is_the_one_torch_chooses(native: Kernels) -> None:
    """`Kernels.argmax` (the scheduler's greedy choice) against torch.argmax: ties go to the first,
    a NaN wins, a row of -inf gives 0, whatever the length and the rows' stride."""
    g = torch.Generator().manual_seed(7)
    for vocab in (151_936, 49_152, 1_000, 37, 16, 5):
        rows = torch.randn(9, vocab + 3, generator=g)[:, :vocab]  # rows 3 values apart
        rows[1] = rows[1].round()  # many ties for the largest
        rows[2, vocab // 2] = rows[2, vocab - 1] = rows[2].max() + 1  # the same best twice
        rows[3] = -torch.inf
        rows[4, vocab // 3] = torch.nan
        rows[5, -1] = torch.nan
        rows[6, [0, vocab // 2]] = torch.inf
        rows[7] = 0.0
        rows[8, -1] = rows[8].max() + 1  # the best last (past the last 16)
        assert native.argmax(rows) == rows.argmax(-1).tolist()
        assert TORCH.argmax(rows) == rows.argmax(-1).tolist()


def test_without_a_compiler_the_layers_keep_torchs_kernels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(kernels, "_registered", lambda isa: False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++, c++ or clang++ on it
    monkeypatch.delenv("CXX", raising=False)
    with caplog.at_level("INFO", logger="bot.inference.kernels"):
        chosen = Kernels.load("auto", tmp_path / "cache")
    assert chosen.setting == "auto" and not chosen.ready and not chosen.simd
    assert "no C++ compiler found" in caplog.text and "no C++ compiler found" in chosen.why
    layer = _int8(64, 64, 12, chosen)
    x = _rows(2, 64, 13)
    assert torch.allclose(
        layer(x), x @ layer._dequantized(torch.float32).t() + layer.bias, rtol=2e-2, atol=0.2
    )


@needs_compiler
def test_a_library_built_beforehand_needs_no_compiler(library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = kernels.build(library)  # built by the fixture, as a Docker image's build stage does
    monkeypatch.setenv("PATH", str(library / "empty"))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(kernels.KernelError):
        kernels.build(library / "elsewhere")
    assert kernels.build(library) == built
    assert built.name in [p.name for p in (library / "kernels").iterdir() if p.suffix == ".so"]


def test_a_failing_compilation_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if shutil.which("g++") is None:
        pytest.skip("no g++ here")
    broken = tmp_path / "kernels.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(kernels, "SOURCE", broken)
    monkeypatch.setattr(kernels, "_registered", lambda isa: False)
    with caplog.at_level("INFO", logger="bot.inference.kernels"):
        assert not Kernels.load("auto", tmp_path / "cache").ready
    assert "failed" in caplog.text
    assert not list((tmp_path / "cache" / "kernels").glob("*.so"))


@needs_compiler
@pytest.mark.parametrize(
    "simd", [name for name, isa in kernels.ISAS.items() if isa.machine == kernels.machine()]
)
def test_the_kernels_compile_without_a_warning(tmp_path: Path, simd: str) -> None:
    """Our C++ compiles warning-free for every path of this machine with the flags it is built with
    (-Wall -Wextra), and warnings are errors here, so a new one fails this test (compiling needs no
    AVX-512, only g++ and torch's headers; torch's are included as system headers, their warnings
    not ours)."""
    assert "-w" not in kernels.FLAGS and {"-Wall", "-Wextra"} <= set(kernels.FLAGS)
    isa = kernels.ISAS[simd]
    command = [*kernels.compile_command(kernels.compiler(), tmp_path / "kernels.so", isa), "-Werror"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=kernels.COMPILE_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning" not in result.stderr, result.stderr[-3000:]


@pytest.mark.model
def test_models_loaded_with_different_kernels_each_keep_their_own(tmp_path: Path) -> None:
    """Which kernels a model uses is its own (`model.kernels`), not the process's: loading another
    model with other settings changes nothing for those loaded before. Here "torch" first, then the
    default "auto" (which loads the library where the CPU runs it), then "float32"."""
    loaded = {}
    for setting in ("torch", "auto", "float32"):
        settings = load_settings(model={"name": "smollm2-135m-instruct", "threads": 0, "kernels": setting})
        alone = SchedulerSettings(enabled=False)
        loaded[setting] = TransformersModel.load(
            settings.model, settings.model_cache_dir, progress=False, scheduler=alone
        )
    runs = kernels.unsupported() is None and shutil.which("g++") is not None
    try:
        chosen = {setting: kernels_of(model._model) for setting, model in loaded.items()}
        assert chosen["torch"] == Kernels("torch") and not chosen["torch"].ready
        assert chosen["auto"].setting == "auto" and chosen["auto"].ready == runs
        assert chosen["float32"].setting == "float32" and chosen["float32"].ready == runs
        assert not chosen["float32"].bf16 and not chosen["float32"].vnni
        assert chosen["auto"].bf16 == runs
        # `/model` says which kernels, on which path and why.
        notes = {setting: " ".join(model.info.notes) for setting, model in loaded.items()}
        assert 'kernels: torch\'s kernels (model.kernels = "torch")' in notes["torch"]
        if runs:
            assert f"kernels: chinwag's, {chosen['auto'].why}" in notes["auto"]
            assert f'the {chosen["auto"].simd} path (model.simd = "auto"' in notes["auto"]
        for setting, model in loaded.items():
            # Every quantized layer of a model, and its decode step, has the model's own.
            layers = [m for m in model._model.modules() if isinstance(m, QuantizedLinear | ShortlistHead)]
            assert layers and all(layer.kernels is chosen[setting] for layer in layers)
            assert step_for(model._model).kernels is chosen[setting]
        # And each computes with its own: the same input through the same layer of each model.
        q_proj = {setting: model._model.model.layers[0].self_attn.q_proj for setting, model in loaded.items()}
        x = torch.randn(3, q_proj["torch"].in_features, generator=torch.Generator().manual_seed(1))
        out = {setting: layer(x) for setting, layer in q_proj.items()}
        theirs = q_proj["torch"]._matmul(x.to(torch.bfloat16)).float()  # torch's kernel, bf16 inputs
        if q_proj["torch"].bias is not None:
            theirs = theirs + q_proj["torch"].bias
        assert torch.equal(out["torch"], theirs)
        for setting in ("auto", "float32"):
            layer = q_proj[setting]
            assert isinstance(layer, QuantizedLinear)
            if runs:
                stored = layer.vnni() or layer.native()
                assert stored is not None
                assert torch.equal(out[setting], chosen[setting].linear(x, *stored, layer.bias, 16))
                assert not torch.equal(out[setting], out["torch"])
            else:
                assert torch.equal(out[setting], out["torch"])
        if runs and (chosen["auto"].vnni or chosen["auto"].ops.has_bf16()):  # rounded against exact
            assert not torch.equal(out["auto"], out["float32"])
    finally:
        for model in loaded.values():
            model.close()


# ---- The paths against each other --------------------------------------------------------------

PAIRS = [(a, b) for i, a in enumerate(kernels.ISAS) for b in list(kernels.ISAS)[i + 1 :]]


@pytest.fixture(params=PAIRS, ids=["-".join(pair) for pair in PAIRS])
def paths(request: pytest.FixtureRequest, library: Path) -> tuple[Kernels, Kernels]:
    """Two paths this CPU runs, each with `model.kernels = "auto"` (skipped unless both run)."""
    return _path(library, request.param[0]), _path(library, request.param[1])


def test_every_path_computes_the_same_layers_bit_for_bit(paths: tuple[Kernels, Kernels]) -> None:
    """The integer products (int8 and 16-bit activations by the VNNI layouts) are exact in int32 on
    every path and everything after them is the same float32 operations in the same order, so the
    paths agree bit for bit; so do the float32 kernels. (The bf16 products exist only on AVX-512.)"""
    a, b = paths
    x = _rows(9, 192, 21)
    for layer in (_int8(96, 192, 96, a), _int4(128, 192, 128, a, bias=True)):
        stored = layer.vnni()
        assert stored is not None
        for bits in (8, 16):
            assert torch.equal(a.linear(x, *stored, layer.bias, bits), b.linear(x, *stored, layer.bias, bits))
        native = layer.native()
        assert native is not None
        exact_a, exact_b = replace(a, bf16=False), replace(b, bf16=False)
        assert torch.equal(exact_a.linear(x, *native, layer.bias), exact_b.linear(x, *native, layer.bias))


def test_every_path_decodes_a_layer_bit_for_bit(paths: tuple[Kernels, Kernels]) -> None:
    """A whole decoder layer (`decode_layer`: norms, VNNI products, rotary, attention over a float16
    cache, SiLU) gives the same residual stream and cache on every path."""
    g = torch.Generator().manual_seed(5)
    hidden, heads, kv_heads, dim, ffn, rows, column = 128, 4, 2, 32, 256, 3, 40
    shapes = [
        (heads * dim, hidden),
        (kv_heads * dim, hidden),
        (kv_heads * dim, hidden),
        (hidden, heads * dim),
    ]
    shapes += [(ffn, hidden), (ffn, hidden), (hidden, ffn)]
    layers: list[Int8Linear | Int4Linear] = [
        _int8(n, k, i, paths[0], i < 3) if i % 2 else _int4(n, k, i, paths[0], i < 3)
        for i, (n, k) in enumerate(shapes)
    ]
    stored = [layer.vnni() for layer in layers]
    assert all(s is not None for s in stored)
    weights, scales = [s[0] for s in stored if s], [s[1] for s in stored if s]
    biases = [layer.bias for layer in layers]
    bits = [16, 8, 8, 8, 8, 8, 16]
    norms = (torch.rand(hidden, generator=g) + 0.5, torch.rand(hidden, generator=g) + 0.5)
    angles = torch.rand(rows, dim, generator=g) * 6
    x = torch.randn(rows, hidden, generator=g)
    keys = torch.randn(rows, kv_heads, 64, dim, generator=g).half()
    values = torch.randn(rows, kv_heads, 64, dim, generator=g).half()
    out = []
    for chosen in paths:
        state = [x.clone(), keys.clone(), values.clone()]
        chosen.ops.decode_layer(
            state[0], *norms, 1e-6, weights, scales, biases, bits, True, angles.cos(), angles.sin(),
            state[1], state[2], column, [0, 7, 40], heads, kv_heads, dim**-0.5,
        )  # fmt: skip
        out.append(state)
    assert not torch.equal(out[0][0], x)
    for mine, theirs in zip(*out, strict=True):
        assert torch.equal(mine, theirs)


def test_every_path_attends_shortlists_and_chooses_alike(paths: tuple[Kernels, Kernels]) -> None:
    a, b = paths
    g = torch.Generator().manual_seed(9)
    q = torch.randn(6, 20, 64, generator=g)
    keys = torch.randn(2, 150, 64, generator=g).half()
    values = torch.randn(2, 150, 64, generator=g).half()
    assert torch.equal(a.ops.attend(q, keys, values, 100, 0.125), b.ops.attend(q, keys, values, 100, 0.125))
    x, weight = torch.randn(3, 96, generator=g), torch.randn(1000, 96, generator=g)
    estimates = torch.randn(3, 1000, generator=g)
    mine, theirs = estimates.clone(), estimates.clone()
    a.ops.shortlist(mine, x, weight, None, 64)
    b.ops.shortlist(theirs, x, weight, None, 64)
    assert torch.equal(mine, theirs)
    assert a.argmax(estimates) == b.argmax(estimates)


def test_a_forced_path_the_cpu_cannot_run_is_an_error_and_auto_falls_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`model.simd`: a path the CPU lacks is a one-line `KernelError` (before anything is built);
    "auto" takes the best it has, and says why."""
    from bot.errors import KernelError

    monkeypatch.setattr(kernels, "machine", lambda: "x86_64")
    monkeypatch.setattr(kernels, "cpu_flags", lambda: frozenset({"avx", "avx2", "fma", "f16c", "sse4_2"}))
    with pytest.raises(KernelError, match=r"model.simd = 'avx512': the CPU lacks avx512f"):
        Kernels.load("auto", tmp_path / "cache", simd="avx512")
    with pytest.raises(KernelError, match="ARM NEON is for aarch64 CPUs"):
        kernels.choose("neon")
    chosen, why = kernels.choose("auto")
    assert chosen is not None and chosen.name == "avx2" and "AVX2 and FMA" in why
    assert not (tmp_path / "cache").exists()
    monkeypatch.setattr(kernels, "cpu_flags", lambda: frozenset({"avx", "sse4_2"}))
    chosen, why = kernels.choose("auto")
    assert chosen is None and "lacks avx2" in why
    assert not Kernels.load("auto", tmp_path / "cache").ready
    assert Kernels.load("torch", tmp_path / "cache", simd="avx512").setting == "torch"  # not checked
