"""One contract for every `Bus` (in-process and Redis), run over each through a fixture, as the
store and engine suites are: order per topic, isolation between topics and tenants, several
handlers, unsubscribe, and subscriptions that outlive a restart of the server behind the bus
(a throwaway redis-server for the Redis bus), with a gap report from a bus that lost its
connection and none from one that has none."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from fanout.bus import Bus
from fanout.bus_memory import InProcessBus
from fanout.bus_redis import RedisBus
from fanout.topics import status_topic, transcript_topic
from tests.util import PrivateRedis, eventually

FAST_REDIS = {
    "op_timeout_s": 2.0,
    "subscribe_timeout_s": 10.0,
    "ping_interval_s": 0.3,
    "ping_timeout_s": 1.0,
    "reconnect_base_s": 0.02,
    "reconnect_cap_s": 0.3,
}

BusFactory = Callable[[], Bus]


@pytest.fixture(params=["in-process", "redis"])
async def make_bus(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str
) -> AsyncIterator[BusFactory]:
    """Buses of one deployment: in-process buses of one process share one instance (a process
    has one bus); Redis buses are replicas sharing a prefix."""
    buses: list[Bus] = []
    shared = InProcessBus()

    def make() -> Bus:
        if request.param == "in-process":
            return shared
        bus = RedisBus(redis_url, prefix=redis_prefix, **FAST_REDIS)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.aclose()
    await shared.aclose()


class Inbox:
    def __init__(self) -> None:
        self.items: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        self.items.append(data)


async def started(bus: Bus) -> Bus:
    await bus.start()
    return bus


async def test_messages_of_a_topic_arrive_in_publish_order(make_bus: BusFactory) -> None:
    publisher, subscriber = await started(make_bus()), await started(make_bus())
    inbox = Inbox()
    topic = transcript_topic("t1", "m1")
    await subscriber.subscribe(topic, inbox)
    sent = [f"m{n}".encode() for n in range(200)]
    for data in sent:
        await publisher.publish(topic, data)
    await eventually(lambda: len(inbox.items) >= len(sent), within=30, what="all messages")
    assert inbox.items == sent


async def test_topics_and_tenants_are_isolated(make_bus: BusFactory) -> None:
    bus = await started(make_bus())
    topics = [
        transcript_topic("t1", "m1"),
        status_topic("t1", "m1"),
        transcript_topic("t1", "m2"),
        transcript_topic("t2", "m1"),  # another tenant's meeting with the same id
    ]
    inboxes = {topic: Inbox() for topic in topics}
    for topic, inbox in inboxes.items():
        await bus.subscribe(topic, inbox)
    for topic in topics:
        await bus.publish(topic, topic.encode())
    await eventually(
        lambda: all(inbox.items for inbox in inboxes.values()), within=30, what="each topic"
    )
    for topic, inbox in inboxes.items():
        assert inbox.items == [topic.encode()]


async def test_every_handler_of_a_topic_gets_each_message(make_bus: BusFactory) -> None:
    publisher, subscriber = await started(make_bus()), await started(make_bus())
    topic = transcript_topic("t1", "m1")
    inboxes = [Inbox() for _ in range(3)]
    for inbox in inboxes:
        await subscriber.subscribe(topic, inbox)
    await publisher.publish(topic, b"hello")
    await eventually(lambda: all(i.items for i in inboxes), within=30, what="every handler")
    assert [i.items for i in inboxes] == [[b"hello"]] * 3


async def test_a_cancelled_subscription_receives_nothing_more(make_bus: BusFactory) -> None:
    publisher, subscriber = await started(make_bus()), await started(make_bus())
    topic = transcript_topic("t1", "m1")
    kept, cancelled = Inbox(), Inbox()
    await subscriber.subscribe(topic, kept)
    subscription = await subscriber.subscribe(topic, cancelled)
    await publisher.publish(topic, b"one")
    await eventually(lambda: kept.items and cancelled.items, within=30, what="first message")
    await subscription.cancel()
    await subscription.cancel()  # idempotent
    await publisher.publish(topic, b"two")
    await eventually(lambda: len(kept.items) == 2, within=30, what="second message")
    assert cancelled.items == [b"one"]


async def test_publishing_to_a_topic_nobody_follows_is_fine(make_bus: BusFactory) -> None:
    bus = await started(make_bus())
    await bus.publish(transcript_topic("t1", "nobody"), b"x")
    assert await bus.healthy()


def _message(kind: str, n: int, source: str, text: str = "") -> bytes:
    return json.dumps(
        {"type": kind, "segment_no": n, "source": source, "text": text}, separators=(",", ":")
    ).encode()


async def test_each_sources_latest_partial_is_kept_until_its_final_or_stream_end(
    make_bus: BusFactory,
) -> None:
    """Kept by the bus, so a room created later (on any replica) starts from them."""
    publisher, reader = make_bus(), make_bus()
    await publisher.start()
    await reader.start()
    topic, status = transcript_topic("t1", "m1"), status_topic("t1", "m1")
    assert await reader.partials(topic) == []
    await publisher.publish(topic, _message("transcript.partial", 1, "mic", "he"))
    await publisher.publish(topic, _message("transcript.partial", 1, "mic", "hello"))
    await publisher.publish(topic, _message("transcript.partial", 1, "system", "yo"))
    await publisher.publish(transcript_topic("t2", "m1"), _message("transcript.partial", 1, "mic"))
    assert sorted(await reader.partials(topic)) == sorted(
        [
            _message("transcript.partial", 1, "mic", "hello"),
            _message("transcript.partial", 1, "system", "yo"),
        ]
    )
    await publisher.publish(topic, _message("transcript.final", 1, "mic", "hello"))
    assert await reader.partials(topic) == [_message("transcript.partial", 1, "system", "yo")]
    ended = b'{"type":"status","event":"stream.ended","source":"system","stream_id":"s"}'
    await publisher.publish(status, ended)
    assert await reader.partials(topic) == []
    await publisher.publish(topic, _message("transcript.partial", 2, "mic", "again"))
    await publisher.forget(topic)  # the meeting was deleted
    assert await reader.partials(topic) == []


async def test_a_partial_no_newer_one_follows_is_aged_out_per_source(
    make_bus: BusFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crashed stream never ends: its last partial goes after PARTIAL_TTL_MS, though another
    source of the meeting keeps talking."""
    for module in ("fanout.bus_memory", "fanout.bus_redis"):
        monkeypatch.setattr(f"{module}.PARTIAL_TTL_MS", 300)
    bus = make_bus()
    await bus.start()
    topic = transcript_topic("t1", "m1")
    crashed = _message("transcript.partial", 1, "system", "cut off")
    await bus.publish(topic, crashed)
    talking = 0

    async def only_the_talker_is_kept() -> bool:
        nonlocal talking
        talking += 1
        talker = _message("transcript.partial", 2, "mic", f"word {talking}")
        await bus.publish(topic, talker)
        return await bus.partials(topic) == [talker]

    await eventually(only_the_talker_is_kept)


