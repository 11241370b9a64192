"""Webhook outbox and meeting lifecycle contract, on SQLite and PostgreSQL: events enqueue with
the state change that raises them, to the tenant's subscribed endpoints only; a delivery is
leased to one replica at a time; each meeting.started / meeting.ended is raised once."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from gateway.webhooks.urls import url_identity
from store.catalog_sql import SqlMeetingCatalog
from store.jobs import CANCELLED, FAILED, SUCCEEDED, JobStore, NewJob
from store.meeting_lifecycle import MeetingLifecycle
from store.notes import NotesStore
from store.sql import SqlTranscriptStore
from store.webhooks import (
    DELIVERED,
    PENDING,
    Endpoint,
    EndpointExists,
    Event,
    TooManyEndpoints,
    WebhookStore,
    fair_share,
)
from store.webhooks import FAILED as DELIVERY_FAILED
from tests.store.conftest import FakeClock


@pytest.fixture
def hooks(clocked_store: SqlTranscriptStore) -> WebhookStore:
    return WebhookStore(clocked_store.engine)


async def _all(hooks: WebhookStore, endpoint_id: str) -> list:
    return await hooks.deliveries(endpoint_id, limit=100)


async def test_events_reach_only_the_tenants_subscribed_endpoints(hooks: WebhookStore) -> None:
    everything = await hooks.create_endpoint(
        "t1", "https://a.example/h", ["meeting.ended", "meeting.deleted"]
    )
    ended_only = await hooks.create_endpoint("t1", "https://b.example/h", ["meeting.ended"])
    other = await hooks.create_endpoint("t2", "https://c.example/h", ["meeting.ended"])
    assert everything.secret.startswith("whsec_") and everything.secret != ended_only.secret

    assert await hooks.enqueue(Event("meeting.ended", "t1", "m1")) == 2
    assert await hooks.enqueue(Event("meeting.deleted", "t1", "m1")) == 1
    assert await hooks.enqueue(Event("meeting.started", "t1", "m1")) == 0

    assert [d.event_type for d in await _all(hooks, everything.endpoint_id)] == [
        "meeting.deleted",
        "meeting.ended",
    ]
    (only,) = await _all(hooks, ended_only.endpoint_id)
    assert await _all(hooks, other.endpoint_id) == []
    body = json.loads(only.payload)
    assert body["type"] == "meeting.ended" and only.status == PENDING
    assert body["data"] == {"tenant_id": "t1", "meeting_id": "m1"}
    assert [e.endpoint_id for e in await hooks.endpoints("t2")] == [other.endpoint_id]
    assert await hooks.endpoint(other.endpoint_id, "t1") is None  # another tenant's

    assert await hooks.delete_endpoint(everything.endpoint_id, "t1")
    assert not await hooks.delete_endpoint(everything.endpoint_id, "t1")
    assert await _all(hooks, everything.endpoint_id) == []


async def test_a_delivery_is_leased_to_one_owner_and_settled_by_it_only(
    hooks: WebhookStore, clock: FakeClock
) -> None:
    endpoint = await hooks.create_endpoint("t1", "https://a.example/h", ["meeting.ended"])
    for n in range(5):
        await hooks.enqueue(Event("meeting.ended", "t1", f"m{n}"))
    now = datetime.now(UTC) + timedelta(seconds=1)  # deliveries are due from enqueue time
    first, second = await asyncio.gather(
        hooks.claim("a", lease_s=30, limit=3, now=now),
        hooks.claim("b", lease_s=30, limit=3, now=now),
    )
    ids = [d.delivery_id for d, _ in first + second]
    assert len(ids) == 5 and len(set(ids)) == 5  # nobody got one twice
    assert all(e.endpoint_id == endpoint.endpoint_id for _, e in first + second)
    assert await hooks.claim("c", lease_s=30, limit=10, now=now) == []  # all leased

    assert sorted([len(first), len(second)]) == [2, 3]  # split between the two claimers

    delivery, retry = first[0][0], first[1][0]
    assert not await hooks.delivered(delivery.delivery_id, "someone-else", status_code=200)
    assert await hooks.delivered(delivery.delivery_id, "a", status_code=204)
    later = now + timedelta(seconds=60)
    assert await hooks.attempt_failed(
        retry.delivery_id, "a", error="answered 503", status_code=503, retry_at=later
    )
    assert retry.delivery_id not in [
        d.delivery_id for d, _ in await hooks.claim("c", lease_s=30, limit=10, now=now)
    ]
    again = await hooks.claim("c", lease_s=30, limit=10, now=later + timedelta(seconds=31))
    assert retry.delivery_id in [d.delivery_id for d, _ in again]
    assert await hooks.attempt_failed(
        retry.delivery_id, "c", error="timeout", status_code=None, retry_at=None
    )
    log = {d.delivery_id: d for d in await _all(hooks, endpoint.endpoint_id)}
    assert log[delivery.delivery_id].status == DELIVERED
    assert log[delivery.delivery_id].last_status_code == 204
    failed = log[retry.delivery_id]
    assert failed.status == DELIVERY_FAILED and failed.attempts == 2
    assert failed.last_error == "timeout"


async def test_settled_deliveries_past_the_retention_are_pruned(hooks: WebhookStore) -> None:
    """The log keeps what was settled lately and everything pending, not every event of the
    gateway's life."""
    endpoint = await hooks.create_endpoint("t1", "https://a.example/h", ["meeting.ended"])
    for n in range(7):
        await hooks.enqueue(Event("meeting.ended", "t1", f"m{n}"))
    now = datetime.now(UTC) + timedelta(seconds=1)
    claimed = [d for d, _ in await hooks.claim("a", lease_s=30, limit=7, now=now)]
    for delivery in claimed[:3]:
        assert await hooks.delivered(delivery.delivery_id, "a", status_code=200)
    for delivery in claimed[3:5]:
        await hooks.attempt_failed(
            delivery.delivery_id, "a", error="gone", status_code=410, retry_at=None
        )
    # (claimed[5:] stay pending, leased; never pruned however old.)
    assert await hooks.prune(now - timedelta(days=1)) == 0  # settled since: kept
    assert await hooks.prune(now + timedelta(minutes=10), batch=2) == 5  # in batches
    left = await _all(hooks, endpoint.endpoint_id)
    assert [d.status for d in left] == [PENDING, PENDING]
    assert await hooks.prune(now + timedelta(days=365)) == 0


