"""Weight-only quantization: the layers' arithmetic, the stored copy, and the real small model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bot.errors import ModelError
from bot.inference.local import TransformersModel, resolve_quantization
from bot.inference.quantize import (
    GROUP,
    INT4_LAYERS,
    INT4_PREFILL_ROWS,
    PREFILL_ROWS,
    Int4Linear,
    Int8Linear,
    ShortlistHead,
    available,
    int4_layout,
    load_quantized,
    native_bf16,
    on_4bit_grid,
    pack_int4_blocks,
    repack_int4_32_to_64,
    unpack_int4,
)
from bot.types import ChatMessage
from config import load_settings

needs_kernels = pytest.mark.skipif(
    not (available("int4", "cpu") and available("int8", "cpu")), reason="this torch lacks the CPU kernels"
)


def _dequantized(layer: torch.nn.Module, in_features: int) -> torch.Tensor:
    """The weight a quantized layer multiplies by, read back through its own kernel (x = identity,
    fed in fewer rows than a prompt's, which an int8 layer multiplies by its expanded weight): a new
    layer's kernels are torch's (`TORCH`), whose bf16 inputs hold 1.0 exactly."""
    eye = torch.eye(in_features, dtype=torch.float32)
    rows = [layer(eye[i : i + PREFILL_ROWS // 2]) for i in range(0, in_features, PREFILL_ROWS // 2)]
    return torch.cat(rows).T  # [out, in]


@needs_kernels
@pytest.mark.parametrize("bias", [False, True])
def test_int4_layer_rounds_each_weight_to_its_groups_grid(bias: bool) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 48, bias=bias)
    layer = Int4Linear(128, 48, bias, torch.float32)
    layer.quantize(linear.weight)
    if bias:
        layer.bias = linear.bias.detach().clone()
    recovered = _dequantized(layer, 128) - (
        layer.bias[:, None] if isinstance(layer.bias, torch.Tensor) else 0
    )
    groups = linear.weight.detach().reshape(48, -1, GROUP)
    step = (groups.amax(-1) - groups.amin(-1)) / 15  # [out, groups]
    error = (recovered - linear.weight.detach()).abs().reshape(48, -1, GROUP)
    # Half a step of rounding, plus the bf16 rounding of the stored scale and zero point.
    assert bool((error <= step[..., None] * 0.5 + step[..., None] * 0.05 + 1e-3).all())
    x = torch.randn(3, 5, 128)
    assert layer(x).shape == (3, 5, 48)
    expected = linear(x).detach()
    assert float((layer(x) - expected).norm() / expected.norm()) < 0.1


@needs_kernels
def test_weights_already_on_a_4bit_grid_are_stored_without_loss() -> None:
    # As a 4-bit GGUF dequantizes: per group of 32, an offset plus a step times 0..15.
    torch.manual_seed(2)
    steps = 2.0 ** torch.randint(-9, -4, (16, 4, 1)).float()
    lows = -steps * torch.randint(0, 16, (16, 4, 1)).float()
    levels = torch.randint(0, 16, (16, 4, GROUP)).float()
    weight = (lows + steps * levels).reshape(16, 4 * GROUP)
    step, low, fits = on_4bit_grid(weight.reshape(-1, GROUP))
    assert bool(fits.all())
    assert torch.equal(step, steps.reshape(-1))
    assert torch.equal(low, weight.reshape(-1, GROUP).amin(dim=1))
    layer = Int4Linear(4 * GROUP, 16, False, torch.float32)
    layer.quantize(weight)
    assert torch.equal(_dequantized(layer, 4 * GROUP), weight)
    # Not on a grid (more than 16 levels): fitted to the range instead, and reported so.
    noisy = weight + torch.rand_like(weight) * 1e-3
    assert not bool(on_4bit_grid(noisy.reshape(-1, GROUP))[2].any())


@needs_kernels
def test_int8_layer_keeps_each_weight_within_half_a_step_of_its_row() -> None:
    torch.manual_seed(1)
    linear = torch.nn.Linear(64, 40, bias=False)
    layer = Int8Linear(64, 40, False, torch.float32)
    layer.quantize(linear.weight)
    recovered = _dequantized(layer, 64)
    step = linear.weight.detach().abs().amax(1, keepdim=True) / 127
    # Half a step, plus the bf16 rounding of the kernel's output we read the weights back through.
    bound = step * 0.51 + linear.weight.detach().abs() * 2**-8
    assert bool(((recovered - linear.weight.detach()).abs() <= bound).all())


@needs_kernels
def test_an_int8_layer_gives_the_same_product_through_its_kernel_and_expanded() -> None:
    # A prompt's many rows go through the weight expanded (to bf16 where the CPU has bf16
    # arithmetic, else float32), a reply's few through the kernel: the same weights either way,
    # only the rounding of inputs and outputs differs.
    torch.manual_seed(3)
    layer = Int8Linear(256, 96, False, torch.float32)
    layer.quantize(torch.randn(96, 256) * 0.05)
    x = torch.randn(PREFILL_ROWS + 8, 256)
    many = layer(x)
    few = torch.cat([layer(x[i : i + 4]) for i in range(0, len(x), 4)])
    expanded = x @ (layer.weight.float() * layer.scales.float()[:, None]).T
    if native_bf16():
        assert float((many - expanded).norm() / expanded.norm()) < 0.01
    else:
        assert torch.equal(many, expanded)
    assert float((few - many).norm() / many.norm()) < 0.01


@needs_kernels
def test_an_int4_layers_weights_unpack_from_the_kernels_layout_exactly() -> None:
    # torch packs int4 weights by the instructions its CPU code runs: blocks of 64 channels with
    # AVX-512, 32 with AVX2, pairs without vector code. The layout read must be this machine's.
    capability = torch.backends.cpu.get_cpu_capability()
    assert int4_layout() == (64 if capability.startswith("AVX512") else 32 if capability == "AVX2" else 0)
    torch.manual_seed(7)
    layer = Int4Linear(256, 192, False, torch.float32)
    layer.quantize(torch.randn(192, 256) * 0.05)
    # The kernel's product with the identity is the weight (rounded to bf16, as unpacked is).
    through_kernel = layer._matmul(torch.eye(256, dtype=torch.bfloat16)).t()
    assert torch.equal(layer.unpacked(), through_kernel)
    x = torch.randn(INT4_PREFILL_ROWS, 256)
    many = layer(x)  # unpacked and multiplied in bf16 where the CPU does bf16 arithmetic
    few = torch.cat([layer(x[i : i + 8]) for i in range(0, len(x), 8)])
    assert float((few - many).norm() / many.norm()) < 0.01


@needs_kernels
@pytest.mark.parametrize("tied", [True, False])
def test_the_output_head_computes_its_best_candidates_exactly(tied: bool) -> None:
    torch.manual_seed(4)
    linear = torch.nn.Linear(128, 4096, bias=True)
    head = ShortlistHead(128, 4096, True, torch.float32)
    head.quantize(linear.weight, tied)
    head.bias = linear.bias.detach().clone()
    # Tied to the input embedding: its float32 weights; untied: a bf16 copy.
    tolerance = 1e-5 if tied else 2e-2
    x = torch.randn(6, 128)
    exact = linear(x).detach()
    logits = head(x)
    best = exact.topk(8, dim=-1).indices
    # The float32 model's best candidates get their exact logits, so the same winner.
    assert torch.allclose(logits.gather(-1, best), exact.gather(-1, best), atol=tolerance)
    assert torch.equal(logits.argmax(-1), exact.argmax(-1))
    # The others keep int4's estimate.
    assert float((logits - exact).norm() / exact.norm()) < 0.1
    # A whole prompt's logits (many rows) are exact throughout.
    many = torch.randn(40, 128)
    assert torch.allclose(head(many), linear(many).detach(), atol=tolerance)


@needs_kernels
@pytest.mark.slow
def test_mixed_stores_the_mlp_input_projections_and_4bit_layers_as_int4_the_rest_as_int8() -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from bot.inference.quantize import quantize_model

    torch.manual_seed(5)
    config = Qwen2Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(config)
    on_grid = model.model.layers[1].self_attn.o_proj
    with torch.no_grad():  # a layer that came from a 4-bit GGUF: each group of 32 on a 16-level grid
        levels = torch.randint(0, 16, on_grid.weight.shape).float()
        on_grid.weight.copy_(levels * 0.01 - 0.07)
    quantize_model(model, "mixed")
    kinds = {
        name: type(module).__name__
        for name, module in model.named_modules()
        if name.startswith("model.layers") and name.endswith("proj")
    }
    assert {n for n, k in kinds.items() if k == "Int4Linear"} == {
        *(f"model.layers.{i}.mlp.{p}" for i in range(2) for p in INT4_LAYERS),
        "model.layers.1.self_attn.o_proj",
    }
    assert {k for n, k in kinds.items() if k != "Int4Linear"} == {"Int8Linear"}
    assert isinstance(model.lm_head, ShortlistHead)


def test_a_quantization_that_cannot_run_on_the_device_is_refused() -> None:
    with pytest.raises(ModelError, match="CPU only"):
        resolve_quantization("int4", "cuda")
    assert resolve_quantization("none", "cpu") is None
    assert resolve_quantization("auto", "cuda") is None


@pytest.mark.model
@needs_kernels
def test_the_small_model_quantized_keeps_its_answers_and_loads_from_the_stored_copy(tmp_path: Path) -> None:
    assert resolve_quantization("auto", "cpu") == "mixed"
    settings = load_settings(model={"name": "smollm2-135m-instruct", "quantization": "none"})
    full = TransformersModel.load(settings.model, settings.model_cache_dir, progress=False)
    source = Path(full._model.name_or_path)
    cache = tmp_path / "cache"

    # SmolLM2 ships as Q4_1: every layer is on a 4-bit grid, so "mixed" stores them all as int4.
    first = load_quantized(source, "mixed", cache, progress=False)
    kinds = {type(m).__name__ for name, m in first.named_modules() if name.startswith("model.layers")}
    assert "Int4Linear" in kinds and "Int8Linear" not in kinds and "Linear" not in kinds
    assert isinstance(first.lm_head, ShortlistHead)
    # The head's float32 weights are the tied input embedding's, stored once.
    assert first.lm_head.weight.data_ptr() == first.model.embed_tokens.weight.data_ptr()
    stored = sorted((cache / "quantized").iterdir())
    assert len([p for p in stored if p.is_dir()]) == 1
    second = load_quantized(source, "mixed", cache, progress=False)  # from the stored copy
    assert [type(m) for m in second.modules()] == [type(m) for m in first.modules()]
    assert all(t.device.type == "cpu" for t in second.state_dict().values())

    prompts = [
        "What is the capital of France?",
        "Name a colour of the sky.",
        "Say hello.",
        "What is 2 + 3?",
        "Write one word that rhymes with cat.",
    ]
    divergence = 0.0
    with torch.inference_mode():
        for text in prompts:
            ids = torch.tensor([full._encode([ChatMessage("user", text)], None)])
            reference = full._model(input_ids=ids).logits[0, -1].float().log_softmax(-1)
            a = first(input_ids=ids).logits[0, -1]
            b = second(input_ids=ids).logits[0, -1]
            # The copy loaded from disk is the same network as the one quantized in memory.
            assert torch.equal(a, b)
            ours = a.float().log_softmax(-1)
            divergence += float((reference.exp() * (reference - ours)).sum())
    # Next-token distributions stay close to the full model's (measured: about 0.003 nats; a
    # wrongly packed layer gives several nats). SmolLM2 ships as 4-bit, so its layers are exact.
    assert divergence / len(prompts) < 0.02
    full.close()


@pytest.mark.model
@needs_kernels
def test_a_changed_source_is_quantized_again(tmp_path: Path) -> None:
    settings = load_settings(model={"name": "smollm2-135m-instruct", "quantization": "none"})
    full = TransformersModel.load(settings.model, settings.model_cache_dir, progress=False)
    original = Path(full._model.name_or_path)
    full.close()
    source = tmp_path / "model"
    source.mkdir()
    for path in original.iterdir():
        if path.is_file():
            os.symlink(path, source / path.name)
    cache = tmp_path / "cache"
    load_quantized(source, "int8", cache, progress=False)
    marker = next((cache / "quantized").glob("*/chinwag-quantized.json"))
    before = marker.stat().st_mtime_ns
    load_quantized(source, "int8", cache, progress=False)
    assert marker.stat().st_mtime_ns == before  # reused
    # New weights (here: a config edited) make the stored copy stale.
    config = source / "config.json"
    text = config.read_text()
    config.unlink()
    config.write_text(text)
    os.utime(config, (1, 1))
    load_quantized(source, "int8", cache, progress=False)
    marker = next((cache / "quantized").glob("*/chinwag-quantized.json"))
    assert marker.stat().st_mtime_ns != before


@pytest.mark.model
@needs_kernels
def test_quantizing_says_so_on_stderr_never_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # stdout may be `chinwag ask --json`, read by a program.
    settings = load_settings(model={"name": "smollm2-135m-instruct", "quantization": "none"})
    full = TransformersModel.load(settings.model, settings.model_cache_dir, progress=False)
    source = Path(full._model.name_or_path)
    full.close()
    capsys.readouterr()
    load_quantized(source, "mixed", tmp_path / "cache", progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "Quantizing the model's weights to int4/int8" in err


@pytest.mark.model
def test_quantizing_runs_in_a_thread_that_ends_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's parallel operations leave OpenMP workers to the thread that ran them, and with more
    of those than CPUs every pool sleeps between parallel regions: decoding after quantizing in the
    same process ran markedly slower. So the quantizing thread must end."""
    import threading

    from bot.inference import quantize
    from bot.inference.weights import prepare_model

    settings = load_settings(model={"name": "smollm2-135m-instruct"})
    source = prepare_model(settings.model, settings.model_cache_dir, progress=False)
    ran: list[threading.Thread] = []
    real = quantize._prepare

    def spied(*args: object) -> None:
        ran.append(threading.current_thread())
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(quantize, "_prepare", spied)
    target = quantize.prepare_quantized(source, "mixed", tmp_path, progress=False)
    assert (target / quantize.WEIGHTS).is_file()
    assert len(ran) == 1 and ran[0] is not threading.current_thread() and not ran[0].is_alive()


def test_work_run_apart_gives_its_result_or_its_error() -> None:
    from bot.threads import run_apart

    assert run_apart(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(ZeroDivisionError):
        run_apart(lambda: 1 / 0)


def test_int4_weights_packed_for_avx2_are_repacked_into_the_kernels_layout() -> None:
    """torch packs blocks of 32 channels with AVX2 (byte c: channels c and c + 16), the kernels read
    blocks of 64 (c and c + 32): the repacked bytes hold the same levels, on any CPU."""
    n, k = 192, 96
    levels = torch.randint(0, 16, (n, k), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    blocks = levels.reshape(n // 32, 32, k).transpose(1, 2)  # [n / 32, k, 32]
    avx2 = (blocks[..., :16] | (blocks[..., 16:] << 4)).contiguous().view(n, k // 2)
    assert torch.equal(unpack_int4(avx2, n, k, 32), levels)
    repacked = repack_int4_32_to_64(avx2, n, k)
    assert torch.equal(unpack_int4(repacked, n, k, 64), levels)
    assert torch.equal(repacked, pack_int4_blocks(levels))
