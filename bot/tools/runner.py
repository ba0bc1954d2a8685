"""Where tool calls run: a bounded pool of their own, and worker processes that can be killed.

A tool call must never stall the rest of the process. Calls run on the runner's own threads (never
asyncio's default executor, which prompt preparation and retrieval use), at most
`tools.max_concurrent_calls` at once; a call that waits for a slot past its deadline times out.
Tools marked `isolated` (CPU-bound ones such as the calculator) run in a worker process instead:
a computation holding its interpreter's lock there cannot freeze ours, and at the deadline the
worker is killed and replaced.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bot.errors import ToolError
from bot.tools.registry import Tool

log = logging.getLogger(__name__)

# The longest a new worker process may take to start (importing the tools), on a busy machine.
_WORKER_START_S = 60.0
_FRAME = struct.Struct("!I")


class ToolTimeout(Exception):
    """A call did not finish within its limit (`reason` says whether it ran or waited for a slot)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ToolRunner:
    """Runs tool calls off the event loop, in bounded pools of their own; one runner per engine.

    `threads`: most calls of ordinary tools running at once (more wait for a slot); `workers`: most
    worker processes for isolated tools (as many of those calls run at once). Call `close()` when
    done; the workers are also killed when the runner is collected or the interpreter exits.
    """

    def __init__(self, threads: int = 4, workers: int = 2) -> None:
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="chinwag-tool")
        self._isolated = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chinwag-worker")
        self._workers = WorkerPool(workers)
        self._closed = weakref.finalize(self, _shutdown, self._threads, self._isolated, self._workers)

    async def run(self, tool: Tool, arguments: dict[str, Any], limit_s: float) -> Any:
        """The tool's return value; ToolTimeout past `limit_s`, else whatever the tool raised."""
        if inspect.iscoroutinefunction(tool.function):
            try:
                return await asyncio.wait_for(tool.function(**arguments), limit_s)
            except TimeoutError:
                raise ToolTimeout("ran") from None
        if tool.isolated:
            job = self._isolated.submit(self._workers.call, tool, arguments, limit_s)
        else:
            job = self._threads.submit(tool.function, **arguments)
        running = asyncio.wrap_future(job)
        # A call given up on still ends some time: its outcome is nobody's to report any more.
        running.add_done_callback(_forget)
        try:
            return await asyncio.wait_for(asyncio.shield(running), limit_s)
        except TimeoutError:
            if job.cancel():
                raise ToolTimeout("waited") from None  # every slot was busy all along
            if not tool.isolated:
                raise ToolTimeout("ran") from None  # a thread cannot be stopped; the slot stays taken
        # The worker keeps the limit from the moment it began (starting a worker is not the
        # call's time) and is killed there.
        return await running

    def close(self) -> None:
        """Kill the worker processes; calls still running on threads finish on their own."""
        self._closed()


def _forget(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _shutdown(threads: ThreadPoolExecutor, isolated: ThreadPoolExecutor, workers: WorkerPool) -> None:
    threads.shutdown(wait=False, cancel_futures=True)
    isolated.shutdown(wait=False, cancel_futures=True)
    workers.close()


class WorkerPool:
    """Worker processes (`python -m bot.tools.worker`) that run isolated tools one call at a time.

    At most `size` calls use it at once (the runner's isolated pool has that many threads), so a
    call always finds an idle worker or room to start one.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._alive: set[_Worker] = set()
        self._closed = False

    def call(self, tool: Tool, arguments: dict[str, Any], timeout: float) -> Any:
        """Run the tool in a worker for at most `timeout` s; past it the worker is killed."""
        worker = self._take()
        job = (tool.function.__module__, tool.function.__qualname__, arguments)
        try:
            status, value = worker.ask(job, time.monotonic() + timeout)
        except ToolTimeout:
            self._discard(worker)
            raise
        except OSError as error:
            self._discard(worker)
            raise ToolError(f"{tool.name}: its worker process failed ({error})") from None
        with self._lock:
            if self._closed:
                worker.kill()
            else:
                self._idle.append(worker)
        if status == "ok":
            return value
        if status == "tool_error":
            raise ToolError(value)
        raise ToolError(f"{tool.name} failed ({value})")

    def _take(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise ToolError("the tools are shut down")
            if self._idle:
                return self._idle.pop()
        worker = _Worker.start()
        with self._lock:
            self._alive.add(worker)
        return worker

    def _discard(self, worker: _Worker) -> None:
        with self._lock:
            self._alive.discard(worker)
        worker.kill()

    def close(self) -> None:
        """Kill every worker."""
        with self._lock:
            self._closed = True
            alive, self._alive, self._idle = self._alive, set(), []
        for worker in alive:
            worker.kill()


class _Worker:
    """One worker process and its pipes."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    @classmethod
    def start(cls) -> _Worker:
        root = str(Path(__file__).resolve().parents[2])
        # The worker imports this very package, wherever it was imported from here.
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        process = subprocess.Popen(
            [sys.executable, "-m", "bot.tools.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        worker = cls(process)
        try:
            worker._read(time.monotonic() + _WORKER_START_S)  # its "ready"
        except (ToolTimeout, OSError) as error:
            worker.kill()
            raise ToolError(f"the tool worker process did not start ({error})") from None
        return worker

    def ask(self, job: tuple[str, str, dict[str, Any]], deadline: float) -> tuple[str, Any]:
        assert self.process.stdin is not None
        data = pickle.dumps(job)
        self.process.stdin.write(_FRAME.pack(len(data)) + data)
        self.process.stdin.flush()
        return self._read(deadline)

    def _read(self, deadline: float) -> Any:
        size = _FRAME.unpack(self._exactly(_FRAME.size, deadline))[0]
        return pickle.loads(self._exactly(size, deadline))

    def _exactly(self, n: int, deadline: float) -> bytes:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        data = bytearray()
        while len(data) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise ToolTimeout("ran")
            chunk = os.read(fd, n - len(data))
            if not chunk:
                raise OSError(f"the worker exited with code {self.process.poll()}")
            data += chunk
        return bytes(data)

    def kill(self) -> None:
        self.process.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.warning("tool worker %s did not exit after SIGKILL", self.process.pid)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
