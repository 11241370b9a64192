"""Recording-job store contract, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from store.base import NewFinal
from store.jobs import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobLimit,
    JobStore,
    LeaseLost,
    NewJob,
    Reserve,
)
from store.sql import SqlTranscriptStore
from tests.store.conftest import FakeClock
from tests.util import eventually, sessions_waiting_on_locks


def _new(meeting: str = "m1", tenant: str = "t1", key: str | None = None) -> NewJob:
    return NewJob(
        tenant_id=tenant,
        meeting_id=meeting,
        file_path="/tmp/x.wav",
        file_bytes=100,
        audio_ms_total=60_000,
        label="recording",
        language="en",
        diarize=True,
        idempotency_key=key,
    )


def _final(text: str, start: int, job: str, seq: int) -> NewFinal:
    return NewFinal(text, start, start + 500, "recording", stream_id=f"rec:{job}", stream_seq=seq)


@pytest.fixture
def jobs(clocked_store: SqlTranscriptStore, clock: FakeClock) -> JobStore:
    return JobStore(clocked_store.engine, clock=clock)


async def test_create_get_list_and_idempotency_key(jobs: JobStore) -> None:
    job, created = await jobs.create(_new(key="k1"))
    assert created and job.status == QUEUED and job.progress == 0.0
    again, created = await jobs.create(_new(key="k1"))
    assert not created and again.job_id == job.job_id
    other_tenant, created = await jobs.create(_new(tenant="t2", key="k1"))
    assert created and other_tenant.job_id != job.job_id
    assert await jobs.get(job.job_id, "t2") is None  # tenant isolation
    assert [j.job_id for j in await jobs.list_for_meeting("t1", "m1")] == [job.job_id]
    assert await jobs.counts("t1") == {QUEUED: 1, RUNNING: 0}


async def test_claim_lease_checkpoint_and_takeover(
    jobs: JobStore, clocked_store: SqlTranscriptStore, clock: FakeClock
) -> None:
    live = await clocked_store.append_final("t1", "m1", NewFinal("live", 0, 100, "mic"))
    job, _ = await jobs.create(_new())
    claimed = await jobs.claim("a", lease_s=10)
    assert claimed is not None and claimed.status == RUNNING and claimed.attempts == 1
    assert await jobs.claim("b", lease_s=10) is None  # leased
    stored = await jobs.checkpoint(
        job.job_id,
        "a",
        chunk_index=0,
        audio_ms_done=20_000,
        finals=[_final("one", 0, job.job_id, 0), _final("two", 600, job.job_id, 1)],
        engines_ms={"local": 20_000},
    )
    # Recorded finals continue the meeting's numbering after the live one.
    assert [s.segment_no for s in stored] == [live.segment_no + 1, live.segment_no + 2]
    with pytest.raises(LeaseLost):  # the same chunk again stores nothing
        await jobs.checkpoint(job.job_id, "a", chunk_index=0, audio_ms_done=1, finals=[])
    clock.advance(11)
    taken = await jobs.claim("b", lease_s=10)
    assert taken is not None and taken.next_chunk == 1 and taken.attempts == 2
    assert taken.audio_ms_done == 20_000 and taken.engines_used == {"local": 20_000}
    with pytest.raises(LeaseLost):  # the old owner can no longer write
        await jobs.checkpoint(
            job.job_id, "a", chunk_index=1, audio_ms_done=1, finals=[_final("x", 0, "z", 0)]
        )
    assert await jobs.renew(job.job_id, "b", lease_s=10)
    assert not await jobs.renew(job.job_id, "a", lease_s=10)
    assert await jobs.finish(job.job_id, "b", SUCCEEDED)
    done = await jobs.get(job.job_id)
    assert done is not None and done.status == SUCCEEDED and done.finals == 2
    texts = [f.text for f in await clocked_store.finals_after("t1", "m1")]
    assert texts == ["live", "one", "two"]


async def test_recorded_finals_are_numbered_above_the_live_numbers_handed_out(
    jobs: JobStore, clocked_store: SqlTranscriptStore
) -> None:
    # Live finals 1-3 were numbered (their outbox has not written them yet): a chunk numbered
    # from the store alone would take 1 and 2, and the live ones would be renumbered.
    for meeting in ("new", "known"):
        if meeting == "known":
            await clocked_store.append_final("t1", meeting, NewFinal("stored", 0, 100, "mic"))
        job, _ = await jobs.create(_new(meeting=meeting))
        assert (await jobs.claim("a", lease_s=10)).job_id == job.job_id  # type: ignore[union-attr]
        finals = [_final("one", 0, job.job_id, 0), _final("two", 600, job.job_id, 1)]
        stored = await jobs.checkpoint(
            job.job_id, "a", chunk_index=0, audio_ms_done=1, finals=finals, numbers_above=3
        )
        assert [s.segment_no for s in stored] == [4, 5], meeting
        assert await jobs.finish(job.job_id, "a", SUCCEEDED)
    # Below the store's own counter, the floor changes nothing.
    job, _ = await jobs.create(_new(meeting="known"))
    await jobs.claim("a", lease_s=10)
    stored = await jobs.checkpoint(
        job.job_id, "a", chunk_index=0, audio_ms_done=1, finals=[_final("x", 0, job.job_id, 0)]
    )
    assert [s.segment_no for s in stored] == [6]


async def test_a_chunk_takes_exactly_its_reserved_numbers(
    jobs: JobStore, clocked_store: SqlTranscriptStore
) -> None:
    """Numbers 4 and 5 were reserved for the chunk; live final 6, numbered after the block, is
    stored first: the chunk still takes 4 and 5, not the store's next ones (7 and 8, which live
    finals will carry). A reserved number already taken (numbering lost its state) is moved."""
    live = NewFinal("live six", 9000, 9500, "mic", stream_id="live", stream_seq=6)
    await clocked_store.store_numbered_final("t1", "m1", 6, live, clocked_store._clock())
    job, _ = await jobs.create(_new())
    await jobs.claim("a", lease_s=10)
    asked: list[int] = []

    def block_from(first: int) -> Reserve:
        async def reserve(count: int) -> int:
            asked.append(count)
            return first

        return reserve

    finals = [_final("one", 0, job.job_id, 0), _final("two", 600, job.job_id, 1)]
    stored = await jobs.checkpoint(
        job.job_id, "a", chunk_index=0, audio_ms_done=1, finals=finals, reserve=block_from(4)
    )
    assert [s.segment_no for s in stored] == [4, 5] and asked == [2]
    finals = [_final("three", 1200, job.job_id, 2), _final("four", 1800, job.job_id, 3)]
    stored = await jobs.checkpoint(
        job.job_id, "a", chunk_index=1, audio_ms_done=2, finals=finals, reserve=block_from(6)
    )
    assert [s.segment_no for s in stored] == [7, 8]  # 6 was taken: moved on, both kept
    assert (await jobs.get(job.job_id)).last_segment_no == 8  # type: ignore[union-attr]
    # A checkpoint that is refused asks for no numbers (they would go unused).
    with pytest.raises(LeaseLost):
        await jobs.checkpoint(
            job.job_id, "b", chunk_index=2, audio_ms_done=3, finals=finals, reserve=block_from(9)
        )
    assert asked == [2, 2]
    texts = [f.text for f in await clocked_store.finals_after("t1", "m1")]
    assert texts == ["one", "two", "live six", "three", "four"]


async def test_a_chunk_stored_while_its_meeting_is_deleted_does_not_deadlock(
    pg_url: str,
) -> None:
    """PostgreSQL: the checkpoint (one replica) and the deletion (another) both wait on the
    job's row, which a third transaction holds. Taking the meeting's row first in both, one
    waits for the other."""
    import asyncpg

    from store.catalog_sql import SqlMeetingCatalog
    from store.migrate import open_store, upgrade

    await upgrade(pg_url)
    store, other_replica = await open_store(pg_url), await open_store(pg_url)
    dsn = pg_url.replace("postgresql+asyncpg", "postgresql")
    holder = await asyncpg.connect(dsn)
    try:
        await store.append_final("t1", "m1", NewFinal("live", 0, 100, "mic"))
        jobs = JobStore(store.engine)
        job, _ = await jobs.create(_new())
        await jobs.claim("a", lease_s=60)

        async def waiting_on_locks(count: int) -> bool:
            return count == await sessions_waiting_on_locks(pg_url)

        async with holder.transaction():
            await holder.execute(
                "SELECT 1 FROM recording_jobs WHERE job_id = $1 FOR UPDATE", job.job_id
            )
            final = _final("rec", 0, job.job_id, 0)
            checkpoint = asyncio.create_task(
                jobs.checkpoint(job.job_id, "a", chunk_index=0, audio_ms_done=1, finals=[final])
            )
            await eventually(lambda: waiting_on_locks(1), what="the checkpoint waits")
            deletion = asyncio.create_task(
                SqlMeetingCatalog(store.engine).delete_meeting("t1", "m1")
            )
            await eventually(lambda: waiting_on_locks(2), what="the deletion waits")
        results = await asyncio.gather(checkpoint, deletion, return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
        assert await store.finals_after("t1", "m1") == []  # the deletion ran last: all gone
    finally:
        await holder.close()
        await store.aclose()
        await other_replica.aclose()


async def test_a_job_ending_while_its_meeting_is_deleted_does_not_deadlock(
    pg_url: str,
) -> None:
    """PostgreSQL: a succeeded job's end asks for the meeting's notes, which reads the meeting's
    row; a deletion holds that row and then deletes the job's. Ending a job takes the meeting's
    row first too, so one waits for the other (the other order deadlocked)."""
    import asyncpg

    from store.migrate import open_store, upgrade

    await upgrade(pg_url)
    store = await open_store(pg_url)
    dsn = pg_url.replace("postgresql+asyncpg", "postgresql")
    deleting = await asyncpg.connect(dsn)
    try:
        await store.claim_meeting("t1", "m1")
        jobs = JobStore(store.engine)
        job, _ = await jobs.create(_new())
        assert await jobs.claim("a", lease_s=60) is not None
        async with deleting.transaction():  # as SqlMeetingCatalog.delete_meeting does
            await deleting.execute(
                "SELECT 1 FROM meetings WHERE tenant_id = 't1' AND meeting_id = 'm1' FOR UPDATE"
            )
            ending = asyncio.create_task(jobs.finish(job.job_id, "a", SUCCEEDED))
            await eventually(lambda: sessions_waiting_on_locks(pg_url), what="the job's end waits")
            # Would wait on the job's row, held by the waiting end: a deadlock, one aborted.
            await deleting.execute("DELETE FROM recording_jobs WHERE job_id = $1", job.job_id)
            await deleting.execute(
                "DELETE FROM meetings WHERE tenant_id = 't1' AND meeting_id = 'm1'"
            )
        assert await ending is None  # it found its job gone: nothing ended, nothing announced
    finally:
        await deleting.close()
        await store.aclose()


async def test_cancel_queued_and_running(jobs: JobStore, clock: FakeClock) -> None:
    queued, _ = await jobs.create(_new())
    clock.advance(1)
    running, _ = await jobs.create(_new())
    assert (await jobs.claim("a", lease_s=10)).job_id == queued.job_id  # type: ignore[union-attr]
    q = await jobs.cancel(running.job_id, "t1")
    assert q is not None and q.status == CANCELLED
    assert await jobs.cancel(queued.job_id, "t2") is None  # another tenant's
    r = await jobs.cancel(queued.job_id, "t1")
    assert r is not None and r.status == RUNNING and r.cancel_requested


async def test_a_cancel_asked_for_before_the_end_wins(jobs: JobStore, clock: FakeClock) -> None:
    """The runner notices a cancel within a second; a job whose work ended in that second ends
    `cancelled` as the cancel's 202 said, not `succeeded` (nor `failed`), and raises no event."""
    for outcome in (SUCCEEDED, FAILED):
        job, _ = await jobs.create(_new())
        assert (await jobs.claim("a", lease_s=10)) is not None
        asked = await jobs.cancel(job.job_id, "t1")
        assert asked is not None and asked.status == RUNNING and asked.cancel_requested
        assert await jobs.finish(job.job_id, "a", outcome, error="boom") == CANCELLED
        ended = await jobs.get(job.job_id)
        assert ended is not None and (ended.status, ended.stage) == (CANCELLED, CANCELLED)
        assert ended.error is None and ended.lease_owner is None
        assert await jobs.finish(job.job_id, "a", outcome) is None  # ended already
        clock.advance(1)
    # Without a cancel, the job ends as its runner says.
    job, _ = await jobs.create(_new())
    assert (await jobs.claim("a", lease_s=10)) is not None
    assert await jobs.finish(job.job_id, "a", FAILED, error="boom") == FAILED
    failed = await jobs.get(job.job_id)
    assert failed is not None and (failed.status, failed.error) == (FAILED, "boom")


