"""chinwag's own CPU kernels for the quantized linear layers (`kernels.cpp`), and `Kernels`: which
of them one loaded model uses.

Decoding streams every weight once per token. These kernels read the weights faster than torch's,
take the float32 activations as they are and add the bias in the same pass; `decode_layer` runs a
whole decoder layer of a decode step in one call. They are written once, in the vectors of
`simd.h`, and compiled once per instruction set (a *path*: AVX-512, AVX2 + FMA, ARM NEON) into its
own library with its own flags, registered as `torch.ops.chinwag_<path>`. `model.simd` chooses the
path ("auto": the best this CPU runs). A C++ compiler is needed the first time: each library is kept
in the model cache, keyed by its source, flags and torch's version (a Docker image builds them in
its build stage). Without a compiler or a path this CPU runs, the quantized layers keep torch's
kernels and say so in the log; a path forced by `model.simd` that cannot run is an error.

Loading a library into torch.ops is process-wide (an op library registers once); the choice of
kernels is not: each loaded model has its own `Kernels`, made from its `model.kernels` and
`model.simd`, which its layers and decode step read. It says which path runs, whether activations
are rounded for faster products (int8 in the decode step and 16 bits for prompts where the path has
integer dot products: AVX512-VNNI, AVX2, NEON; bf16 with AVX512-BF16 only), multiplied exactly in
float32, or left to torch's kernels. Each row is rounded on its own, so a reply is the same whichever
others share its steps.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bot import errors

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.cpp")
# The kernels' vectors, one definition per instruction set (part of the library's key).
HEADER = Path(__file__).with_name("simd.h")
FLAGS = (
    "-O3",
    "-std=c++20",
    "-shared",
    "-fPIC",
    "-fopenmp",
    # Each library keeps its own copies of inline code: one compiled for AVX-512 must never serve
    # another path's library in the same process.
    "-fvisibility=hidden",
    "-fvisibility-inlines-hidden",
    # Every warning in our code (torch's headers come in by -isystem: theirs are not ours to fix).
    "-Wall",
    "-Wextra",
)


@dataclass(frozen=True)
class Isa:
    """One path: the CPU features it needs (as /proc/cpuinfo names them) and its compiler flags."""

    name: str
    machine: str  # "x86_64" or "aarch64"
    needs: tuple[str, ...]
    flags: tuple[str, ...]
    # What it is, for the messages ("AVX2 and FMA").
    title: str


# The paths in the order "auto" prefers them on their machine.
ISAS = {
    isa.name: isa
    for isa in (
        Isa(
            "avx512",
            "x86_64",
            ("avx512f", "avx512bw", "avx512dq", "avx512vl", "fma", "f16c"),
            # The bf16 and VNNI variants run only where the CPU has them (checked at run time).
            ("-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-mf16c", "-mavx512bf16"),
            "AVX-512",
        ),
        Isa("avx2", "x86_64", ("avx2", "fma", "f16c"), ("-mavx2", "-mfma", "-mf16c"), "AVX2 and FMA"),
        # sdot (the dot-product extension, `asimddp`) where the CPU has it: see `isa_flags`.
        Isa("neon", "aarch64", ("asimd",), ("-march=armv8-a",), "ARM NEON"),
    )
}
SIMD_SETTINGS = ("auto", *ISAS)
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
    # The path whose library the layers call ("avx512", "avx2", "neon"; "" with torch's kernels),
    # and why that one, or why none, in a sentence (`/model`, `chinwag prepare`).
    simd: str = ""
    why: str = 'torch\'s kernels (model.kernels = "torch")'
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
    def load(cls, setting: str, cache_dir: Path, progress: bool = False, simd: str = "auto") -> Kernels:
        """The kernels `setting` (`model.kernels`) asks for on the path `simd` (`model.simd`), as far
        as this machine runs them: the library is built (the first time, into `cache_dir`) and
        loaded unless `setting` is "torch". A machine that cannot build or run any path keeps
        torch's kernels; a path forced by `simd` that cannot run raises `bot.errors.KernelError`."""
        if setting == "torch":
            return cls(setting)
        isa, why = choose(simd)
        if isa is None:
            return cls(setting, why=f"torch's kernels: {why}")
        loaded = load_library(isa, cache_dir, progress)
        if loaded is not None:
            if simd != "auto":
                raise errors.KernelError(f"model.simd = {simd!r}, but its kernels do not load here: {loaded}")
            return cls(setting, why=f"torch's kernels: {loaded}")
        ops = getattr(torch.ops, f"chinwag_{isa.name}")
        rounded = setting != "float32"
        vnni = rounded and bool(ops.has_vnni())
        return cls(
            setting,
            ready=True,
            bf16=rounded,
            vnni=vnni,
            int8=vnni and setting in INT8_SETTINGS,
            simd=isa.name,
            why=why,
        )

    @property
    def ops(self) -> Any:
        """The torch.ops namespace of this path's library (`ready` only)."""
        return getattr(torch.ops, f"chinwag_{self.simd}")

    def linear(self, x: Any, weight: Any, scales: Any, bias: Any, bits: int = 16) -> Any:
        """x float32 [M, K] by a quantized weight (int8 [N, K] with bf16 scales [N], int4 in torch's
        CPU packed layout with its scales and zeros, or either laid out for the VNNI kernel, whose
        activations are rounded to `bits`, 8 or 16), plus bias: float32 [M, N]. By chinwag's kernel
        (the caller checks `ready`)."""
        return self.ops.linear(x, weight, scales, bias, bits, self.bf16)

    def argmax(self, logits: Any) -> list[int]:
        """Each row's best index, as `logits.argmax(-1)` chooses it (the first largest; a NaN first):
        by chinwag's kernel where in use and the logits are float32 rows, else by torch."""
        if self.ready and logits.dtype == torch.float32 and logits.dim() == 2 and logits.stride(1) == 1:
            return list(self.ops.argmax(logits).tolist())
        return list(logits.argmax(-1).tolist())


