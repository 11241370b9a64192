"""`TranscriptStore` on SQLAlchemy async: SQLite (aiosqlite) or PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Row, Select, bindparam, case, event, func, literal, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from store.base import (
    ENGINE_SEPARATOR,
    FinalSegment,
    MeetingDeletedSince,
    MeetingStats,
    NewFinal,
    StreamInfo,
    StreamProgress,
    TranscriptStore,
)
from store.tables import UTCDateTime, ingest_streams, meeting_deletions, meetings, segments
from store.urls import is_sqlite_url, libpq_dsn, sqlite_file

SQLITE_BUSY_TIMEOUT_MS = 30_000
# The live path (finals, stream rows, a meeting counter's seed and the prediction of its next
# number, the health check) has connections of its own, beside the pool every request shares:
# requests that take all of theirs (a burst of reads, one waiting on a lock) cannot hold a final
# back. Finals are written by one task per process and running streams' rows by one batched
# write; streams opening and closing, seeds and the health check come beside them: on
# PostgreSQL two connections and one more under load. (SQLite gets SQLAlchemy's default pool.)
LIVE_POOL_SIZE = 2
LIVE_MAX_OVERFLOW = 1
# Execution option read by the SQLite "begin" hook: writers take the write lock up front.
_BEGIN_IMMEDIATE = "mg_sqlite_begin_immediate"

Clock = Callable[[], datetime]


def _audio_began() -> Any:
    """When a stream's audio began: a resumed stream's before it started."""
    t = ingest_streams
    return func.coalesce(t.c.audio_started_at, t.c.started_at, type_=UTCDateTime)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _ensure_sqlite_parent(url: str) -> None:
    database = sqlite_file(url)
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: AsyncEngine, *, foreign_keys: bool = True) -> None:
    """WAL + busy timeout, and SQLAlchemy-emitted BEGIN (pysqlite's own is lazy and deferred).

    Write transactions use BEGIN IMMEDIATE, so two processes serialise on the database lock before
    reading anything instead of failing to upgrade a read lock (SQLITE_BUSY) mid-transaction.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (SQLAlchemy recipe)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
            # A deleted final's bytes are overwritten, not left in free pages (builds differ).
            cursor.execute("PRAGMA secure_delete = ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(_BEGIN_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_engine(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 5,
    foreign_keys: bool = True,
    command_timeout_s: float | None = None,
) -> AsyncEngine:
    """An async engine for `url`; pool sizes apply to PostgreSQL only. A database error's text
    does not list the statement's values (transcripts, webhook secrets), wherever it is logged
    (PostgreSQL's own DETAIL of a constraint violation may still quote a row: such errors are
    logged by type, not text).

    `foreign_keys=False` is for migrations on SQLite: rebuilding a table in batch mode drops it,
    and with enforcement on that drop would cascade into its children's rows.
    """
    if is_sqlite_url(url):
        _ensure_sqlite_parent(url)
        engine = create_async_engine(url, hide_parameters=True)
        _configure_sqlite(engine, foreign_keys=foreign_keys)
        return engine
    # asyncpg parses the URL itself (libpq's options: see store.urls); SQLAlchemy only pools.
    # A partitioned or stuck server must fail a call, not hang it (timeout, command_timeout).
    target = libpq_dsn(url, command_timeout_s=command_timeout_s)
    cache = target.prepared_statement_cache_size
    cache_size = {} if cache is None else {"prepared_statement_cache_size": cache}

    async def connect() -> Any:
        import asyncpg

        return await asyncpg.connect(target.dsn, **target.arguments)

    def creator() -> Any:  # what SQLAlchemy's async_creator does, with the cache's size
        dbapi = engine.sync_engine.dialect.dbapi
        return dbapi.connect(async_creator_fn=connect, **cache_size)  # type: ignore[union-attr]

    engine = create_async_engine(
        "postgresql+asyncpg://",
        creator=creator,
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_timeout=10,
    )
    return engine


def write_engine(engine: AsyncEngine) -> AsyncEngine:
    """A view of `engine` (same pool) whose transactions BEGIN IMMEDIATE on SQLite."""
    return engine.execution_options(**{_BEGIN_IMMEDIATE: True})


async def any_row(engine: AsyncEngine, query: Select[Any]) -> bool:
    """Whether `query` finds a row, read without a write transaction: an idle claimer's poll
    (every second, on every replica) then costs a read, not a locked write that finds nothing."""
    async with engine.connect() as conn:
        return (await conn.execute(query.limit(1))).first() is not None


def _upsert(dialect_name: str) -> Callable[..., Any]:
    return postgresql.insert if dialect_name == "postgresql" else sqlite.insert


class SqlTranscriptStore(TranscriptStore):
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        max_overflow: int = 5,
        clock: Clock = _utcnow,
        health_timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow)
        self._live = create_engine(url, pool_size=LIVE_POOL_SIZE, max_overflow=LIVE_MAX_OVERFLOW)
        self._live_writer = write_engine(self._live)
        self._insert = _upsert(self.engine.dialect.name)
        self._clock = clock
        self._health_timeout_s = health_timeout_s
        # Set by open_store when the database could not be reached at start: the health probe
        # runs it (and reports unhealthy) until it has passed once.
        self.pending_schema_check: Callable[[], Awaitable[None]] | None = None

    # -- meetings ---------------------------------------------------------------------------

    async def _claim(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        meeting_id: str,
        *,
        created_at: datetime | None = None,
    ) -> None:
        stmt = self._insert(meetings).values(
            tenant_id=tenant_id,
            meeting_id=meeting_id,
            created_at=created_at or self._clock(),
            last_segment_no=0,
        )
        await conn.execute(stmt.on_conflict_do_nothing(index_elements=["tenant_id", "meeting_id"]))

    async def claim_meeting(self, tenant_id: str, meeting_id: str) -> None:
        async with self._live_writer.begin() as conn:
            await self._claim(conn, tenant_id, meeting_id)

    async def meeting_exists(self, tenant_id: str, meeting_id: str) -> bool:
        stmt = select(meetings.c.tenant_id).where(_meeting_is(meetings, tenant_id, meeting_id))
        async with self.engine.connect() as conn:
            return (await conn.execute(stmt)).first() is not None

    # -- streams ----------------------------------------------------------------------------

    async def open_stream(
        self,
        tenant_id: str,
        meeting_id: str,
        *,
        stream_id: str,
        source: str,
        engine: str,
        sample_rate: int,
        channels: int,
        started_at: datetime | None = None,
        audio_started_at: datetime | None = None,
    ) -> None:
        now = self._clock()
        started_at = started_at or now
        stmt = self._insert(ingest_streams).values(
            stream_id=stream_id,
            tenant_id=tenant_id,
            meeting_id=meeting_id,
            source=source,
            engine=engine,
            sample_rate=sample_rate,
            channels=channels,
            started_at=started_at,
            audio_started_at=audio_started_at,
            updated_at=now,
            audio_ms=0,
            frames=0,
        )
        async with self._live_writer.begin() as conn:
            await self._claim(conn, tenant_id, meeting_id, created_at=started_at)
            # A retried open of the same stream id is a no-op rather than an error.
            await conn.execute(stmt.on_conflict_do_nothing(index_elements=["stream_id"]))

    async def update_streams(self, progress: Sequence[StreamProgress]) -> None:
        if not progress:
            return
        t = ingest_streams
        # One executemany in one transaction: a write per stream cost about a millisecond of
        # CPU each, most of it the transaction around it. A row given no engines keeps its own.
        stmt = (
            update(t)
            .where(t.c.stream_id == bindparam("b_id"), t.c.ended_at.is_(None))
            .values(
                audio_ms=bindparam("b_audio"),
                frames=bindparam("b_frames"),
                engine=func.coalesce(bindparam("b_engine", type_=t.c.engine.type), t.c.engine),
                updated_at=self._clock(),
            )
        )
        rows = [
            {
                "b_id": p.stream_id,
                "b_audio": p.audio_ms,
                "b_frames": p.frames,
                "b_engine": ENGINE_SEPARATOR.join(p.engines) or None,
            }
            for p in progress
        ]
        async with self._live_writer.begin() as conn:
            await conn.execute(stmt, rows)

    async def close_stream(
        self, stream_id: str, *, audio_ms: int, frames: int, engines: Sequence[str] = ()
    ) -> None:
        now = self._clock()
        values: dict[str, Any] = {"audio_ms": audio_ms, "frames": frames, "updated_at": now}
        if engines:
            values["engine"] = ENGINE_SEPARATOR.join(engines)
        # An ended stream is final: a second close must not re-date it.
        stmt = (
            update(ingest_streams)
            .where(ingest_streams.c.stream_id == stream_id, ingest_streams.c.ended_at.is_(None))
            .values(**values, ended_at=now)
        )
        async with self._live_writer.begin() as conn:
            await conn.execute(stmt)

    async def active_streams(
        self, tenant_id: str, meeting_id: str, *, fresh_within_s: float
    ) -> list[StreamInfo]:
        cutoff = self._clock() - timedelta(seconds=fresh_within_s)
        t = ingest_streams
        stmt = (
            select(*stream_columns())
            .where(
                _meeting_is(t, tenant_id, meeting_id),
                t.c.ended_at.is_(None),
                t.c.updated_at >= cutoff,
            )
            .order_by(t.c.started_at, t.c.stream_id)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [StreamInfo.from_row(row._mapping) for row in rows]

    async def stream_starts(self, tenant_id: str, meeting_id: str) -> dict[str, datetime]:
        t = ingest_streams
        stmt = select(t.c.stream_id, _audio_began()).where(_meeting_is(t, tenant_id, meeting_id))
        async with self.engine.connect() as conn:
            return {row[0]: row[1] for row in (await conn.execute(stmt)).all()}

    async def stream_start(
        self, tenant_id: str, meeting_id: str, stream_id: str, source: str
    ) -> datetime | None:
        t = ingest_streams
        of_it = (
            _meeting_is(t, tenant_id, meeting_id),
            t.c.stream_id == stream_id,
            t.c.source == source,
        )
        async with self.engine.connect() as conn:
            return (await conn.execute(select(_audio_began()).where(*of_it))).scalar()

    # -- finals -----------------------------------------------------------------------------

    async def append_final(self, tenant_id: str, meeting_id: str, final: NewFinal) -> FinalSegment:
        now = self._clock()
        async with self._live_writer.begin() as conn:
            if final.stream_id is not None and final.stream_seq is not None:
                stored = await _stored_final(conn, final.stream_id, final.stream_seq)
                if stored is not None:
                    return stored  # a retry after a commit whose answer was lost
            return await append_numbered(conn, tenant_id, meeting_id, final, now)

    async def store_numbered_final(
        self,
        tenant_id: str,
        meeting_id: str,
        segment_no: int,
        final: NewFinal,
        created_at: datetime,
    ) -> FinalSegment:
        async with self._live_writer.begin() as conn:
            return await store_at_number(
                conn, tenant_id, meeting_id, segment_no, final, created_at, fenced=True
            )

    async def finals_after(
        self, tenant_id: str, meeting_id: str, after: int = 0, limit: int | None = None
    ) -> list[FinalSegment]:
        s = segments
        stmt = (
            select(*_final_columns())
            .where(_meeting_is(s, tenant_id, meeting_id), s.c.segment_no > after)
            .order_by(s.c.segment_no)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_final(row) for row in rows]

    async def final_streams(
        self, tenant_id: str, meeting_id: str
    ) -> list[tuple[str | None, int, int]]:
        s = segments
        stmt = (
            select(s.c.stream_id, func.min(s.c.segment_no), func.max(s.c.segment_no))
            .where(_meeting_is(s, tenant_id, meeting_id))
            .group_by(s.c.stream_id)
        )
        async with self.engine.connect() as conn:
            return [(row[0], row[1], row[2]) for row in (await conn.execute(stmt)).all()]

    async def final_sources(self, tenant_id: str, meeting_id: str) -> set[str]:
        s = segments
        stmt = select(s.c.source).where(_meeting_is(s, tenant_id, meeting_id)).distinct()
        async with self.engine.connect() as conn:
            return {row[0] for row in (await conn.execute(stmt)).all()}

    async def stream_finals_after(
        self,
        tenant_id: str,
        meeting_id: str,
        stream_id: str | None,
        after: int,
        limit: int,
        through: int,
    ) -> list[FinalSegment]:
        s = segments
        of_stream = s.c.stream_id.is_(None) if stream_id is None else s.c.stream_id == stream_id
        stmt = (
            select(*_final_columns())
            .where(
                _meeting_is(s, tenant_id, meeting_id),
                of_stream,
                s.c.segment_no > after,
                s.c.segment_no <= through,
            )
            .order_by(s.c.segment_no)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_final(row) for row in rows]

    async def numbered_meetings(self, batch: int = 1000) -> AsyncIterator[list[tuple[str, str]]]:
        m = meetings
        after: tuple[str, str] = ("", "")
        while True:
            stmt = (
                select(m.c.tenant_id, m.c.meeting_id)
                .where(
                    m.c.last_segment_no > 0,
                    tuple_(m.c.tenant_id, m.c.meeting_id) > tuple_(*after),
                )
                .order_by(m.c.tenant_id, m.c.meeting_id)
                .limit(batch)
            )
            async with self.engine.connect() as conn:
                rows = [(row[0], row[1]) for row in (await conn.execute(stmt)).all()]
            if rows:
                yield rows
            if len(rows) < batch:
                return
            after = rows[-1]

    async def last_segment_no(
        self, tenant_id: str, meeting_id: str, *, live_path: bool = False
    ) -> int:
        stmt = select(meetings.c.last_segment_no).where(
            _meeting_is(meetings, tenant_id, meeting_id)
        )
        async with (self._live if live_path else self.engine).connect() as conn:
            return (await conn.execute(stmt)).scalar_one_or_none() or 0

    async def meeting_stats(self, tenant_id: str, meeting_id: str) -> MeetingStats:
        count = (
            select(func.count())
            .select_from(segments)
            .where(_meeting_is(segments, tenant_id, meeting_id))
            .scalar_subquery()
        )
        last = (
            select(meetings.c.last_segment_no)
            .where(_meeting_is(meetings, tenant_id, meeting_id))
            .scalar_subquery()
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(count, func.coalesce(last, 0)))).one()
        return MeetingStats(final_count=row[0], last_segment_no=row[1])

    # -- lifecycle --------------------------------------------------------------------------

    async def healthy(self) -> bool:
        try:
            # Bounded: an unreachable server would otherwise hang the probe for the connect timeout.
            async with asyncio.timeout(self._health_timeout_s):
                # On the live path's connections: the answer is whether the database answers,
                # not whether requests have every pooled connection in use at the moment.
                async with self._live.connect() as conn:
                    await conn.exec_driver_sql("SELECT 1")
                if self.pending_schema_check is not None:
                    await self.pending_schema_check()
                    self.pending_schema_check = None
        except Exception:  # a probe reports, it never raises
            return False
        return True

    @property
    def schema_checked(self) -> bool:
        return self.pending_schema_check is None

    async def aclose(self) -> None:
        try:
            await self.engine.dispose()
        finally:
            await self._live.dispose()