async def test_cancelling_a_job_whose_runner_is_gone_ends_it_at_once(
    jobs: JobStore, clock: FakeClock
) -> None:
    # Its replica died: its lease lapses and nobody would read the flag until another replica
    # claimed the job again (and spent an attempt on it).
    job, _ = await jobs.create(_new())
    assert (await jobs.claim("a", lease_s=10)) is not None
    clock.advance(11)
    ended = await jobs.cancel(job.job_id, "t1")
    assert ended is not None and ended.status == CANCELLED and ended.lease_owner is None
    assert await jobs.claim("b", lease_s=10) is None


async def test_per_tenant_running_cap_and_release(jobs: JobStore, clock: FakeClock) -> None:
    first, _ = await jobs.create(_new())
    clock.advance(1)
    await jobs.create(_new())
    clock.advance(1)
    other, _ = await jobs.create(_new(tenant="t2"))
    assert (await jobs.claim("a", lease_s=10, per_tenant_running=1)).job_id == first.job_id  # type: ignore[union-attr]
    # t1 is at its cap: t2's later job goes first.
    assert (await jobs.claim("a", lease_s=10, per_tenant_running=1)).job_id == other.job_id  # type: ignore[union-attr]
    assert await jobs.claim("a", lease_s=10, per_tenant_running=1) is None
    assert await jobs.release(first.job_id, "a")
    back = await jobs.get(first.job_id)
    assert back is not None and back.status == QUEUED and back.attempts == 0


