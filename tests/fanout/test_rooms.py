from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from fanout.bus import Handler, Subscription
from fanout.bus_memory import InProcessBus
from fanout.delivery import ViewerQueue
from fanout.rooms import RoomRegistry
from fanout.topics import status_topic, transcript_topic
from tests.fanout.transports import Transport
from tests.util import eventually


class RecordingBus(InProcessBus):
    """Counts live bus subscriptions per topic; yields inside subscribe/cancel (as a networked
    bus would) so that unserialised join/leave would interleave."""

    def __init__(self, yields: int = 0) -> None:
        super().__init__()
        self.yields = yields
        self.live: Counter[str] = Counter()
        self.subscribe_calls = 0

    async def _pause(self) -> None:
        for _ in range(self.yields):
            await asyncio.sleep(0)

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        self.subscribe_calls += 1
        await self._pause()
        inner = await super().subscribe(topic, handler)
        self.live[topic] += 1
        bus = self

        class Recorded(Subscription):
            async def cancel(self) -> None:
                await bus._pause()
                await inner.cancel()
                bus.live[topic] -= 1

        return Recorded()


def queued(outbox: ViewerQueue) -> list[bytes]:
    return [pub.data for pub in outbox.queued_messages()]


async def test_one_subscription_per_topic_for_many_local_outboxes() -> None:
    bus = RecordingBus()
    rooms = RoomRegistry(bus)
    outboxes = [ViewerQueue() for _ in range(25)]
    for outbox in outboxes:
        await rooms.join("t1", "m1", outbox)
    topics = {transcript_topic("t1", "m1"), status_topic("t1", "m1")}
    assert rooms.subscribed_topics() == topics
    assert {t: n for t, n in bus.live.items() if n} == dict.fromkeys(topics, 1)
    assert bus.subscribe_calls == 2
    assert rooms.local_subscriber_count("t1", "m1") == 25
    assert rooms.room_count() == 1


async def test_the_same_bytes_object_reaches_every_outbox() -> None:
    bus = InProcessBus()
    rooms = RoomRegistry(bus)
    outboxes = [ViewerQueue() for _ in range(5)]
    for outbox in outboxes:
        await rooms.join("t1", "m1", outbox)
    payload = b'{"type":"transcript.final","segment_no":1}'
    status = b'{"type":"status"}'
    await bus.publish(transcript_topic("t1", "m1"), payload)
    await bus.publish(status_topic("t1", "m1"), status)
    for outbox in outboxes:
        got = queued(outbox)
        assert got == [payload, status]
        assert got[0] is payload and got[1] is status  # encoded once, never copied per socket


async def test_last_leave_drops_the_subscription_and_leave_is_idempotent() -> None:
    bus = RecordingBus()
    rooms = RoomRegistry(bus)
    a, b = ViewerQueue(), ViewerQueue()
    await rooms.join("t1", "m1", a)
    await rooms.join("t1", "m1", b)
    await rooms.leave("t1", "m1", a)
    assert rooms.subscribed_topics() and rooms.local_subscriber_count("t1", "m1") == 1
    await rooms.leave("t1", "m1", a)  # again: no effect
    assert rooms.local_subscriber_count("t1", "m1") == 1
    await rooms.leave("t1", "m1", b)
    assert rooms.subscribed_topics() == set() and rooms.room_count() == 0
    assert sum(bus.live.values()) == 0 and bus.topic_count() == 0
    await rooms.leave("t1", "m1", b)  # unknown room: no effect
    await bus.publish(transcript_topic("t1", "m1"), b"after")
    assert queued(a) == [] and queued(b) == []


