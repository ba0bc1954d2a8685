"""chinwag's own CPU kernels for the quantized linear layers (`kernels.cpp`), and `Kernels`: which
of them one loaded model uses.

Decoding streams every weight once per token. These kernels read the weights faster than torch's,
take the float32 activations as they are and add the bias in the same pass; `decode_layer` runs a
whole decoder layer of a decode step in one call. They need AVX-512, and a C++ compiler the first
time: the library is kept in the model cache, keyed by its source, the compiler flags and torch's
version (a Docker image builds it in its build stage). Without either, the quantized layers keep
torch's kernels and say so in the log.

Loading the library into torch.ops is process-wide (an op library registers once); the choice of
kernels is not: each loaded model has its own `Kernels`, made from its `model.kernels`, which its
layers and decode step read. It says whether activations are rounded for faster products (int8 in
the decode step and 16 bits for prompts with AVX512-VNNI, bf16 with AVX512-BF16 only), multiplied
exactly in float32, or left to torch's kernels. Each row is rounded on its own, so a reply is the
same whichever others share its steps.
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
from dataclasses import dataclass
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
# Seconds a compilation may take.
COMPILE_TIMEOUT = 300
# `model.kernels` settings whose decode step rounds activations to int8 (where the CPU has VNNI):
# half the products of 16 bits. transformers' forward (16 bits) and the fused step may then round an
# activation to neighbouring levels and their greedy replies part after a while; "int16" keeps them
# in agreement.
INT8_SETTINGS = frozenset({"auto", "int8"})

# Serialises loading the library: torch.ops must not register it twice.
_lock = threading.Lock()


@dataclass(frozen=True)
class Kernels:
    """Which of chinwag's kernels one loaded model uses (its layers and its decode step read it).

    Made from the model's `model.kernels` when it loads (`Kernels.load`); `TORCH` (torch's kernels
    throughout) otherwise.
    """

    # The `model.kernels` setting it was made from.
    setting: str = "torch"
    # Whether the layers use chinwag's kernels: the library is loaded and this CPU runs it.
    ready: bool = False
    # Whether int8 and int4 layers without a VNNI copy multiply bf16 activations (where the CPU has
    # AVX512-BF16; the library checks it on every call) rather than float32.
    bf16: bool = False
    # Whether the layers with a copy of their weights laid out for the VNNI kernel multiply by it,
    # and the output head estimates its shortlist with int8 activations (AVX512-VNNI).
    vnni: bool = False
    # Whether the decode step rounds those layers' activations to int8 rather than 16 bits (see
    # `activation_bits` in bot/inference/quantize.py).
    int8: bool = False

    @classmethod
    def load(cls, setting: str, cache_dir: Path, progress: bool = False) -> Kernels:
        """The kernels `setting` (`model.kernels`) asks for, as far as this machine runs them: the
        library is built (the first time, into `cache_dir`) and loaded unless `setting` is "torch".
        Never raises: a machine that cannot build or run them keeps torch's kernels."""
        if setting == "torch" or not load_library(cache_dir, progress):
            return cls(setting)
        rounded = setting != "float32"
        vnni = rounded and bool(torch.ops.chinwag.has_vnni())
        return cls(setting, ready=True, bf16=rounded, vnni=vnni, int8=vnni and setting in INT8_SETTINGS)

    def linear(self, x: Any, weight: Any, scales: Any, bias: Any, bits: int = 16) -> Any:
        """x float32 [M, K] by a quantized weight (int8 [N, K] with bf16 scales [N], int4 in torch's
        CPU packed layout with its scales and zeros, or either laid out for the VNNI kernel, whose
        activations are rounded to `bits`, 8 or 16), plus bias: float32 [M, N]. By chinwag's kernel
        (the caller checks `ready`)."""
        return torch.ops.chinwag.linear(x, weight, scales, bias, bits, self.bf16)

    def argmax(self, logits: Any) -> list[int]:
        """Each row's best index, as `logits.argmax(-1)` chooses it (the first largest; a NaN first):
        by chinwag's kernel where in use and the logits are float32 rows, else by torch."""
        if self.ready and logits.dtype == torch.float32 and logits.dim() == 2 and logits.stride(1) == 1:
            return list(torch.ops.chinwag.argmax(logits).tolist())
        return list(logits.argmax(-1).tolist())


# torch's kernels throughout: what a model uses until it is given its own.
TORCH = Kernels()


def load_library(cache_dir: Path, progress: bool = False) -> bool:
    """Build (the first time, into `cache_dir`) and load the library into torch.ops, once per
    process; whether it is loaded and this CPU runs it. Never raises: says why not in the log."""
    with _lock:
        if _registered():  # loaded before, from this or another cache
            return True
        reason = unsupported()
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


def prepare(cache_dir: Path, progress: bool = False) -> str:
    """Build the library into `cache_dir` even if this CPU cannot run it (an image's build stage may
    run on another machine than the image); what became of it, in a sentence."""
    try:
        build(cache_dir, progress)
    except KernelError as error:
        return f"chinwag's CPU kernels were not built ({error}); torch's kernels will be used."
    reason = unsupported()
    if reason:
        return f"chinwag's CPU kernels are built, but {reason}: torch's kernels will be used here."
    return "chinwag's CPU kernels are ready."


class KernelError(Exception):
    """The kernels could not be built."""


def build(cache_dir: Path, progress: bool = False) -> Path:
    """The compiled library in `cache_dir/kernels`, compiled now if it is not there yet."""
    from bot.inference.weights import locked, say

    target = cache_dir / "kernels" / f"chinwag-kernels-{_key()}.so"
    if target.is_file():  # built before, maybe elsewhere (a Docker image's build stage)
        return target
    cxx = compiler()
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.parent / ".build.lock"):
        if target.is_file():
            return target
        say(progress, "Compiling chinwag's CPU kernels; this happens once.")
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            command = compile_command(cxx, built)
            try:
                result = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired) as error:
                raise KernelError(f"{cxx} failed: {error}") from error
            if result.returncode != 0:
                lines = [line for line in result.stderr.splitlines() if "error" in line][:3]
                raise KernelError(f"{cxx} failed: {' / '.join(lines) or result.stderr[-300:]}")
            os.replace(built, target)
        log.info("compiled %s in %.1f s", target.name, time.perf_counter() - started)
    return target


def compile_command(cxx: str, output: Path) -> list[str]:
    """The command that compiles the library into `output` with the compiler `cxx`."""
    return [cxx, *FLAGS, *_torch_flags(), str(SOURCE), "-o", str(output), *_torch_libraries()]


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


def unsupported() -> str | None:
    """Why this machine cannot use the kernels, or None."""
    flags = cpu_flags()
    if flags is None:
        return "the CPU's features are unknown (no /proc/cpuinfo)"
    missing = [flag for flag in CPU_FLAGS if flag not in flags]
    return f"the CPU lacks {', '.join(missing)}" if missing else None


def compiler() -> str:
    """The C++ compiler to build the library with ($CXX, else the first of g++, c++, clang++)."""
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
    # share torch's threads instead of starting a second pool that would fight it for the cores.
    from torch.utils.cpp_extension import library_paths

    lib = library_paths()[0]
    return [f"-L{lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}"]
