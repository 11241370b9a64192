"""Final numbering without the database: in-process and on Redis (real servers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from store import numbering_redis
from store.numbering import Claim, NumberingUnavailable, SegmentNumbering
from store.numbering_local import LocalNumbering
from store.numbering_redis import RedisNumbering
from tests.util import PrivateRedis, eventually


class Seeds:
    """A seed that answers from a dict (what the store holds) and counts its calls."""

    def __init__(self, **known: int) -> None:
        self.known = known
        self.calls = 0
        self.down = False
        self.hang = False

    async def __call__(self, tenant_id: str, meeting_id: str) -> int:
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("database down")
        if self.hang:  # a partition: the read never answers
            await asyncio.Event().wait()
        return self.known.get(meeting_id, 0)


Factory = Callable[[Seeds], SegmentNumbering]


@pytest.fixture(params=["local", "redis"])
async def make(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str
) -> AsyncIterator[Factory]:
    made: list[SegmentNumbering] = []

    def factory(seeds: Seeds) -> SegmentNumbering:
        numbering: SegmentNumbering = (
            LocalNumbering(seeds)
            if request.param == "local"
            else RedisNumbering(redis_url, seeds, prefix=redis_prefix)
        )
        made.append(numbering)
        return numbering

    yield factory
    for numbering in made:
        await numbering.aclose()


async def test_numbers_follow_the_seed_gap_free_per_meeting(make: Factory) -> None:
    seeds = Seeds(m1=41)
    numbering = make(seeds)
    got = [await numbering.next_number("t", "m1", Claim("s", n)) for n in range(1, 4)]
    assert got == [42, 43, 44]
    assert await numbering.next_number("t", "m2", Claim("s2", 1)) == 1
    assert await numbering.current("t", "m1") == 44
    assert seeds.calls == 2  # once per meeting: the counter needs no database afterwards
    seeds.down = True
    assert await numbering.next_number("t", "m1", Claim("s", 4)) == 45


async def test_asking_again_for_a_claim_returns_its_number(make: Factory) -> None:
    numbering = make(Seeds())
    first = await numbering.next_number("t", "m", Claim("s", 1))
    assert await numbering.next_number("t", "m", Claim("s", 1)) == first
    assert await numbering.next_number("t", "m", Claim("s", 2)) == first + 1


async def test_a_reserved_block_is_never_handed_out_to_anyone_else(make: Factory) -> None:
    """A recording's chunk reserves one number per final; live finals numbered at the same time
    get numbers before or after the block, never inside it."""
    numbering = make(Seeds(m=3))
    live, chunk = Claim("live", 1), Claim("job", 0)
    got = await asyncio.gather(
        numbering.next_number("t", "m", live),
        numbering.reserve("t", "m", chunk, 5),
        numbering.next_number("t", "m", Claim("live", 2)),
    )
    first = got[1]
    block = set(range(first, first + 5))
    assert not block & {got[0], got[2]}
    assert sorted([*block, got[0], got[2]]) == list(range(4, 11))  # gap-free
    assert await numbering.reserve("t", "m", chunk, 5) == first  # a retried chunk: its block
    assert await numbering.next_number("t", "m", Claim("live", 3)) == 11
    assert await numbering.current("t", "m") == 11


async def test_a_counter_cannot_be_seeded_without_its_seed(make: Factory) -> None:
    seeds = Seeds()
    seeds.down = True
    numbering = make(seeds)
    with pytest.raises(NumberingUnavailable):
        await numbering.next_number("t", "m", Claim("s", 1))
    seeds.down = False
    assert await numbering.next_number("t", "m", Claim("s", 1)) == 1


async def test_what_a_process_keeps_of_an_idle_meeting_is_dropped(
    redis_url: str, redis_prefix: str
) -> None:
    """A gateway runs for weeks through thousands of meetings: a meeting no number was asked of
    for `idle_forget_s` leaves this process's memory, and is seeded again if it resumes."""
    now = [0.0]
    seeds = Seeds(m0=0)
    local = LocalNumbering(seeds, clock=lambda: now[0], idle_forget_s=100)
    shared = RedisNumbering(
        redis_url, seeds, prefix=redis_prefix, clock=lambda: now[0], idle_forget_s=100
    )
    try:
        for numbering in (local, shared):
            for n in range(1000):
                now[0] += 0.01
                await numbering.next_number("t", f"m{n}", Claim("s", 1))
            assert numbering.floor("t", "m0") == 1
            now[0] += 100
            assert await numbering.next_number("t", "fresh", Claim("s", 1)) == 1
            assert numbering.floor("t", "m0") == 0
            assert len(numbering._floors) == 1
        assert set(local._counters) == {("t", "fresh")}
        seeds.known["m0"] = 7  # stored meanwhile: a resumed meeting continues from its store
        assert await local.next_number("t", "m0", Claim("s", 2)) == 8
    finally:
        await shared.aclose()