async def test_tenants_with_the_same_meeting_id_never_cross() -> None:
    bus = InProcessBus()
    rooms = RoomRegistry(bus)
    a, b = ViewerQueue(), ViewerQueue()
    await rooms.join("tenantA", "m1", a)
    await rooms.join("tenantB", "m1", b)
    await bus.publish(transcript_topic("tenantA", "m1"), b"for A")
    await bus.publish(status_topic("tenantB", "m1"), b"for B")
    assert queued(a) == [b"for A"]
    assert queued(b) == [b"for B"]
    assert rooms.room_count() == 2
    assert rooms.local_subscriber_count("tenantA", "m1") == 1


@pytest.mark.parametrize("tenant,meeting", [("a:b", "c"), ("a", "b:c"), ("", "m"), ("t", "")])
async def test_ids_that_could_collide_in_topic_names_are_rejected(
    tenant: str, meeting: str
) -> None:
    rooms = RoomRegistry(InProcessBus())
    with pytest.raises(ValueError):
        await rooms.join(tenant, meeting, ViewerQueue())


async def test_concurrent_joins_subscribe_once() -> None:
    bus = RecordingBus(yields=5)
    rooms = RoomRegistry(bus)
    await asyncio.gather(*(rooms.join("t1", "m1", ViewerQueue()) for _ in range(20)))
    assert bus.subscribe_calls == 2
    assert sum(bus.live.values()) == 2
    assert rooms.local_subscriber_count("t1", "m1") == 20


async def test_joining_an_open_room_does_not_wait_behind_other_joins() -> None:
    """A connect storm: while the first join subscribes, the others queue on the meeting's lock;
    joins arriving once the room is open must not queue behind them (one wake-up per loop
    iteration would keep a storm's viewers waiting, and their memory held, until the last)."""
    bus = RecordingBus(yields=5)
    rooms = RoomRegistry(bus)
    joins = [asyncio.ensure_future(rooms.join("t1", "m1", ViewerQueue())) for _ in range(50)]
    suspended: list[bool] = []

    def join_late(_: object) -> None:
        # The first join is done, the room open, the other 49 still queued on the lock.
        late = rooms.join("t1", "m1", ViewerQueue())
        try:
            late.send(None)
            suspended.append(True)
            late.close()
        except StopIteration:
            suspended.append(False)

    joins[0].add_done_callback(join_late)
    await asyncio.gather(*joins)
    assert suspended == [False]
    assert bus.subscribe_calls == 2 and rooms.local_subscriber_count("t1", "m1") == 51


async def test_a_failed_partials_read_opens_no_room() -> None:
    class NoPartialsBus(RecordingBus):
        async def partials(self, topic: str) -> list[bytes]:
            raise ConnectionError("broker down")

    bus = NoPartialsBus()
    rooms = RoomRegistry(bus)
    with pytest.raises(ConnectionError):
        await rooms.join("t1", "m1", ViewerQueue())
    assert rooms.room_count() == 0 and sum(bus.live.values()) == 0 and rooms._locks == {}


async def test_interleaved_join_and_leave_stay_consistent() -> None:
    bus = RecordingBus(yields=3)
    rooms = RoomRegistry(bus)
    rng = random.Random(7)
    members: list[ViewerQueue] = []
    for _ in range(30):
        ops = []
        for _ in range(rng.randint(1, 6)):
            if members and rng.random() < 0.5:
                ops.append(rooms.leave("t1", "m1", members.pop(rng.randrange(len(members)))))
            else:
                outbox = ViewerQueue()
                members.append(outbox)
                ops.append(rooms.join("t1", "m1", outbox))
        await asyncio.gather(*ops)
        expected = 1 if members else 0
        for topic in (transcript_topic("t1", "m1"), status_topic("t1", "m1")):
            assert bus.live[topic] == expected
        assert rooms.local_subscriber_count("t1", "m1") == len(members)
    for outbox in members:
        await rooms.leave("t1", "m1", outbox)
    assert sum(bus.live.values()) == 0 and rooms._locks == {}


