from __future__ import annotations

import asyncio

import pytest

from shared.lean_sync import LeanEvent, LeanQueue
from tests.util import eventually


async def test_queue_is_fifo_and_wakes_a_waiting_getter() -> None:
    queue: LeanQueue[int] = LeanQueue()
    assert queue.empty() and queue.qsize() == 0
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put_nowait(1)
    queue.put_nowait(2)
    assert await asyncio.wait_for(getter, 1) == 1
    assert queue.qsize() == 1 and not queue.empty()
    assert await queue.get() == 2
    assert queue.empty() and queue._items is None and queue._getters is None


async def test_a_cancelled_getter_passes_its_wakeup_on() -> None:
    queue: LeanQueue[str] = LeanQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await eventually(lambda: queue._getters is not None and len(queue._getters) == 2)
    queue.put_nowait("x")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 1) == "x"


async def test_event_set_clear_wait() -> None:
    event = LeanEvent()
    assert not event.is_set()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    event.set()
    assert all(await asyncio.gather(*waiters))
    assert event.is_set() and await event.wait()
    event.clear()
    assert not event.is_set()
    waiter = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not event._waiters
