"""Post-meeting notes as durable work: requested, leased to one replica, stored.

`request(conn, ...)` runs on the caller's transaction, so the state change that asks for notes
(a meeting's move to `ended`, a recording job's success) and the request commit together. Each
request bumps the row's `generation`; a replica claims a pending row with a lease, makes the
notes and saves them only as the generation it claimed: a request that came in meanwhile leaves
the row pending, so the newer transcript gets its own notes. Saving enqueues the `notes.ready`
webhook event in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.sql import any_row, write_engine
from store.tables import meeting_notes, meetings
from store.webhooks import Event, enqueue

NotesReason = Literal["meeting.ended", "recording", "request"]
PENDING, READY, FAILED = "pending", "ready", "failed"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class StoredNotes:
    tenant_id: str
    meeting_id: str
    state: str
    reason: str
    generation: int
    attempts: int
    backend: str | None
    body: Mapping[str, Any] | None  # summary, decisions, action_items, questions
    finals: int | None
    error: str | None
    requested_at: datetime
    generated_at: datetime | None


@dataclass(frozen=True, slots=True)
class NotesClaim:
    tenant_id: str
    meeting_id: str
    generation: int
    attempts: int


async def request(
    conn: AsyncConnection,
    tenant_id: str,
    meeting_id: str,
    reason: NotesReason,
    now: datetime | None = None,
) -> bool:
    """Ask for the meeting's notes (again), on `conn`'s transaction; False when the meeting
    does not exist (deleted meanwhile: notes made of nothing would be announced for it)."""
    now = now or _utcnow()
    m = meetings
    present = select(m.c.meeting_id).where(m.c.tenant_id == tenant_id, m.c.meeting_id == meeting_id)
    if conn.dialect.name == "postgresql":
        # Held to the commit: a deletion under way is waited for, and then seen. (SQLite's
        # writers take turns: the deletion committed before this began, or starts after.)
        present = present.with_for_update(read=True)
    if (await conn.execute(present)).first() is None:
        return False
    n = meeting_notes
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(n).values(
        tenant_id=tenant_id,
        meeting_id=meeting_id,
        state=PENDING,
        reason=reason,
        generation=1,
        attempts=0,
        next_attempt_at=now,
        requested_at=now,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[n.c.tenant_id, n.c.meeting_id],
        set_={
            "state": PENDING,
            "reason": reason,
            "generation": n.c.generation + 1,
            "attempts": 0,
            "next_attempt_at": now,
            "error": None,
            "requested_at": now,
        },
    )
    await conn.execute(stmt)
    return True


def _leased(claim: NotesClaim, owner: str) -> ColumnElement[bool]:
    """The claimed request's row, while `owner` still holds its lease."""
    n = meeting_notes
    return and_(
        n.c.tenant_id == claim.tenant_id,
        n.c.meeting_id == claim.meeting_id,
        n.c.lease_owner == owner,
    )


class NotesStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._writer = write_engine(engine)
        self._postgres = engine.dialect.name == "postgresql"

    async def request(
        self,
        tenant_id: str,
        meeting_id: str,
        reason: NotesReason,
        now: datetime | None = None,
    ) -> bool:
        """Whether the meeting exists (and its notes are asked for)."""
        async with self._writer.begin() as conn:
            return await request(conn, tenant_id, meeting_id, reason, now)

    async def get(self, tenant_id: str, meeting_id: str) -> StoredNotes | None:
        n = meeting_notes
        stmt = select(n).where(n.c.tenant_id == tenant_id, n.c.meeting_id == meeting_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        values = row._mapping
        return StoredNotes(
            **{
                name: values[name]
                for name in StoredNotes.__dataclass_fields__
                if name not in ("body",)
            },
            body=json.loads(values["body"]) if values["body"] else None,
        )

    async def claim(
        self,
        owner: str,
        *,
        lease_s: float,
        other_than: frozenset[str] = frozenset(),
        now: datetime | None = None,
    ) -> NotesClaim | None:
        """One due pending request not leased by another replica, of a tenant not in
        `other_than` (those whose notes `owner` is making), leased to `owner`."""
        now = now or _utcnow()
        n = meeting_notes
        due = (
            select(n.c.tenant_id, n.c.meeting_id, n.c.generation, n.c.attempts)
            .where(
                n.c.state == PENDING,
                n.c.next_attempt_at <= now,
                or_(n.c.lease_expires_at.is_(None), n.c.lease_expires_at < now),
                *([n.c.tenant_id.not_in(sorted(other_than))] if other_than else []),
            )
            .order_by(n.c.next_attempt_at)
            .limit(1)
        )
        if not await any_row(self.engine, due):
            return None
        if self._postgres:
            due = due.with_for_update(skip_locked=True)
        async with self._writer.begin() as conn:
            row = (await conn.execute(due)).first()
            if row is None:
                return None
            await conn.execute(
                update(n)
                .where(n.c.tenant_id == row.tenant_id, n.c.meeting_id == row.meeting_id)
                .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_s))
            )
        return NotesClaim(row.tenant_id, row.meeting_id, row.generation, row.attempts)

    async def renew(
        self, claim: NotesClaim, owner: str, *, lease_s: float, now: datetime | None = None
    ) -> bool:
        """Push the lease forward while the notes are being made; whether `owner` still holds it."""
        now = now or _utcnow()
        expires = now + timedelta(seconds=lease_s)
        async with self._writer.begin() as conn:
            renewed = await conn.execute(
                update(meeting_notes).where(_leased(claim, owner)).values(lease_expires_at=expires)
            )
        return bool(renewed.rowcount)

    async def release(self, claim: NotesClaim, owner: str) -> None:
        """Give the request back unmade (a replica stopping): any replica may claim it now."""
        async with self._writer.begin() as conn:
            await conn.execute(
                update(meeting_notes)
                .where(_leased(claim, owner))
                .values(lease_owner=None, lease_expires_at=None)
            )

    async def save(
        self,
        claim: NotesClaim,
        owner: str,
        *,
        backend: str,
        body: Mapping[str, Any],
        finals: int,
        now: datetime | None = None,
    ) -> bool:
        """Store the notes made for `claim`; ready (and announced) unless a newer request came
        in meanwhile, which leaves the row pending for another run. Whether they are ready."""
        now = now or _utcnow()
        n = meeting_notes
        mine = _leased(claim, owner)
        notes = {"backend": backend, "body": json.dumps(body), "finals": finals}
        release = {"lease_owner": None, "lease_expires_at": None, "generated_at": now}
        async with self._writer.begin() as conn:
            ready = await conn.execute(
                update(n)
                .where(mine, n.c.generation == claim.generation)
                .values(state=READY, error=None, **notes, **release)
            )
            if ready.rowcount:
                data = {"backend": backend, "finals": finals}
                event = Event("notes.ready", claim.tenant_id, claim.meeting_id, data, now)
                await enqueue(conn, event, now)
                return True
            await conn.execute(update(n).where(mine).values(**notes, **release))
        return False

    async def attempt_failed(
        self,
        claim: NotesClaim,
        owner: str,
        error: str,
        *,
        retry_in_s: float,
        max_attempts: int,
        counts: bool = True,
        now: datetime | None = None,
    ) -> None:
        """Retry after `retry_in_s`, or give up (`failed`) after `max_attempts`; an attempt that
        did not `count` (the backend was not asked) is retried, spending none."""
        now = now or _utcnow()
        n = meeting_notes
        attempts = claim.attempts + (1 if counts else 0)
        state = FAILED if attempts >= max_attempts else PENDING
        mine = _leased(claim, owner)
        async with self._writer.begin() as conn:
            await conn.execute(
                update(n)
                .where(mine, n.c.generation == claim.generation)
                .values(
                    state=state,
                    attempts=attempts,
                    error=error[:500],
                    next_attempt_at=now + timedelta(seconds=retry_in_s),
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            # A newer request came in meanwhile: it starts afresh; only the lease goes.
            await conn.execute(
                update(n).where(mine).values(lease_owner=None, lease_expires_at=None)
            )
