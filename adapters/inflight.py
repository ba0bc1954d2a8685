"""Answers being written outside a platform's event handlers, tracked so that shutdown can wait for them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class InFlight:
    """Spawns answer tasks, and on shutdown stops taking new ones and lets the running ones finish.

    An answer spawned for a platform message (`key`) is stopped when that message is deleted
    (`stop`): its task is cancelled, as a shutdown cancels it, and `stopped` tells the two apart.
    """

    platform = "chat"

    def __init__(self) -> None:
        self.accepting = True
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_key: dict[str, asyncio.Task[None]] = {}
        self._stopped: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None], key: str | None = None) -> None:
        """Run work outside the event handler (after the platform's ack), tracked for shutdown and,
        with `key` (the platform's id of the message it answers, as its Incoming's `message_id`:
        what `Engine.forget` finds it by), for `stop`."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        if key is not None:
            self._by_key[key] = task

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._stopped.discard(task)
        for key in [k for k, t in self._by_key.items() if t is task]:
            del self._by_key[key]

    def stop(self, key: str) -> asyncio.Task[None] | None:
        """Stop the answer to the message `key` (deleted by its author) if it is still being written;
        the others go on. Its task (it ends once the answer is marked and stored), if there was one."""
        task = self._by_key.get(key)
        if task is None or task.done():
            return None
        log.info("%s: message %s deleted; its answer stops", self.platform, key)
        self._stopped.add(task)
        task.cancel()
        return task

    def stopped(self) -> bool:
        """Whether the running answer was cancelled by `stop` (its question deleted), not by a shutdown."""
        task = asyncio.current_task()
        return task is not None and task in self._stopped

    async def drain(self, grace_s: float) -> None:
        """Stop taking new work; let answers in flight finish within `grace_s`, then cut them short."""
        self.accepting = False
        pending = set(self._tasks)
        if not pending:
            return
        _, still = await asyncio.wait(pending, timeout=grace_s)
        for task in still:
            task.cancel()
        if still:
            log.warning("%s: %d answers cut short by the shutdown", self.platform, len(still))
            await asyncio.wait(still, timeout=5)

    async def idle(self) -> None:
        """Wait until no answer is in flight (tests and shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))