async def test_concurrent_claims_take_distinct_jobs(jobs: JobStore) -> None:
    for _ in range(4):
        await jobs.create(_new())
    got = await asyncio.gather(*(jobs.claim(f"r{i}", lease_s=10) for i in range(6)))
    ids = [j.job_id for j in got if j is not None]
    assert len(ids) == 4 and len(set(ids)) == 4


async def _decoded_to(jobs: JobStore, total_ms: int | None, done_ms: int) -> str:
    """A job (its header saying `total_ms`, or the default) claimed and checkpointed at
    `done_ms`: its id."""
    new = _new() if total_ms is None else dataclasses.replace(_new(), audio_ms_total=total_ms)
    job, _ = await jobs.create(new)
    await jobs.claim("a", lease_s=10)
    await jobs.checkpoint(job.job_id, "a", chunk_index=0, audio_ms_done=done_ms, finals=[])
    return job.job_id


async def test_a_checkpoint_past_the_headers_length_raises_it(jobs: JobStore) -> None:
    """The header said 60 s; decoding got to 80 s: the checkpoint is 80 s (where a resume goes
    on), the length is raised, and progress stays below 1 until the job ends."""
    job_id = await _decoded_to(jobs, None, 80_000)
    running = await jobs.get(job_id)
    assert running is not None
    assert (running.audio_ms_done, running.audio_ms_total) == (80_000, 80_000)
    assert running.progress < 1
    await jobs.checkpoint(job_id, "a", chunk_index=1, audio_ms_done=95_000, finals=[])
    assert await jobs.finish(job_id, "a", SUCCEEDED)
    done = await jobs.get(job_id)
    assert done is not None and done.audio_ms_total == 95_000 and done.progress == 1.0


