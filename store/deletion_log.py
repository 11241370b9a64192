"""Deleted meetings, as every replica can read them.

A deletion's bus notice reaches the replicas listening at that moment; this log reaches the
others: one that starts after it, or whose bus link was down through it and its sweeps. Each
row is the (tenant, meeting) and when it was deleted, by the deleting replica's clock (replicas
are assumed NTP-synchronised: a second of skew moves a 2-minute refusal by a second). Rows are
kept for what callers pass (a week: what an outbox kept through a deletion is checked against
them, store.sql) and removed as new deletions are written, and by `forget_before`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from store.sql import write_engine
from store.tables import meeting_deletions


@dataclass(frozen=True, slots=True)
class LoggedDeletion:
    tenant_id: str
    meeting_id: str
    deleted_at: datetime


class DeletionLog:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer = write_engine(engine)

    async def record(
        self, tenant_id: str, meeting_id: str, at: datetime, *, keep_after: datetime
    ) -> None:
        """Log the deletion at `at` (the meeting keeps its latest deletion time) and forget
        those before `keep_after`."""
        d = meeting_deletions
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        upsert = dialect.insert(d).values(tenant_id=tenant_id, meeting_id=meeting_id, deleted_at=at)
        # The later of the two times: a sweep's retry of an older deletion does not move it back.
        later = func.greatest if dialect is postgresql else func.max
        upsert = upsert.on_conflict_do_update(
            index_elements=[d.c.tenant_id, d.c.meeting_id],
            set_={"deleted_at": later(d.c.deleted_at, upsert.excluded.deleted_at)},
        )
        async with self._writer.begin() as conn:
            await conn.execute(upsert)
            await conn.execute(delete(d).where(d.c.deleted_at < keep_after))

    async def forget_before(self, keep_after: datetime) -> None:
        """Remove the deletions logged before `keep_after` (a log no deletion followed for a
        day kept the last ones' meeting ids)."""
        d = meeting_deletions
        async with self._writer.begin() as conn:
            await conn.execute(delete(d).where(d.c.deleted_at < keep_after))

    async def after(self, since: datetime) -> list[LoggedDeletion]:
        """Deletions logged at or after `since`, oldest first."""
        d = meeting_deletions
        stmt = (
            select(d.c.tenant_id, d.c.meeting_id, d.c.deleted_at)
            .where(d.c.deleted_at >= since)
            .order_by(d.c.deleted_at)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [LoggedDeletion(r.tenant_id, r.meeting_id, r.deleted_at) for r in rows]
