"""Retention: meetings whose last activity is older than TRANSCRIPT_RETENTION_DAYS are deleted,
in batches, the same way a DELETE request deletes one.

Every replica runs the loop; on PostgreSQL a session advisory lock lets one replica at a time
purge (the others skip the round), on SQLite there is one process.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from gateway.observability.logs import get_logger
from gateway.pipeline.meeting_deletion import MeetingDeletion
from store.catalog import MeetingCatalog

log = get_logger("gateway.pipeline.retention")

BATCH = 100


async def purge_once(catalog: MeetingCatalog, deletions: MeetingDeletion, *, days: float) -> int:
    """Delete every meeting inactive for `days`, if this replica holds the purge lock; how many."""
    before = datetime.now(UTC) - timedelta(days=days)
    purged = 0
    async with catalog.exclusive("retention") as held:
        if not held:
            return 0
        last = None
        while batch := await catalog.inactive_meetings(before, limit=BATCH, after=last):
            last = batch[-1]
            for meeting in batch:
                tenant_id, meeting_id = meeting.tenant_id, meeting.meeting_id
                # A batch takes a while: a stream, final or upload since it was read spares the
                # meeting (checked again just before its deletion starts; not listed again).
                if not await catalog.still_inactive(tenant_id, meeting_id, before):
                    continue
                if await deletions.delete(tenant_id, meeting_id):
                    purged += 1
                    log.info(
                        "meeting deleted by retention", tenant=tenant_id, meeting_id=meeting_id
                    )
    return purged


async def run_retention(
    catalog: MeetingCatalog, deletions: MeetingDeletion, *, days: float, interval_s: float
) -> None:
    while True:
        try:
            await purge_once(catalog, deletions, days=days)
        except Exception as exc:  # a database outage: try again next round
            log.warning("retention round failed", error=type(exc).__name__)
        await asyncio.sleep(interval_s)