async def test_failed_subscribe_rolls_back_the_half_taken() -> None:
    class FailingBus(RecordingBus):
        async def subscribe(self, topic: str, handler: Handler) -> Subscription:
            if topic.endswith(":status"):
                raise ConnectionError("broker down")
            return await super().subscribe(topic, handler)

    bus = FailingBus()
    rooms = RoomRegistry(bus)
    with pytest.raises(ConnectionError):
        await rooms.join("t1", "m1", ViewerQueue())
    assert sum(bus.live.values()) == 0
    assert rooms.room_count() == 0 and rooms.subscribed_topics() == set()


async def test_leave_completes_even_when_the_caller_is_cancelled() -> None:
    bus = RecordingBus(yields=5)
    rooms = RoomRegistry(bus)
    outbox = ViewerQueue()
    await rooms.join("t1", "m1", outbox)
    leaving = asyncio.create_task(rooms.leave("t1", "m1", outbox))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    # The shielded cleanup runs on although its caller was cancelled.
    await eventually(lambda: rooms.room_count() == 0 and sum(bus.live.values()) == 0)


async def test_overflowing_outbox_does_not_affect_others() -> None:
    bus = InProcessBus()
    rooms = RoomRegistry(bus)
    slow, fast = ViewerQueue(max_messages=2), ViewerQueue(max_messages=100)
    await rooms.join("t1", "m1", slow)
    await rooms.join("t1", "m1", fast)
    for i in range(5):
        await bus.publish(transcript_topic("t1", "m1"), f"m{i}".encode())
    assert slow.overflowed and not fast.overflowed
    assert len(queued(fast)) == 5


def _partial(n: int, text: str, source: str = "mic") -> bytes:
    return b'{"type":"transcript.partial","segment_no":%d,"source":"%s","text":"%s"}' % (
        n,
        source.encode(),
        text.encode(),
    )


def _final(n: int, source: str = "mic") -> bytes:
    return b'{"type":"transcript.final","segment_no":%d,"source":"%s"}' % (n, source.encode())


async def test_a_late_joiner_gets_each_sources_in_flight_partial_first() -> None:
    bus = InProcessBus()
    rooms = RoomRegistry(bus)
    early = ViewerQueue()
    await rooms.join("t1", "m1", early)
    topic = transcript_topic("t1", "m1")
    await bus.publish(topic, _partial(1, "he", "mic"))
    await bus.publish(topic, _partial(1, "hello", "mic"))
    await bus.publish(topic, _partial(2, "yo", "room"))
    late = ViewerQueue()
    await rooms.join("t1", "m1", late)
    assert sorted(queued(late)) == sorted([_partial(1, "hello", "mic"), _partial(2, "yo", "room")])
    await bus.publish(topic, _final(1, "mic"))
    assert queued(late)[-1] == _final(1, "mic")


async def test_a_final_or_the_end_of_its_stream_clears_the_sources_partial() -> None:
    bus = InProcessBus()
    rooms = RoomRegistry(bus)
    await rooms.join("t1", "m1", ViewerQueue())
    topic = transcript_topic("t1", "m1")
    await bus.publish(topic, _partial(4, "predicted four", "mic"))
    await bus.publish(topic, _partial(5, "other", "room"))
    await bus.publish(topic, _final(2, "mic"))  # a replayed older final: the partial stays
    await bus.publish(topic, _final(6, "mic"))  # numbered after the prediction: clears it
    late = ViewerQueue()
    await rooms.join("t1", "m1", late)
    assert queued(late) == [_partial(5, "other", "room")]
    await bus.publish(
        status_topic("t1", "m1"),
        b'{"type":"status","event":"stream.ended","source":"room","stream_id":"s"}',
    )
    later = ViewerQueue()
    await rooms.join("t1", "m1", later)
    assert queued(later) == []


