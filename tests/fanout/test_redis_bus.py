"""RedisBus against real Redis: the shared server for normal operation, a private one for
outages (the shared server is never paused or restarted)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from fanout import bus_redis
from fanout.bus import BusUnavailable
from fanout.bus_redis import RedisBus
from fanout.delivery import ViewerQueue
from fanout.rooms import RoomRegistry
from tests.tls import self_signed_cert
from tests.util import PrivateRedis, eventually

FAST = {
    "op_timeout_s": 1.0,
    "subscribe_timeout_s": 5.0,
    "ping_interval_s": 0.3,
    "ping_timeout_s": 0.3,
    "reconnect_base_s": 0.02,
    "reconnect_cap_s": 0.3,
}

BusFactory = Callable[..., RedisBus]


@pytest.fixture
async def make_bus(redis_url: str, redis_prefix: str) -> AsyncIterator[BusFactory]:
    buses: list[RedisBus] = []

    def make(url: str = redis_url, **overrides: Any) -> RedisBus:
        bus = RedisBus(url, prefix=redis_prefix, **{**FAST, **overrides})
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.aclose()


class Inbox:
    def __init__(self) -> None:
        self.items: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        self.items.append(data)


async def pubsub_clients(admin: aredis.Redis, bus: RedisBus) -> list[dict[str, Any]]:
    return [c for c in await admin.client_list() if c.get("name") == bus.client_name]


async def numsub(admin: aredis.Redis, channel: str) -> int:
    return int((await admin.pubsub_numsub(channel))[0][1])


async def kill_pubsub(admin: aredis.Redis, bus: RedisBus) -> None:
    (client,) = await pubsub_clients(admin, bus)
    assert await admin.client_kill_filter(_id=client["id"]) == 1


async def publish_until(bus: RedisBus, topic: str, inbox: Inbox, within: float = 10.0) -> None:
    """Redis pub/sub is at-most-once: while a subscriber reconnects, publishes are lost. Publish
    again and again until one arrives."""
    n = 0

    async def delivered() -> bool:
        nonlocal n
        n += 1
        marker = f"probe-{n}".encode()
        try:
            await bus.publish(topic, marker)
        except BusUnavailable:
            return False
        await asyncio.sleep(0.02)
        return any(item.startswith(b"probe-") for item in inbox.items)

    await eventually(delivered, within=within, interval=0.03, what=f"delivery on {topic}")


async def test_publish_reaches_handlers_on_every_replica(
    make_bus: BusFactory, admin: aredis.Redis
) -> None:
    one, two = make_bus(), make_bus()
    await one.start()
    await two.start()
    in_one, in_two, in_two_b = Inbox(), Inbox(), Inbox()
    await one.subscribe("meeting:t:m:transcript", in_one)
    await two.subscribe("meeting:t:m:transcript", in_two)
    await two.subscribe("meeting:t:m:transcript", in_two_b)
    await two.subscribe("meeting:t:m:status", Inbox())  # another topic: must not receive

    await one.publish("meeting:t:m:transcript", b"hello")
    await eventually(lambda: in_one.items == in_two.items == in_two_b.items == [b"hello"])
    # One bytes object per received message, shared by the local handlers.
    assert in_two.items[0] is in_two_b.items[0]


async def test_subscribe_returns_only_once_live(
    make_bus: BusFactory, admin: aredis.Redis, redis_prefix: str
) -> None:
    bus = make_bus()
    await bus.start()
    for i in range(20):
        inbox = Inbox()
        await bus.subscribe(f"topic-{i}", inbox)
        # Published by someone else right after subscribe returned: must not be lost.
        assert await admin.publish(f"{redis_prefix}topic-{i}", b"x") == 1
        await eventually(lambda inbox=inbox: inbox.items == [b"x"])


async def test_one_redis_subscription_per_instance_and_topic(
    make_bus: BusFactory, admin: aredis.Redis, redis_prefix: str
) -> None:
    one, two = make_bus(), make_bus()
    subs = []
    for bus in (one, two):
        for _ in range(10):
            subs.append(await bus.subscribe("meeting:t:m:transcript", Inbox()))
        subs.append(await bus.subscribe("meeting:t:m:status", Inbox()))
    channel = f"{redis_prefix}meeting:t:m:transcript"
    assert await numsub(admin, channel) == 2  # one per instance, not one per handler
    for bus in (one, two):
        (client,) = await pubsub_clients(admin, bus)  # exactly one pub/sub connection
        assert int(client["sub"]) == 2

    # Cancelling all but the last handler keeps the subscription; the last one drops it.
    transcript_subs_of_one = subs[:10]
    for sub in transcript_subs_of_one[:-1]:
        await sub.cancel()
    assert await numsub(admin, channel) == 2
    await transcript_subs_of_one[-1].cancel()
    await transcript_subs_of_one[-1].cancel()  # idempotent
    await eventually(lambda: numsub_is(admin, channel, 1), what="UNSUBSCRIBE")
    assert one.subscribed_topics() == {"meeting:t:m:status"}


async def numsub_is(admin: aredis.Redis, channel: str, expected: int) -> bool:
    return await numsub(admin, channel) == expected


async def test_delivery_resumes_after_the_pubsub_connection_is_killed(
    make_bus: BusFactory, admin: aredis.Redis, redis_prefix: str
) -> None:
    bus, publisher = make_bus(), make_bus()
    inbox, other = Inbox(), Inbox()
    for _ in range(3):
        await bus.subscribe("meeting:t:m:transcript", inbox)
    await bus.subscribe("meeting:t:m:status", other)
    assert bus.connects == 1

    for round_ in range(2):  # twice: a reconnected link must survive the next kill too
        await kill_pubsub(admin, bus)
        inbox.items.clear()
        await publish_until(publisher, "meeting:t:m:transcript", inbox)
        assert bus.connects == 2 + round_
        # Restored, and not twice: one connection, one subscription per channel.
        (client,) = await pubsub_clients(admin, bus)
        assert int(client["sub"]) == 2
        assert await numsub(admin, f"{redis_prefix}meeting:t:m:transcript") == 1
        assert await numsub(admin, f"{redis_prefix}meeting:t:m:status") == 1
    other.items.clear()
    await publish_until(publisher, "meeting:t:m:status", other)


async def test_rooms_on_redis_keep_one_subscription(
    make_bus: BusFactory, admin: aredis.Redis, redis_prefix: str
) -> None:
    bus, publisher = make_bus(), make_bus()
    rooms = RoomRegistry(bus)
    outboxes = [ViewerQueue() for _ in range(8)]
    await asyncio.gather(*(rooms.join("t", "m", o) for o in outboxes))
    assert await numsub(admin, f"{redis_prefix}meeting:t:m:transcript") == 1
    await publisher.publish("meeting:t:m:transcript", b"seg")
    await eventually(lambda: all(o.pending == 1 for o in outboxes))
    first = outboxes[0]._queue[0]
    assert all(o._queue[0] is first for o in outboxes)
    await asyncio.gather(*(rooms.leave("t", "m", o) for o in outboxes))
    await eventually(lambda: numsub_is(admin, f"{redis_prefix}meeting:t:m:transcript", 0))


async def test_a_burst_arrives_complete_and_in_order(make_bus: BusFactory) -> None:
    bus, publisher = make_bus(), make_bus()
    inbox = Inbox()
    await bus.subscribe("burst", inbox)
    sent = [f"{i:05d}".encode() for i in range(2000)]
    for data in sent:
        await publisher.publish("burst", data)
    await eventually(lambda: len(inbox.items) >= len(sent), what="burst delivered")
    assert inbox.items == sent


async def test_a_burst_read_at_once_is_handed_out_in_batches(
    make_bus: BusFactory, redis_url: str, redis_prefix: str
) -> None:
    """Thousands of messages arriving in a few reads are all delivered in order, at most
    `_REPLIES_PER_BATCH` per turn of the event loop: viewers' writers run in between."""
    bus = make_bus()
    turns = 0
    seen_at_turn: list[int] = []

    def inbox(data: bytes) -> None:
        seen_at_turn.append(turns)

    async def tick() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    await bus.subscribe("flood", inbox)
    ticker = asyncio.create_task(tick())
    client = aredis.Redis.from_url(redis_url)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for i in range(5000):
                pipe.publish(redis_prefix + "flood", b"%05d" % i)
            await pipe.execute()
        await eventually(lambda: len(seen_at_turn) >= 5000, what="the flood delivered")
    finally:
        ticker.cancel()
        await client.aclose()
    per_turn = max(seen_at_turn.count(turn) for turn in set(seen_at_turn))
    assert per_turn <= bus_redis._REPLIES_PER_BATCH


