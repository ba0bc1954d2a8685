"""chinwag's own CPU kernels for the quantized linear layers (`kernels.cpp`), built once per machine.

Decoding streams every weight once per token. torch's int8 and int4 CPU kernels read them at 15 and
20 GB/s from memory on 2 cores where a plain sum reads at 36, and they take bf16 inputs, so every
layer also converted its input and output. Ours read the weights faster, take the float32
activations as they are, add the bias in the same pass and, on CPUs with AVX512-BF16, multiply in
bf16 (twice the products per instruction: several replies at once are bound by the products).
They need AVX-512, and a C++ compiler the first time: the shared library is kept in the model
cache, keyed by its source, the compiler flags and torch's version (a Docker image builds it in its
build stage and needs no compiler at run time). Without either, the quantized layers keep torch's
kernels and say so once in the log.

`decode_layer` runs a whole decoder layer of a decode step in one call (`bot/decoder.py`): the
about 45 torch calls per layer it replaces, from Python, took a quarter of a one-reply step.

On CPUs with AVX512-VNNI every layer that has a copy of its weights laid out for vpdpbusd (64
byte products per instruction, no conversion of the weights) multiplies its activations rounded
with one scale per group of inputs (as llama.cpp's Q8_0 does). The decode step (`decode_layer`,
one token per reply) rounds them to int8 with a scale per 32 inputs (64 products per
instruction; as llama.cpp does for its quantized weights), but for the MLP's down projection
(`WIDE_INPUT_LAYERS`). Those, and prompts being encoded (`linear`, many rows), keep 16 bits: two
bytes each multiplied by the weights (as many products per instruction as vdpbf16ps, about 60
times closer to the exact product than bf16 activations; a scale per 128 inputs of int8 layers,
per weight group of int4 ones). A layer's queries, keys and values (and its gate and up
projections) share one rounding and one parallel pass. The output head's shortlist is estimated
with int8 activations wherever the CPU has VNNI, and `shortlist` finds its largest estimates and
computes their exact logits in one pass.

Why the decode step and not prompts: 8 replies decoding at once are bound by the products, and
int8 halves them (8 at once went from about 3 to about 4 times one reply's tokens per second); a
prompt's many tokens go through the weights expanded for one plain matmul from 32 tokens on, and
its keys and values stay with the conversation, so they keep the closer rounding. Each row is
rounded on its own, so a reply is the same whichever others share its steps. What int8 gives up:
transformers' own forward (the layers' `forward`, 16 bits) and the fused step can then round an
activation to neighbouring levels, so their greedy replies may part after some dozens of tokens
(the 135M SmolLM2's do); `model.kernels = "int16"` keeps 16 bits everywhere, where the two agree.

`model.kernels`: "auto" rounds as above on CPUs with AVX512-VNNI, to bf16 on CPUs with
AVX512-BF16 but not VNNI (as torch's kernels do), and multiplies in float32 elsewhere; "int8" is
"auto" by its other name; "int16" keeps 16 bits in the decode step too (AVX512-VNNI); "float32"
always multiplies in float32 (exact activations; slower beyond one reply at a time); "torch" turns
them off (to compare, or if they misbehave).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.cpp")
# Instruction sets the library is compiled for; a CPU lacking any of them keeps torch's kernels.
CPU_FLAGS = ("avx512f", "avx512bw", "avx512dq", "avx512vl", "fma")
FLAGS = (
    "-O3",
    "-std=c++20",
    "-shared",
    "-fPIC",
    "-fopenmp",
    # Every warning in our code (torch's headers come in by -isystem: theirs are not ours to fix).
    "-Wall",
    "-Wextra",
    *(f"-m{flag}" for flag in CPU_FLAGS),
    # The int4 kernel's bf16 variant runs only where the CPU has AVX512-BF16 (checked at run time).
    "-mavx512bf16",
)
# Seconds a compilation may take (about 7 s here).
COMPILE_TIMEOUT = 300

# Whether the layers use the kernels; they read it on every call.
ready = False
# Whether the VNNI kernel is in use (kernels in use with rounded activations, and a CPU with
# AVX512-VNNI): the layers with a VNNI copy multiply by it, and the output head estimates its
# shortlist with int8 activations.
vnni = False
# Whether the decode step rounds those layers' activations to int8 rather than 16 bits (`model.kernels`
# "auto" or "int8"; see `activation_bits` in bot/quantize.py).
int8 = False
# Whether the library is loaded into this process (None: not tried yet).
_loaded: bool | None = None
_lock = threading.Lock()


def enable(cache_dir: Path, progress: bool = False, bf16: bool = True, activations8: bool = False) -> bool:
    """Build (the first time, into `cache_dir`) and load the kernels; whether they are in use.

    `bf16`: round the activations where the CPU allows faster products: to 16 bits by the VNNI
    kernel where it has AVX512-VNNI (in the decode step to int8 with `activations8`, but for
    `WIDE_INPUT_LAYERS`; the output head's shortlist with int8 activations), to bf16 where it has
    AVX512-BF16 (as torch's kernels do; twice the products of float32); else, and without `bf16`,
    multiply in float32.
    Never raises: a machine that cannot build or run them keeps torch's kernels.
    """
    global ready, vnni, int8, _loaded
    with _lock:
        if _loaded is None:
            _loaded = _load(cache_dir, progress)
        ready = _loaded
        vnni = int8 = False
        if ready:
            torch.ops.chinwag.use_bf16(bf16)
            vnni = bf16 and bool(torch.ops.chinwag.has_vnni())
            int8 = vnni and activations8
        return ready


def prepare(cache_dir: Path, progress: bool = False) -> str:
    """Build the library into `cache_dir` even if this CPU cannot run it (an image's build stage may
    run on another machine than the image); what became of it, in a sentence."""
    try:
        build(cache_dir, progress)
    except KernelError as error:
        return f"chinwag's CPU kernels were not built ({error}); torch's kernels will be used."
    reason = _unsupported()
    if reason:
        return f"chinwag's CPU kernels are built, but {reason}: torch's kernels will be used here."
    return "chinwag's CPU kernels are ready."


def disable() -> None:
    """Use torch's kernels from now on (the library stays loaded)."""
    global ready, vnni, int8
    ready = vnni = int8 = False


def _load(cache_dir: Path, progress: bool) -> bool:
    if _registered():  # loaded before, from this or another cache
        return True
    reason = _unsupported()
    if reason is None:
        try:
            torch.ops.load_library(str(build(cache_dir, progress)))
            return True
        except KernelError as error:
            reason = str(error)
        except (OSError, RuntimeError) as error:
            reason = f"the built library did not load: {error}"
    log.info("using torch's quantized kernels: %s", reason)
    return False


class KernelError(Exception):
    """The kernels could not be built."""


def build(cache_dir: Path, progress: bool = False) -> Path:
    """The compiled library in `cache_dir/kernels`, compiled now if it is not there yet."""
    from bot.inference.weights import locked, say

    target = cache_dir / "kernels" / f"chinwag-kernels-{_key()}.so"
    if target.is_file():  # built before, maybe elsewhere (a Docker image's build stage)
        return target
    compiler = _compiler()
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.parent / ".build.lock"):
        if target.is_file():
            return target
        say(progress, "Compiling chinwag's CPU kernels; this happens once.")
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            command = [compiler, *FLAGS, *_torch_flags(), str(SOURCE), "-o", str(built), *_torch_libraries()]
            try:
                result = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired) as error:
                raise KernelError(f"{compiler} failed: {error}") from error
            if result.returncode != 0:
                lines = [line for line in result.stderr.splitlines() if "error" in line][:3]
                raise KernelError(f"{compiler} failed: {' / '.join(lines) or result.stderr[-300:]}")
            os.replace(built, target)
        log.info("compiled %s in %.1f s", target.name, time.perf_counter() - started)
    return target


