"""Recording jobs: durable rows that any replica can claim, checkpoint and finish.

States: queued -> running -> succeeded | failed | cancelled. A runner claims a job with a lease
(PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: the single write lock of BEGIN IMMEDIATE), renews
it while it works, and after each chunk stores the chunk's finals and advances the checkpoint in
ONE transaction guarded by the lease and the expected chunk index: a chunk is never stored twice,
and a job whose runner died is claimed again once its lease lapses and resumes at `next_chunk`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, String, and_, bindparam, case, func, literal, null, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.base import FinalSegment, NewFinal
from store.notes import request as request_notes
from store.sql import _upsert, any_row, append_numbered, store_at_number, write_engine
from store.tables import meetings, recording_jobs
from store.webhooks import Event, EventType, enqueue

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
ENDED = frozenset({SUCCEEDED, FAILED, CANCELLED})
UNENDED = (QUEUED, RUNNING)


class JobLimit(Exception):
    """A new job would pass a limit: `kind` "queue" (the tenant's queued jobs), "disk" (the
    bytes of unended jobs' files) or "tenant_disk" (those of the tenant's)."""

    def __init__(self, kind: str, limit: int) -> None:
        super().__init__(f"{kind} limit {limit}")
        self.kind, self.limit = kind, limit


RUNNING_PROGRESS_MAX = 0.99  # only a job that succeeded shows 100 %


def _utcnow() -> datetime:
    return datetime.now(UTC)


# Hands out `count` consecutive numbers of the job's meeting, the first of them; None when
# they cannot be had (the store numbers the chunk itself then).
Reserve = Callable[[int], Awaitable[int | None]]


class LeaseLost(Exception):
    """The job is no longer this runner's (lease lapsed and taken over, or checkpoint moved)."""


@dataclass(frozen=True, slots=True)
class NewJob:
    tenant_id: str
    meeting_id: str
    file_path: str
    file_bytes: int
    audio_ms_total: int
    label: str
    language: str
    diarize: bool
    engine: str | None = None
    idempotency_key: str | None = None
    split_channels: bool = False  # each channel transcribed apart (speakers ch1, ch2, ...)


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    tenant_id: str
    meeting_id: str
    status: str
    stage: str
    audio_ms_done: int
    audio_ms_total: int
    engine: str | None
    engines_used: dict[str, int]
    attempts: int
    error: str | None
    idempotency_key: str | None
    file_path: str
    file_bytes: int
    label: str
    language: str
    diarize: bool
    split_channels: bool
    lease_owner: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    next_chunk: int
    finals: int
    last_segment_no: int | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def progress(self) -> float:
        if self.status == SUCCEEDED:
            return 1.0
        if self.audio_ms_total <= 0:  # the container did not say its length
            return 0.0
        # A header can understate the length (decoding went past it): not done until it
        # succeeds, and a job that failed or was cancelled near its end is not done either.
        return min(RUNNING_PROGRESS_MAX, self.audio_ms_done / self.audio_ms_total)

    @property
    def ended(self) -> bool:
        return self.status in ENDED


