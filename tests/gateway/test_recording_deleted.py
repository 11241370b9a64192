"""A recording job whose meeting is deleted under it ends at INFO, whichever notices first: the
job's watcher, or its own work finding its row gone (a lost lease, as far as the work can
tell, would be a warning: a replica fault)."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from gateway.pipeline.recordings import RecordingRunner
from store.jobs import NewJob
from tests.gateway.in_process import built_services

T, M = "acme", "m-rec-deleted"


async def test_work_that_finds_its_job_deleted_first_says_the_meeting_was_deleted(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with built_services(sqlite_url, tmp_path) as services:
        file = tmp_path / "a.wav"
        file.write_bytes(b"not read: the job is gone before its first stage")
        await services.jobs.create(NewJob(T, M, str(file), 1, 60_000, "recording", "en", True))
        job = await services.jobs.claim(services.replica_id, lease_s=60)
        assert job is not None
        assert await services.catalog.delete_meeting(T, M)
        runner = RecordingRunner(services, services.jobs, engines={})
        with capture_logs() as lines:
            await runner._run(job)  # its first stage's write finds no job: before any watch
        events = [(line["log_level"], line["event"]) for line in lines]
        assert ("info", "recording job ended: its meeting was deleted") in events, events
        assert not [e for e in events if e[0] == "warning"], events