def linear(x: Any, weight: Any, scales: Any, bias: Any, bits: int = 16) -> Any:
    """x float32 [M, K] by a quantized weight (int8 [N, K] with bf16 scales [N], int4 in torch's
    CPU packed layout with its scales and zeros, or either laid out for the VNNI kernel, whose
    activations are rounded to `bits`, 8 or 16), plus bias: float32 [M, N]."""
    return torch.ops.chinwag.linear(x, weight, scales, bias, bits)


def argmax(logits: Any) -> list[int]:
    """Each row's best index, as `logits.argmax(-1)` chooses it (the first largest; a NaN first):
    by chinwag's kernel where in use and the logits are float32 rows, else by torch."""
    if ready and logits.dtype == torch.float32 and logits.dim() == 2 and logits.stride(1) == 1:
        return list(torch.ops.chinwag.argmax(logits).tolist())
    return list(logits.argmax(-1).tolist())


def _registered() -> bool:
    return hasattr(torch.ops.chinwag, "linear")


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags (/proc/cpuinfo), or None where they cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _unsupported() -> str | None:
    """Why this machine cannot use the kernels, or None."""
    flags = cpu_flags()
    if flags is None:
        return "the CPU's features are unknown (no /proc/cpuinfo)"
    missing = [flag for flag in CPU_FLAGS if flag not in flags]
    return f"the CPU lacks {', '.join(missing)}" if missing else None


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    raise KernelError("no C++ compiler found (install g++ to build them)")


def _key() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join([*FLAGS, torch.__version__]).encode())
    return digest.hexdigest()[:16]


def _torch_flags() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    return [
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        *(f"-isystem{p}" for p in include_paths()),
    ]


def _torch_libraries() -> list[str]:
    # torch's own lib directory first: it holds the OpenMP runtime torch itself uses, so the kernels
    # share torch's threads instead of starting a second pool that would fight it for the 2 cores.
    from torch.utils.cpp_extension import library_paths

    lib = library_paths()[0]
    return [f"-L{lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}"]
