"""Retention deletes what is inactive when its deletion starts, not when its batch was read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fanout.bus_memory import InProcessBus
from gateway.pipeline.meeting_deletion import MeetingDeletion
from gateway.pipeline.retention import purge_once
from gateway.ws.live import ConnectionRegistry
from store.catalog_sql import SqlMeetingCatalog
from store.migrate import open_store, upgrade
from store.sql import SqlTranscriptStore


async def test_a_stream_that_starts_while_its_batch_is_purged_spares_the_meeting(
    sqlite_url: str,
) -> None:
    await upgrade(sqlite_url)
    long_ago = datetime.now(UTC) - timedelta(days=30)
    old = SqlTranscriptStore(sqlite_url, clock=lambda: long_ago)
    for meeting in ("first", "second"):
        await old.claim_meeting("acme", meeting)
    await old.aclose()
    store = await open_store(sqlite_url)
    catalog = SqlMeetingCatalog(store.engine)

    async def delete_rows(tenant_id: str, meeting_id: str, announce: bool) -> bool:
        if meeting_id == "first":  # meanwhile a client starts streaming into the other one
            stream = {"source": "mic", "engine": "local", "sample_rate": 16000, "channels": 1}
            await store.open_stream("acme", "second", stream_id="s1", **stream)
        return await catalog.delete_meeting(tenant_id, meeting_id, announce=announce)

    deletions = MeetingDeletion(InProcessBus(), ConnectionRegistry(), delete_rows)
    try:
        assert await purge_once(catalog, deletions, days=7) == 1
        assert not await store.meeting_exists("acme", "first")
        assert await store.meeting_exists("acme", "second")
        assert not deletions.is_deleted("acme", "second")  # its stream was never ended
    finally:
        await deletions.aclose()
        await store.aclose()