# A final made up to this long after its meeting's logged deletion (store.deletion_log) belongs
# to the deleted meeting: no new connection to the meeting is let in for 2 minutes after
# (gateway.pipeline.meeting_deletion.TOMBSTONE_S), less a margin for replicas' clocks, so a final
# made by then is one of a stream of the deleted meeting that a replica ended late (it heard of
# the deletion late) or held through an outage.
DELETION_FENCE_S = 110.0


async def store_at_number(
    conn: AsyncConnection,
    tenant_id: str,
    meeting_id: str,
    segment_no: int,
    final: NewFinal,
    created_at: datetime,
    *,
    fenced: bool = False,
) -> FinalSegment:
    """Store `final` under `segment_no`, handed out before (live numbering, or a recording's
    reserved block), on `conn`'s transaction. A final already stored under its (stream id,
    stream seq) is returned as it is; a number already taken (numbering lost its state) gets the
    meeting's next free number instead, so both finals are kept. `fenced`: MeetingDeletedSince,
    nothing stored, for a final made before DELETION_FENCE_S after the meeting's deletion.
    (A recording's chunks need no fence: its job goes with the meeting, and a chunk's
    checkpoint is refused once the job is gone.)"""
    if segment_no < 1:
        raise ValueError("segment_no must be >= 1")
    m = meetings
    # First statement: create the meeting or raise its counter to at least segment_no. It
    # takes the meeting row's lock (PostgreSQL) / the write lock (SQLite) until commit, so the
    # checks below cannot race another writer of this meeting.
    raise_counter = (
        _upsert(conn.dialect.name)(m)
        .values(
            tenant_id=tenant_id,
            meeting_id=meeting_id,
            created_at=created_at,
            last_segment_no=segment_no,
        )
        .on_conflict_do_update(
            index_elements=["tenant_id", "meeting_id"],
            set_={
                "last_segment_no": case(
                    (m.c.last_segment_no < segment_no, segment_no),
                    else_=m.c.last_segment_no,
                )
            },
        )
    )
    await conn.execute(raise_counter)
    if fenced:  # after the upsert: a deletion logged before it deleted the row is seen
        d = meeting_deletions
        deleted = select(d.c.deleted_at).where(
            d.c.tenant_id == tenant_id, d.c.meeting_id == meeting_id
        )
        deleted_at = (await conn.execute(deleted)).scalar()
        if deleted_at is not None and created_at < deleted_at + timedelta(seconds=DELETION_FENCE_S):
            raise MeetingDeletedSince(f"deleted at {deleted_at.isoformat()}")  # rolled back
    if final.stream_id is not None and final.stream_seq is not None:
        stored = await _stored_final(conn, final.stream_id, final.stream_seq)
        if stored is not None:
            return stored  # written before (a retry, or a replayed outbox entry)
    if await _number_taken(conn, tenant_id, meeting_id, segment_no):
        # Numbering lost its state and handed this number out twice: keep both finals.
        segment_no = await _next_free_number(conn, tenant_id, meeting_id)
        await conn.execute(
            update(m)
            .where(_meeting_is(m, tenant_id, meeting_id))
            .values(last_segment_no=segment_no)
        )
    return await _insert_segment(conn, tenant_id, meeting_id, segment_no, final, created_at)


