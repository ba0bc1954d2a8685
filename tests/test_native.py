"""The kernels on every path, bit for bit, without torch: tests/native/kernels_check.cpp includes
kernels.cpp whole over a stand-in for ATen (tests/native/shim), is built once per path and prints a
hash of each kernel's result on fixed inputs. The x86 paths run natively where the CPU has them; the
NEON path (with sdot and without) is cross-compiled with Debian's `g++-aarch64-linux-gnu` and run
under `qemu-aarch64` (`qemu-user`) when they are installed. Every path must print the same lines.
An emulator says nothing of speed: NEON's is unmeasured here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bot.inference import kernels

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent / "native"
CROSS, QEMU = "aarch64-linux-gnu-g++", "qemu-aarch64"

# name: (compiler, flags, what runs it, the path it needs on this CPU)
BUILDS = {
    "avx512": ("g++", list(kernels.ISAS["avx512"].flags), [], "avx512"),
    "avx2": ("g++", list(kernels.ISAS["avx2"].flags), [], "avx2"),
    "neon-sdot": (CROSS, ["-march=armv8.2-a+dotprod", "-static"], [QEMU], None),
    "neon": (CROSS, ["-march=armv8-a", "-static"], [QEMU], None),
}


def _run(name: str, tmp: Path) -> str | None:
    """The check's output built for `name`, or None where it cannot be built or run here."""
    cxx, flags, runner, needs = BUILDS[name]
    if shutil.which(cxx) is None or (runner and shutil.which(runner[0]) is None):
        return None
    if needs is not None and kernels.unsupported(needs) is not None:
        return None
    binary = tmp / f"kernels-check-{name}"
    command = [cxx, "-O3", "-std=c++20", "-Wall", "-Wextra", "-Werror", *flags, f"-I{HERE / 'shim'}"]
    built = subprocess.run(
        [*command, str(HERE / "kernels_check.cpp"), "-o", str(binary)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    ran = subprocess.run([*runner, str(binary)], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    return ran.stdout


def test_every_path_prints_the_same_bits(tmp_path: Path) -> None:
    outputs = {name: out for name in BUILDS if (out := _run(name, tmp_path)) is not None}
    if len(outputs) < 2:
        pytest.skip(f"fewer than two paths build and run here: {', '.join(outputs) or 'none'}")
    first, *others = outputs
    assert len(outputs[first].splitlines()) == 15
    for name in others:
        assert outputs[name] == outputs[first], f"{name} differs from {first}"
