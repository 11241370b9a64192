"""`MeetingCatalog` over the transcript store's database (SQLite or PostgreSQL).

A page of meetings costs a handful of grouped queries over that page's ids, whatever the
tenant's size. Search is `store.search_sql`'s.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    delete,
    exists,
    func,
    not_,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.base import StreamInfo
from store.catalog import (
    ANY_FINAL,
    ANY_MEETING,
    KEEP,
    CorrectedFinal,
    FinalChangedMeanwhile,
    MeetingCatalog,
    MeetingFilter,
    MeetingLabels,
    MeetingPosition,
    MeetingSummary,
    RetentionPosition,
    SearchFilter,
    SearchHit,
    TooManySpeakerNames,
)
from store.jobs import UNENDED as UNENDED_JOBS
from store.search import (
    SearchPosition,
    Term,
)
from store.search_sql import SqlSearch
from store.sql import SQLITE_BUSY_TIMEOUT_MS, stream_columns, write_engine
from store.tables import (
    ingest_streams,
    meeting_notes,
    meeting_tips,
    meetings,
    recording_jobs,
    segments,
)
from store.webhooks import Event, enqueue

Clock = Callable[[], datetime]
# How long emptying SQLite's write-ahead log waits for readers, holding writers off meanwhile.
CHECKPOINT_WAIT_MS = 200


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SqlMeetingCatalog(MeetingCatalog):
    def __init__(self, engine: AsyncEngine, *, clock: Clock = _utcnow) -> None:
        self.engine = engine
        self._clock = clock
        self._postgres = engine.dialect.name == "postgresql"
        self._search = SqlSearch(engine)

    # -- the meeting list -------------------------------------------------------------------

    async def list_meetings(
        self,
        tenant_id: str,
        *,
        limit: int,
        after: MeetingPosition | None = None,
        where: MeetingFilter = ANY_MEETING,
        live_within_s: float,
    ) -> list[MeetingSummary]:
        m = meetings
        stmt = select(*_meeting_columns()).where(m.c.tenant_id == tenant_id)
        if after is not None:
            # Spelled out rather than a row-value comparison, so the bound time takes the
            # column's type (UTC text on SQLite).
            stmt = stmt.where(
                # The first bound is implied by the second; the planner seeks the index with it.
                m.c.created_at <= after.created_at,
                or_(
                    m.c.created_at < after.created_at,
                    and_(m.c.created_at == after.created_at, m.c.meeting_id < after.meeting_id),
                ),
            )
        if where.since is not None:
            stmt = stmt.where(m.c.created_at >= where.since)
        if where.until is not None:
            stmt = stmt.where(m.c.created_at < where.until)
        if where.meeting_ids is not None:
            stmt = stmt.where(m.c.meeting_id.in_(sorted(where.meeting_ids)))
        if where.active is not None:
            live = exists().where(self._live_stream(live_within_s), _same_meeting(ingest_streams))
            stmt = stmt.where(live if where.active else not_(live))
        stmt = stmt.order_by(m.c.created_at.desc(), m.c.meeting_id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
            return await self._summaries(conn, tenant_id, rows, live_within_s, with_streams=False)

    async def meeting(
        self, tenant_id: str, meeting_id: str, *, live_within_s: float
    ) -> MeetingSummary | None:
        m = meetings
        stmt = select(*_meeting_columns()).where(
            m.c.tenant_id == tenant_id, m.c.meeting_id == meeting_id
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
            found = await self._summaries(conn, tenant_id, rows, live_within_s, with_streams=True)
        return found[0] if found else None

    def _live_stream(self, live_within_s: float) -> Any:
        cutoff = self._clock() - timedelta(seconds=live_within_s)
        t = ingest_streams
        return and_(t.c.ended_at.is_(None), t.c.updated_at >= cutoff)

    async def _summaries(
        self,
        conn: Any,
        tenant_id: str,
        rows: Iterable[Any],
        live_within_s: float,
        *,
        with_streams: bool,
    ) -> list[MeetingSummary]:
        rows = list(rows)
        if not rows:
            return []
        ids = [row.meeting_id for row in rows]
        s, t = segments, ingest_streams
        in_page_s = and_(s.c.tenant_id == tenant_id, s.c.meeting_id.in_(ids))
        in_page_t = and_(t.c.tenant_id == tenant_id, t.c.meeting_id.in_(ids))

        finals = {
            r.meeting_id: r
            for r in await conn.execute(
                select(
                    s.c.meeting_id,
                    func.count().label("n"),
                    func.max(s.c.created_at).label("last"),
                    func.max(s.c.end_ms).label("end_ms"),
                )
                .where(in_page_s)
                .group_by(s.c.meeting_id)
            )
        }
        speakers = await _distinct(conn, s.c.speaker, s.c.meeting_id, in_page_s)
        sources = await _distinct(conn, s.c.source, s.c.meeting_id, in_page_s)
        stream_rows = (
            await conn.execute(
                select(t.c.meeting_id, *stream_columns())
                .where(in_page_t)
                .order_by(t.c.started_at, t.c.stream_id)
            )
        ).all()
        streams: dict[str, list[StreamInfo]] = defaultdict(list)
        for r in stream_rows:
            fields = dict(r._mapping)
            streams[fields.pop("meeting_id")].append(StreamInfo.from_row(fields))
        # Engines that transcribed its recordings serve a meeting too (a recording-only one has
        # no stream).
        j = recording_jobs
        recorded_by: dict[str, set[str]] = defaultdict(set)
        for r in await conn.execute(
            select(j.c.meeting_id, j.c.engines_used).where(
                j.c.tenant_id == tenant_id, j.c.meeting_id.in_(ids), j.c.engines_used != "{}"
            )
        ):
            recorded_by[r.meeting_id].update(json.loads(r.engines_used or "{}"))
        cutoff = self._clock() - timedelta(seconds=live_within_s)

        out = []
        for row in rows:
            f = finals.get(row.meeting_id)
            # A stream whose replica died is never closed: it ended by its last refresh.
            own = [
                x if x.ended_at is not None or x.updated_at >= cutoff else x.lost()
                for x in streams.get(row.meeting_id, [])
            ]
            moments = [row.created_at]
            if f is not None and f.last is not None:
                moments.append(f.last)
            moments.extend(x.updated_at for x in own)
            covered = [f.end_ms or 0] if f is not None else []
            # On the meeting's clock, as the exports: a stream resumed after a reconnect starts
            # where the first one's time says, not at 0 (the longest stream alone said 22 s
            # of a 45 s meeting).
            origin = min((x.audio_began for x in own), default=None)
            covered.extend(
                x.audio_ms + round((x.audio_began - origin).total_seconds() * 1000)
                for x in own
                if origin is not None
            )
            live = [x for x in own if x.ended_at is None]
            out.append(
                MeetingSummary(
                    meeting_id=row.meeting_id,
                    created_at=row.created_at,
                    last_activity_at=max(moments),
                    duration_ms=max(covered, default=0),
                    final_count=f.n if f is not None else 0,
                    last_segment_no=row.last_segment_no,
                    sources=tuple(
                        sorted(set(sources.get(row.meeting_id, ())) | {x.source for x in own})
                    ),
                    engines=tuple(
                        sorted({e for x in own for e in x.engines} | recorded_by[row.meeting_id])
                    ),
                    speakers=tuple(sorted(speakers.get(row.meeting_id, ()))),
                    live=bool(live),
                    title=row.title,
                    speaker_names=_names(row.speaker_names),
                    streams=tuple(own) if with_streams else (),
                )
            )
        return out

    # -- search (store.search_sql) -------------------------------------------------------------

    async def search(
        self,
        tenant_id: str,
        terms: list[Term],
        *,
        limit: int,
        after: SearchPosition | None = None,
        where: SearchFilter = ANY_FINAL,
    ) -> list[SearchHit]:
        return await self._search.search(tenant_id, terms, limit=limit, after=after, where=where)

    async def search_horizon(self, tenant_id: str) -> int:
        return await self._search.horizon(tenant_id)

    # -- edits ------------------------------------------------------------------------------

    async def labels(self, tenant_id: str, meeting_id: str) -> MeetingLabels:
        m = meetings
        stmt = select(m.c.title, m.c.speaker_names).where(
            m.c.tenant_id == tenant_id, m.c.meeting_id == meeting_id
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return MeetingLabels(None, {})
        return MeetingLabels(row.title, _names(row.speaker_names))

    async def delete_meeting(
        self, tenant_id: str, meeting_id: str, *, announce: bool = True
    ) -> bool:
        m, s, t, j = meetings, segments, ingest_streams, recording_jobs
        async with write_engine(self.engine).begin() as conn:
            if self._postgres:
                # The meeting's row first: a transaction that updates it and adds a child row
                # (a move to `ended` requesting notes) either commits before the deletes below
                # run, which then see its row, or waits and finds the meeting gone.
                await conn.execute(
                    select(m.c.meeting_id)
                    .where(m.c.tenant_id == tenant_id, m.c.meeting_id == meeting_id)
                    .with_for_update()
                )
            await conn.execute(
                delete(j).where(j.c.tenant_id == tenant_id, j.c.meeting_id == meeting_id)
            )
            for table in (meeting_notes, meeting_tips):
                await conn.execute(
                    delete(table).where(
                        table.c.tenant_id == tenant_id, table.c.meeting_id == meeting_id
                    )
                )
            # Children first: SQLite enforces the cascade only with foreign keys on, which a
            # connection opened by another tool may not have.
            await conn.execute(
                delete(s).where(s.c.tenant_id == tenant_id, s.c.meeting_id == meeting_id)
            )
            if self._postgres:
                # Its stream rows in stream-id order, the order a process refreshing its streams
                # takes them in (StreamRowRefresher): a DELETE takes them in the table's order,
                # and a refresh holding one it needs would deadlock with it.
                await conn.execute(
                    select(t.c.stream_id)
                    .where(t.c.tenant_id == tenant_id, t.c.meeting_id == meeting_id)
                    .order_by(t.c.stream_id.collate("C"))  # code points, as Python sorts
                    .with_for_update()
                )
            await conn.execute(
                delete(t).where(t.c.tenant_id == tenant_id, t.c.meeting_id == meeting_id)
            )
            gone = await conn.execute(
                delete(m).where(m.c.tenant_id == tenant_id, m.c.meeting_id == meeting_id)
            )
            if gone.rowcount and announce:
                await enqueue(conn, Event("meeting.deleted", tenant_id, meeting_id))
        return bool(gone.rowcount)

    async def forget_deleted(self) -> bool:
        """SQLite: FTS5 keeps a deleted final's words in its index until its segments are
        merged (`optimize` rewrites the index: 0.1 s for a hundred thousand finals here), and
        the write-ahead log keeps every page written until it is reset (checkpointed and
        emptied; secure_delete zeroes the freed space in the file). PostgreSQL's dead rows are
        VACUUM's (autovacuum), not this."""
        if self._postgres:
            return True
        async with write_engine(self.engine).begin() as conn:
            await conn.execute(text("INSERT INTO segments_fts(segments_fts) VALUES('optimize')"))
        async with self.engine.connect() as conn:
            # TRUNCATE holds the write lock while it waits for readers: briefly, not for the
            # pool's busy timeout (a backup or a shell holding a read would stall every write).
            await conn.execute(text(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}"))
            try:
                busy, _, _ = (await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))).one()
            finally:
                await conn.execute(text(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"))
        return not busy

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        if not self._postgres:
            yield True  # SQLite serves one process
            return
        async with self.engine.connect() as conn:
            key = select(func.hashtext(bindparam("name", name)))
            lock_id = (await conn.execute(key)).scalar_one()
            held = bool(
                (await conn.execute(select(func.pg_try_advisory_lock(lock_id)))).scalar_one()
            )
            try:
                yield held
            finally:
                if held:
                    await conn.execute(select(func.pg_advisory_unlock(lock_id)))
                await conn.commit()

    @staticmethod
    def _inactive_since(before: datetime) -> list[Any]:
        m, s, t = meetings, segments, ingest_streams
        recent_final = exists().where(_same_meeting(s), s.c.created_at >= before)
        # A stream refreshes its row while it runs: one not refreshed since `before` is over
        # (ended, or its replica died).
        recent_stream = exists().where(_same_meeting(t), t.c.updated_at >= before)
        # A recording job still to run (however long it has queued) or touched since `before`
        # is activity too: deleting the meeting would take its upload with it.
        j = recording_jobs
        recording = exists().where(
            _same_meeting(j), or_(j.c.status.in_(UNENDED_JOBS), j.c.updated_at >= before)
        )
        return [m.c.created_at < before, not_(recent_final), not_(recent_stream), not_(recording)]

    async def inactive_meetings(
        self, before: datetime, *, limit: int, after: RetentionPosition | None = None
    ) -> list[RetentionPosition]:
        m = meetings
        stmt = select(m.c.created_at, m.c.tenant_id, m.c.meeting_id).where(
            *self._inactive_since(before)
        )
        if after is not None:
            # Spelled out, as in list_meetings, and with its implied bound for the index seek.
            stmt = stmt.where(
                m.c.created_at >= after.created_at,
                or_(
                    m.c.created_at > after.created_at,
                    and_(
                        m.c.created_at == after.created_at,
                        or_(
                            m.c.tenant_id > after.tenant_id,
                            and_(
                                m.c.tenant_id == after.tenant_id,
                                m.c.meeting_id > after.meeting_id,
                            ),
                        ),
                    ),
                ),
            )
        # Walked on the index of the same order (ix_meetings_created_at_tenant_id_meeting_id).
        stmt = stmt.order_by(m.c.created_at, m.c.tenant_id, m.c.meeting_id).limit(limit)
        async with self.engine.connect() as conn:
            return [
                RetentionPosition(row.created_at, row.tenant_id, row.meeting_id)
                for row in await conn.execute(stmt)
            ]

    async def still_inactive(self, tenant_id: str, meeting_id: str, before: datetime) -> bool:
        m = meetings
        stmt = select(m.c.meeting_id).where(
            m.c.tenant_id == tenant_id, m.c.meeting_id == meeting_id, *self._inactive_since(before)
        )
        async with self.engine.connect() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def edit_meeting(
        self,
        tenant_id: str,
        meeting_id: str,
        *,
        title: str | object | None = KEEP,
        speakers: dict[str, str | None] | None = None,
        max_names: int | None = None,
    ) -> MeetingLabels | None:
        m = meetings
        where = and_(m.c.tenant_id == tenant_id, m.c.meeting_id == meeting_id)
        async with write_engine(self.engine).begin() as conn:
            # The row lock (PostgreSQL FOR UPDATE, SQLite's write lock) makes the merge of two
            # concurrent renames lose neither.
            locked = select(m.c.title, m.c.speaker_names).where(where)
            if self._postgres:
                locked = locked.with_for_update()
            row = (await conn.execute(locked)).first()
            if row is None:
                return None
            names = _names(row.speaker_names)
            before = len(names)
            for label, name in (speakers or {}).items():
                if name is None:
                    names.pop(label, None)
                else:
                    names[label] = name
            # An edit may not take a meeting past the limit; one already past it (named before
            # there was a limit) can still be retitled and have names removed.
            if max_names is not None and len(names) > max(max_names, before):
                raise TooManySpeakerNames(max_names)  # the transaction rolls back
            new_title = row.title if title is KEEP else title
            await conn.execute(
                update(m)
                .where(where)
                .values(title=new_title, speaker_names=json.dumps(names, ensure_ascii=False))
            )
        return MeetingLabels(new_title, names)  # type: ignore[arg-type]

    async def correct_final(
        self,
        tenant_id: str,
        meeting_id: str,
        segment_no: int,
        text: str,
        *,
        editor: str,
        previous_text: str | None = None,
    ) -> CorrectedFinal | None:
        s = segments
        where = and_(
            s.c.tenant_id == tenant_id, s.c.meeting_id == meeting_id, s.c.segment_no == segment_no
        )
        now = self._clock()
        async with write_engine(self.engine).begin() as conn:
            if self._postgres:
                # The meeting's row first, as a deletion takes it (then its tips, then its
                # finals): this final's row, then its tips, in the other order would deadlock.
                m = meetings
                await conn.execute(
                    select(m.c.meeting_id)
                    .where(m.c.tenant_id == tenant_id, m.c.meeting_id == meeting_id)
                    .with_for_update(read=True)
                )
            row = (
                await conn.execute(
                    select(
                        s.c.text,
                        s.c.original_text,
                        s.c.speaker,
                        s.c.source,
                        s.c.start_ms,
                        s.c.end_ms,
                        s.c.edited_by,
                    )
                    .where(where)
                    .with_for_update()  # two corrections of one final: one after the other
                )
            ).first()
            if row is None:
                return None
            if previous_text is not None and row.text != previous_text:
                raise FinalChangedMeanwhile(row.edited_by)
            original = row.original_text if row.original_text is not None else row.text
            await conn.execute(
                update(s)
                .where(where)
                .values(text=text, original_text=original, edited_by=editor, edited_at=now)
            )
            withdrawn = (
                ()
                if text == row.text
                else await _withdraw_tips(conn, tenant_id, meeting_id, segment_no, now)
            )
        return CorrectedFinal(
            segment_no=segment_no,
            text=text,
            original_text=original,
            edited_by=editor,
            edited_at=now,
            speaker=row.speaker,
            source=row.source,
            start_ms=row.start_ms,
            end_ms=row.end_ms,
            withdrawn_tips=withdrawn,
        )


async def _withdraw_tips(
    conn: AsyncConnection, tenant_id: str, meeting_id: str, segment_no: int, now: datetime
) -> tuple[int, ...]:
    """Withdraw the live tips citing final `segment_no`: they were made from the words its
    correction replaced, which must not outlive it in exports or histories. Their numbers stay
    taken, so no later tip is mistaken for one of them."""
    t = meeting_tips
    meeting = and_(t.c.tenant_id == tenant_id, t.c.meeting_id == meeting_id)
    cited = await conn.execute(
        select(t.c.tip_no, t.c.segment_nos).where(
            meeting, t.c.segment_no_high >= segment_no, t.c.withdrawn_at.is_(None)
        )
    )
    citing = [tip for tip, nos in cited if segment_no in json.loads(nos)]
    if not citing:
        return ()
    # `withdrawn_at IS NULL` again: a correction of another final the tip cites may have
    # withdrawn it since the read (PostgreSQL checks the condition again after the row lock).
    withdrawn = await conn.execute(
        update(t)
        .where(meeting, t.c.tip_no.in_(citing), t.c.withdrawn_at.is_(None))
        # segment_no_high negated: no since= history or export (after >= 0) reads it, not
        # even a replica of the previous release (no withdrawn_at filter) during a rolling
        # deploy, and a new tips follower still starts after the finals it covered.
        .values(
            text="",
            owner=None,
            due=None,
            segment_no_high=-func.abs(t.c.segment_no_high),
            withdrawn_at=now,
        )
        .returning(t.c.tip_no)
    )
    return tuple(sorted(tip for (tip,) in withdrawn))


def _names(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if isinstance(v, str)}


def _meeting_columns() -> tuple[Any, ...]:
    m = meetings
    return (m.c.meeting_id, m.c.created_at, m.c.last_segment_no, m.c.title, m.c.speaker_names)


def _same_meeting(table: Any) -> Any:
    return and_(
        table.c.tenant_id == meetings.c.tenant_id, table.c.meeting_id == meetings.c.meeting_id
    )


async def _distinct(conn: Any, column: Any, key: Any, condition: Any) -> dict[str, list[str]]:
    rows = await conn.execute(select(key, column).where(condition, column.is_not(None)).distinct())
    found: dict[str, list[str]] = defaultdict(list)
    for meeting_id, value in rows:
        found[meeting_id].append(value)
    return found
