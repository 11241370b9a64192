"""Deleting a meeting reaches every replica even when one misses the bus's notice."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from fanout.bus import Bus
from fanout.bus_memory import InProcessBus
from gateway.pipeline.meeting_deletion import MeetingDeletion
from gateway.ws.live import ConnectionRegistry
from store.deletion_log import DeletionLog
from store.migrate import open_store
from tests.util import eventually


class Rows:
    """The replica's store, as far as deleting goes: which passes ran."""

    def __init__(self) -> None:
        self.passes: list[tuple[str, str, bool]] = []

    async def delete(self, tenant_id: str, meeting_id: str, first: bool) -> bool:
        self.passes.append((tenant_id, meeting_id, first))
        return first


class DroppingBus(InProcessBus):
    """Pub/sub whose first publishes are lost, as while a replica's link reconnects."""

    def __init__(self, drop: int) -> None:
        super().__init__()
        self.drop = drop

    async def publish(self, topic: str, data: bytes) -> None:
        if self.drop:
            self.drop -= 1
            raise ConnectionError("bus unreachable")
        await super().publish(topic, data)


def replica(bus: Bus, rows: Rows) -> MeetingDeletion:
    return MeetingDeletion(bus, ConnectionRegistry(), rows.delete, sweep_s=0.05)


async def test_a_replica_that_missed_the_notice_hears_it_at_a_sweep() -> None:
    bus = InProcessBus()
    rows = Rows()
    deleting, late = replica(bus, rows), replica(bus, Rows())
    await deleting.start()
    try:
        assert await deleting.delete("acme", "m1")  # `late` is not listening yet
        assert not late.is_deleted("acme", "m1")
        await late.start()
        await eventually(lambda: late.is_deleted("acme", "m1"), what="the notice heard again")
        await eventually(lambda: len(rows.passes) == 4, what="three sweeps")
        assert [first for *_, first in rows.passes] == [True, False, False, False]
    finally:
        await deleting.aclose()
        await late.aclose()


async def test_a_notice_that_could_not_be_published_goes_out_with_the_next_sweep() -> None:
    bus = DroppingBus(drop=1)
    rows = Rows()
    deleting, other = replica(bus, rows), replica(bus, Rows())
    await deleting.start()
    await other.start()
    try:
        assert await deleting.delete("acme", "m1")
        assert deleting.is_deleted("acme", "m1") and not other.is_deleted("acme", "m1")
        await eventually(lambda: other.is_deleted("acme", "m1"), what="the notice at a sweep")
    finally:
        await deleting.aclose()
        await other.aclose()


async def test_a_deletion_heard_again_is_refused_from_its_time_a_new_one_from_its_own() -> None:
    """The sweeps' notices at 10 and 30 s restarted the 2 minutes (150 s of 4404); a notice
    says when its deletion was. A DELETE of the meeting again is a deletion of its own."""
    bus = InProcessBus()
    rows = Rows()
    first, second = replica(bus, rows), replica(bus, Rows())
    await first.start()
    await second.start()
    try:
        await first.delete("acme", "m1")
        await eventually(lambda: second.is_deleted("acme", "m1"), what="the notice heard")
        after = time.monotonic()
        await eventually(lambda: len(rows.passes) >= 2, what="a sweep, announcing it again")
        await first.delete("acme", "m2")  # heard after the sweep's notice (one topic, in order)
        await eventually(lambda: second.is_deleted("acme", "m2"), what="the next notice heard")
        assert second.is_deleted("acme", "m1")
        assert not second.deleted_since("acme", "m1", after)
        await first.delete("acme", "m1")  # deleted again: refused from now
        await first.delete("acme", "m3")
        await eventually(lambda: second.is_deleted("acme", "m3"), what="the notices heard")
        assert second.deleted_since("acme", "m1", after)
    finally:
        await first.aclose()
        await second.aclose()


async def test_deletions_are_remembered_for_work_that_began_before_them(monkeypatch) -> None:
    import time

    from gateway.pipeline import meeting_deletion

    monkeypatch.setattr(meeting_deletion, "REMEMBERED_MAX", 3)
    deletion = replica(InProcessBus(), Rows())
    began = time.monotonic()
    assert not deletion.deleted_since("acme", "m1", began)
    for meeting in ("m1", "m2", "m3", "m1", "m4"):  # m1 again: it is the newest, m2 the oldest
        await deletion.delete("acme", meeting)
    assert deletion.deleted_since("acme", "m1", began)
    assert not deletion.deleted_since("acme", "m1", time.monotonic() + 1)
    assert not deletion.deleted_since("acme", "m2", began)  # forgotten past REMEMBERED_MAX
    assert deletion.deleted_since("acme", "m3", began) and deletion.is_deleted("acme", "m4")
    assert not deletion.deleted_since("other", "m1", began)
    await deletion.aclose()