async def test_a_job_that_failed_at_its_very_end_does_not_show_100_percent(
    jobs: JobStore,
) -> None:
    job_id = await _decoded_to(jobs, 368_006, 367_993)
    assert await jobs.finish(job_id, "a", FAILED, error="undecodable at 367.99 s")
    failed = await jobs.get(job_id)
    assert failed is not None and failed.progress == 0.99


async def test_a_length_the_header_did_not_say_is_the_decoded_one_at_the_end(
    jobs: JobStore,
) -> None:
    job_id = await _decoded_to(jobs, 0, 20_000)
    running = await jobs.get(job_id)
    assert running is not None and running.audio_ms_total == 0 and running.progress == 0
    assert await jobs.finish(job_id, "a", SUCCEEDED)
    done = await jobs.get(job_id)
    assert done is not None and done.audio_ms_total == 20_000


async def test_file_paths_are_the_files_jobs_still_need(jobs: JobStore) -> None:
    ended, _ = await jobs.create(dataclasses.replace(_new(), file_path="/r/ended.upload"))
    await jobs.cancel(ended.job_id, "t1")
    await jobs.create(dataclasses.replace(_new(), file_path="/r/queued.upload"))
    assert await jobs.file_paths(include_ended=False) == ["/r/queued.upload"]
    assert sorted(await jobs.file_paths(include_ended=True)) == [
        "/r/ended.upload",
        "/r/queued.upload",
    ]


