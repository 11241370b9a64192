"""The notes worker: every failure is an attempt, an open breaker is waited out, and a replica
that stops gives its request back at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from fanout.bus_memory import InProcessBus
from gateway.observability.metrics import Metrics
from gateway.pipeline.notes import NotesWorker
from ingest.insights.base import (
    BackendResting,
    FinalLine,
    Insight,
    InsightsUnavailable,
    MeetingNotes,
)
from store.base import NewFinal
from store.catalog_sql import SqlMeetingCatalog
from store.migrate import open_store
from store.notes import FAILED, PENDING, NotesStore
from store.sql import SqlTranscriptStore
from store.tables import meeting_notes
from tests.util import eventually


class Backend:
    """An insights backend (a plug-in's shape) that fails in a chosen way."""

    name = "plugin"

    def __init__(self, failure: BaseException | None = None) -> None:
        self.failure = failure
        self.called = asyncio.Event()

    async def tips(
        self, window: Sequence[FinalLine], recent: Sequence[Insight], language: str
    ) -> list[Insight]:
        return []

    async def notes(self, finals: Sequence[FinalLine], language: str) -> MeetingNotes:
        self.called.set()
        if self.failure is not None:
            raise self.failure
        await asyncio.Event().wait()  # never answers
        raise AssertionError

    async def aclose(self) -> None:
        pass


@pytest.fixture
async def store(sqlite_url: str) -> AsyncIterator[SqlTranscriptStore]:
    """A store holding the meeting acme/m1."""
    opened = await open_store(sqlite_url)
    await opened.claim_meeting("acme", "m1")
    yield opened
    await opened.aclose()


def worker(store: SqlTranscriptStore, backend: Backend, max_attempts: int = 3) -> NotesWorker:
    return NotesWorker(
        NotesStore(store.engine),
        store,
        SqlMeetingCatalog(store.engine),
        backend,
        InProcessBus(),
        Metrics(),
        owner="replica-a",
        deadline_s=60,
        poll_s=0.05,
        max_attempts=max_attempts,
    )


async def test_an_unexpected_error_is_a_failed_attempt_not_a_request_stuck_pending(
    store: SqlTranscriptStore,
) -> None:
    notes = NotesStore(store.engine)
    await notes.request("acme", "m1", "request")
    assert await worker(store, Backend(RecursionError("deep")), max_attempts=1).run_once()
    stored = await notes.get("acme", "m1")
    assert stored is not None and (stored.state, stored.error) == (FAILED, "RecursionError")


async def test_an_open_breaker_is_waited_out_before_the_next_attempt(
    store: SqlTranscriptStore,
) -> None:
    notes = NotesStore(store.engine)
    await notes.request("acme", "m1", "request")
    failure = InsightsUnavailable("llm breaker open", retry_after_s=45)
    before = datetime.now(UTC)
    assert await worker(store, Backend(failure)).run_once()
    stored = await notes.get("acme", "m1")
    assert stored is not None and (stored.state, stored.attempts) == (PENDING, 1)
    async with store.engine.connect() as conn:
        due = (await conn.execute(select(meeting_notes.c.next_attempt_at))).scalar_one()
    assert due >= before + timedelta(seconds=45)  # not the backoff's 5 to 10 s


async def test_an_attempt_refused_unasked_by_an_open_breaker_spends_no_attempt(
    store: SqlTranscriptStore,
) -> None:
    """The breaker opened by another meeting's calls refused this one's attempts without a
    call: three of them inside one cool-down, and its notes failed for good, never asked."""
    notes = NotesStore(store.engine)
    await notes.request("acme", "m1", "request")
    failure = BackendResting("llm breaker open", retry_after_s=45)
    assert await worker(store, Backend(failure), max_attempts=1).run_once()
    stored = await notes.get("acme", "m1")
    assert stored is not None and (stored.state, stored.attempts) == (PENDING, 0)


class PerTenant(Backend):
    """Never answers for acme's meetings; answers at once for everyone else's."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    async def notes(self, finals: Sequence[FinalLine], language: str) -> MeetingNotes:
        self.asked.append(finals[0].text if finals else "")
        if finals and finals[0].text.startswith("acme"):
            self.called.set()
            await asyncio.Event().wait()
        return MeetingNotes(summary="", decisions=(), action_items=(), questions=(), backend="p")


async def test_one_tenants_long_notes_hold_up_no_other_tenants(
    store: SqlTranscriptStore,
) -> None:
    """The insights tester's 1-final meeting of another tenant waited 87 s behind a 3,000-final
    meeting's notes: one replica made one meeting's notes at a time. Now each tenant holds one
    slot at most, and acme's second meeting waits for its first."""
    for tenant, meeting in (("acme", "m1"), ("acme", "m2"), ("glob", "g1")):
        await store.claim_meeting(tenant, meeting)
        final = NewFinal(f"{tenant} {meeting} said something", 0, 900, "mic")
        await store.append_final(tenant, meeting, final)
    notes = NotesStore(store.engine)
    for tenant, meeting in (("acme", "m1"), ("acme", "m2"), ("glob", "g1")):
        await notes.request(tenant, meeting, "request")
    backend = PerTenant()
    making = NotesWorker(
        notes, store, SqlMeetingCatalog(store.engine), backend, InProcessBus(), Metrics(),
        owner="replica-a", deadline_s=600, poll_s=0.05, max_attempts=3, concurrency=2,
    )  # fmt: skip
    making.start()
    try:

        async def glob_ready() -> bool:
            stored = await notes.get("glob", "g1")
            return stored is not None and stored.state == "ready"

        await eventually(glob_ready, within=60, what="the other tenant's notes")
        assert await backend.called.wait() is True
        # acme's first is being made; its second waits for it, however many slots are free.
        assert sum(text.startswith("acme") for text in backend.asked) == 1
        stored = await notes.get("acme", "m2")
        assert stored is not None and stored.state == PENDING
    finally:
        await making.aclose()


async def test_a_stopping_replica_gives_its_request_back(store: SqlTranscriptStore) -> None:
    notes = NotesStore(store.engine)
    await notes.request("acme", "m1", "request")
    backend = Backend()
    making = worker(store, backend)
    making.start()
    await asyncio.wait_for(backend.called.wait(), 60)

    async def lease_owner() -> str | None:
        async with store.engine.connect() as conn:
            return (await conn.execute(select(meeting_notes.c.lease_owner))).scalar_one()

    assert await lease_owner() == "replica-a"
    await making.aclose()
    assert await lease_owner() is None
    # Another replica claims it at once (not when a long lease lapses).
    await eventually(lambda: notes.claim("replica-b", lease_s=60), what="the request claimed again")


async def test_a_replica_that_lost_its_lease_stops_making_the_notes(
    store: SqlTranscriptStore,
) -> None:
    """Renewals failed until the lease lapsed and replica-b claimed the request: replica-a's
    next renewal finds the lease gone and stops its work (one backend call, not two)."""
    notes = NotesStore(store.engine)
    await notes.request("acme", "m1", "request")
    backend = Backend()
    making = NotesWorker(
        notes, store, SqlMeetingCatalog(store.engine), backend, InProcessBus(), Metrics(),
        owner="replica-a", deadline_s=600, poll_s=0.05, max_attempts=3, renew_s=0.05,
    )  # fmt: skip
    run = asyncio.create_task(making.run_once())
    await asyncio.wait_for(backend.called.wait(), 60)
    async with store.engine.begin() as conn:  # what replica-b's claim writes
        await conn.execute(meeting_notes.update().values(lease_owner="replica-b"))
    assert await asyncio.wait_for(run, 60)
    stored = await notes.get("acme", "m1")
    assert stored is not None and (stored.state, stored.attempts) == (PENDING, 0)
    async with store.engine.connect() as conn:
        owner = (await conn.execute(select(meeting_notes.c.lease_owner))).scalar_one()
    assert owner == "replica-b"


async def test_a_renewal_after_the_save_does_not_cut_the_announcement(
    store: SqlTranscriptStore,
) -> None:
    """The save releases the lease: a renewal that runs while `notes.ready` is being published
    finds it gone, and must not take that for a takeover (the announcement was cancelled)."""
    from fanout.topics import status_topic

    class SlowBus(InProcessBus):  # a bus whose publish takes a while (a loaded Redis)
        async def publish(self, topic: str, data: bytes) -> None:
            await asyncio.sleep(0.3)
            await super().publish(topic, data)

    class Answering(Backend):
        async def notes(self, finals: Sequence[FinalLine], language: str) -> MeetingNotes:
            return MeetingNotes(summary="Done.", backend="plugin")

    notes = NotesStore(store.engine)
    await notes.request("acme", "m1", "request")
    bus = SlowBus()
    heard: list[bytes] = []

    await bus.subscribe(status_topic("acme", "m1"), heard.append)
    making = NotesWorker(
        notes, store, SqlMeetingCatalog(store.engine), Answering(), bus, Metrics(),
        owner="replica-a", deadline_s=600, poll_s=0.05, max_attempts=3, renew_s=0.01,
    )  # fmt: skip
    assert await asyncio.wait_for(making.run_once(), 60)
    assert len(heard) == 1 and b"notes.ready" in heard[0]
