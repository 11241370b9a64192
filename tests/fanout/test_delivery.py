from __future__ import annotations

import asyncio

import pytest

from fanout.delivery import Outbox
from tests.util import eventually


class Sink:
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, data: bytes) -> None:
        await self.gate.wait()
        self.received.append(data)


async def test_delivers_in_order_and_counts() -> None:
    outbox, sink = Outbox(max_messages=100), Sink()
    runner = asyncio.create_task(outbox.run(sink.send))
    messages = [f"m{i}".encode() for i in range(50)]
    for message in messages:
        assert outbox.offer(message)
    await eventually(lambda: len(sink.received) == 50, what="all delivered")
    assert sink.received == messages
    assert outbox.sent == 50 and outbox.pending == 0
    outbox.close()
    await asyncio.wait_for(runner, 1)


async def test_messages_offered_before_run_are_kept() -> None:
    outbox, sink = Outbox(max_messages=3), Sink()
    assert outbox.offer(b"a") and outbox.offer(b"b")
    runner = asyncio.create_task(outbox.run(sink.send))
    await eventually(lambda: sink.received == [b"a", b"b"])
    outbox.close()
    await asyncio.wait_for(runner, 1)


async def test_slow_consumer_overflows_without_blocking_the_publisher() -> None:
    outbox, sink = Outbox(max_messages=3), Sink()
    sink.gate.clear()  # the socket is stuck
    runner = asyncio.create_task(outbox.run(sink.send))
    assert outbox.offer(b"m0")
    await eventually(lambda: outbox.pending == 0, what="writer took m0 into send")
    results = [outbox.offer(f"m{i}".encode()) for i in range(1, 10)]  # synchronous: never waits
    # m0 is stuck in send, three more fit in the queue, the next offer overflows.
    assert results == [True] * 3 + [False] * 6
    assert outbox.overflowed and outbox.overflow.is_set() and outbox.closed
    assert outbox.pending == 0
    sink.gate.set()
    await asyncio.wait_for(runner, 1)
    assert sink.received == [b"m0"]  # nothing after the gap is sent
    assert not outbox.offer(b"late")


async def test_overflow_event_is_awaitable() -> None:
    outbox = Outbox(max_messages=1)
    waiter = asyncio.create_task(outbox.overflow.wait())
    assert outbox.offer(b"a")
    await asyncio.sleep(0)
    assert not waiter.done()
    assert not outbox.offer(b"b")
    await asyncio.wait_for(waiter, 1)


async def test_byte_budget_overflows() -> None:
    outbox = Outbox(max_messages=100, max_bytes=10)
    assert outbox.offer(b"12345") and outbox.offer(b"12345")
    assert outbox.pending_bytes == 10
    assert not outbox.offer(b"1")
    assert outbox.overflowed


async def test_close_stops_an_idle_writer_without_overflow() -> None:
    outbox, sink = Outbox(), Sink()
    runner = asyncio.create_task(outbox.run(sink.send))
    await asyncio.sleep(0)
    outbox.close()
    await asyncio.wait_for(runner, 1)
    assert not outbox.overflowed
    assert not outbox.offer(b"x")


async def test_send_error_closes_and_propagates() -> None:
    outbox = Outbox()

    async def broken(data: bytes) -> None:
        raise ConnectionResetError("peer gone")

    outbox.offer(b"x")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(outbox.run(broken), 1)
    assert outbox.closed and outbox.sent == 0
    assert not outbox.offer(b"y")


async def test_cancelled_writer_closes_the_outbox() -> None:
    outbox, sink = Outbox(), Sink()
    runner = asyncio.create_task(outbox.run(sink.send))
    await asyncio.sleep(0)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert outbox.closed


def test_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        Outbox(max_messages=0)
    with pytest.raises(ValueError):
        Outbox(max_bytes=0)