async def test_a_lost_connection_reports_a_gap_once_live_again(
    redis_url: str, redis_prefix: str
) -> None:
    """The at-most-once part of the contract: only a bus with a connection can lose one, so
    this case is the Redis bus's (an in-process bus never reports a gap)."""
    bus = RedisBus(redis_url, prefix=redis_prefix, **FAST_REDIS)
    admin = aredis.Redis.from_url(redis_url)
    try:
        await bus.start()
        gaps: list[set[str]] = []
        bus.add_gap_listener(gaps.append)
        topic = transcript_topic("t1", "m1")
        inbox = Inbox()
        await bus.subscribe(topic, inbox)
        clients: list[dict[str, Any]] = [
            c for c in await admin.client_list() if c.get("name") == bus.client_name
        ]
        assert len(clients) == 1
        await admin.client_kill_filter(_id=clients[0]["id"])
        await eventually(lambda: any(topic in g for g in gaps), within=30, what="gap report")

        # Live again: a message published now arrives.
        async def delivered() -> bool:
            await bus.publish(topic, b"after")
            return b"after" in inbox.items

        await eventually(delivered, within=30, interval=0.1, what="delivery after reconnect")
    finally:
        await bus.aclose()
        await admin.aclose()


class Restartable:
    """A bus and a way to restart what it is connected to (nothing, for the in-process bus)."""

    def __init__(self, bus: Bus, server: PrivateRedis | None) -> None:
        self.bus, self.server = bus, server

    @property
    def loses_connection(self) -> bool:
        return self.server is not None

    async def restart(self) -> None:
        if self.server is not None:  # same port: the bus reconnects to where it was
            await self.server.stop()
            await self.server.start()


