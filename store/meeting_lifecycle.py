"""A meeting's lifecycle as its streams show it: `live` while an ingest stream is open and fresh,
`ended` once none has been for `idle_s`. Each move is one compare-and-set on the meeting's row
with its webhook event enqueued in the same transaction (and, for `ended`, the request for its
notes, store.notes), so however many replicas watch, each meeting.started and meeting.ended is
raised once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, not_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.notes import request as request_notes
from store.sql import write_engine
from store.tables import ingest_streams, meetings
from store.webhooks import Event, EventType, enqueue

LIVE, ENDED = "live", "ended"


class MeetingLifecycle:
    def __init__(self, engine: AsyncEngine, *, fresh_within_s: float) -> None:
        self._writer = write_engine(engine)
        # A stream refreshes its row while it runs; one not refreshed for this long is dead.
        self._fresh = timedelta(seconds=fresh_within_s)

    def _streams(self) -> Any:
        s = ingest_streams
        return and_(s.c.tenant_id == meetings.c.tenant_id, s.c.meeting_id == meetings.c.meeting_id)

    async def mark_started(
        self, idle_s: float, now: datetime | None = None, *, meeting: tuple[str, str] | None = None
    ) -> list[Event]:
        """Meetings that were not `live` with a live stream, or with one that began since their
        last move and ended within `idle_s` (opened and closed between two rounds): now they
        are (meeting.started; `mark_ended` ends the latter once `idle_s` has passed). With
        `meeting` (tenant, meeting id), that one only: a deletion's round before it goes."""
        now = now or datetime.now(UTC)
        s, m = ingest_streams, meetings
        live_stream = and_(s.c.ended_at.is_(None), s.c.updated_at >= now - self._fresh)
        short_stream = and_(
            or_(m.c.lifecycle_at.is_(None), s.c.started_at > m.c.lifecycle_at),
            func.coalesce(s.c.ended_at, s.c.updated_at) >= now - timedelta(seconds=idle_s),
        )
        stream = exists().where(self._streams(), or_(live_stream, short_stream))
        only = (
            () if meeting is None else (m.c.tenant_id == meeting[0], m.c.meeting_id == meeting[1])
        )
        stmt = (
            update(m)
            .where(or_(m.c.lifecycle.is_(None), m.c.lifecycle != LIVE), stream, *only)
            .values(lifecycle=LIVE, lifecycle_at=now)
            .returning(m.c.tenant_id, m.c.meeting_id)
        )
        return await self._move(stmt, "meeting.started", now)

    async def mark_ended(self, idle_s: float, now: datetime | None = None) -> list[Event]:
        """`live` meetings without a stream for `idle_s`: now `ended` (meeting.ended)."""
        now = now or datetime.now(UTC)
        s, m = ingest_streams, meetings
        recent_stream = exists().where(
            self._streams(),
            or_(
                and_(s.c.ended_at.is_(None), s.c.updated_at >= now - self._fresh),
                func.coalesce(s.c.ended_at, s.c.updated_at) >= now - timedelta(seconds=idle_s),
            ),
        )
        stmt = (
            update(m)
            .where(m.c.lifecycle == LIVE, not_(recent_stream))
            .values(lifecycle=ENDED, lifecycle_at=now)
            .returning(m.c.tenant_id, m.c.meeting_id)
        )
        return await self._move(stmt, "meeting.ended", now, _ended_at)

    async def _move(
        self, stmt: Any, event_type: EventType, now: datetime, data_of: EventData | None = None
    ) -> list[Event]:
        events: list[Event] = []
        async with self._writer.begin() as conn:
            for row in (await conn.execute(stmt)).all():
                data = {} if data_of is None else await data_of(conn, row.tenant_id, row.meeting_id)
                event = Event(event_type, row.tenant_id, row.meeting_id, data, at=now)
                await enqueue(conn, event, now)
                if event_type == "meeting.ended":  # its notes are made over the whole meeting
                    await request_notes(conn, row.tenant_id, row.meeting_id, "meeting.ended", now)
                events.append(event)
        return events


# An event's data beyond its tenant and meeting, read in the transaction that raises it.
EventData = Callable[[AsyncConnection, str, str], Awaitable[dict[str, object]]]


async def _ended_at(conn: AsyncConnection, tenant_id: str, meeting_id: str) -> dict[str, object]:
    """When the meeting ended: its last stream's end (or last refresh, for a replica that
    died), not the round's that saw it, which comes `idle_s` later. Absent without a stream."""
    s = ingest_streams
    last = select(func.max(func.coalesce(s.c.ended_at, s.c.updated_at))).where(
        s.c.tenant_id == tenant_id, s.c.meeting_id == meeting_id
    )
    ended_at = (await conn.execute(last)).scalar()
    return {} if ended_at is None else {"ended_at": ended_at.isoformat()}