async def test_a_lapsed_lease_is_claimed_again(hooks: WebhookStore, clock: FakeClock) -> None:
    await hooks.create_endpoint("t1", "https://a.example/h", ["meeting.ended"])
    await hooks.enqueue(Event("meeting.ended", "t1", "m1"))
    now = datetime.now(UTC) + timedelta(seconds=1)  # deliveries are due from enqueue time
    ((held, _),) = await hooks.claim("dead-replica", lease_s=30, limit=5, now=now)
    assert await hooks.claim("b", lease_s=30, limit=5, now=now + timedelta(seconds=29)) == []
    ((again, _),) = await hooks.claim("b", lease_s=30, limit=5, now=now + timedelta(seconds=31))
    assert again.delivery_id == held.delivery_id
    # The dead replica's late answer no longer settles it.
    assert not await hooks.delivered(held.delivery_id, "dead-replica", status_code=200)


async def test_recording_job_endings_enqueue_their_events(
    hooks: WebhookStore, clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    endpoint = await hooks.create_endpoint(
        "t1", "https://a.example/h", ["recording.succeeded", "recording.failed"]
    )
    jobs = JobStore(clocked_store.engine, clock=clock)
    job = NewJob("t1", "m1", "/tmp/x.wav", 10, 60_000, "recording", "en", True)
    ok, _ = await jobs.create(job)
    clock.advance(1)  # claimed first
    bad, _ = await jobs.create(job)
    await jobs.claim("a", lease_s=30)
    assert await jobs.finish(ok.job_id, "a", SUCCEEDED)
    await jobs.fail_queued(bad.job_id, "file is corrupt at 0:42")
    assert not await jobs.finish(ok.job_id, "a", SUCCEEDED)  # ended already: no second event
    bodies = {
        body["type"]: body["data"]
        for body in (json.loads(d.payload) for d in await _all(hooks, endpoint.endpoint_id))
    }
    assert set(bodies) == {"recording.succeeded", "recording.failed"}
    succeeded, failed = bodies["recording.succeeded"], bodies["recording.failed"]
    assert succeeded["job_id"] == ok.job_id and succeeded["status"] == SUCCEEDED
    assert failed["job_id"] == bad.job_id and failed["status"] == FAILED
    assert failed["error"] == "file is corrupt at 0:42"
    # The success asked for the meeting's notes (once: the failure did not).
    notes = await NotesStore(clocked_store.engine).get("t1", "m1")
    assert notes is not None and (notes.reason, notes.generation) == ("recording", 1)
    # A job cancelled before its runner ended it raises nothing, nor asks for notes.
    clock.advance(1)
    cancelled, _ = await jobs.create(job)
    await jobs.claim("a", lease_s=30)
    await jobs.cancel(cancelled.job_id, "t1")
    assert await jobs.finish(cancelled.job_id, "a", SUCCEEDED) == CANCELLED
    assert len(await _all(hooks, endpoint.endpoint_id)) == 2
    notes = await NotesStore(clocked_store.engine).get("t1", "m1")
    assert notes is not None and notes.generation == 1


async def test_meeting_deletion_enqueues_meeting_deleted_once(
    hooks: WebhookStore, clocked_store: SqlTranscriptStore
) -> None:
    endpoint = await hooks.create_endpoint("t1", "https://a.example/h", ["meeting.deleted"])
    from store.base import NewFinal

    await clocked_store.append_final("t1", "m1", NewFinal("hello", 0, 500, "mic"))
    catalog = SqlMeetingCatalog(clocked_store.engine)
    assert await catalog.delete_meeting("t1", "m1")
    assert not await catalog.delete_meeting("t1", "m1")  # gone: nothing to announce
    await clocked_store.append_final("t1", "m1", NewFinal("late", 600, 900, "mic"))
    assert await catalog.delete_meeting("t1", "m1", announce=False)  # a deletion's sweep
    (deleted,) = await _all(hooks, endpoint.endpoint_id)
    assert deleted.event_type == "meeting.deleted" and deleted.meeting_id == "m1"
    assert "hello" not in deleted.payload


async def _stream(store: SqlTranscriptStore, meeting: str, stream_id: str) -> None:
    await store.open_stream(
        "t1",
        meeting,
        stream_id=stream_id,
        source="mic",
        engine="local",
        sample_rate=16000,
        channels=1,
    )


async def test_lifecycle_moves_once_however_many_replicas_watch(
    hooks: WebhookStore, clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    endpoint = await hooks.create_endpoint(
        "t1", "https://a.example/h", ["meeting.started", "meeting.ended"]
    )
    watchers = [MeetingLifecycle(clocked_store.engine, fresh_within_s=15) for _ in range(3)]
    await _stream(clocked_store, "m1", "s1")
    await _stream(clocked_store, "m1", "s2")  # two sources: one meeting started

    started = await asyncio.gather(*(w.mark_started(60, clock.now) for w in watchers))
    assert sorted(len(events) for events in started) == [0, 0, 1]
    assert await watchers[0].mark_ended(60, clock.now) == []  # still live

    clock.advance(5)
    await clocked_store.close_stream("s1", audio_ms=5000, frames=250)
    clock.advance(30)
    await clocked_store.close_stream("s2", audio_ms=35000, frames=1750)
    last_stream_ended = clock.now
    clock.advance(59)
    assert await watchers[1].mark_ended(60, clock.now) == []  # idle 59 s of 60
    clock.advance(2)
    ended = await asyncio.gather(*(w.mark_ended(60, clock.now) for w in watchers))
    assert sorted(len(events) for events in ended) == [0, 0, 1]
    # It says when the meeting ended (its last stream's end), beside when that was seen.
    (event,) = [e for events in ended for e in events]
    assert event.data == {"ended_at": last_stream_ended.isoformat()}
    assert event.at == clock.now

    # A stream that reopens starts the meeting again, and a stream whose replica died (its row
    # not refreshed) does not keep it live.
    clock.advance(1)
    await _stream(clocked_store, "m1", "s3")
    s3_seen = clock.now
    assert len(await watchers[2].mark_started(60, clock.now)) == 1
    clock.advance(16 + 60)
    assert len(await watchers[0].mark_ended(60, clock.now)) == 1
    # A stream that opens and closes between two rounds starts the meeting too, and ends it
    # once idle; the next rounds move nothing.
    clock.advance(1)
    await _stream(clocked_store, "m1", "s4")
    clock.advance(2)
    await clocked_store.close_stream("s4", audio_ms=2000, frames=100)
    clock.advance(1)
    assert len(await watchers[1].mark_started(60, clock.now)) == 1
    assert await watchers[1].mark_ended(60, clock.now) == []
    clock.advance(60)
    assert len(await watchers[2].mark_ended(60, clock.now)) == 1
    assert await watchers[0].mark_started(60, clock.now) == []
    deliveries = list(reversed(await _all(hooks, endpoint.endpoint_id)))
    types = [d.event_type for d in deliveries]
    assert types == ["meeting.started", "meeting.ended"] * 3
    # The stream whose replica died ended when its row was last refreshed (its opening).
    assert json.loads(deliveries[3].payload)["data"]["ended_at"] == s3_seen.isoformat()
    # Each end asked for the meeting's notes once (store.notes), in the same transaction.
    notes = await NotesStore(clocked_store.engine).get("t1", "m1")
    assert notes is not None and (notes.state, notes.reason) == ("pending", "meeting.ended")
    assert notes.generation == 3


async def test_a_deletions_own_round_starts_only_the_meeting_a_fresh_stream_started(
    hooks: WebhookStore, clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    """The watch looks every few seconds: a deletion first runs the start round for its meeting
    alone, so a meeting deleted in between still tells its receivers it started. A meeting whose
    streams are long over (streamed before lifecycles existed, say) did not start now."""
    lifecycle = ["meeting.started", "meeting.deleted"]
    endpoint = await hooks.create_endpoint("t1", "https://a.example/h", lifecycle)
    watcher = MeetingLifecycle(clocked_store.engine, fresh_within_s=15)
    await _stream(clocked_store, "old", "s1")
    await clocked_store.close_stream("s1", audio_ms=1000, frames=50)
    clock.advance(30 * 86400)
    await _stream(clocked_store, "quick", "s2")
    await _stream(clocked_store, "other", "s3")
    clock.advance(1)
    assert await watcher.mark_started(60, clock.now, meeting=("t1", "old")) == []
    (started,) = await watcher.mark_started(60, clock.now, meeting=("t1", "quick"))
    assert (started.type, started.meeting_id) == ("meeting.started", "quick")
    assert await watcher.mark_started(60, clock.now, meeting=("t1", "quick")) == []  # once
    # The full round still starts the others (and only they were left).
    assert [e.meeting_id for e in await watcher.mark_started(60, clock.now)] == ["other"]
    # Started, then ended: its deletion's round starts nothing again.
    clock.advance(16 + 61)
    assert len(await watcher.mark_ended(60, clock.now)) == 2
    assert await watcher.mark_started(60, clock.now, meeting=("t1", "quick")) == []
    types = [d.event_type for d in await _all(hooks, endpoint.endpoint_id)]
    assert sorted(types) == ["meeting.started", "meeting.started"]


async def test_the_endpoint_limit_holds_against_concurrent_creates(hooks: WebhookStore) -> None:
    async def create(n: int) -> bool:
        try:
            await hooks.create_endpoint("acme", f"https://hooks.example/{n}", ["*"], limit=5)
        except TooManyEndpoints:
            return False
        return True

    created = await asyncio.gather(*(create(n) for n in range(12)))
    assert sum(created) == 5 and len(await hooks.endpoints("acme")) == 5
    await hooks.create_endpoint("other", "https://hooks.example/1", ["*"], limit=5)


def _file_endpoint(n: int, tenant: str = "acme") -> Endpoint:
    url = f"https://file.example/{n}"
    events = ("meeting.ended", "meeting.deleted")
    return Endpoint(f"ep_file_{n}", tenant, url, events, "whsec_x", None, "file", datetime.now(UTC))


async def test_a_url_is_registered_once_and_file_endpoints_leave_the_api_its_limit(
    hooks: WebhookStore,
) -> None:
    # WEBHOOKS_FILE's endpoints took places of the API's 20; and a POST retried after a timeout
    # registered its url twice: every event went twice, one copy under a secret never shown.
    await hooks.replace_file_endpoints([_file_endpoint(n) for n in range(3)])
    for n in range(3):
        await hooks.create_endpoint("acme", f"https://api.example/{n}", ["*"], limit=3)
    with pytest.raises(TooManyEndpoints):
        await hooks.create_endpoint("acme", "https://api.example/3", ["*"], limit=3)
    with pytest.raises(EndpointExists):
        await hooks.create_endpoint("acme", "https://file.example/1", ["*"], limit=5)
    with pytest.raises(EndpointExists):
        await hooks.create_endpoint("acme", "https://api.example/2", ["*"], limit=5)
    await hooks.create_endpoint("other", "https://api.example/2", ["*"], limit=5)
    # Compared through the caller's key: a file's URL, or one stored before URLs were
    # normalised, spelled otherwise is the same endpoint.
    with pytest.raises(EndpointExists):
        await hooks.create_endpoint(
            "acme", "https://FILE.example:443/1", ["*"], limit=5, url_key=url_identity
        )


async def test_a_file_endpoint_removed_says_what_it_had_not_delivered(hooks: WebhookStore) -> None:
    await hooks.replace_file_endpoints([_file_endpoint(1), _file_endpoint(2)])
    await hooks.enqueue(Event("meeting.ended", "acme", "m1"))
    await hooks.enqueue(Event("meeting.deleted", "acme", "m1"))
    # Its url changed (another endpoint): the old one goes, with what it had not delivered.
    assert await hooks.replace_file_endpoints([_file_endpoint(2)]) == {"ep_file_1": 2}
    assert await hooks.replace_file_endpoints([_file_endpoint(2)]) == {}


async def test_a_fair_claim_leaves_room_for_every_tenant(hooks: WebhookStore) -> None:
    for tenant in ("busy", "quiet"):
        await hooks.create_endpoint(tenant, "https://a.example/h", ["meeting.ended"])
    for n in range(10):  # the busy tenant's are due first
        await hooks.enqueue(Event("meeting.ended", "busy", f"m{n}"))
    await hooks.enqueue(Event("meeting.ended", "quiet", "q"))
    now = datetime.now(UTC) + timedelta(seconds=1)
    claimed = await hooks.claim("a", lease_s=30, limit=4, per_tenant=3, busy={"busy": 1}, now=now)
    assert sorted(d.tenant_id for d, _ in claimed) == ["busy", "busy", "quiet"]
    again = await hooks.claim("a", lease_s=30, limit=4, per_tenant=3, busy={"busy": 3}, now=now)
    assert again == []  # the busy tenant at its share, the quiet one's taken


def test_fair_share_takes_oldest_first_within_each_tenants_room() -> None:
    due = [("d1", "a"), ("d2", "a"), ("d3", "b"), ("d4", "a"), ("d5", "c"), ("d6", "b")]
    assert fair_share(due, 10, None, {}) == ["d1", "d2", "d3", "d4", "d5", "d6"]
    assert fair_share(due, 3, None, {}) == ["d1", "d2", "d3"]
    assert fair_share(due, 10, 2, {}) == ["d1", "d2", "d3", "d5", "d6"]
    assert fair_share(due, 10, 2, {"a": 2, "b": 1}) == ["d3", "d5"]
    assert fair_share(due, 2, 1, {}) == ["d1", "d3"]


async def test_replicas_starting_together_write_the_file_endpoints_once(
    migrated_url: str,
) -> None:
    """Every replica (and worker) syncs WEBHOOKS_FILE as it starts: together, each sees the new
    endpoints missing, and without a lock the second insert of one fails its start."""
    now = datetime.now(UTC)
    endpoints = [
        Endpoint(
            f"ep_file_{n}",
            "acme",
            f"https://hooks.example/{n}",
            ("*",),
            "whsec_x",
            None,
            "file",
            now,
        )
        for n in range(5)
    ]
    replicas = [SqlTranscriptStore(migrated_url) for _ in range(3)]
    try:
        for replica in replicas:  # each with a warm connection, so they start at once
            await replica.meeting_exists("acme", "warm-up")
        await asyncio.gather(
            *(WebhookStore(r.engine).replace_file_endpoints(endpoints) for r in replicas)
        )
        listed = await WebhookStore(replicas[0].engine).endpoints("acme")
        assert sorted(e.endpoint_id for e in listed) == [e.endpoint_id for e in endpoints]
    finally:
        for replica in replicas:
            await replica.aclose()


async def test_a_database_error_does_not_show_the_statements_values(migrated_url: str) -> None:
    """An error's text (which a log line may carry) leaves the values out: a webhook secret or a
    transcript must not reach the log through it."""
    from sqlalchemy.exc import IntegrityError

    from store.tables import webhook_endpoints

    store = SqlTranscriptStore(migrated_url)
    row = {
        "endpoint_id": "ep_1",
        "tenant_id": "acme",
        "url": "https://hooks.example/x",
        "events": "[]",
        "secret": "whsec_do-not-log-me",
        "source": "api",
        "created_at": datetime.now(UTC),
    }
    try:
        async with store.engine.begin() as conn:
            await conn.execute(webhook_endpoints.insert().values(**row))
        with pytest.raises(IntegrityError) as raised:
            async with store.engine.begin() as conn:
                await conn.execute(webhook_endpoints.insert().values(**row))
        assert "do-not-log-me" not in str(raised.value)
    finally:
        await store.aclose()


async def test_meeting_ended_says_when_its_own_last_stream_ended(
    clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    """Not another tenant's meeting of that id, nor another meeting, whose streams end later."""
    lifecycle = MeetingLifecycle(clocked_store.engine, fresh_within_s=15)
    await _stream(clocked_store, "m1", "s1")
    await clocked_store.open_stream(
        "t2", "m1", stream_id="o1", source="mic", engine="local", sample_rate=16000, channels=1
    )
    await _stream(clocked_store, "m2", "o2")
    assert len(await lifecycle.mark_started(60, clock.now)) == 3
    clock.advance(5)
    await clocked_store.close_stream("s1", audio_ms=5000, frames=250)
    ended_at = clock.now
    clock.advance(30)
    await clocked_store.close_stream("o1", audio_ms=35000, frames=1750)
    await clocked_store.close_stream("o2", audio_ms=35000, frames=1750)
    clock.advance(31)  # m1 idle 61 s of 60, the others 31
    (ended,) = await lifecycle.mark_ended(60, clock.now)
    assert (ended.tenant_id, ended.meeting_id) == ("t1", "m1")
    assert ended.data == {"ended_at": ended_at.isoformat()} and ended.at == clock.now