# torch's kernels throughout: what a model uses until it is given its own.
TORCH = Kernels()


def choose(simd: str = "auto") -> tuple[Isa | None, str]:
    """The path `simd` (`model.simd`) asks for on this CPU, and why, in a few words; with "auto",
    None when this CPU runs none. Raises `bot.errors.KernelError` for a forced path it cannot run."""
    flags = cpu_flags()
    if simd != "auto":
        isa = ISAS.get(simd)
        if isa is None:
            raise errors.KernelError(f"model.simd = {simd!r}: not one of {', '.join(SIMD_SETTINGS)}")
        reason = _cannot_run(isa, flags)
        if reason:
            raise errors.KernelError(f"model.simd = {simd!r}: {reason}")
        return isa, f"the {simd} path (forced by model.simd)"
    reasons = []
    for isa in ISAS.values():
        reason = _cannot_run(isa, flags)
        if reason is None:
            return isa, f'the {isa.name} path (model.simd = "auto": this CPU has {isa.title})'
        if isa.machine == machine():
            reasons.append(reason)
    return None, "; ".join(reasons) or f"no path of chinwag's kernels for {machine() or 'this machine'}"


def _cannot_run(isa: Isa, flags: frozenset[str] | None) -> str | None:
    if isa.machine != machine():
        return f"{isa.title} is for {isa.machine} CPUs, and this one is {machine() or 'unknown'}"
    if flags is None:
        return "the CPU's features are unknown (no /proc/cpuinfo)"
    missing = [flag for flag in isa.needs if flag not in flags]
    return f"the CPU lacks {', '.join(missing)} ({isa.title})" if missing else None


def machine() -> str:
    """The CPU's architecture as the paths name it ("x86_64", "aarch64")."""
    name = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(name, name)


