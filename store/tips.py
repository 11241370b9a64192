"""Live tips as published (`ai.tip`), numbered per meeting. A correction of a final a tip
cites withdraws the tip (store.catalog_sql): its words are dropped, its number stays taken.

One replica produces a meeting's tips at a time (a lease, gateway/pipeline/live_tips.py), so
numbering is the meeting's highest `tip_no` plus one, in the inserting transaction; the primary
key refuses a second tip with the same number should two producers ever overlap (the insert is
then retried with the next number).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.sql import write_engine
from store.tables import meeting_tips, segments

# Tips read per query when a viewer resumes or a transcript is exported.
TIPS_PAGE = 500

INSERT_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class NewTip:
    kind: str  # decision | action_item | question | summary
    text: str
    segment_nos: tuple[int, ...]
    owner: str | None = None
    due: str | None = None


@dataclass(frozen=True, slots=True)
class StoredTip:
    tip_no: int
    kind: str
    text: str
    segment_nos: tuple[int, ...]
    owner: str | None
    due: str | None
    backend: str
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


async def _words_changed(
    conn: AsyncConnection,
    tenant_id: str,
    meeting_id: str,
    cited: Sequence[int],
    made_from: Mapping[int, str],
) -> bool:
    """Whether a cited final's stored words differ from those the tip was made from (a
    correction committed meanwhile: it withdrew the tips citing the final stored before it)."""
    s = segments
    rows = await conn.execute(
        select(s.c.segment_no, s.c.text)
        .where(s.c.tenant_id == tenant_id, s.c.meeting_id == meeting_id, s.c.segment_no.in_(cited))
        # Shared locks until the tip commits: a correction of one of them waits, then finds
        # the tip to withdraw (read committed alone let it commit in between and miss it).
        .with_for_update(read=True)
    )
    return any(made_from.get(number, text) != text for number, text in rows)


def _tip(row: Row[Any]) -> StoredTip:
    return StoredTip(
        tip_no=row.tip_no,
        kind=row.kind,
        text=row.text,
        segment_nos=tuple(json.loads(row.segment_nos)),
        owner=row.owner,
        due=row.due,
        backend=row.backend,
        created_at=row.created_at,
    )


class TipStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._writer = write_engine(engine)

    async def add(
        self,
        tenant_id: str,
        meeting_id: str,
        tip: NewTip,
        backend: str,
        *,
        made_from: Mapping[int, str] | None = None,
    ) -> StoredTip | None:
        """Store `tip` under the meeting's next number. With `made_from` (the words of the finals
        it was made from, by number), None instead when a final it cites no longer says them:
        corrected while the tip was being made, its words must not come back in a tip."""
        t = meeting_tips
        now = datetime.now(UTC)
        for attempt in range(INSERT_ATTEMPTS):
            try:
                async with self._writer.begin() as conn:
                    if made_from is not None and await _words_changed(
                        conn, tenant_id, meeting_id, tip.segment_nos, made_from
                    ):
                        return None
                    high = select(func.coalesce(func.max(t.c.tip_no), 0)).where(
                        t.c.tenant_id == tenant_id, t.c.meeting_id == meeting_id
                    )
                    tip_no = (await conn.execute(high)).scalar_one() + 1
                    newest = select(func.coalesce(func.max(segments.c.segment_no), 0)).where(
                        segments.c.tenant_id == tenant_id, segments.c.meeting_id == meeting_id
                    )
                    newest_no = (await conn.execute(newest)).scalar_one()
                    await conn.execute(
                        insert(t).values(
                            tenant_id=tenant_id,
                            meeting_id=meeting_id,
                            tip_no=tip_no,
                            kind=tip.kind,
                            text=tip.text,
                            owner=tip.owner,
                            due=tip.due,
                            segment_nos=json.dumps(list(tip.segment_nos)),
                            segment_no_high=max(tip.segment_nos, default=0),
                            newest_segment_no=newest_no,
                            backend=backend,
                            created_at=now,
                        )
                    )
            except IntegrityError:
                if attempt + 1 == INSERT_ATTEMPTS:
                    raise
                continue
            return StoredTip(
                tip_no, tip.kind, tip.text, tip.segment_nos, tip.owner, tip.due, backend, now
            )
        raise AssertionError("unreachable")

    def pages_covering_after(
        self, tenant_id: str, meeting_id: str, segment_no: int, *, page: int = TIPS_PAGE
    ) -> AsyncIterator[list[StoredTip]]:
        """Tips citing a final after `segment_no` (an export's finals from there on), oldest
        first, a page per read (no cap on the total)."""
        where = meeting_tips.c.segment_no_high > segment_no
        return self._pages(tenant_id, meeting_id, where, page)

    def pages_missed_since(
        self,
        tenant_id: str,
        meeting_id: str,
        since: int,
        *,
        slack: int,
        legacy_window: int,
        page: int = TIPS_PAGE,
    ) -> AsyncIterator[list[StoredTip]]:
        """The tips a viewer holding finals up to `since` may lack, a page per read: those
        stored once the meeting's newest stored final was `since` - `slack` or later, whatever
        finals they cite (a final stored while a tip's insert ran is not seen by it), and those
        citing a final after `since` - `legacy_window`: a viewer gets finals live before the
        store has them when its writes lag, and a tip stored before 0013 has no newest final."""
        t = meeting_tips
        where = or_(
            t.c.newest_segment_no >= since - slack,
            t.c.segment_no_high > since - legacy_window,
        )
        return self._pages(tenant_id, meeting_id, where, page)

    async def _pages(
        self, tenant_id: str, meeting_id: str, where: ColumnElement[bool], page: int
    ) -> AsyncIterator[list[StoredTip]]:
        after_tip = 0
        while True:
            tips = await self._page(tenant_id, meeting_id, where, after_tip, page)
            if tips:
                yield tips
            if len(tips) < page:
                return
            after_tip = tips[-1].tip_no

    async def _page(
        self,
        tenant_id: str,
        meeting_id: str,
        where: ColumnElement[bool],
        after_tip: int,
        limit: int,
    ) -> list[StoredTip]:
        t = meeting_tips
        stmt = (
            select(t)
            .where(
                t.c.tenant_id == tenant_id,
                t.c.meeting_id == meeting_id,
                where,
                t.c.tip_no > after_tip,
                t.c.withdrawn_at.is_(None),
            )
            .order_by(t.c.tip_no)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [_tip(row) for row in await conn.execute(stmt)]

    async def latest(self, tenant_id: str, meeting_id: str, limit: int) -> Sequence[StoredTip]:
        """The meeting's last `limit` tips, oldest first (a new producer's dedup memory)."""
        t = meeting_tips
        stmt = (
            select(t)
            .where(
                t.c.tenant_id == tenant_id,
                t.c.meeting_id == meeting_id,
                t.c.withdrawn_at.is_(None),
            )
            .order_by(t.c.tip_no.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = [_tip(row) for row in await conn.execute(stmt)]
        return rows[::-1]

    async def covered_through(self, tenant_id: str, meeting_id: str) -> int:
        """The highest final any stored tip cites (where a new producer's cursor starts)."""
        t = meeting_tips
        # A withdrawn tip's is negated (store.catalog_sql): it covered its finals all the same.
        stmt = select(func.coalesce(func.max(func.abs(t.c.segment_no_high)), 0)).where(
            t.c.tenant_id == tenant_id, t.c.meeting_id == meeting_id
        )
        async with self.engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())
