"""Tokens handed from the scheduler's thread to the event loop: in order, in few wake-ups."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from typing import Any

import pytest

from bot.inference.local import _Mailbox


async def test_items_posted_together_reach_their_queues_in_order_in_one_wake_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    wake_ups = 0
    call = loop.call_soon_threadsafe

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal wake_ups
        wake_ups += 1
        return call(*args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
    box = _Mailbox(loop)
    queues: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(3)]

    def post() -> None:  # a decode step's tokens for three replies, a hundred steps
        for token in range(100):
            for queue in queues:
                box.post(queue, token)

    worker = threading.Thread(target=post)
    worker.start()
    worker.join()  # the loop is busy meanwhile, as it is while the scheduler posts
    for queue in queues:
        assert [await asyncio.wait_for(queue.get(), 5) for _ in range(100)] == list(range(100))
    assert wake_ups == 1
    # Posted while the loop runs: every item still arrives, in order.
    worker = threading.Thread(target=post)
    worker.start()
    for queue in queues:
        assert [await asyncio.wait_for(queue.get(), 5) for _ in range(100)] == list(range(100))
    worker.join()
    assert 1 < wake_ups <= 301


def test_a_closed_or_gone_loop_takes_no_items() -> None:
    loop = asyncio.new_event_loop()
    box = _Mailbox(loop)
    queue: asyncio.Queue[int] = asyncio.Queue()
    loop.close()
    box.post(queue, 1)  # nobody is left to read: dropped, no error for the scheduler
    box.post(queue, 2)
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None  # the mailbox does not keep it alive
    box.post(queue, 3)
    assert queue.empty()