async def test_a_claimer_does_not_take_its_own_running_job_again(
    jobs: JobStore, clock: FakeClock
) -> None:
    """A lapsed lease of a job the claimer still runs (its loop stalled) is not up for it."""
    job, _ = await jobs.create(_new())
    assert (await jobs.claim("a", lease_s=10)) is not None
    clock.advance(11)
    assert await jobs.claim("a", lease_s=10, exclude={job.job_id}) is None
    taken = await jobs.claim("b", lease_s=10)
    assert taken is not None and taken.job_id == job.job_id and taken.attempts == 2


@pytest.mark.parametrize("limit", ["queue", "disk", "tenant_disk"])
async def test_racing_creations_pass_no_limit(jobs: JobStore, limit: str) -> None:
    # Five uploads finishing at once, room for two: each checked in its own insert's
    # transaction, so no two can both see the last place free.
    limits = {  # 100 bytes each
        "queue": {"max_queued": 2},
        "disk": {"disk_budget": 250},
        "tenant_disk": {"tenant_disk_budget": 250},
    }[limit]
    outcomes = await asyncio.gather(
        *(jobs.create(_new(), **limits) for _ in range(5)), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, JobLimit)]
    assert len(refused) == 3 and {e.kind for e in refused} == {limit}, outcomes
    assert (await jobs.counts("t1"))[QUEUED] == 2


async def test_a_retry_racing_its_first_try_finds_its_job_not_the_limit(jobs: JobStore) -> None:
    # (Other meetings: a second try of one meeting waits on the first's meeting row anyway.)
    first, again = await asyncio.gather(
        jobs.create(_new("m1", key="k"), max_queued=1),
        jobs.create(_new("m2", key="k"), max_queued=1),
    )
    assert first[0].job_id == again[0].job_id and {first[1], again[1]} == {True, False}


async def test_an_idle_claim_takes_no_write_lock(sqlite_url: str) -> None:
    """Every replica's runner polls once a second: with nothing to claim, the poll is a read,
    so it neither waits on nor holds SQLite's write lock (which every final's write takes)."""
    import sqlite3

    from store.migrate import upgrade
    from store.notes import NotesStore
    from store.webhooks import WebhookStore

    await upgrade(sqlite_url)
    store = SqlTranscriptStore(sqlite_url)
    jobs = JobStore(store.engine)
    writer = sqlite3.connect(sqlite_url.split(":///", 1)[1], isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another process writing a final, at length
        # Within the 30 s busy timeout a claim that wanted the lock would still be waiting.
        assert await asyncio.wait_for(jobs.claim("a", lease_s=60), 20) is None
        # The notes and webhook workers' claims poll the same way.
        assert await asyncio.wait_for(NotesStore(store.engine).claim("a", lease_s=60), 20) is None
        hooks = WebhookStore(store.engine)
        assert await asyncio.wait_for(hooks.claim("a", lease_s=60, limit=8), 20) == []
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        await store.aclose()
