from __future__ import annotations

import asyncio

import pytest

from fanout.delivery import ViewerQueue, ViewerQueueOverflow, ViewerQueueStalled
from fanout.publication import Publication
from tests.fanout.counting import CountingDeliveries
from tests.fanout.transports import Transport
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
    outbox, sink = ViewerQueue(max_messages=100), Sink()
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
    outbox, sink = ViewerQueue(max_messages=3), Sink()
    assert outbox.offer(b"a") and outbox.offer(b"b")
    runner = asyncio.create_task(outbox.run(sink.send))
    await eventually(lambda: sink.received == [b"a", b"b"])
    outbox.close()
    await asyncio.wait_for(runner, 1)


async def test_slow_consumer_overflows_without_blocking_the_publisher() -> None:
    outbox, sink = ViewerQueue(max_messages=3), Sink()
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
    outbox = ViewerQueue(max_messages=1)
    waiter = asyncio.create_task(outbox.overflow.wait())
    assert outbox.offer(b"a")
    await asyncio.sleep(0)
    assert not waiter.done()
    assert not outbox.offer(b"b")
    await asyncio.wait_for(waiter, 1)


async def test_byte_budget_overflows() -> None:
    outbox = ViewerQueue(max_messages=100, max_bytes=10)
    assert outbox.offer(b"12345") and outbox.offer(b"12345")
    assert outbox.pending_bytes == 10
    assert not outbox.offer(b"1")
    assert outbox.overflowed


async def test_close_stops_an_idle_writer_without_overflow() -> None:
    outbox, sink = ViewerQueue(), Sink()
    runner = asyncio.create_task(outbox.run(sink.send))
    await asyncio.sleep(0)
    outbox.close()
    await asyncio.wait_for(runner, 1)
    assert not outbox.overflowed
    assert not outbox.offer(b"x")


async def test_send_error_closes_and_propagates() -> None:
    outbox = ViewerQueue()

    async def broken(data: bytes) -> None:
        raise ConnectionResetError("peer gone")

    outbox.offer(b"x")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(outbox.run(broken), 1)
    assert outbox.closed and outbox.sent == 0
    assert not outbox.offer(b"y")


async def test_cancelled_writer_closes_the_outbox() -> None:
    outbox, sink = ViewerQueue(), Sink()
    runner = asyncio.create_task(outbox.run(sink.send))
    await asyncio.sleep(0)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert outbox.closed


def test_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        ViewerQueue(max_messages=0)
    with pytest.raises(ValueError):
        ViewerQueue(max_bytes=0)


# Direct writes and the queued path ------------------------------------------------------------


def payloads(frames: list[bytes]) -> list[bytes]:
    return [frame[2:] for frame in frames]  # short test frames: a 2-byte header


def final(n: int) -> bytes:
    return b'{"type":"transcript.final","segment_no":%d,"source":"mic"}' % n


def partial(n: int, text: str) -> bytes:
    return b'{"type":"transcript.partial","segment_no":%d,"source":"mic","text":"%s"}' % (
        n,
        text.encode(),
    )


class Failures:
    def __init__(self) -> None:
        self.seen: list[BaseException] = []

    def __call__(self, exc: BaseException) -> None:
        self.seen.append(exc)


async def test_idle_viewer_gets_frames_written_directly_without_a_task() -> None:
    transport, outbox = Transport(), ViewerQueue(max_messages=10)
    outbox.attach(direct=transport)
    published = [Publication.parse(final(n)) for n in range(1, 4)]
    for pub in published:
        assert outbox.offer(pub)
    assert transport.direct == 3 and outbox.sent == 3
    assert transport.frames == [pub.frame for pub in published]
    assert all(f is p.frame for f, p in zip(transport.frames, published, strict=True))
    assert outbox._writer is None and not outbox.queued


async def test_backed_up_viewer_switches_to_the_queue_in_order_and_back_when_drained() -> None:
    transport, outbox, failures = Transport(), ViewerQueue(max_messages=100), Failures()
    outbox.attach(direct=transport, stall_timeout_s=30, on_failure=failures)
    outbox.offer(final(1))
    transport.block()
    for n in range(2, 6):
        assert outbox.offer(final(n))
    assert outbox.queued and outbox._writer is not None
    # Draining has begun, so even a transport with room must not let a message overtake.
    transport.backed_up = False
    assert outbox.offer(final(6))
    assert transport.direct == 1
    transport.unblock()
    await eventually(lambda: not outbox.queued, what="queue drained and writer gone")
    assert payloads(transport.frames) == [final(n) for n in range(1, 7)]
    # Back on the direct path.
    assert outbox.offer(final(7))
    assert transport.direct == 2 and outbox._writer is None
    assert payloads(transport.frames)[-1] == final(7)
    assert failures.seen == [] and outbox.sent == 7


async def test_partials_coalesce_while_backed_up_and_the_final_supersedes_them() -> None:
    transport, outbox = Transport(), ViewerQueue(max_messages=100)
    counted = CountingDeliveries()
    outbox.attach(direct=transport, stall_timeout_s=30, counter=counted)
    transport.block()
    outbox.offer(final(1))
    for text in ("h", "he", "hel", "hell"):
        outbox.offer(partial(2, text))
    assert outbox.pending in (1, 2)  # final 1 may already be in the writer's hands
    outbox.offer(final(2))
    outbox.offer(partial(3, "n"))
    transport.unblock()
    await eventually(lambda: not outbox.queued)
    received = payloads(transport.frames)
    assert received == [final(1), final(2), partial(3, "n")]
    assert counted.coalesced_partials == 4