async def test_a_failed_seed_leaves_no_lock_behind() -> None:
    """Each meeting first numbered during an outage would otherwise keep a lock for good."""
    seeds = Seeds()
    seeds.down = True
    numbering = LocalNumbering(seeds)
    for n in range(100):
        with pytest.raises(NumberingUnavailable):
            await numbering.next_number("t", f"m{n}", Claim("s", 1))
    assert not numbering._seeding


async def test_concurrent_requests_get_distinct_consecutive_numbers(make: Factory) -> None:
    numbering = make(Seeds(m=10))
    got = await asyncio.gather(
        *(numbering.next_number("t", "m", Claim(f"s{n % 2}", n)) for n in range(50))
    )
    assert sorted(got) == list(range(11, 61))


async def test_replicas_share_one_counter(redis_url: str, redis_prefix: str) -> None:
    a = RedisNumbering(redis_url, Seeds(m=5), prefix=redis_prefix)
    b = RedisNumbering(redis_url, Seeds(m=5), prefix=redis_prefix)
    try:
        got = await asyncio.gather(
            *((a if n % 2 else b).next_number("t", "m", Claim(f"s{n % 2}", n)) for n in range(40))
        )
        assert sorted(got) == list(range(6, 46))
    finally:
        await a.aclose()
        await b.aclose()


async def test_redis_restart_reseeds_above_everything_this_replica_knows(
    private_redis: PrivateRedis,
) -> None:
    """Redis loses the counter: the next number continues from the seed (store, outbox, seen)
    or from this replica's own floor, whichever is higher: no repeat, no gap."""
    seeds = Seeds(m=3)  # the store has 3 finals
    numbering = RedisNumbering(private_redis.url, seeds, prefix="x:", op_timeout_s=1)
    try:
        assert await numbering.next_number("t", "m", Claim("s", 1)) == 4
        assert await numbering.next_number("t", "m", Claim("s", 2)) == 5  # not stored yet
        await private_redis.stop()
        with pytest.raises(NumberingUnavailable):
            await numbering.next_number("t", "m", Claim("s", 3))
        await private_redis.start()  # empty: no persistence
        # The store still says 3 (finals 4 and 5 wait in this replica's outbox): the floor wins.
        assert await numbering.next_number("t", "m", Claim("s", 3)) == 6
        assert seeds.calls == 2
        other = RedisNumbering(private_redis.url, Seeds(m=3), prefix="x:")
        try:
            assert await other.next_number("t", "m", Claim("s2", 1)) == 7
        finally:
            await other.aclose()
    finally:
        await numbering.aclose()


async def test_a_counter_raised_after_a_renumbering_continues_above_it(make: Factory) -> None:
    numbering = make(Seeds(m=2))
    assert await numbering.next_number("t", "m", Claim("s", 1)) == 3
    await numbering.ensure_at_least("t", "m", 9)  # the store moved a final to 9
    await numbering.ensure_at_least("t", "m", 4)  # never lowers
    assert await numbering.next_number("t", "m", Claim("s", 2)) == 10