def load_library(isa: Isa, cache_dir: Path, progress: bool = False) -> str | None:
    """Build (the first time, into `cache_dir`) and load `isa`'s library into torch.ops, once per
    process; None when it is loaded, else why not (also in the log). Never raises."""
    with _lock:
        if _registered(isa):  # loaded before, from this or another cache
            return None
        try:
            torch.ops.load_library(str(build(cache_dir, progress, isa)))
            return None
        except KernelError as error:
            reason = str(error)
        except (OSError, RuntimeError) as error:
            reason = f"the built library did not load: {error}"
        log.info("using torch's quantized kernels: %s", reason)
        return reason


def prepare(cache_dir: Path, progress: bool = False, simd: str = "auto") -> str:
    """Build the libraries of this machine's paths into `cache_dir` (all of them, even those this
    CPU cannot run: an image's build stage may run on another machine than the image); what became
    of them, and which path runs here and why, in a sentence."""
    paths = [isa for isa in ISAS.values() if isa.machine == machine()]
    if not paths:
        where = machine() or "this machine"
        return f"chinwag's CPU kernels have no path for {where}; torch's kernels will be used."
    try:
        for isa in paths:
            build(cache_dir, progress, isa)
    except KernelError as error:
        return f"chinwag's CPU kernels were not built ({error}); torch's kernels will be used."
    try:
        chosen, why = choose(simd)
    except errors.KernelError as error:
        return f"chinwag's CPU kernels are built, but {error}."
    if chosen is None:
        return f"chinwag's CPU kernels are built, but {why}: torch's kernels will be used here."
    return f"chinwag's CPU kernels are ready: {why}."


class KernelError(Exception):
    """The kernels could not be built."""


def build(cache_dir: Path, progress: bool = False, isa: Isa | None = None) -> Path:
    """`isa`'s compiled library (by default the path "auto" chooses here, else this machine's first)
    in `cache_dir/kernels`, compiled now if it is not there yet."""
    from bot.inference.weights import locked, say

    isa = isa or _default_isa()
    target = cache_dir / "kernels" / f"chinwag-kernels-{isa.name}-{_key(isa)}.so"
    if target.is_file():  # built before, maybe elsewhere (a Docker image's build stage)
        return target
    cxx = compiler()
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.parent / ".build.lock"):
        if target.is_file():
            return target
        say(progress, f"Compiling chinwag's CPU kernels ({isa.name}); this happens once.")
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            command = compile_command(cxx, built, isa)
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


def compile_command(cxx: str, output: Path, isa: Isa | None = None) -> list[str]:
    """The command that compiles `isa`'s library (see `build`) into `output` with the compiler `cxx`."""
    isa = isa or _default_isa()
    return [
        cxx,
        *FLAGS,
        *isa_flags(isa),
        *_torch_flags(),
        str(SOURCE),
        "-o",
        str(output),
        *_torch_libraries(),
    ]


def isa_flags(isa: Isa) -> tuple[str, ...]:
    """`isa`'s compiler flags; NEON's take the dot-product instructions where this CPU has them."""
    if isa.name == "neon" and "asimddp" in (cpu_flags() or ()):
        return ("-march=armv8.2-a+dotprod",)
    return isa.flags


def _default_isa() -> Isa:
    chosen, _ = choose("auto")
    return chosen or next((isa for isa in ISAS.values() if isa.machine == machine()), ISAS["avx512"])


def _registered(isa: Isa) -> bool:
    return hasattr(getattr(torch.ops, f"chinwag_{isa.name}"), "linear")


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


def unsupported(simd: str = "auto") -> str | None:
    """Why this machine cannot use the kernels of path `simd` (any path: "auto"), or None."""
    if simd != "auto":
        return _cannot_run(ISAS[simd], cpu_flags())
    chosen, why = choose("auto")
    return None if chosen is not None else why


def compiler() -> str:
    """The C++ compiler to build the library with ($CXX, else the first of g++, c++, clang++)."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    raise KernelError("no C++ compiler found (install g++ to build them)")


def _key(isa: Isa) -> str:
    digest = hashlib.sha256(SOURCE.read_bytes() + HEADER.read_bytes())
    digest.update(" ".join([*FLAGS, *isa_flags(isa), torch.__version__]).encode())
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