async def test_a_replica_deletes_what_its_own_streams_flushed_once_they_end() -> None:
    """The deleting replica may stop before its sweeps: a replica whose stream of the meeting
    was still flushing deletes once that stream has ended."""
    from gateway.ws.live import LiveConnection

    bus = InProcessBus()
    theirs = Rows()
    registry = ConnectionRegistry()
    stream = LiveConnection("ingest", "acme", "m1")
    registry.add(stream)
    other = MeetingDeletion(bus, registry, theirs.delete, sweep_s=0.05, local_wait_s=10)
    deleting = replica(bus, Rows())
    await other.start()
    await deleting.start()
    try:
        await deleting.delete("acme", "m1")
        await eventually(lambda: stream.end_error is not None, what="the stream asked to end")
        await deleting.aclose()  # the deleting replica stops before its sweeps
        assert theirs.passes == []  # the stream is still flushing
        stream.finished.set()
        await eventually(lambda: theirs.passes == [("acme", "m1", False)], what="its own pass")
    finally:
        await other.aclose()


@pytest.fixture
async def deletion_log(sqlite_url: str) -> AsyncIterator[DeletionLog]:
    """The deletion log the replicas of a test share (a real SQLite store)."""
    store = await open_store(sqlite_url)
    yield DeletionLog(store.engine)
    await store.aclose()


class DeafBus(InProcessBus):
    """A replica's bus that loses every publish: it hears no other replica's notice."""

    async def publish(self, topic: str, data: bytes) -> None:
        raise ConnectionError("bus unreachable")


async def test_a_replica_that_starts_after_the_deletion_refuses_the_meeting(
    deletion_log: DeletionLog,
) -> None:
    """Its notices went out before the replica listened: the shared log tells it."""
    bus = InProcessBus()
    deleting = MeetingDeletion(bus, ConnectionRegistry(), Rows().delete, deletion_log=deletion_log)
    late = MeetingDeletion(
        InProcessBus(), ConnectionRegistry(), Rows().delete, deletion_log=deletion_log
    )
    await deleting.start()
    try:
        assert await deleting.delete("acme", "m1")
        await late.start()
        assert late.is_deleted("acme", "m1") and not late.is_deleted("other", "m1")
    finally:
        await deleting.aclose()
        await late.aclose()


async def test_a_replica_that_hears_no_notice_ends_the_meetings_streams_from_the_log(
    deletion_log: DeletionLog,
) -> None:
    from gateway.ws.live import LiveConnection

    registry = ConnectionRegistry()
    stream = LiveConnection("ingest", "acme", "m1")
    registry.add(stream)
    deaf = MeetingDeletion(
        InProcessBus(), registry, Rows().delete, deletion_log=deletion_log, log_poll_s=0.05
    )
    deleting = MeetingDeletion(
        DeafBus(), ConnectionRegistry(), Rows().delete, sweep_s=0.05, deletion_log=deletion_log
    )
    await deaf.start()
    await deleting.start()
    try:
        assert not deaf.is_deleted("acme", "m1")
        assert await deleting.delete("acme", "m1")
        await eventually(lambda: deaf.is_deleted("acme", "m1"), what="the deletion read")
        await eventually(lambda: stream.end_error is not None, what="the stream asked to end")
    finally:
        await deleting.aclose()
        await deaf.aclose()


async def test_a_sweep_makes_the_first_pass_that_failed() -> None:
    """The first pass raises meeting.deleted; when it fails (the client is answered 503), the
    sweep that deletes the rows raises it instead, once."""

    class FailingOnce(Rows):
        async def delete(self, tenant_id: str, meeting_id: str, first: bool) -> bool:
            if not self.passes:
                self.passes.append((tenant_id, meeting_id, first))
                raise ConnectionError("database unreachable")
            return await super().delete(tenant_id, meeting_id, first)

    rows = FailingOnce()
    deletion = replica(InProcessBus(), rows)
    await deletion.start()
    try:
        with pytest.raises(ConnectionError):
            await deletion.delete("acme", "m1")
        await eventually(lambda: len(rows.passes) == 4, what="three sweeps")
        assert [first for *_, first in rows.passes] == [True, True, False, False]
    finally:
        await deletion.aclose()


