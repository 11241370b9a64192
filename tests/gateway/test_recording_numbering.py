"""Finals of one meeting numbered from two places at once, on the gateway's real services.

A recording's chunk and a live stream: the chunk's transaction waits on the meeting's row
(another writer holds it, as a busy replica would); meanwhile a live final is numbered. Its
number must be one the chunk does not take, or the store renumbers it after viewers were given
the first one (and an edit of "that" final changes the recording's line instead). And when a
number was handed out twice all the same (Redis lost its data), viewers are told what the
store kept under it.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from fanout.topics import status_topic, transcript_topic
from gateway.pipeline.recordings import AudioSpan, RecordingRunner
from gateway.services import build_services
from ingest.files.base import FileSegment
from store.base import NewFinal
from store.jobs import Job, NewJob
from store.migrate import upgrade
from store.numbering import Claim
from store.outbox import OutboxEntry
from tests.gateway.in_process import service_settings
from tests.util import eventually, sessions_waiting_on_locks

T, M = "acme", "m-rec-live"


async def _meeting_locked(pg_url: str, locked: asyncio.Event, release: asyncio.Event) -> None:
    """Another writer of the meeting: holds its row until `release`."""
    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        async with conn.transaction():
            await conn.execute(
                "SELECT 1 FROM meetings WHERE tenant_id = $1 AND meeting_id = $2 FOR UPDATE", T, M
            )
            locked.set()
            await release.wait()
    finally:
        await conn.close()


async def _chunk_waiting_on_the_meeting(
    pg_url: str, runner: RecordingRunner, job: Job
) -> tuple[asyncio.Task[Job], asyncio.Event, asyncio.Task[None]]:
    """A chunk of two finals ("REC one", "REC two") being stored while another writer holds
    the meeting's row: (the chunk's task, the event that lets the row go, the holder's task)."""
    locked, release = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(_meeting_locked(pg_url, locked, release))
    await locked.wait()
    segments = [FileSegment("REC one", 0, 400), FileSegment("REC two", 500, 900)]
    chunk = asyncio.create_task(
        runner._checkpoint(job, AudioSpan(0, 1000, 0), 1000, segments, {"deepgram": 1000})
    )
    await eventually(
        lambda: sessions_waiting_on_locks(pg_url), what="the chunk waits on the meeting"
    )
    return chunk, release, holder


async def test_a_live_final_numbered_while_a_chunk_waits_takes_no_number_of_the_chunk(
    pg_url: str, tmp_path: Path
) -> None:
    await upgrade(pg_url)
    settings = service_settings(pg_url, tmp_path)
    async with AsyncExitStack() as stack:
        services = await build_services(settings, stack)
        store, numbering = services.store, services.finals.numbering
        for n in range(1, 4):  # three live finals, stored
            final = NewFinal(
                f"live {n}", n * 1000, n * 1000 + 500, "mic", stream_id="s", stream_seq=n
            )
            number = await numbering.next_number(T, M, Claim("s", n))
            await store.store_numbered_final(T, M, number, final, datetime.now(UTC))
        file = str(tmp_path / "a.wav")
        await services.jobs.create(NewJob(T, M, file, 1, 60_000, "recording", "en", True))
        job = await services.jobs.claim(services.replica_id, lease_s=60)
        assert job is not None
        runner = RecordingRunner(services, services.jobs, engines={})

        chunk, release, holder = await _chunk_waiting_on_the_meeting(pg_url, runner, job)
        live_final = NewFinal("LIVE four", 5000, 5600, "mic", stream_id="s", stream_seq=4)
        live_number = await numbering.next_number(T, M, Claim("s", 4))  # given to viewers
        release.set()
        await holder
        await chunk
        stored_live = await store.store_numbered_final(
            T, M, live_number, live_final, datetime.now(UTC)
        )

        assert stored_live.segment_no == live_number  # not renumbered after viewers saw it
        by_number = {f.segment_no: f.text for f in await store.finals_after(T, M)}
        assert sorted(by_number) == [1, 2, 3, 4, 5, 6]
        assert by_number[live_number] == "LIVE four"
        recorded = [by_number[n] for n in sorted(by_number) if by_number[n].startswith("REC")]
        assert recorded == ["REC one", "REC two"]  # consecutive, in the chunk's order


async def test_viewers_given_a_number_the_store_kept_for_another_final_are_corrected(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Number 4 went to a recording's final and, after numbering lost its state, to a live
    final too. Viewers may hold the live text under 4 (and dropped the recording's 4 as a
    repeat): the live final comes again as 5, and 4 is corrected to what the store keeps."""
    await upgrade(sqlite_url)
    async with AsyncExitStack() as stack:
        services = await build_services(service_settings(sqlite_url, tmp_path), stack)
        heard: list[dict[str, object]] = []

        def hear(data: bytes) -> None:
            heard.append(json.loads(data))

        for topic in (transcript_topic(T, M), status_topic(T, M)):
            await services.bus.subscribe(topic, hear)
        recorded = NewFinal("REC four", 4000, 4500, "recording", stream_id="rec:j", stream_seq=0)
        await services.store.store_numbered_final(T, M, 4, recorded, datetime.now(UTC))
        live = NewFinal("LIVE four", 5000, 5600, "mic", stream_id="s", stream_seq=4)
        entry = OutboxEntry(T, M, 4, live, datetime.now(UTC), queued_at=time.time())
        await services.finals.outbox.append(entry)

        def told() -> bool:
            return any(m.get("event") == "segment.corrected" for m in heard)

        await eventually(told, what="the correction published")
        [again] = [m for m in heard if m["type"] == "transcript.final"]
        assert (again["segment_no"], again["text"]) == (5, "LIVE four")
        [fixed] = [m for m in heard if m.get("event") == "segment.corrected"]
        assert (fixed["segment_no"], fixed["text"], fixed["source"]) == (4, "REC four", "recording")
        assert fixed["edited_by"] == "gateway"


async def test_a_chunk_stored_as_its_job_is_cancelled_still_reaches_the_viewers(
    pg_url: str, tmp_path: Path
) -> None:
    """The chunk's write finishes whatever cancels the job meanwhile (a cancel request, a
    drain): its finals are stored, so they are published too, and the meeting's counter raised
    past them (the next attempt resumes after the chunk and never publishes them)."""
    await upgrade(pg_url)
    settings = service_settings(pg_url, tmp_path)
    async with AsyncExitStack() as stack:
        services = await build_services(settings, stack)
        file = str(tmp_path / "a.wav")
        await services.jobs.create(NewJob(T, M, file, 1, 60_000, "recording", "en", True))
        job = await services.jobs.claim(services.replica_id, lease_s=60)
        assert job is not None
        runner = RecordingRunner(services, services.jobs, engines={})
        published: list[dict] = []
        await services.bus.subscribe(
            transcript_topic(T, M), lambda data: published.append(json.loads(data))
        )

        chunk, release, holder = await _chunk_waiting_on_the_meeting(pg_url, runner, job)
        chunk.cancel()
        release.set()
        await holder
        try:
            await chunk
        except asyncio.CancelledError:
            pass
        stored = [f.text for f in await services.store.finals_after(T, M)]
        assert stored == ["REC one", "REC two"]
        await eventually(lambda: len(published) == 2, what="the stored chunk published")
        assert [m["text"] for m in published] == ["REC one", "REC two"]