async def test_a_new_room_starts_from_the_partials_the_bus_kept() -> None:
    """The meeting's first viewer on a process sees the sentence under way, though the
    partial went out before its room subscribed."""
    bus = InProcessBus()
    rooms = RoomRegistry(bus)
    topic = transcript_topic("t1", "m1")
    await bus.publish(topic, _partial(1, "x"))  # nobody follows the meeting here yet
    await bus.publish(topic, _partial(2, "y", "room"))
    await bus.publish(topic, _final(2, "room"))
    first = ViewerQueue()
    await rooms.join("t1", "m1", first)
    assert queued(first) == [_partial(1, "x")]
    await rooms.leave("t1", "m1", first)
    await bus.publish(topic, _partial(1, "x y"))
    again = ViewerQueue()
    await rooms.join("t1", "m1", again)
    assert queued(again) == [_partial(1, "x y")]


class RacingBus(InProcessBus):
    """Answers `partials` with what it kept before the source's final, which reaches the room
    over the subscription first: the order a reply and a pub/sub message can arrive in."""

    async def partials(self, topic: str) -> list[bytes]:
        kept = await super().partials(topic)
        await self.publish(topic, _final(1, "mic"))
        return kept


class EndingBus(InProcessBus):
    """The same race with the end of the source's stream."""

    async def partials(self, topic: str) -> list[bytes]:
        kept = await super().partials(topic)
        await self.publish(
            status_topic("t1", "m1"),
            b'{"type":"status","event":"stream.ended","source":"mic","stream_id":"s"}',
        )
        return kept


@pytest.mark.parametrize("bus_class", [RacingBus, EndingBus])
async def test_a_kept_partial_its_final_or_stream_end_overtook_is_not_adopted(
    bus_class: type[InProcessBus],
) -> None:
    bus = bus_class()
    rooms = RoomRegistry(bus)
    await bus.publish(transcript_topic("t1", "m1"), _partial(1, "stale"))
    viewer = ViewerQueue()
    await rooms.join("t1", "m1", viewer)
    assert [m for m in queued(viewer) if b"partial" in m] == []


async def test_each_viewer_gets_its_messages_in_order_on_whichever_path_it_is() -> None:
    """The room's hot loop writes straight to idle viewers and hands every other one to its
    outbox: one backed up, one held for its history, one whose history gave it finals 1 and 2,
    and one closed. Each ends with its messages in order; only direct writes count as such."""
    seen: list[int] = []
    bus = InProcessBus()
    rooms = RoomRegistry(bus, on_publication=lambda tenant, pub, sent, live: seen.append(sent))
    names = ("idle", "backed_up", "held", "caught_up", "closed")
    transports = {name: Transport() for name in names}
    outboxes = {name: ViewerQueue(max_messages=100) for name in names}
    for name in names:
        outboxes[name].attach(direct=transports[name], stall_timeout_s=30)
        await rooms.join("t1", "m1", outboxes[name])
    transports["backed_up"].block()
    outboxes["held"].hold()
    outboxes["caught_up"].skip_finals_through = 2
    outboxes["closed"].close()
    published = [_final(1), _final(2), _partial(4, "four"), _final(3), b'{"type":"status"}']
    for data in published:
        await bus.publish(transcript_topic("t1", "m1"), data)

    def got(name: str) -> list[bytes]:
        return [frame[2:] for frame in transports[name].frames]  # short frames: 2-byte header

    assert got("idle") == published and transports["idle"].direct == 5
    assert got("caught_up") == published[2:] and transports["caught_up"].direct == 3
    assert got("backed_up") == got("held") == got("closed") == []
    assert seen == [1, 1, 2, 2, 2]
    assert sum(seen) == 8  # counted once per publish, by the observer
    transports["backed_up"].unblock()
    outboxes["held"].release()
    await eventually(
        lambda: not outboxes["backed_up"].queued and not outboxes["held"].queued,
        what="both queues drained",
    )
    assert got("backed_up") == got("held") == published
    # Drained, both are back on the direct path.
    await bus.publish(transcript_topic("t1", "m1"), _final(5))
    assert seen[-1] == 4
    assert got("backed_up")[-1] == got("held")[-1] == _final(5)
    assert got("closed") == [] and outboxes["closed"].idle_writer is None


