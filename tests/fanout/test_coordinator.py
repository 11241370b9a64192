"""LocalCoordinator and RedisCoordinator (real Redis; a private server for outages)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aredis

from fanout.coordinator import Coordinator, CoordinatorUnavailable
from fanout.coordinator_local import LocalCoordinator
from fanout.coordinator_redis import RedisCoordinator
from tests.util import PrivateRedis, eventually

CoordinatorFactory = Callable[..., RedisCoordinator]


@pytest.fixture
async def make_coordinator(redis_url: str, redis_prefix: str) -> AsyncIterator[CoordinatorFactory]:
    made: list[RedisCoordinator] = []

    def make(url: str = redis_url, **kwargs: Any) -> RedisCoordinator:
        coordinator = RedisCoordinator(url, prefix=redis_prefix, **kwargs)
        made.append(coordinator)
        return coordinator

    yield make
    for coordinator in made:
        await coordinator.aclose()


@pytest.fixture(params=["local", "redis"])
async def coordinator(
    request: pytest.FixtureRequest, make_coordinator: CoordinatorFactory
) -> AsyncIterator[Coordinator]:
    if request.param == "local":
        yield LocalCoordinator()
    else:
        coordinator = make_coordinator()
        await coordinator.start()
        yield coordinator


# -- behaviour both coordinators share ---------------------------------------------------------


async def test_one_ingest_per_meeting_and_source(coordinator: Coordinator) -> None:
    lease = await coordinator.acquire_ingest("t", "m", "mic", "stream-1")
    assert lease is not None
    assert await coordinator.acquire_ingest("t", "m", "mic", "stream-2") is None
    other_source = await coordinator.acquire_ingest("t", "m", "screen", "stream-3")
    assert other_source is not None
    assert await coordinator.acquire_ingest("t2", "m", "mic", "stream-4") is not None
    await lease.release()
    await lease.release()  # idempotent
    again = await coordinator.acquire_ingest("t", "m", "mic", "stream-2")
    assert again is not None and not again.lost.is_set()


async def test_subscriber_cap(coordinator: Coordinator) -> None:
    assert await coordinator.join_meeting("t", "m", "c1", limit=2)
    assert await coordinator.join_meeting("t", "m", "c2", limit=2)
    assert not await coordinator.join_meeting("t", "m", "c3", limit=2)
    assert await coordinator.join_meeting("t", "m", "c1", limit=2)  # already a member
    assert await coordinator.join_meeting("t", "other", "c3", limit=2)
    assert await coordinator.subscriber_count("t", "m") == 2
    await coordinator.leave_meeting("t", "m", "c2")
    await coordinator.leave_meeting("t", "m", "c2")  # idempotent
    assert await coordinator.subscriber_count("t", "m") == 1
    assert await coordinator.join_meeting("t", "m", "c3", limit=2)
    await coordinator.leave_meeting("t", "m", "c1")
    await coordinator.leave_meeting("t", "m", "c3")
    assert await coordinator.subscriber_count("t", "m") == 0


# -- RedisCoordinator across replicas -----------------------------------------------------------


async def test_lease_key_and_default_ttl(
    make_coordinator: CoordinatorFactory, admin: aredis.Redis, redis_prefix: str
) -> None:
    coordinator = make_coordinator()
    lease = await coordinator.acquire_ingest("t", "m", "mic", "stream-1")
    assert lease is not None
    key = f"{redis_prefix}ingest:t:m:mic"
    assert (await admin.get(key)).decode().startswith("stream-1:")
    assert 0 < await admin.pttl(key) <= 10_000  # a dead replica's lease is gone within 10 s
    await lease.release()
    assert not await admin.exists(key)


async def test_lease_is_exclusive_across_replicas(make_coordinator: CoordinatorFactory) -> None:
    one, two = make_coordinator(), make_coordinator()
    lease = await one.acquire_ingest("t", "m", "mic", "a")
    assert lease is not None
    assert await two.acquire_ingest("t", "m", "mic", "b") is None
    assert await two.acquire_ingest("t", "m", "screen", "b") is not None
    await lease.release()
    assert await two.acquire_ingest("t", "m", "mic", "b") is not None


async def test_renewal_keeps_the_lease_well_past_its_ttl(
    make_coordinator: CoordinatorFactory,
) -> None:
    one = make_coordinator(lease_ttl_s=0.4, renew_every_s=0.1)
    two = make_coordinator()
    await one.start()
    lease = await one.acquire_ingest("t", "m", "mic", "a")
    assert lease is not None
    loop = asyncio.get_running_loop()
    until = loop.time() + 4 * one.lease_ttl_s
    while loop.time() < until:  # watch for four TTLs: the lease must hold throughout
        assert await two.acquire_ingest("t", "m", "mic", "b") is None
        await asyncio.sleep(0.05)
    assert not lease.lost.is_set()


async def test_dead_replica_loses_its_lease_within_the_ttl(
    make_coordinator: CoordinatorFactory,
) -> None:
    ttl = 0.6
    dead = make_coordinator(lease_ttl_s=ttl, renew_every_s=0.1)
    alive = make_coordinator()
    await dead.start()
    assert await dead.acquire_ingest("t", "m", "mic", "a") is not None
    loop = asyncio.get_running_loop()
    await dead.abandon()  # renewal stops, nothing released: a crashed replica
    died_at = loop.time()
    taken: list[object] = []

    async def take_over() -> bool:
        lease = await alive.acquire_ingest("t", "m", "mic", "b")
        if lease is not None:
            taken.append(lease)
        return lease is not None

    await eventually(take_over, within=ttl + 2, interval=0.02, what="lease free after death")
    assert loop.time() - died_at <= ttl + 0.25


async def test_a_taken_over_lease_is_reported_lost_and_not_released(
    make_coordinator: CoordinatorFactory, admin: aredis.Redis, redis_prefix: str
) -> None:
    one = make_coordinator(lease_ttl_s=1.0, renew_every_s=0.1)
    await one.start()
    lease = await one.acquire_ingest("t", "m", "mic", "a")
    assert lease is not None
    key = f"{redis_prefix}ingest:t:m:mic"
    await admin.set(key, "someone-else", px=5000)  # e.g. it expired during a long pause
    await asyncio.wait_for(lease.lost.wait(), 2)
    assert lease.taken_over
    await lease.release()  # compare-and-delete: must not remove the new holder's key
    assert await admin.get(key) == b"someone-else"


async def test_a_vanished_lease_key_is_taken_again_not_lost(
    make_coordinator: CoordinatorFactory, admin: aredis.Redis, redis_prefix: str
) -> None:
    """Redis lost its data (restart without persistence, failover): nobody else holds the lease,
    so the live stream keeps it instead of being closed."""
    one = make_coordinator(lease_ttl_s=1.0, renew_every_s=0.1)
    await one.start()
    lease = await one.acquire_ingest("t", "m", "mic", "a")
    assert lease is not None
    key = f"{redis_prefix}ingest:t:m:mic"
    holder = await admin.get(key)
    await admin.delete(key)
    await eventually(lambda: _exists(admin, key), within=2, interval=0.02, what="lease re-taken")
    assert await admin.get(key) == holder
    assert not lease.lost.is_set() and not lease.taken_over
    assert await make_coordinator().acquire_ingest("t", "m", "mic", "b") is None


async def _exists(admin: aredis.Redis, key: str) -> bool:
    return bool(await admin.exists(key))


async def test_lease_rides_through_a_redis_outage_longer_than_its_ttl(
    make_coordinator: CoordinatorFactory, private_redis: PrivateRedis
) -> None:
    """Nobody can take a lease while Redis is down: the stream keeps it past its TTL, and the
    first renewal after Redis returns (empty: no persistence) takes it again."""
    one = make_coordinator(private_redis.url, lease_ttl_s=0.6, renew_every_s=0.1, op_timeout_s=0.2)
    await one.start()
    lease = await one.acquire_ingest("t", "m", "mic", "a")
    assert lease is not None
    await private_redis.stop()
    await eventually(lambda: one.leases_in_doubt() == 1, within=10, what="lease in doubt")
    await asyncio.sleep(one.lease_ttl_s * 2)  # an outage well past the TTL (not a wait)
    assert not lease.lost.is_set()
    await private_redis.start()
    key = one.ingest_key("t", "m", "mic")
    admin = private_redis.client()
    try:
        await eventually(
            lambda: _exists(admin, key), within=20, interval=0.05, what="lease taken again"
        )
        assert (await admin.get(key)).decode() == lease.token  # type: ignore[attr-defined]
        await eventually(lambda: one.leases_in_doubt() == 0, within=10, what="lease confirmed")
        assert not lease.lost.is_set()
        other = make_coordinator(private_redis.url)
        assert await other.acquire_ingest("t", "m", "mic", "b") is None
    finally:
        await admin.aclose()
    await lease.release()


async def test_lease_taken_by_another_stream_during_an_outage_is_lost_as_taken_over(
    make_coordinator: CoordinatorFactory, private_redis: PrivateRedis
) -> None:
    """A replica cut off from Redis keeps its stream; when it reaches Redis again and another
    stream holds the lease, it yields (the gateway closes it 4409, not 4503)."""
    one = make_coordinator(private_redis.url, lease_ttl_s=0.6, renew_every_s=0.1, op_timeout_s=0.2)
    await one.start()
    lease = await one.acquire_ingest("t", "m", "mic", "a")
    assert lease is not None
    await private_redis.stop()
    await eventually(lambda: one.leases_in_doubt() == 1, within=10, what="lease in doubt")
    assert not lease.lost.is_set()
    await private_redis.start()
    admin = private_redis.client()
    try:
        # Another replica's stream took the key (whether or not ours re-took it first).
        await admin.set(one.ingest_key("t", "m", "mic"), "replica-b:stream-b:nonce")
    finally:
        await admin.aclose()
    await asyncio.wait_for(lease.lost.wait(), 20)
    assert lease.taken_over
    await lease.release()  # compare-and-delete: the other stream keeps its lease


async def test_subscriber_cap_across_replicas(make_coordinator: CoordinatorFactory) -> None:
    one, two = make_coordinator(), make_coordinator()
    assert await one.join_meeting("t", "m", "c1", limit=3)
    assert await one.join_meeting("t", "m", "c2", limit=3)
    assert await two.join_meeting("t", "m", "c3", limit=3)
    assert not await two.join_meeting("t", "m", "c4", limit=3)
    assert not await one.join_meeting("t", "m", "c4", limit=3)
    assert await one.subscriber_count("t", "m") == await two.subscriber_count("t", "m") == 3
    await one.leave_meeting("t", "m", "c2")
    assert await two.join_meeting("t", "m", "c4", limit=3)
    assert not await one.join_meeting("t", "m", "c5", limit=3)


async def test_concurrent_joins_never_exceed_the_cap(make_coordinator: CoordinatorFactory) -> None:
    replicas = [make_coordinator() for _ in range(4)]
    results = await asyncio.gather(
        *(replicas[i % 4].join_meeting("t", "m", f"c{i}", limit=5) for i in range(40))
    )
    assert sum(results) == 5
    assert await replicas[0].subscriber_count("t", "m") == 5


async def test_members_are_refreshed_while_alive_and_purged_after_death(
    make_coordinator: CoordinatorFactory,
) -> None:
    ttl = 0.5
    dying = make_coordinator(member_ttl_s=ttl, member_refresh_s=0.1)
    other = make_coordinator()  # default 30 s member TTL: keeps the meeting's key alive
    await dying.start()
    assert await other.join_meeting("t", "m", "keeper", limit=3)
    assert await dying.join_meeting("t", "m", "c1", limit=3)
    assert await dying.join_meeting("t", "m", "c2", limit=3)
    loop = asyncio.get_running_loop()
    until = loop.time() + 3 * ttl
    while loop.time() < until:  # refreshed: still counted well past the member TTL
        assert await other.subscriber_count("t", "m") == 3
        assert not await other.join_meeting("t", "m", "c3", limit=3)
        await asyncio.sleep(0.05)

    await dying.abandon()
    died_at = loop.time()
    await eventually(
        lambda: other.join_meeting("t", "m", "c3", limit=3), within=ttl + 2, what="purge"
    )
    assert loop.time() - died_at <= ttl + 0.25
    assert await other.subscriber_count("t", "m") == 2  # keeper and c3; both dead ones purged
    assert await other.join_meeting("t", "m", "c4", limit=3)


async def test_members_are_counted_again_after_redis_lost_their_set(
    make_coordinator: CoordinatorFactory, admin: aredis.Redis, redis_prefix: str
) -> None:
    """Redis lost its data (a restart without persistence): the viewers still connected on
    every replica are counted again by each replica's next refresh, not only once they
    reconnect (the first version re-added only the first replica's: the others saw a set)."""
    one = make_coordinator(member_refresh_s=0.1)
    two = make_coordinator(member_refresh_s=0.1)
    await one.start()
    await two.start()
    assert await one.join_meeting("t", "m", "c1", limit=3)
    assert await one.join_meeting("t", "m", "c2", limit=3)
    assert await two.join_meeting("t", "m", "c3", limit=3)
    await admin.delete(f"{redis_prefix}subs:t:m")

    async def counted_again() -> bool:
        return await one.subscriber_count("t", "m") == 3

    await eventually(counted_again, within=30, interval=0.02, what="members counted again")
    assert not await two.join_meeting("t", "m", "c4", limit=3)  # the cap holds again


async def test_a_viewer_leaving_during_a_refresh_is_not_counted_again(
    make_coordinator: CoordinatorFactory,
) -> None:
    """The refresh adds missing members back; one that left while it was on its way (its
    removal reached Redis first) must not stay counted, refusing the next viewer."""
    coordinator = make_coordinator(member_ttl_s=60, member_refresh_s=30)  # refreshed by hand
    await coordinator.start()
    assert await coordinator.join_meeting("t", "m", "c0", limit=2)
    assert await coordinator.join_meeting("t", "m", "c1", limit=2)
    script = coordinator._refresh

    async def leave_first(**kwargs: Any) -> Any:
        # The race, made certain: c1 leaves (and its removal reaches Redis) after the refresh
        # took its list of members and before its script runs.
        await coordinator.leave_meeting("t", "m", "c1")
        return await script(**kwargs)

    coordinator._refresh = leave_first  # type: ignore[method-assign]
    await coordinator._refresh_members()
    assert await coordinator.subscriber_count("t", "m") == 1
    assert await coordinator.join_meeting("t", "m", "c2", limit=2)


async def test_meeting_key_expires_with_its_last_member(
    make_coordinator: CoordinatorFactory, admin: aredis.Redis, redis_prefix: str
) -> None:
    coordinator = make_coordinator(member_ttl_s=5.0)
    assert await coordinator.join_meeting("t", "m", "c1", limit=3)
    assert 0 < await admin.pttl(f"{redis_prefix}subs:t:m") <= 5000


async def test_aclose_gives_back_leases_and_slots(make_coordinator: CoordinatorFactory) -> None:
    one, two = make_coordinator(), make_coordinator()
    assert await one.acquire_ingest("t", "m", "mic", "a") is not None
    assert await one.join_meeting("t", "m", "c1", limit=1)
    await one.aclose()
    assert await two.acquire_ingest("t", "m", "mic", "b") is not None
    assert await two.subscriber_count("t", "m") == 0
    assert await two.join_meeting("t", "m", "c2", limit=1)
    with pytest.raises(RuntimeError):
        await one.acquire_ingest("t", "m", "x", "a")


async def test_unreachable_redis_is_reported_not_hung(
    make_coordinator: CoordinatorFactory, private_redis: PrivateRedis
) -> None:
    coordinator = make_coordinator(private_redis.url, op_timeout_s=0.3)
    assert await coordinator.join_meeting("t", "m", "c1", limit=5)
    await private_redis.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CoordinatorUnavailable):
        await coordinator.join_meeting("t", "m", "c2", limit=5)
    with pytest.raises(CoordinatorUnavailable):
        await coordinator.acquire_ingest("t", "m", "mic", "a")
    with pytest.raises(CoordinatorUnavailable):
        await coordinator.subscriber_count("t", "m")
    await coordinator.leave_meeting("t", "m", "c1")  # cleanup never raises
    assert loop.time() - started < 3.0