async def test_finals_that_overflow_a_backed_up_viewer_close_it() -> None:
    transport, outbox, failures = Transport(), ViewerQueue(max_messages=3), Failures()
    outbox.attach(direct=transport, stall_timeout_s=30, on_failure=failures)
    transport.block()
    results = [outbox.offer(final(n)) for n in range(1, 8)]
    # Offers are synchronous (the writer has not run yet): three queued, then the overflow.
    assert results == [True] * 3 + [False] * 4
    assert outbox.overflowed and outbox.closed
    assert len(failures.seen) == 1 and isinstance(failures.seen[0], ViewerQueueOverflow)


async def test_byte_budget_counts_queued_payloads() -> None:
    transport, outbox, failures = Transport(), ViewerQueue(1000, max_bytes=200), Failures()
    outbox.attach(direct=transport, stall_timeout_s=30, on_failure=failures)
    transport.block()
    sizes = 0
    while outbox.offer(final(len(transport.frames) + sizes)):
        sizes += 1
    assert isinstance(failures.seen[0], ViewerQueueOverflow)
    assert sizes * len(final(10)) <= 200 + 2 * len(final(10))


async def test_a_stalled_queue_is_reported_by_the_watchdog() -> None:
    transport, outbox, failures = Transport(), ViewerQueue(max_messages=100), Failures()
    outbox.attach(direct=transport, stall_timeout_s=0.2, on_failure=failures)
    transport.block()  # and never drains
    outbox.offer(final(1))
    await eventually(lambda: bool(failures.seen), within=10, what="stall reported")
    assert isinstance(failures.seen[0], ViewerQueueStalled)
    assert outbox.closed and outbox._writer is None


async def test_a_healthy_viewer_carries_no_timer() -> None:
    transport, outbox = Transport(), ViewerQueue(max_messages=100)
    outbox.attach(direct=transport, stall_timeout_s=0.05)
    loop = asyncio.get_running_loop()
    timers_before = len(loop._scheduled)  # type: ignore[attr-defined]
    for n in range(100):
        outbox.offer(final(n))
    assert len(loop._scheduled) == timers_before  # type: ignore[attr-defined]


async def test_history_hold_queues_live_messages_and_skips_finals_it_covered() -> None:
    transport, outbox = Transport(), ViewerQueue(max_messages=100)
    outbox.attach(direct=transport, stall_timeout_s=30)
    outbox.hold()
    for n in (3, 4, 5):
        outbox.offer(final(n))
    outbox.offer(b'{"type":"status","event":"stream.started"}')
    assert transport.frames == [] and outbox._writer is None
    outbox.skip_finals_through = 4  # the history went up to 4
    outbox.release()
    await eventually(lambda: not outbox.queued)
    assert payloads(transport.frames) == [final(5), b'{"type":"status","event":"stream.started"}']
    outbox.offer(final(2))  # a late final of another source, already in the history
    outbox.offer(final(6))
    assert payloads(transport.frames)[2:] == [final(6)]


async def test_send_error_on_the_queued_path_is_reported() -> None:
    transport, outbox, failures = Transport(), ViewerQueue(max_messages=100), Failures()
    outbox.attach(direct=transport, stall_timeout_s=30, on_failure=failures)
    transport.block()
    outbox.offer(final(1))
    transport.gone = True
    transport.unblock()
    await eventually(lambda: bool(failures.seen))
    assert isinstance(failures.seen[0], ConnectionResetError) and outbox.closed


async def test_without_a_direct_writer_the_asgi_send_drains_the_queue() -> None:
    outbox, sink = ViewerQueue(max_messages=100), Sink()
    outbox.attach(sink.send)
    for n in range(1, 4):
        outbox.offer(final(n))
    await eventually(lambda: len(sink.received) == 3)
    assert sink.received == [final(n) for n in range(1, 4)]
    await eventually(lambda: outbox._writer is None, what="writer ends once drained")


async def test_a_pong_waits_behind_queued_messages() -> None:
    transport, outbox = Transport(), ViewerQueue(max_messages=100)
    outbox.attach(direct=transport, stall_timeout_s=30)
    transport.block()
    outbox.offer(final(1))
    outbox.offer(partial(2, "he"))
    pong = b'{"type":"pong"}'
    outbox.offer(pong)  # the viewer's ping answered on the same ordered path
    transport.unblock()
    await eventually(lambda: not outbox.queued)
    assert payloads(transport.frames) == [final(1), partial(2, "he"), pong]


async def test_a_final_missing_from_the_history_still_arrives_live() -> None:
    """The history gave 1-3 and 5 (4 was numbered first but stored after the read): a live 4 is
    delivered, a live 5 is not repeated."""
    transport, outbox = Transport(), ViewerQueue(max_messages=100)
    outbox.attach(direct=transport, stall_timeout_s=30)
    outbox.hold()
    outbox.offer(final(5))
    outbox.skip_finals_through, outbox.skip_finals = 3, frozenset({5})
    outbox.release()
    outbox.offer(final(4))
    outbox.offer(final(5))
    outbox.offer(final(6))
    await eventually(lambda: not outbox.queued)
    assert payloads(transport.frames) == [final(4), final(6)]