async def test_a_raise_reaches_other_replicas(redis_url: str, redis_prefix: str) -> None:
    a = RedisNumbering(redis_url, Seeds(), prefix=redis_prefix)
    b = RedisNumbering(redis_url, Seeds(), prefix=redis_prefix)
    try:
        assert await a.next_number("t", "m", Claim("a", 1)) == 1
        await a.ensure_at_least("t", "m", 7)
        assert await b.next_number("t", "m", Claim("b", 1)) == 8
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_resent_numbering_script_neither_skips_nor_doubles_a_number(
    redis_url: str, redis_prefix: str
) -> None:
    """redis-py re-sends the script after a connection error, even when the first one ran and
    only its reply was lost: keyed by the claim, the second run returns the first's number."""
    numbering = RedisNumbering(redis_url, Seeds(m=2), prefix=redis_prefix)
    try:
        assert numbering._client.get_retry().get_retries() >= 1  # type: ignore[union-attr]
        first = await numbering.next_number("t", "m", Claim("s", 1))
        keys = [numbering.counter_key("t", "m"), numbering.claims_key("t", "m")]
        resent = await numbering._call(keys, Claim("s", 1), 0, "", 1)  # the retry's second run
        assert first == resent == 3
        assert await numbering.current("t", "m") == 3
        assert await numbering.next_number("t", "m", Claim("s", 2)) == 4
    finally:
        await numbering.aclose()


async def test_a_meeting_deleted_elsewhere_is_numbered_from_one_when_used_again(
    redis_url: str, redis_prefix: str
) -> None:
    """Replica `a` numbered the meeting; `b` deleted it (its keys and rows went). Started again
    under the same id, the meeting's finals are 1, 2, ... on `a` too, once `a` has heard of the
    deletion (services wire MeetingDeletion's listeners to `forget_seen`)."""
    a = RedisNumbering(redis_url, Seeds(), prefix=redis_prefix)
    b = RedisNumbering(redis_url, Seeds(), prefix=redis_prefix)
    try:
        assert [await a.next_number("t", "m", Claim("s1", n)) for n in range(2)] == [1, 2]
        await b.forget("t", "m")
        a.forget_seen("t", "m")
        assert await a.next_number("t", "m", Claim("s2", 0)) == 1
    finally:
        await a.aclose()
        await b.aclose()


class Stored:
    """What the database holds, for the marks: the meetings with finals (or down)."""

    def __init__(self, *meetings: tuple[str, str]) -> None:
        self.meetings = list(meetings)
        self.down = False
        self.reads = 0

    async def __call__(self) -> AsyncIterator[list[tuple[str, str]]]:
        self.reads += 1
        if self.down:
            raise ConnectionRefusedError("database down")
        yield list(self.meetings)


async def marked_numbering(
    redis_url: str, prefix: str, seeds: Seeds, stored: Stored
) -> RedisNumbering:
    """A RedisNumbering whose epoch is established (the stored meetings marked first)."""
    numbering = RedisNumbering(
        redis_url, seeds, prefix=prefix, offline_seed=Seeds(), numbered_meetings=stored
    )
    await numbering.warm_up()
    await eventually(lambda: numbering._epoch is not None, what="the epoch established")
    return numbering


async def test_a_new_meeting_is_numbered_while_the_database_is_down(
    redis_url: str, redis_prefix: str
) -> None:
    """The database cannot be read for a seed: a meeting Redis never numbered has nothing
    stored, so the offline seed (outbox, what viewers were given) is enough; one numbered
    before whose counter expired, or one stored before marks existed (marked from the database
    when the epoch was set), still needs the database (its finals are stored)."""
    seeds, stored = Seeds(), Stored(("t", "legacy"))
    numbering = await marked_numbering(redis_url, redis_prefix, seeds, stored)
    try:
        assert await numbering.next_number("t", "old", Claim("s0", 1)) == 1  # the database up
        seeds.down = True
        got = [await numbering.next_number("t", "fresh", Claim("s1", n)) for n in range(2)]
        assert got == [1, 2]
        with pytest.raises(NumberingUnavailable):
            await numbering.next_number("t", "legacy", Claim("s4", 1))
        # The old meeting's counter expired (7 days idle): its mark says it has stored finals.
        await numbering._client.delete(  # what the counter's TTL does
            numbering.counter_key("t", "old"), numbering.claims_key("t", "old")
        )
        with pytest.raises(NumberingUnavailable):
            await numbering.next_number("t", "old", Claim("s2", 1))
        # Deleted, the meeting has nothing stored: numbered from 1 again without the database.
        await numbering.forget("t", "old")
        assert await numbering.next_number("t", "old", Claim("s3", 1)) == 1
    finally:
        await numbering.aclose()