def test_rejects_renewal_slower_than_half_the_ttl(redis_url: str) -> None:
    with pytest.raises(ValueError):
        RedisCoordinator(redis_url, lease_ttl_s=8.0, renew_every_s=5.0)
    with pytest.raises(ValueError):
        RedisCoordinator(redis_url, member_ttl_s=3.0, member_refresh_s=3.0)


async def test_a_join_storm_is_accepted_with_few_redis_round_trips(
    make_coordinator: CoordinatorFactory, redis_url: str, redis_prefix: str
) -> None:
    """1,000 viewers joining one meeting at once through a 2-connection pool: all get in (the
    commands wait for a connection rather than fail) and joins are coalesced per meeting."""
    coordinator = make_coordinator(max_connections=2, pool_timeout_s=5.0)
    joined = await asyncio.gather(
        *(coordinator.join_meeting("t", "storm", f"c{i}", 1500) for i in range(1000))
    )
    assert all(joined)
    assert coordinator._joins.flushes <= 10
    # Commands that are not coalesced queue for one of the two connections instead of failing.
    counts = await asyncio.gather(*(coordinator.subscriber_count("t", "storm") for _ in range(300)))
    assert counts == [1000] * 300
    await asyncio.gather(*(coordinator.leave_meeting("t", "storm", f"c{i}") for i in range(1000)))
    assert await coordinator.subscriber_count("t", "storm") == 0
    assert coordinator._leaves.flushes <= 10


async def test_a_join_storm_over_the_cap_admits_exactly_the_cap(
    make_coordinator: CoordinatorFactory,
) -> None:
    a, b = make_coordinator(max_connections=2), make_coordinator(max_connections=2)
    joined = await asyncio.gather(
        *((a if i % 2 else b).join_meeting("t", "full", f"c{i}", 300) for i in range(1000))
    )
    assert sum(joined) == 300
    assert await a.subscriber_count("t", "full") == 300