@pytest.mark.parametrize("link", ["tls", "unix"])
async def test_delivery_over_tls_and_a_socket_file(
    make_bus: BusFactory, tmp_path: Path, link: str
) -> None:
    """rediss:// and unix://: the pub/sub reader takes over redis-py's transport of either."""
    server = PrivateRedis(tmp_path, tls=self_signed_cert(tmp_path) if link == "tls" else None)
    await server.start()
    try:
        url = server.url if link == "tls" else server.unix_url
        bus, publisher = make_bus(url), make_bus(url)
        inbox = Inbox()
        await bus.subscribe("secure", inbox)
        sent = [b"%04d" % i + b"x" * 2000 for i in range(300)]  # records larger than one read
        for data in sent:
            await publisher.publish("secure", data)
        await eventually(lambda: len(inbox.items) >= len(sent), what=f"delivered over {link}")
        assert inbox.items == sent
        assert await bus.healthy()
    finally:
        await server.stop()


async def test_deployments_on_other_databases_of_one_redis_do_not_hear_each_other(
    make_bus: BusFactory, redis_url: str
) -> None:
    """Redis pub/sub ignores the database number; the bus does not: a meeting published by a
    deployment on db 6 does not reach one on db 7 with the same key prefix."""
    server = redis_url.rsplit("/", 1)[0]
    staging, staging_publisher = make_bus(f"{server}/6"), make_bus(f"{server}/6")
    production = make_bus(f"{server}/7")
    heard_in_staging, heard_in_production = Inbox(), Inbox()
    await staging.subscribe("meeting:t1:m1:transcript", heard_in_staging)
    await production.subscribe("meeting:t1:m1:transcript", heard_in_production)
    await staging_publisher.publish("meeting:t1:m1:transcript", b"staging's words")
    await production.publish("meeting:t1:m1:transcript", b"production's marker")
    await eventually(lambda: heard_in_production.items, what="production's own message")
    await eventually(lambda: heard_in_staging.items, what="staging's own message")
    assert heard_in_production.items == [b"production's marker"]
    assert heard_in_staging.items == [b"staging's words"]
    assert make_bus(f"{server}/0").channel_prefix == staging.prefix  # db 0: names unchanged


