"""Answers being written outside a platform's event handlers, tracked so that shutdown can wait for them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class InFlight:
    """Spawns answer tasks, and on shutdown stops taking new ones and lets the running ones finish."""

    platform = "chat"

    def __init__(self) -> None:
        self.accepting = True
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run work outside the event handler (after the platform's ack), tracked for shutdown."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