def _numbered_final(meeting: str, n: int) -> bytes:
    return (
        f'{{"type":"transcript.final","meeting_id":"{meeting}","segment_no":{n},'
        f'"text":"x","source":"mic"}}'
    ).encode()


def test_missing_numbers_are_the_ones_not_seen() -> None:
    from fanout.rooms import missing_numbers

    assert missing_numbers(0, 6, {1, 2, 4, 5, 6}) == [3]
    assert missing_numbers(2, 6, {1, 2, 4, 5, 6}) == [3]
    assert missing_numbers(3, 6, {4, 5, 6}) == []
    assert missing_numbers(5, 5, set()) == []


async def test_a_live_final_that_skips_a_number_is_reported_and_the_hole_listed() -> None:
    bus = InProcessBus()
    rooms = RoomRegistry(bus)
    gaps: list[tuple[str, str]] = []
    rooms.gap_listener = lambda tenant, meeting: gaps.append((tenant, meeting))
    outbox = ViewerQueue()
    await rooms.join("t1", "m1", outbox, baseline=1)
    topic = transcript_topic("t1", "m1")
    await bus.publish(topic, _numbered_final("m1", 2))
    assert gaps == [] and rooms.missing_finals("t1", "m1", 0) == []
    await bus.publish(topic, _numbered_final("m1", 4))  # 3 lost
    assert gaps == [("t1", "m1")]
    assert rooms.missing_finals("t1", "m1", 0) == [3]  # 1 is before the room's baseline
    assert rooms.replay("t1", "m1", [_numbered_final("m1", 3), _numbered_final("m1", 4)]) == 1
    assert rooms.missing_finals("t1", "m1", 0) == []
    assert gaps == [("t1", "m1")]  # a replay is no new gap
    assert rooms.missing_finals("t1", "other", 0) is None


async def test_the_finals_a_room_handed_out_above_a_number() -> None:
    # What a viewer resuming with since= gets only from the history (see gateway.ws.subscriber).
    bus = InProcessBus()
    rooms = RoomRegistry(bus)
    await rooms.join("t1", "m1", ViewerQueue(), baseline=1)
    topic = transcript_topic("t1", "m1")
    for number in (2, 3, 5, 900):  # 4 was lost on the bus
        await bus.publish(topic, _numbered_final("m1", number))
    assert sorted(rooms.given_after("t1", "m1", 2)) == [3, 5, 900]  # walks the room's finals
    assert sorted(rooms.given_after("t1", "m1", 899)) == [900]  # walks the numbers
    assert rooms.given_after("t1", "m1", 900) == []
    assert rooms.given_after("t1", "other", 0) == []


async def test_a_status_message_published_twice_is_handed_out_once() -> None:
    bus = InProcessBus()
    rooms = RoomRegistry(bus)
    outbox = ViewerQueue()
    await rooms.join("t1", "m1", outbox)
    started = b'{"type":"status","event":"stream.started","stream_id":"s1","ts":"2026-01-01"}'
    ended = b'{"type":"status","event":"stream.ended","stream_id":"s1","source":"mic","ts":"x"}'
    for data in (started, started, ended, ended):
        await bus.publish(status_topic("t1", "m1"), data)
    assert queued(outbox) == [started, ended]


async def test_only_status_messages_are_deduplicated() -> None:
    bus = InProcessBus()
    rooms = RoomRegistry(bus)
    outbox = ViewerQueue()
    await rooms.join("t1", "m1", outbox)
    other = b'{"type":"transcript.partial","text":"no number"}'  # not numbered: delivered as is
    for _ in range(3):
        await bus.publish(transcript_topic("t1", "m1"), other)
    assert queued(outbox) == [other] * 3
