"""Notes requests contract, on SQLite and PostgreSQL: requested with the state change that asks
for them, leased to one replica at a time, stored only as the generation that was claimed (a
newer request runs again), announced with the `notes.ready` webhook event, deleted with the
meeting."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from store.catalog_sql import SqlMeetingCatalog
from store.notes import FAILED, PENDING, READY, NotesStore
from store.sql import SqlTranscriptStore
from store.webhooks import WebhookStore
from tests.store.conftest import FakeClock
from tests.util import eventually, sessions_waiting_on_locks

BODY = {"summary": "S.", "decisions": ["D."], "action_items": [], "questions": []}


@pytest.fixture
async def notes(clocked_store: SqlTranscriptStore) -> NotesStore:
    """Notes of the meeting t1/m1, which exists."""
    await clocked_store.claim_meeting("t1", "m1")
    return NotesStore(clocked_store.engine)


async def test_notes_are_not_asked_for_a_meeting_that_does_not_exist(notes: NotesStore) -> None:
    """A request that arrived as the meeting was deleted made notes of nothing, announced
    (`notes.ready`) after its `meeting.deleted`."""
    assert not await notes.request("t1", "deleted-meanwhile", "request")
    assert await notes.get("t1", "deleted-meanwhile") is None
    assert await notes.request("t1", "m1", "request")


async def test_a_request_is_made_by_one_replica_and_announced_once(
    notes: NotesStore, clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    hooks = WebhookStore(clocked_store.engine)
    endpoint = await hooks.create_endpoint("t1", "https://a.example/h", ["notes.ready"])
    await notes.request("t1", "m1", "meeting.ended", now=clock.now)
    now = clock.now + timedelta(seconds=1)
    claims = await asyncio.gather(*(notes.claim(f"r{i}", lease_s=60, now=now) for i in range(3)))
    (claim,) = [c for c in claims if c is not None]
    owner = f"r{claims.index(claim)}"
    assert (claim.tenant_id, claim.meeting_id, claim.generation) == ("t1", "m1", 1)
    assert await notes.claim("late", lease_s=60, now=now) is None  # leased

    assert not await notes.save(claim, "someone-else", backend="rules", body=BODY, finals=3)
    assert await notes.save(claim, owner, backend="rules", body=BODY, finals=3)
    stored = await notes.get("t1", "m1")
    assert stored is not None and stored.state == READY and stored.body == BODY
    assert (stored.backend, stored.finals, stored.reason) == ("rules", 3, "meeting.ended")
    (delivery,) = await hooks.deliveries(endpoint.endpoint_id, limit=10)
    assert delivery.event_type == "notes.ready" and '"finals":3' in delivery.payload
    assert await notes.claim("r0", lease_s=60, now=now) is None  # nothing pending


async def test_a_request_during_the_making_runs_again(notes: NotesStore, clock: FakeClock) -> None:
    await notes.request("t1", "m1", "recording", now=clock.now)
    first = await notes.claim("r1", lease_s=60, now=clock.now + timedelta(seconds=1))
    assert first is not None
    await notes.request("t1", "m1", "request", now=clock.now)  # more finals came in meanwhile
    assert not await notes.save(first, "r1", backend="rules", body=BODY, finals=1)
    stored = await notes.get("t1", "m1")
    assert stored is not None and stored.state == PENDING and stored.body == BODY
    second = await notes.claim("r2", lease_s=60, now=clock.now + timedelta(seconds=2))
    assert second is not None and second.generation == first.generation + 1
    assert await notes.save(second, "r2", backend="rules", body=BODY, finals=2)


async def test_failures_retry_then_give_up_and_a_lapsed_lease_is_claimed_again(
    notes: NotesStore, clock: FakeClock
) -> None:
    await notes.request("t1", "m1", "request", now=clock.now)
    now = clock.now + timedelta(seconds=1)
    claim = await notes.claim("r1", lease_s=30, now=now)
    assert claim is not None
    # r1 died: its lease lapses and r2 takes the request.
    assert await notes.claim("r2", lease_s=30, now=now + timedelta(seconds=29)) is None
    claim = await notes.claim("r2", lease_s=30, now=now + timedelta(seconds=31))
    assert claim is not None
    failed_at = now + timedelta(seconds=31)
    await notes.attempt_failed(
        claim, "r2", "InsightsUnavailable: x", retry_in_s=10, max_attempts=2, now=failed_at
    )
    stored = await notes.get("t1", "m1")
    assert stored is not None and stored.state == PENDING and stored.attempts == 1
    assert await notes.claim("r2", lease_s=30, now=failed_at) is None  # not due yet
    later = clock.now + timedelta(seconds=60)
    claim = await notes.claim("r2", lease_s=30, now=later)
    assert claim is not None and claim.attempts == 1
    await notes.attempt_failed(
        claim, "r2", "InsightsUnavailable: y", retry_in_s=10, max_attempts=2, now=later
    )
    stored = await notes.get("t1", "m1")
    assert stored is not None and (stored.state, stored.error) == (FAILED, "InsightsUnavailable: y")
    assert await notes.claim("r2", lease_s=30, now=later + timedelta(hours=1)) is None
    await notes.request("t1", "m1", "request", now=clock.now)  # asked again: a fresh start
    stored = await notes.get("t1", "m1")
    assert stored is not None and (stored.state, stored.attempts) == (PENDING, 0)


async def test_notes_go_with_their_meeting(
    notes: NotesStore, clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    await notes.request("t1", "m1", "request", now=clock.now)
    catalog = SqlMeetingCatalog(clocked_store.engine)
    await catalog.delete_meeting("t1", "m1")
    assert await notes.get("t1", "m1") is None


async def test_a_notes_request_committed_during_a_deletion_goes_with_the_meeting(
    pg_url: str,
) -> None:
    """PostgreSQL: a meeting's move to `ended` (its row updated and its notes requested in one
    transaction) that commits while the meeting is being deleted leaves no notes row behind,
    whichever comes first: the deletion locks the meeting's row before it deletes anything."""
    from sqlalchemy import update

    from store.migrate import upgrade
    from store.notes import request
    from store.tables import meetings

    await upgrade(pg_url)
    store = SqlTranscriptStore(pg_url)
    catalog = SqlMeetingCatalog(store.engine)
    notes = NotesStore(store.engine)
    try:
        await store.claim_meeting("t1", "m1")
        async with store.engine.connect() as ending:
            where = (meetings.c.tenant_id == "t1") & (meetings.c.meeting_id == "m1")
            await ending.execute(update(meetings).where(where).values(lifecycle="ended"))
            await request(ending, "t1", "m1", "meeting.ended")
            deleting = asyncio.create_task(catalog.delete_meeting("t1", "m1"))

            async def deletion_waits() -> bool:
                assert not deleting.done(), "the deletion did not wait for the meeting's row"
                return await sessions_waiting_on_locks(pg_url) > 0

            await eventually(deletion_waits, what="the deletion waiting on a lock")
            await ending.commit()
        assert await asyncio.wait_for(deleting, 30)
        assert await notes.get("t1", "m1") is None
    finally:
        await store.aclose()