async def test_a_backlog_handed_out_slowly_is_not_taken_for_a_silent_link(
    make_bus: BusFactory, redis_url: str, redis_prefix: str
) -> None:
    """Replies read at once are handed out in batches, reading paused meanwhile: a backlog that
    takes longer than the PING deadlines (slow rooms, a busy loop) is a live link all along."""
    import time

    bus = make_bus()
    seen: list[bytes] = []

    def slow_room(data: bytes) -> None:
        time.sleep(0.002)  # the room's work, standing in for a loaded process
        seen.append(data)

    await bus.subscribe("backlog", slow_room)
    client = aredis.Redis.from_url(redis_url)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for i in range(1000):  # 2 s of handling; PING after 0.3 s idle, given up 0.3 s later
                pipe.publish(redis_prefix + "backlog", b"%04d" % i)
            await pipe.execute()
    finally:
        await client.aclose()
    await eventually(lambda: len(seen) >= 1000, within=30, what="the backlog handed out")
    assert seen == [b"%04d" % i for i in range(1000)]
    assert bus.connects == 1


async def test_healthy_reflects_the_link(make_bus: BusFactory, private_redis: PrivateRedis) -> None:
    bus = make_bus(private_redis.url)
    await bus.start()
    await eventually(bus.healthy, what="healthy")
    await private_redis.stop()
    assert not await bus.healthy()


async def test_redis_restart_publish_fails_fast_then_everything_recovers(
    make_bus: BusFactory, private_redis: PrivateRedis
) -> None:
    bus = make_bus(private_redis.url, subscribe_timeout_s=1.0)
    publisher = make_bus(private_redis.url)
    inbox = Inbox()
    await bus.subscribe("meeting:t:m:transcript", inbox)
    await publisher.publish("meeting:t:m:transcript", b"before")
    await eventually(lambda: inbox.items == [b"before"])

    await private_redis.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BusUnavailable):
        await publisher.publish("meeting:t:m:transcript", b"while down")
    assert loop.time() - started < 3.0
    # Subscribing while down waits for the link, then times out with a clear error.
    with pytest.raises(BusUnavailable):
        await bus.subscribe("meeting:t:m:status", Inbox())
    assert bus.subscribed_topics() == {"meeting:t:m:transcript"}

    await private_redis.start()  # same port, empty server: no subscriptions survive on it
    inbox.items.clear()
    await publish_until(publisher, "meeting:t:m:transcript", inbox)
    assert await bus.healthy()
    client = private_redis.client()
    try:
        assert (await client.pubsub_numsub(f"{bus.prefix}meeting:t:m:transcript"))[0][1] == 1
    finally:
        await client.aclose()


