"""Gap repair with a real (SQLite) store and real rooms: finals a room never got are refilled
from the store, whether the store had them before the gap was noticed or only later."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import redis.asyncio as aredis

from fanout.bus_memory import InProcessBus
from fanout.delivery import ViewerQueue
from fanout.messages import StatusMessage
from fanout.rooms import RoomRegistry
from fanout.topics import status_topic, transcript_topic
from gateway.observability.metrics import Metrics
from gateway.pipeline.gap_repair import GapRepair, repair_done
from gateway.pipeline.stored_finals import final_message
from store.base import NewFinal
from store.migrate import open_store
from tests.util import eventually


def test_a_repair_is_done_when_no_hole_is_left_and_the_target_is_reached() -> None:
    assert repair_done([], 6, 6)
    assert repair_done([], 7, 6)
    assert not repair_done([3], 6, 6)  # a hole below the highest final
    assert not repair_done([], 5, 6)  # the last final handed out never arrived
    assert repair_done(None, None, 9)  # the room is gone: nothing to do


def _new(n: int) -> NewFinal:
    return NewFinal(f"final {n}", n * 1000, n * 1000 + 500, "mic", stream_id="s", stream_seq=n)


def _numbers(outbox: ViewerQueue) -> list[int]:
    return [pub.segment_no for pub in outbox.queued_messages() if pub.segment_no is not None]


async def test_a_final_lost_live_is_refilled_even_when_stored_after_the_gap_was_seen(
    tmp_path: Path,
) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'gap.db'}")
    bus = InProcessBus()
    rooms = RoomRegistry(bus)
    GapRepair(rooms, store, Metrics())
    try:
        outbox = ViewerQueue()
        await rooms.join("t", "m", outbox)
        topic = transcript_topic("t", "m")
        stored = {}
        for n in (1, 2, 4, 5):
            stored[n] = await store.store_numbered_final("t", "m", n, _new(n), datetime.now(UTC))
        for n in (1, 2, 4, 5):  # 3's publish was lost
            await bus.publish(topic, final_message("m", stored[n]))
        # 3 is only stored now (its stream was still saving it when the gap was seen).
        await store.store_numbered_final("t", "m", 3, _new(3), datetime.now(UTC))
        await eventually(lambda: 3 in _numbers(outbox), within=30, what="final 3 refilled")
        assert sorted(_numbers(outbox)) == [1, 2, 3, 4, 5]  # each once
        assert rooms.missing_finals("t", "m", 0) == []
    finally:
        await store.aclose()


async def test_status_messages_published_during_a_bus_gap_are_redelivered_once(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """A status message (a stream's end) that went out while this replica's pub/sub link was
    down is read back from the Redis bus's short log when the gap is reported; one already
    delivered is not delivered again."""
    from fanout.bus_redis import RedisBus

    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'gap.db'}")
    bus = RedisBus(redis_url, prefix=redis_prefix)
    await bus.start()
    rooms = RoomRegistry(bus)
    repair = GapRepair(rooms, store, Metrics(), recent_status=bus.recent)
    try:
        outbox = ViewerQueue()
        await rooms.join("t", "m", outbox)
        topic = status_topic("t", "m")
        started = StatusMessage(
            meeting_id="m", source="mic", event="stream.started", stream_id="s1"
        ).encode()
        ended = StatusMessage(
            meeting_id="m", source="mic", event="stream.ended", stream_id="s1"
        ).encode()
        await bus.publish(topic, started)  # delivered live
        await eventually(lambda: _statuses(outbox) == [started], within=30, what="live status")
        # The end went out while this replica's link was down: in the bus's log (as `publish`
        # leaves it), never delivered here.
        admin = aredis.from_url(redis_url)
        try:
            await admin.rpush(f"{redis_prefix}status-log:{topic}", ended)
        finally:
            await admin.aclose()
        assert await bus.recent(topic) == [started, ended]
        repair({topic})  # the bus reports the gap once it is subscribed again
        await eventually(lambda: _statuses(outbox) == [started, ended], within=30, what="redo")
        repair({topic})  # reported again: nothing delivered twice
        await eventually(lambda: not repair._tasks, within=30, what="repair done")
        assert _statuses(outbox) == [started, ended]
        await bus.forget(topic)
        assert await bus.recent(topic) == []
    finally:
        await bus.aclose()
        await store.aclose()


def _statuses(outbox: ViewerQueue) -> list[bytes]:
    return [
        pub.data for pub in outbox.queued_messages() if pub.data.startswith(b'{"type":"status"')
    ]


async def test_a_stream_end_redelivered_after_a_gap_comes_after_its_finals(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """Finals 2 and 3 and the stream's end all went out while this replica's link was down.
    The repair hands the finals over first: a client takes the end to mean that its view of the
    stream is complete (a fresh-clone run saw the end first, and the viewer stopped at 1)."""
    import asyncio

    from fanout.bus_redis import RedisBus

    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'gap.db'}")
    bus = RedisBus(redis_url, prefix=redis_prefix)
    await bus.start()
    rooms = RoomRegistry(bus)

    async def last_number(tenant_id: str, meeting_id: str) -> int:
        await asyncio.sleep(0.3)  # the shared counter answers after the status log does
        return 3

    repair = GapRepair(rooms, store, Metrics(), last_number, recent_status=bus.recent)
    try:
        outbox = ViewerQueue()
        await rooms.join("t", "m", outbox)
        transcript, status = transcript_topic("t", "m"), status_topic("t", "m")
        first = await store.store_numbered_final("t", "m", 1, _new(1), datetime.now(UTC))
        await bus.publish(transcript, final_message("m", first))  # delivered live
        await eventually(lambda: _numbers(outbox) == [1], within=30, what="final 1 live")
        for n in (2, 3):  # stored, their publishes lost
            await store.store_numbered_final("t", "m", n, _new(n), datetime.now(UTC))
        ended = StatusMessage(
            meeting_id="m", source="mic", event="stream.ended", stream_id="s"
        ).encode()
        admin = aredis.from_url(redis_url)
        try:
            await admin.rpush(f"{redis_prefix}status-log:{status}", ended)
        finally:
            await admin.aclose()
        repair({transcript, status})  # the bus reports the gap once it is subscribed again
        await eventually(lambda: _statuses(outbox) == [ended], within=30, what="end redelivered")
        kinds = [pub.segment_no or "end" for pub in outbox.queued_messages()]
        assert kinds == [1, 2, 3, "end"]
    finally:
        await bus.aclose()
        await store.aclose()
