"""One-off torch work in a thread of its own, so that it leaves no OpenMP workers behind."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def run_apart(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`function(*args, **kwargs)` in a thread that ends with it; its result (or its exception).

    For torch-heavy one-off work: converting, quantizing or exporting a model. torch's parallel
    operations keep a pool of OpenMP workers for each thread that calls them, for as long as that
    thread lives; once libgomp manages more threads than there are CPUs, every pool's workers sleep
    instead of spinning between parallel regions, and the scheduler's decoding (a couple of hundred
    regions a step) ran a third slower for the rest of a process whose main thread had done such
    work once (bench/RESULTS.md). A thread that exits takes its pool with it.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chinwag-apart") as pool:
        return pool.submit(function, *args, **kwargs).result()