async def test_subscribe_during_an_outage_completes_when_redis_returns(
    make_bus: BusFactory, private_redis: PrivateRedis
) -> None:
    bus = make_bus(private_redis.url, subscribe_timeout_s=20.0)
    publisher = make_bus(private_redis.url)
    await bus.subscribe("a", Inbox())
    await private_redis.stop()
    inbox = Inbox()
    subscribing = asyncio.create_task(bus.subscribe("b", inbox))
    await eventually(lambda: "b" in bus.subscribed_topics())
    assert not subscribing.done()
    await private_redis.start()
    await asyncio.wait_for(subscribing, 15)
    await publisher.publish("b", b"hi")
    await eventually(lambda: inbox.items == [b"hi"])


async def test_during_a_long_outage_subscribe_fails_at_once(
    make_bus: BusFactory, private_redis: PrivateRedis
) -> None:
    """Viewers joining while Redis has been gone for a while are refused now, not one by one
    after a full subscribe timeout each."""
    bus = make_bus(private_redis.url, subscribe_timeout_s=0.3)
    await bus.subscribe("a", Inbox())
    await private_redis.stop()
    with pytest.raises(BusUnavailable):  # the first waits out its timeout
        await bus.subscribe("b", Inbox())
    loop = asyncio.get_running_loop()
    started = loop.time()
    for topic in ("c", "d", "e"):
        with pytest.raises(BusUnavailable):
            await bus.subscribe(topic, Inbox())
    assert loop.time() - started < 0.3  # all three together took less than one timeout
    await private_redis.start()
    await eventually(lambda: bus.connects >= 2, within=10, what="reconnected")
    await bus.subscribe("f", Inbox())  # and it comes back


async def test_publish_times_out_instead_of_hanging(
    make_bus: BusFactory, private_redis: PrivateRedis
) -> None:
    publisher = make_bus(private_redis.url, op_timeout_s=0.3)
    await publisher.publish("t", b"warm up the pool")
    client = private_redis.client()
    try:
        await client.execute_command("CLIENT", "PAUSE", "20000", "WRITE")  # PUBLISH blocks
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(BusUnavailable):
            await publisher.publish("t", b"stuck")
        # Each attempt times out after op_timeout_s; redis-py retries 3 times (with backoff).
        assert loop.time() - started < 10.0
        await client.execute_command("CLIENT", "UNPAUSE")
    finally:
        await client.aclose()


async def test_silent_link_is_detected_by_ping_and_replaced(
    make_bus: BusFactory, private_redis: PrivateRedis
) -> None:
    bus = make_bus(private_redis.url, ping_interval_s=0.2, ping_timeout_s=0.2)
    publisher = make_bus(private_redis.url)
    inbox = Inbox()
    await bus.subscribe("t", inbox)
    client = private_redis.client()
    try:
        # The server stops answering (PING included) without closing the socket: half-open.
        await client.execute_command("CLIENT", "PAUSE", "1000", "ALL")
        await eventually(lambda: bus.connects >= 2, within=10, what="reconnect after silence")
        await publish_until(publisher, "t", inbox)
        # The abandoned connection was closed, not left subscribed next to the new one.
        assert (await client.pubsub_numsub(f"{bus.prefix}t"))[0][1] == 1
        assert len([c for c in await client.client_list() if c["name"] == bus.client_name]) == 1
    finally:
        await client.aclose()


async def test_first_publish_after_a_redis_restart_goes_out_on_a_fresh_connection(
    make_bus: BusFactory, private_redis: PrivateRedis
) -> None:
    """Every pooled connection dies with a restart: the first publish on one is retried on a new
    connection (redis-py Retry), not lost."""
    bus = make_bus(private_redis.url)
    publisher = make_bus(private_redis.url)
    inbox = Inbox()
    await bus.subscribe("meeting:t:m:transcript", inbox)
    await publisher.publish("meeting:t:m:transcript", b"before")  # the pool now holds a connection
    await eventually(lambda: inbox.items == [b"before"], what="first message")
    await private_redis.stop()
    await private_redis.start()
    admin = private_redis.client()
    try:
        channel = f"{bus.prefix}meeting:t:m:transcript"
        await eventually(lambda: numsub_is(admin, channel, 1), within=30, what="resubscribed")
    finally:
        await admin.aclose()
    await publisher.publish("meeting:t:m:transcript", b"after")  # must not raise
    await eventually(lambda: inbox.items == [b"before", b"after"], what="published once")