async def _number_taken(
    conn: AsyncConnection, tenant_id: str, meeting_id: str, segment_no: int
) -> bool:
    s = segments
    stmt = select(s.c.id).where(_meeting_is(s, tenant_id, meeting_id), s.c.segment_no == segment_no)
    return (await conn.execute(stmt)).first() is not None


async def _next_free_number(conn: AsyncConnection, tenant_id: str, meeting_id: str) -> int:
    s, m = segments, meetings
    highest = select(func.max(s.c.segment_no)).where(_meeting_is(s, tenant_id, meeting_id))
    counter = select(m.c.last_segment_no).where(_meeting_is(m, tenant_id, meeting_id))
    top = max(
        (await conn.execute(highest)).scalar_one_or_none() or 0,
        (await conn.execute(counter)).scalar_one_or_none() or 0,
    )
    return top + 1


async def _stored_final(
    conn: AsyncConnection, stream_id: str, stream_seq: int
) -> FinalSegment | None:
    s = segments
    stmt = select(*_final_columns()).where(s.c.stream_id == stream_id, s.c.stream_seq == stream_seq)
    row = (await conn.execute(stmt)).first()
    return None if row is None else _final(row)


async def append_numbered(
    conn: AsyncConnection,
    tenant_id: str,
    meeting_id: str,
    final: NewFinal,
    now: datetime,
    *,
    above: int = 0,
) -> FinalSegment:
    """Store `final` with the meeting's next number, on `conn`'s transaction (recordings' chunks
    and `append_final`). One statement creates the meeting or bumps its counter; on conflict it
    holds the row lock (PostgreSQL) / the database write lock (SQLite, BEGIN IMMEDIATE) until
    commit, so concurrent writers in any process get consecutive numbers. If the segment insert
    fails the bump rolls back with it: no gaps. The number is above `above` too: the live
    numbering's last number, which finals still on their way to the store already carry."""
    last = meetings.c.last_segment_no
    bump = (
        _upsert(conn.dialect.name)(meetings)
        .values(
            tenant_id=tenant_id, meeting_id=meeting_id, created_at=now, last_segment_no=above + 1
        )
        .returning(last)
        .on_conflict_do_update(
            index_elements=["tenant_id", "meeting_id"],
            set_={"last_segment_no": case((last > above, last), else_=literal(above)) + 1},
        )
    )
    segment_no = (await conn.execute(bump)).scalar_one()
    return await _insert_segment(conn, tenant_id, meeting_id, segment_no, final, now)


