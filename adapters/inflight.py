"""Answers being written outside a platform's event handlers, tracked so that shutdown can wait for them.

A shutdown has a fixed time (`shutdown_timeout_s`) and the whole process must end within it: a
supervisor whose stop timeout equals it kills what is left. `ShutdownPlan` splits that time:
answers in flight first, then the last edits of those cut short, storing them, and closing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# What a shutdown keeps back from the answers in flight for what follows them: the answers it cuts
# short stop the model (a step can take a second on a busy CPU), make their last edit and are
# stored; then the connection, the database and the model close. A shorter shutdown_timeout_s
# still takes this long: storing what was said comes before ending on time.
RESERVE_S = 3.0


@dataclass(frozen=True)
class ShutdownPlan:
    """When each step of a shutdown that began at `started` (time.monotonic()) must be done so that
    the process ends within `timeout_s` (at least RESERVE_S): answers in flight finish until the
    reserve; those cut short then make their last edit (in half of it) and are stored and linked
    (by five sixths); the connection closes (by eleven twelfths); the database and the model
    close and the process exits in the rest."""

    timeout_s: float
    started: float = field(default_factory=time.monotonic)

    @property
    def ends_by(self) -> float:
        """When the process must be gone."""
        return self.started + max(self.timeout_s, RESERVE_S)

    @property
    def answers_by(self) -> float:
        """When answers still being written are cut short."""
        return self.ends_by - RESERVE_S

    @property
    def last_edits_by(self) -> float:
        """When the answers cut short must have made their last edit."""
        return self.answers_by + RESERVE_S / 2

    @property
    def stored_by(self) -> float:
        """When they must be stored and linked to the messages that show them."""
        return self.answers_by + RESERVE_S * 5 / 6

    @property
    def closed_by(self) -> float:
        """When the platform connection must be closed."""
        return self.answers_by + RESERVE_S * 11 / 12

    @staticmethod
    def left(until: float) -> float:
        """Seconds from now until `until` (0 once past)."""
        return max(0.0, until - time.monotonic())


async def unless_stopped(work: Awaitable[Any], stop: asyncio.Event) -> bool:
    """Run `work` until it ends or `stop` is set, whichever comes first; True if the work ended.

    Connecting must give way to a stop: the platform libraries retry a connection for ever."""
    job = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({job, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not job.done():
            job.cancel()
            await asyncio.wait({job}, timeout=1.0)
    if job.cancelled():
        return False
    job.result()  # the work's own error, if it failed
    return True


async def within(work: Awaitable[Any], seconds: float, what: str) -> None:
    """Await `work` (closing something) for at most `seconds`; past that, log and go on without it."""
    try:
        await asyncio.wait_for(work, timeout=max(seconds, 0.0))
    except TimeoutError:
        log.warning("%s took longer than %.1f s; the shutdown goes on without it", what, seconds)


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
        # Once a shutdown cuts answers short: when their last edits must be done (time.monotonic()).
        self.last_edits_by: float | None = None

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
        if task in self._stopped:
            return task  # told twice (here and by another replica): a second cancel would cut its last edit
        log.info("%s: message %s deleted; its answer stops", self.platform, key)
        self._stopped.add(task)
        task.cancel()
        return task

    def keys(self) -> list[str]:
        """The messages whose answers are being written (and may be stopped)."""
        return [key for key, task in self._by_key.items() if not task.done()]

    def stopped(self) -> bool:
        """Whether the running answer was cancelled by `stop` (its question deleted), not by a shutdown."""
        task = asyncio.current_task()
        return task is not None and task in self._stopped

    async def drain(self, plan: ShutdownPlan) -> None:
        """Stop taking new work; let answers in flight finish until the plan cuts them short, then
        give those their last edit and storing, until the plan's times for that."""
        self.accepting = False
        pending = set(self._tasks)
        if not pending:
            return
        _, still = await asyncio.wait(pending, timeout=plan.left(plan.answers_by))
        if not still:
            return
        self.last_edits_by = plan.last_edits_by
        for task in still:
            task.cancel()
        log.warning("%s: %d answers cut short by the shutdown", self.platform, len(still))
        _, late = await asyncio.wait(still, timeout=plan.left(plan.stored_by))
        if late:
            log.error("%s: %d answers still being stored when the shutdown went on", self.platform, len(late))

    def time_for_last_edit(self, default_s: float) -> float:
        """Seconds an answer cut short may still spend on its last edit: `default_s`, or what the
        shutdown leaves."""
        if self.last_edits_by is None:
            return default_s
        return min(default_s, max(0.0, self.last_edits_by - time.monotonic()))

    async def idle(self) -> None:
        """Wait until no answer is in flight (tests and shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))