async def test_a_deletion_read_late_spares_the_meeting_started_again_under_its_id(
    deletion_log: DeletionLog,
) -> None:
    """Past its 2 minutes, a logged deletion only keeps work begun before it out: a connection
    now is of the meeting started again (a replica whose reads failed for a while reads it
    late)."""
    from datetime import UTC, datetime, timedelta

    from gateway.ws.live import LiveConnection

    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    await deletion_log.record("acme", "m1", an_hour_ago, keep_after=an_hour_ago)
    registry = ConnectionRegistry()
    stream = LiveConnection("ingest", "acme", "m1")
    registry.add(stream)
    rows = Rows()
    late = MeetingDeletion(InProcessBus(), registry, rows.delete, deletion_log=deletion_log)
    try:
        await late.start()
        assert not late.is_deleted("acme", "m1")
        assert late.deleted_since("acme", "m1", time.monotonic() - 7200)  # an upload begun then
        assert stream.end_error is None and rows.passes == []
    finally:
        await late.aclose()


async def test_a_started_replica_removes_logged_deletions_older_than_a_week(
    deletion_log: DeletionLog,
) -> None:
    """Rows were removed only when the next deletion was logged: with none after them, the
    last deleted meetings' ids stayed for good (privacy tester: six-day-old rows remained).
    A week (LOG_KEEP_S): what an outbox kept through a deletion is checked against them."""
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    for meeting, age in (("old-1", timedelta(days=12)), ("old-2", timedelta(days=8))):
        await deletion_log.record("acme", meeting, now - age, keep_after=now - timedelta(days=30))
    await deletion_log.record("acme", "recent", now, keep_after=now - timedelta(days=30))
    await deletion_log.record(
        "acme", "days-ago", now - timedelta(days=6), keep_after=now - timedelta(days=30)
    )
    replica = MeetingDeletion(
        InProcessBus(), ConnectionRegistry(), Rows().delete, deletion_log=deletion_log
    )
    await replica.start()
    try:

        async def only_recent() -> bool:
            rows = await deletion_log.after(now - timedelta(days=30))
            return sorted(row.meeting_id for row in rows) == ["days-ago", "recent"]

        await eventually(only_recent, what="old rows removed")
    finally:
        await replica.aclose()


def test_the_stores_deletion_fence_ends_before_new_connections_are_let_in() -> None:
    """A final made within the fence after a deletion is dropped as the deleted meeting's: a
    new meeting under the id cannot have one then (its connections are refused till then)."""
    from gateway.pipeline.meeting_deletion import TOMBSTONE_S
    from store.sql import DELETION_FENCE_S

    assert 0 < DELETION_FENCE_S <= TOMBSTONE_S - 5  # a margin for replicas' clocks


async def test_a_deletion_the_log_did_not_take_is_written_once_it_can_be(sqlite_url: str) -> None:
    """The log keeps an outbox's late finals out for a week: a deletion whose log writes all
    failed through the sweeps (here: a database without its tables yet) is written later."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy.ext.asyncio import create_async_engine

    from store.migrate import upgrade

    engine = create_async_engine(sqlite_url)
    deletion_log = DeletionLog(engine)
    rows = Rows()
    deleting = MeetingDeletion(
        InProcessBus(), ConnectionRegistry(), rows.delete, sweep_s=0.05, deletion_log=deletion_log
    )
    try:
        await deleting.start()
        assert await deleting.delete("acme", "m1")
        await eventually(lambda: len(rows.passes) == 4, what="the three sweeps")
        await upgrade(sqlite_url)  # the tables come (as a database comes back)

        async def logged() -> bool:
            since = datetime.now(UTC) - timedelta(hours=1)
            return [d.meeting_id for d in await deletion_log.after(since)] == ["m1"]

        await eventually(logged, within=60, what="the deletion logged at last")
        # And a pass after it: what an outbox wrote before the log could stop it goes too.
        await eventually(lambda: len(rows.passes) == 5, what="a pass after the late log")
    finally:
        await deleting.aclose()
        await engine.dispose()