async def test_after_redis_lost_its_data_a_new_looking_meeting_waits_for_the_database(
    redis_url: str, redis_prefix: str
) -> None:
    """A Redis that lost its data lost every mark too: with its epoch gone (or never set by
    a process that could read the database), no meeting is taken for new."""
    seeds, stored = Seeds(), Stored()
    numbering = await marked_numbering(redis_url, redis_prefix, seeds, stored)
    try:
        assert await numbering.next_number("t", "m", Claim("s0", 1)) == 1
        keys = [k async for k in numbering._client.scan_iter(match=f"{redis_prefix}*")]
        await numbering._client.delete(*keys)  # a restart without persistence
        seeds.down = stored.down = True
        with pytest.raises(NumberingUnavailable):
            await numbering.next_number("t", "m", Claim("s1", 1))
        # A process started now (the database still down) cannot vouch for the marks either.
        late = RedisNumbering(
            redis_url, seeds, prefix=redis_prefix, offline_seed=Seeds(), numbered_meetings=stored
        )
        try:
            await late.warm_up()
            with pytest.raises(NumberingUnavailable):
                await late.next_number("t", "m", Claim("s2", 1))
        finally:
            await late.aclose()
    finally:
        await numbering.aclose()


async def test_redis_losing_its_data_while_the_database_answers_gets_the_marks_written_again(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Noticed without a database outage (the only time a seed looked before): a database
    outage after it numbers a new meeting as before the loss."""
    monkeypatch.setattr(numbering_redis, "EPOCH_RETRY_S", 0.05)
    seeds, stored = Seeds(), Stored(("t", "legacy"))
    numbering = await marked_numbering(redis_url, redis_prefix, seeds, stored)
    try:
        assert await numbering.next_number("t", "m", Claim("s0", 1)) == 1
        keys = [k async for k in numbering._client.scan_iter(match=f"{redis_prefix}*")]
        await numbering._client.delete(*keys)  # a restart without persistence

        async def epoch_back() -> bool:
            return await numbering._client.get(numbering.epoch_key) is not None

        await eventually(epoch_back, what="the epoch written again")
        await eventually(lambda: numbering._epoch is not None, what="the epoch read again")
        seeds.down = stored.down = True
        assert await numbering.next_number("t", "fresh", Claim("s1", 1)) == 1
        with pytest.raises(NumberingUnavailable):  # marked again: its finals are stored
            await numbering.next_number("t", "legacy", Claim("s2", 1))
    finally:
        await numbering.aclose()


class LosingRedis(Stored):
    """Stored meetings read in two batches, Redis losing its data (once) between them."""

    def __init__(self, redis: Callable[[], Any], prefix: str, *meetings: tuple[str, str]) -> None:
        super().__init__(*meetings)
        self.redis, self.prefix, self.lost = redis, prefix, False

    async def __call__(self) -> AsyncIterator[list[tuple[str, str]]]:
        self.reads += 1
        yield self.meetings[:1]
        if not self.lost:
            self.lost = True
            client = self.redis()
            keys = [k async for k in client.scan_iter(match=f"{self.prefix}*")]
            await client.delete(*keys)
        yield self.meetings[1:]


async def test_redis_losing_its_data_during_the_mark_build_sets_no_epoch_over_lost_marks(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marks written before the loss are gone: an epoch set then would take a meeting with
    stored finals for new in the next database outage, and number it from 1 again."""
    monkeypatch.setattr(numbering_redis, "EPOCH_RETRY_S", 0.05)
    seeds = Seeds()
    numbering: RedisNumbering | None = None
    stored = LosingRedis(lambda: numbering._client, redis_prefix, ("t", "one"), ("t", "two"))
    numbering = RedisNumbering(
        redis_url, seeds, prefix=redis_prefix, offline_seed=Seeds(), numbered_meetings=stored
    )
    try:
        await numbering.warm_up()
        await eventually(lambda: numbering._epoch is not None, what="the epoch")
        assert stored.reads >= 2  # the first build was refused its epoch
        seeds.down = stored.down = True
        for meeting in ("one", "two"):
            with pytest.raises(NumberingUnavailable):
                await numbering.next_number("t", meeting, Claim("s", 1))
    finally:
        await numbering.aclose()


async def test_a_build_the_database_refused_is_logged_retried_and_gives_its_lock_back(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """Held until it expired (10 minutes), the lock kept every replica from building the marks
    once the database answered again; and at LOG_LEVEL=DEBUG the refusal's log line raised
    (keyword arguments to a standard logger), ending the task that builds them."""
    monkeypatch.setattr(numbering_redis, "EPOCH_RETRY_S", 0.05)
    caplog.set_level(logging.DEBUG, logger="store.numbering")
    seeds, stored = Seeds(), Stored()
    stored.down = True
    numbering = RedisNumbering(
        redis_url, seeds, prefix=redis_prefix, offline_seed=Seeds(), numbered_meetings=stored
    )
    try:
        await numbering.warm_up()
        await eventually(lambda: stored.reads >= 2, what="builds refused by the database")
        assert "numbering marks not written yet (ConnectionRefusedError)" in caplog.text
        stored.down = False
        await eventually(lambda: numbering._epoch is not None, within=10, what="the epoch")
    finally:
        await numbering.aclose()


class GatedStored(Stored):
    """Stored meetings read a batch at a time, each batch after the test lets it go."""

    def __init__(self, *meetings: tuple[str, str]) -> None:
        super().__init__(*meetings)
        self.gates = [asyncio.Event() for _ in meetings]
        self.sent = 0

    async def __call__(self) -> AsyncIterator[list[tuple[str, str]]]:
        self.reads += 1
        for meeting, gate in zip(self.meetings, self.gates, strict=True):
            await gate.wait()
            self.sent += 1
            yield [meeting]


async def test_a_long_mark_build_keeps_its_lock(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a large database the marks take longer than the lock's expiry: each batch extends
    it, so the build's epoch is not refused (a refused one would be built again, as slowly)."""
    monkeypatch.setattr(numbering_redis, "EPOCH_BUILD_S", 2)
    stored = GatedStored(("t", "one"), ("t", "two"), ("t", "three"))
    numbering = RedisNumbering(
        redis_url, Seeds(), prefix=redis_prefix, offline_seed=Seeds(), numbered_meetings=stored
    )
    client = numbering._client

    async def lock_left_ms(below: int | None = None, above: int | None = None) -> bool:
        left = await client.pttl(numbering.marking_key)
        return (below is None or 0 < left < below) and (above is None or left > above)

    try:
        await numbering.warm_up()
        stored.gates[0].set()
        await eventually(lambda: stored.sent == 1, what="the first batch")
        await eventually(lambda: lock_left_ms(below=1000), what="half the lock's time gone")
        stored.gates[1].set()
        await eventually(lambda: lock_left_ms(above=1500), what="the lock extended")
        stored.gates[2].set()
        await eventually(lambda: numbering._epoch is not None, what="the epoch")
        assert stored.reads == 1  # built once
    finally:
        await numbering.aclose()


async def test_a_database_that_hangs_still_leaves_time_for_the_offline_seed(
    redis_url: str, redis_prefix: str
) -> None:
    """A partition makes the seed's read hang rather than fail: it is cut short, well inside
    a numbering attempt, and a new meeting is numbered all the same."""
    seeds = Seeds()
    numbering = await marked_numbering(redis_url, redis_prefix, seeds, Stored())
    try:
        seeds.hang = True
        async with asyncio.timeout(5):  # one numbering attempt's budget (stream_segments)
            assert await numbering.next_number("t", "new", Claim("s", 1)) == 1
            # A meeting with stored finals cannot be seeded offline: numbering is unavailable
            # (the recordings' fallback and the live retries catch that, not a TimeoutError).
            seeds.known["old"] = 3
            await numbering.ensure_at_least("t", "old", 3)  # marked: not new
            await numbering._client.delete(numbering.counter_key("t", "old"))
            with pytest.raises(NumberingUnavailable):
                await numbering.next_number("t", "old", Claim("s", 1))
    finally:
        await numbering.aclose()


async def test_a_meeting_with_recorded_finals_is_not_taken_for_new(
    redis_url: str, redis_prefix: str
) -> None:
    """Recordings are numbered by the database, then the counter raised: that marks the
    meeting too, so it is not numbered from 1 during an outage."""
    seeds = Seeds()
    numbering = await marked_numbering(redis_url, redis_prefix, seeds, Stored())
    try:
        await numbering.ensure_at_least("t", "recorded", 7)
        await numbering._client.delete(numbering.counter_key("t", "recorded"))
        seeds.down = True
        with pytest.raises(NumberingUnavailable):
            await numbering.next_number("t", "recorded", Claim("s", 1))
    finally:
        await numbering.aclose()