async def _insert_segment(
    conn: AsyncConnection,
    tenant_id: str,
    meeting_id: str,
    segment_no: int,
    final: NewFinal,
    created_at: datetime,
) -> FinalSegment:
    await conn.execute(
        segments.insert().values(
            tenant_id=tenant_id,
            meeting_id=meeting_id,
            segment_no=segment_no,
            text=final.text,
            start_ms=final.start_ms,
            end_ms=final.end_ms,
            speaker=final.speaker,
            confidence=final.confidence,
            source=final.source,
            stream_id=final.stream_id,
            stream_seq=final.stream_seq,
            created_at=created_at,
        )
    )
    return FinalSegment.numbered(segment_no, final, created_at)


def _meeting_is(table: Any, tenant_id: str, meeting_id: str) -> Any:
    return (table.c.tenant_id == tenant_id) & (table.c.meeting_id == meeting_id)


def stream_columns() -> tuple[Any, ...]:
    """The columns of a `StreamInfo`, in its order."""
    t = ingest_streams
    return (
        t.c.stream_id,
        t.c.source,
        t.c.engine,
        t.c.sample_rate,
        t.c.channels,
        t.c.started_at,
        t.c.audio_ms,
        t.c.frames,
        t.c.ended_at,
        t.c.updated_at,
        t.c.audio_started_at,
    )


def _final_columns() -> tuple[Any, ...]:
    s = segments
    return (
        s.c.segment_no,
        s.c.text,
        s.c.start_ms,
        s.c.end_ms,
        s.c.source,
        s.c.speaker,
        s.c.confidence,
        s.c.created_at,
        s.c.stream_id,
        s.c.edited_by,
    )


def _final(row: Row[Any]) -> FinalSegment:
    return FinalSegment(**row._mapping)