def _job(row: Row[Any]) -> Job:
    values = dict(row._mapping)
    values["engines_used"] = json.loads(values["engines_used"] or "{}")
    values["diarize"] = bool(values["diarize"])
    values["split_channels"] = bool(values["split_channels"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Job(**values)


class JobStore:
    """Recording jobs on the transcript store's database (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self.engine = engine
        self._writer = write_engine(engine)
        self._insert = _upsert(engine.dialect.name)
        self._postgres = engine.dialect.name == "postgresql"
        self._clock = clock

    async def create(
        self,
        job: NewJob,
        *,
        max_queued: int | None = None,
        disk_budget: int | None = None,
        tenant_disk_budget: int | None = None,
    ) -> tuple[Job, bool]:
        """The new job, True; or the tenant's existing job with the same idempotency key, False.
        With `max_queued` (the tenant's queued jobs), `disk_budget` (bytes of every unended
        job's file) or `tenant_disk_budget` (the same of the tenant's jobs), JobLimit when the
        new job would pass it: checked in the transaction that inserts it, so uploads racing
        each other cannot all pass (an upload's own earlier check cannot see those still
        arriving)."""
        now = self._clock()
        job_id = uuid.uuid4().hex
        row = {
            "job_id": job_id,
            "tenant_id": job.tenant_id,
            "meeting_id": job.meeting_id,
            "status": QUEUED,
            "stage": "queued",
            "audio_ms_done": 0,
            "audio_ms_total": job.audio_ms_total,
            "engine": job.engine,
            "engines_used": "{}",
            "attempts": 0,
            "idempotency_key": job.idempotency_key,
            "file_path": job.file_path,
            "file_bytes": job.file_bytes,
            "label": job.label,
            "language": job.language,
            "diarize": int(job.diarize),
            "split_channels": int(job.split_channels),
            "cancel_requested": 0,
            "next_chunk": 0,
            "finals": 0,
            "created_at": now,
            "updated_at": now,
        }
        claim = (
            self._insert(meetings)
            .values(
                tenant_id=job.tenant_id,
                meeting_id=job.meeting_id,
                created_at=now,
                last_segment_no=0,
            )
            .on_conflict_do_nothing(index_elements=["tenant_id", "meeting_id"])
        )
        try:
            async with self._writer.begin() as conn:
                budgets = (max_queued, disk_budget, tenant_disk_budget)
                limited = any(limit is not None for limit in budgets)
                if limited and conn.dialect.name == "postgresql":
                    # SQLite: BEGIN IMMEDIATE serialises writers. One lock for every creation
                    # (the disk budget is the replicas'; uploads are few), taken before the
                    # key lookup: a retry racing its first try finds that job, not the limit.
                    key = func.hashtext(bindparam("key", "recording-jobs"))
                    await conn.execute(select(func.pg_advisory_xact_lock(key)))
                await conn.execute(claim)
                if job.idempotency_key is not None:
                    existing = await self._by_key(conn, job.tenant_id, job.idempotency_key)
                    if existing is not None:
                        return existing, False
                if limited:
                    await self._check_limits(conn, job, *budgets)
                await conn.execute(recording_jobs.insert().values(**row))
                # Read back before the commit: a deletion of its meeting right after would
                # leave nothing to read (the answer still says what was created).
                j = recording_jobs
                created = _job((await conn.execute(select(j).where(j.c.job_id == job_id))).one())
        except IntegrityError:
            if job.idempotency_key is None:
                raise
            async with self.engine.connect() as conn:
                existing = await self._by_key(conn, job.tenant_id, job.idempotency_key)
            if existing is None:
                raise
            return existing, False
        return created, True

    async def _by_key(self, conn: Any, tenant_id: str, key: str) -> Job | None:
        j = recording_jobs
        stmt = select(j).where(j.c.tenant_id == tenant_id, j.c.idempotency_key == key)
        row = (await conn.execute(stmt)).first()
        return None if row is None else _job(row)

    async def by_key(self, tenant_id: str, key: str) -> Job | None:
        """The tenant's job created with this idempotency key."""
        async with self.engine.connect() as conn:
            return await self._by_key(conn, tenant_id, key)

    async def get(self, job_id: str, tenant_id: str | None = None) -> Job | None:
        """The job; with `tenant_id`, only if it is that tenant's."""
        j = recording_jobs
        stmt = select(j).where(j.c.job_id == job_id)
        if tenant_id is not None:
            stmt = stmt.where(j.c.tenant_id == tenant_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else _job(row)

    async def list_for_meeting(self, tenant_id: str, meeting_id: str) -> list[Job]:
        j = recording_jobs
        stmt = (
            select(j)
            .where(j.c.tenant_id == tenant_id, j.c.meeting_id == meeting_id)
            .order_by(j.c.created_at, j.c.job_id)
        )
        async with self.engine.connect() as conn:
            return [_job(row) for row in (await conn.execute(stmt)).all()]

    @staticmethod
    async def _check_limits(
        conn: AsyncConnection,
        job: NewJob,
        max_queued: int | None,
        disk_budget: int | None,
        tenant_disk_budget: int | None,
    ) -> None:
        j = recording_jobs
        if max_queued is not None:
            mine = and_(j.c.tenant_id == job.tenant_id, j.c.status == QUEUED)
            queued = select(func.count()).select_from(j).where(mine)
            if (await conn.execute(queued)).scalar_one() >= max_queued:
                raise JobLimit("queue", max_queued)
        if tenant_disk_budget is not None:
            held = _unended_bytes().where(j.c.tenant_id == job.tenant_id)
            if int((await conn.execute(held)).scalar_one()) + job.file_bytes > tenant_disk_budget:
                raise JobLimit("tenant_disk", tenant_disk_budget)
        if disk_budget is not None:
            held = _unended_bytes()
            if int((await conn.execute(held)).scalar_one()) + job.file_bytes > disk_budget:
                raise JobLimit("disk", disk_budget)

    async def counts(self, tenant_id: str) -> dict[str, int]:
        """The tenant's queued and running jobs (limits)."""
        j = recording_jobs
        stmt = (
            select(j.c.status, func.count())
            .where(j.c.tenant_id == tenant_id, j.c.status.in_((QUEUED, RUNNING)))
            .group_by(j.c.status)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        out = {QUEUED: 0, RUNNING: 0}
        out.update({status: count for status, count in rows})
        return out

    async def file_paths(self, *, include_ended: bool) -> list[str]:
        """The uploaded files jobs still need: unended jobs', and ended ones' too when
        RECORDING_KEEP_AUDIO keeps them."""
        j = recording_jobs
        stmt = select(j.c.file_path)
        if not include_ended:
            stmt = stmt.where(j.c.status.in_((QUEUED, RUNNING)))
        async with self.engine.connect() as conn:
            return list((await conn.execute(stmt)).scalars())

    async def queued_bytes(self, tenant_id: str | None = None) -> int:
        """Bytes of uploaded files of jobs not ended (the disk budget), of one tenant's jobs if
        given (its share of it)."""
        stmt = _unended_bytes()
        if tenant_id is not None:
            stmt = stmt.where(recording_jobs.c.tenant_id == tenant_id)
        async with self.engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def claim(
        self,
        owner: str,
        *,
        lease_s: float,
        per_tenant_running: int | None = None,
        exclude: Collection[str] = (),
    ) -> Job | None:
        """Take the oldest queued job, or a running one whose lease lapsed; None if none.

        A tenant already running `per_tenant_running` jobs has its queued ones skipped. Jobs in
        `exclude` (the claimer's own, still running: a lapsed lease is not a dead runner when
        the runner is the claimer) are not taken."""
        now = self._clock()
        j = recording_jobs
        claimable = or_(
            and_(j.c.status == QUEUED),
            and_(j.c.status == RUNNING, j.c.lease_expires_at < now),
        )
        stmt = select(j.c.job_id).where(claimable)
        if exclude:
            stmt = stmt.where(j.c.job_id.not_in(list(exclude)))
        if per_tenant_running is not None:
            capped = (
                select(j.c.tenant_id)
                .where(j.c.status == RUNNING, j.c.lease_expires_at >= now)
                .group_by(j.c.tenant_id)
                .having(func.count() >= per_tenant_running)
            )
            stmt = stmt.where(or_(j.c.status != QUEUED, j.c.tenant_id.not_in(capped)))
        # One row: with SKIP LOCKED, concurrent claimers each lock a different one (PostgreSQL);
        # SQLite's BEGIN IMMEDIATE serialises claimers. The per-tenant cap is checked in the same
        # statement; two replicas racing on PostgreSQL may exceed it by one for a moment.
        stmt = stmt.order_by(j.c.created_at, j.c.job_id).limit(1)
        if not await any_row(self.engine, stmt):
            return None
        if self._postgres:
            stmt = stmt.with_for_update(skip_locked=True)
        async with self._writer.begin() as conn:
            job_id = (await conn.execute(stmt)).scalar_one_or_none()
            if job_id is None:
                return None
            await conn.execute(
                update(j)
                .where(j.c.job_id == job_id)
                .values(
                    status=RUNNING,
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_s),
                    attempts=j.c.attempts + 1,
                    started_at=func.coalesce(j.c.started_at, now),
                    updated_at=now,
                )
            )
            row = (await conn.execute(select(j).where(j.c.job_id == job_id))).one()
            return _job(row)

    async def renew(self, job_id: str, owner: str, *, lease_s: float) -> bool:
        """Extend the lease; False if the job is no longer this owner's running job. The
        answer also tells the runner whether cancellation was asked (see `get`)."""
        now = self._clock()
        j = recording_jobs
        stmt = (
            update(j)
            .where(j.c.job_id == job_id, j.c.lease_owner == owner, j.c.status == RUNNING)
            .values(lease_expires_at=now + timedelta(seconds=lease_s), updated_at=now)
        )
        async with self._writer.begin() as conn:
            return (await conn.execute(stmt)).rowcount == 1

    async def set_stage(self, job_id: str, owner: str, stage: str) -> None:
        j = recording_jobs
        stmt = (
            update(j)
            .where(j.c.job_id == job_id, j.c.lease_owner == owner, j.c.status == RUNNING)
            .values(stage=stage, updated_at=self._clock())
        )
        async with self._writer.begin() as conn:
            if (await conn.execute(stmt)).rowcount != 1:
                raise LeaseLost(job_id)

    async def checkpoint(
        self,
        job_id: str,
        owner: str,
        *,
        chunk_index: int,
        audio_ms_done: int,
        finals: list[NewFinal],
        engines_ms: Mapping[str, int] | None = None,
        numbers_above: int = 0,
        reserve: Reserve | None = None,
    ) -> list[FinalSegment]:
        """Store chunk `chunk_index`'s finals and move the checkpoint past it, atomically.
        Raises LeaseLost (storing nothing) unless the job is still this owner's and its
        checkpoint is at `chunk_index`.

        The finals take the numbers `reserve(len(finals))` hands out from the meeting's live
        numbering, asked once the job and the meeting are locked (nothing between the ask and
        the commit can refuse the write), or, when it answers None (the numbering is away),
        the meeting's next numbers above `numbers_above` (see `append_numbered`)."""
        now = self._clock()
        j = recording_jobs
        async with self._writer.begin() as conn:
            if self._postgres:
                await self._lock_meeting_first(conn, job_id)
            guard = select(
                j.c.tenant_id, j.c.meeting_id, j.c.engines_used, j.c.finals, j.c.audio_ms_total
            ).where(
                j.c.job_id == job_id,
                j.c.lease_owner == owner,
                j.c.status == RUNNING,
                j.c.next_chunk == chunk_index,
            )
            if self._postgres:
                guard = guard.with_for_update()
            row = (await conn.execute(guard)).first()
            if row is None:
                raise LeaseLost(job_id)
            tenant_id, meeting_id, used_json, stored_finals, audio_ms_total = row
            first_number = await reserve(len(finals)) if reserve is not None and finals else None
            stored: list[FinalSegment] = []
            for i, final in enumerate(finals):  # under the meeting row's lock
                if first_number is not None:
                    number = first_number + i
                    stored.append(
                        await store_at_number(conn, tenant_id, meeting_id, number, final, now)
                    )
                else:
                    stored.append(
                        await append_numbered(
                            conn, tenant_id, meeting_id, final, now, above=numbers_above
                        )
                    )
            used = json.loads(used_json or "{}")
            for engine, ms in (engines_ms or {}).items():  # audio ms each engine transcribed
                used[engine] = used.get(engine, 0) + ms
            values: dict[str, Any] = {
                "next_chunk": chunk_index + 1,
                "audio_ms_done": audio_ms_done,
                # Decoding went past what the header said: the header was wrong, the audio is not.
                # (0 stays 0: the container did not say, and the length is known at the end.)
                "audio_ms_total": max(audio_ms_total, audio_ms_done) if audio_ms_total else 0,
                "engines_used": json.dumps(used, sort_keys=True),
                "finals": stored_finals + len(stored),
                "updated_at": now,
            }
            if stored:  # (a number taken already moves its final past the others)
                values["last_segment_no"] = max(final.segment_no for final in stored)
            await conn.execute(update(j).where(j.c.job_id == job_id).values(**values))
        return stored

    async def _lock_meeting_first(self, conn: AsyncConnection, job_id: str) -> None:
        """Lock the job's meeting row before the job row (PostgreSQL): a meeting's deletion
        takes them in that order, and the opposite one deadlocks with it."""
        j, m = recording_jobs, meetings
        owner = (
            await conn.execute(select(j.c.tenant_id, j.c.meeting_id).where(j.c.job_id == job_id))
        ).first()
        if owner is not None:
            await conn.execute(
                select(m.c.meeting_id)
                .where(m.c.tenant_id == owner.tenant_id, m.c.meeting_id == owner.meeting_id)
                .with_for_update()
            )

    async def cancel(self, job_id: str, tenant_id: str) -> Job | None:
        """Ask to cancel: a queued job ends at once, and so does a running one whose runner's
        lease lapsed (its replica died: nobody would see the flag until another claimed it); a
        running one is flagged for its runner."""
        now = self._clock()
        j = recording_jobs
        unclaimed = or_(
            j.c.status == QUEUED, and_(j.c.status == RUNNING, j.c.lease_expires_at < now)
        )
        async with self._writer.begin() as conn:
            await conn.execute(
                update(j)
                .where(j.c.job_id == job_id, j.c.tenant_id == tenant_id, unclaimed)
                .values(
                    status=CANCELLED,
                    stage="cancelled",
                    cancel_requested=1,
                    lease_owner=None,
                    lease_expires_at=None,
                    finished_at=now,
                    updated_at=now,
                )
            )
            await conn.execute(
                update(j)
                .where(j.c.job_id == job_id, j.c.tenant_id == tenant_id, j.c.status == RUNNING)
                .values(cancel_requested=1, updated_at=now)
            )
        return await self.get(job_id, tenant_id)

    async def finish(
        self, job_id: str, owner: str, status: str, *, error: str | None = None
    ) -> str | None:
        """End this owner's running job (succeeded, failed or cancelled): the status it ended
        with, None when it was not this owner's running job. A cancel asked for before the end
        wins (its answer, 202, said the job would end cancelled): the job ends `cancelled`."""
        if status not in ENDED:
            raise ValueError(status)
        now = self._clock()
        j = recording_jobs
        asked = j.c.cancel_requested == 1
        error_value = null() if error is None else literal(error, String)
        stmt = (
            update(j)
            .where(j.c.job_id == job_id, j.c.lease_owner == owner, j.c.status == RUNNING)
            .values(
                status=case((asked, CANCELLED), else_=literal(status, String)),
                stage=case((asked, CANCELLED), else_=literal(status, String)),
                error=case((asked, null()), else_=error_value),
                lease_owner=None,
                lease_expires_at=None,
                finished_at=now,
                updated_at=now,
            )
        )
        if (
            status == SUCCEEDED
        ):  # decoded to the end: its length is known now, whatever the header said
            stmt = stmt.values(  # not for a cancel that wins: it was not decoded to the end
                audio_ms_total=case(
                    (and_(j.c.audio_ms_done > 0, ~asked), j.c.audio_ms_done),
                    else_=j.c.audio_ms_total,
                )
            )
        return await self._end(stmt, now, job_id)

    async def fail_queued(self, job_id: str, error: str) -> None:
        """End a job nobody runs (too many attempts found at claim time)."""
        now = self._clock()
        j = recording_jobs
        stmt = (
            update(j)
            .where(j.c.job_id == job_id, j.c.status.in_((QUEUED, RUNNING)))
            .values(status=FAILED, stage=FAILED, error=error, finished_at=now, updated_at=now)
        )
        await self._end(stmt, now, job_id)

    async def _end(self, stmt: Any, now: datetime, job_id: str) -> str | None:
        """Run the ending update; a succeeded or failed job's webhook event commits with it.
        The status it ended with, or None when it matched no job."""
        j = recording_jobs
        stmt = stmt.returning(
            j.c.job_id,
            j.c.tenant_id,
            j.c.meeting_id,
            j.c.finals,
            j.c.audio_ms_done,
            j.c.error,
            j.c.status,
        )
        async with self._writer.begin() as conn:
            if self._postgres:  # the notes request below reads the meeting's row too
                await self._lock_meeting_first(conn, job_id)
            row = (await conn.execute(stmt)).first()
            status = None if row is None else row.status
            if row is not None and status in (SUCCEEDED, FAILED):
                data = {
                    "job_id": row.job_id,
                    "status": status,
                    "finals": row.finals,
                    "audio_seconds": row.audio_ms_done / 1000,
                    "error": row.error,
                }
                event_type: EventType = (
                    "recording.succeeded" if status == SUCCEEDED else "recording.failed"
                )
                await enqueue(
                    conn, Event(event_type, row.tenant_id, row.meeting_id, data, now), now
                )
                if status == SUCCEEDED:  # the notes stage: made by the notes worker
                    await request_notes(conn, row.tenant_id, row.meeting_id, "recording", now)
        return status

    async def release(self, job_id: str, owner: str) -> bool:
        """Hand a running job back to the queue (drain); its checkpoint stays."""
        now = self._clock()
        j = recording_jobs
        stmt = (
            update(j)
            .where(j.c.job_id == job_id, j.c.lease_owner == owner, j.c.status == RUNNING)
            .values(
                status=QUEUED,
                stage="queued",
                lease_owner=None,
                lease_expires_at=None,
                # A drain is not the file's fault: it does not count as an attempt.
                attempts=j.c.attempts - 1,
                updated_at=now,
            )
        )
        async with self._writer.begin() as conn:
            return (await conn.execute(stmt)).rowcount == 1


def job_stream_id(job_id: str) -> str:
    """The `stream_id` a job's finals carry (with `stream_seq`, their idempotency key)."""
    return f"rec:{job_id}"


async def job_final_numbers(engine: AsyncEngine, job_id: str, after: int = 0) -> list[int]:
    """segment_nos of a job's stored finals above `after`, ascending (SSE `final` events)."""
    from store.tables import segments

    stmt = (
        select(segments.c.segment_no)
        .where(segments.c.stream_id == job_stream_id(job_id), segments.c.segment_no > after)
        .order_by(segments.c.segment_no)
    )
    async with engine.connect() as conn:
        return [row[0] for row in (await conn.execute(stmt)).all()]


def _unended_bytes() -> Any:
    """The bytes of the files of jobs not ended (queued or running)."""
    j = recording_jobs
    return select(func.coalesce(func.sum(j.c.file_bytes), 0)).where(
        j.c.status.in_((QUEUED, RUNNING))
    )