@pytest.fixture(params=["in-process", "redis"])
async def restartable(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Restartable]:
    server: PrivateRedis | None = None
    if request.param == "in-process":
        bus: Bus = InProcessBus()
    else:
        server = PrivateRedis(tmp_path)  # a throwaway redis-server this test restarts
        await server.start()
        bus = RedisBus(server.url, prefix="contract:", **FAST_REDIS)
    try:
        yield Restartable(bus, server)
    finally:
        await bus.aclose()
        if server is not None:
            await server.stop()


async def test_subscriptions_outlive_a_server_restart_and_the_gap_is_reported(
    restartable: Restartable,
) -> None:
    """After the server behind the bus restarts, every subscription delivers again, in order, and
    a bus that lost its connection reports the gap for exactly the topics it follows (messages
    published meanwhile may be lost: at most once); a bus without a connection reports none."""
    bus = await started(restartable.bus)
    gaps: list[set[str]] = []
    bus.add_gap_listener(gaps.append)
    topics = [transcript_topic("t1", "m1"), status_topic("t2", "m1")]
    inboxes = {topic: Inbox() for topic in topics}
    for topic, inbox in inboxes.items():
        await bus.subscribe(topic, inbox)
        await bus.publish(topic, b"before")
    await eventually(lambda: all(i.items for i in inboxes.values()), within=30, what="before")

    await restartable.restart()

    async def delivered_again() -> bool:
        for topic in topics:
            try:
                await bus.publish(topic, b"after")
            except Exception:  # the server is still coming back
                return False
        return all(b"after" in inbox.items for inbox in inboxes.values())

    await eventually(delivered_again, within=60, interval=0.2, what="delivery after restart")
    sent = [f"n{n}".encode() for n in range(50)]
    for data in sent:
        await bus.publish(topics[0], data)
    await eventually(lambda: inboxes[topics[0]].items[-1:] == sent[-1:], within=30, what="order")
    got = [d for d in inboxes[topics[0]].items if d.startswith(b"n")]
    assert got == sent
    if restartable.loses_connection:
        await eventually(lambda: set().union(*gaps) == set(topics), within=30, what="gap report")
        assert all(report <= set(topics) for report in gaps)
    else:
        assert gaps == []


async def test_a_failing_handler_does_not_stop_delivery(make_bus: BusFactory) -> None:
    """A broken subscriber is logged and skipped: the publish succeeds (its caller would retry
    a final, and hand it again to the handlers before the broken one) and the rest get it."""
    bus = make_bus()
    before, after = Inbox(), Inbox()

    def bad(data: bytes) -> None:
        raise RuntimeError("handler bug")

    await bus.subscribe("x", before)
    await bus.subscribe("x", bad)
    await bus.subscribe("x", after)
    await bus.publish("x", b"1")
    await bus.publish("x", b"2")
    await eventually(lambda: after.items == [b"1", b"2"])
    assert before.items == [b"1", b"2"]
    if isinstance(bus, RedisBus):
        assert bus.connects == 1  # nor does it cost the pub/sub link


async def test_closed_bus_refuses_work(make_bus: BusFactory) -> None:
    bus = make_bus()
    await bus.subscribe("t", Inbox())
    await bus.aclose()
    await bus.aclose()
    assert not await bus.healthy()
    with pytest.raises(RuntimeError):
        await bus.publish("t", b"x")
    with pytest.raises(RuntimeError):
        await bus.subscribe("t", Inbox())
