"""Search over the transcript store's finals (SQLite or PostgreSQL), for `SqlMeetingCatalog`.

Search runs on the dialect's own index (migration 0004): FTS5 on SQLite, each final ranked by
its own matches (`store.search.own_score`; bm25 would weigh words by every tenant's finals), the
`search_vector` GIN index ranked by `ts_rank` on PostgreSQL. The query reaches SQL only as a
bound parameter.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    and_,
    any_,
    bindparam,
    cast,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import TSQUERY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.catalog import ANY_FINAL, SearchFilter, SearchHit
from store.search import (
    MATCH_MARK,
    SearchPosition,
    Term,
    bigram_tsquery,
    fts5_query,
    own_score,
    page_after,
    tsquery,
)
from store.tables import segments

# Search ranks the most recent matches of a query, at most this many (docs/protocol.md).
SEARCH_WINDOW = 1000
# PostgreSQL (SqlMeetingCatalog._search_postgres): the newest finals a search first walks, and
# what reading one match from the GIN index costs in finals walked (measured by bench/store.py:
# about 2 us for a match's heap read against 0.4 us for a final walked and tested).
DENSE_PROBE_ROWS = 20_000
INDEX_MATCH_COST = 5.0


def read_from_index(found: int, probed: int, rows: int, window: int = SEARCH_WINDOW) -> bool:
    """Whether the rest of a search's window is cheaper read from the GIN index than walked.

    `found` matches among the newest `probed` of `rows` finals give the query's density: the walk
    reads `(window - found) / density` more finals, the index every match (`density * rows`)."""
    if found == 0:
        return True
    density = found / probed
    walked = (window - found) / density
    return density * max(rows - probed, 0) * INDEX_MATCH_COST < walked


class SqlSearch:
    """A tenant's finals matching a query, best first, a page at a time."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    async def search(
        self,
        tenant_id: str,
        terms: list[Term],
        *,
        limit: int,
        after: SearchPosition | None = None,
        where: SearchFilter = ANY_FINAL,
    ) -> list[SearchHit]:
        s = segments
        if self._postgres:
            query = func.to_tsquery(text("'simple'"), bindparam("q", tsquery(terms)))
            vector = literal_column("segments.search_vector")
            match = vector.op("@@")(query)
            pairs = bigram_tsquery(terms)
            if pairs is not None:
                # The GIN index reads the phrases' word pairs alone (short posting lists); the
                # whole query is tested on each final read. `coalesce` keeps the planner from
                # also reading the words' long lists from the index for it.
                whole = func.coalesce(vector, text("''::tsvector")).op("@@")(query)
                match = and_(vector.op("@@")(cast(bindparam("pairs", pairs), TSQUERY)), whole)
            return await self._search_postgres(
                match, func.ts_rank(vector, query), tenant_id, where, limit, after
            )
        rowid = literal_column("segments_fts.rowid")
        # Each final's own matches, not bm25: see `store.search.own_score`.
        marked = func.highlight(literal_column("segments_fts"), 0, MATCH_MARK, "\x02")
        # Ranking every match of a common word costs a read of each: rank the most recent
        # SEARCH_WINDOW matches instead (FTS5 walks matches newest first and stops).
        ranked = (
            select(s.c.id, marked)
            .select_from(s.join(text("segments_fts"), rowid == s.c.id))
            .where(text("segments_fts MATCH :q").bindparams(q=fts5_query(terms)))
            .where(*_search_filters(tenant_id, where))
            .order_by(rowid.desc())
            .limit(SEARCH_WINDOW)
        )
        async with self.engine.connect() as conn:
            window = [(row[0], own_score(row[1])) for row in await conn.execute(ranked)]
            page = dict(page_after(window, after, limit))
            if not page:
                return []
            stmt = select(s.c.id, *_hit_columns()).where(s.c.id.in_(list(page)))
            rows = {row[0]: row[1:] for row in (await conn.execute(stmt)).all()}
        return _hits(page, rows)

    async def _search_postgres(
        self,
        match: Any,
        score: Any,
        tenant_id: str,
        where: SearchFilter,
        limit: int,
        after: SearchPosition | None,
    ) -> list[SearchHit]:
        """The newest SEARCH_WINDOW matches' ids and scores first, then the page's rows.

        PostgreSQL's planner cannot tell a rare word from a common one (both get about the same
        estimate), and each of its two plans is slow for the other: walking the finals newest
        first, testing each, reads millions of rows to find a rare word; taking every match from
        the GIN index (a bitmap) and sorting reads every row holding a common one. So the
        density decides, measured by walking the newest DENSE_PROBE_ROWS finals: a full window
        there is the window; otherwise the rest comes from whichever plan `read_from_index`
        finds cheaper for that density, forced (SET LOCAL lasts until this read's transaction
        ends). Each match is scored where it is read, so only the page's rows are read again."""
        s = segments
        filters = _search_filters(tenant_id, where)
        scored = select(s.c.id, score).where(match, *filters).order_by(s.c.id.desc())
        async with self.engine.connect() as conn:
            await _set_local(conn, **_SEARCH_SETTINGS, **_WALK)
            # The newest rows by id, whichever tenant's: an index range, no per-tenant count.
            newest = (await conn.execute(select(func.max(s.c.id)))).scalar() or 0
            if where.up_to_row is not None:
                newest = min(newest, where.up_to_row)
            floor = newest - DENSE_PROBE_ROWS
            probe = scored.where(s.c.id > floor).limit(SEARCH_WINDOW)
            window = [(row[0], row[1]) for row in await conn.execute(probe)]
            if len(window) < SEARCH_WINDOW and floor > 0:
                rest = scored.limit(SEARCH_WINDOW - len(window))
                if read_from_index(len(window), DENSE_PROBE_ROWS, newest, SEARCH_WINDOW):
                    # `id + 0`: a range of the primary key ANDed to the GIN bitmap costs more
                    # than the few matches it would remove.
                    await _set_local(conn, **_READ_INDEX)
                    rest = rest.where(s.c.id + 0 <= floor)
                else:
                    rest = rest.where(s.c.id <= floor)
                window += [(row[0], row[1]) for row in await conn.execute(rest)]
            page = dict(page_after(window, after, limit))
            if not page:
                return []
            await _set_local(conn, **_ANY_PLAN)
            ids = bindparam("ids", list(page), type_=ARRAY(BigInteger))
            stmt = select(s.c.id, *_hit_columns()).where(s.c.id == any_(ids))
            rows = {row[0]: row[1:] for row in (await conn.execute(stmt)).all()}
        return _hits(page, rows)

    async def horizon(self, tenant_id: str) -> int:
        # Read backwards along ix_segments_tenant_id_id. As max(id) (or with `tenant_id = X`,
        # which makes the planner drop tenant_id from the order), PostgreSQL walked the primary
        # key back from the newest row, filtering out every other tenant's rows written since
        # this tenant's last (700,000: 250 ms a search, growing until searches time out). A
        # range on tenant_id keeps it in the order, which only that index gives.
        s = segments
        newest = (
            select(s.c.id)
            .where(s.c.tenant_id >= tenant_id, s.c.tenant_id <= tenant_id)
            .order_by(s.c.tenant_id.desc(), s.c.id.desc())
            .limit(1)
        )
        async with self.engine.connect() as conn:
            return (await conn.execute(newest)).scalar() or 0


# A search's transaction plans each statement for its own values (a generic plan knows no
# tsquery) and starts no parallel workers (starting them costs more than the reads they share).
_SEARCH_SETTINGS = {"plan_cache_mode": "force_custom_plan", "max_parallel_workers_per_gather": "0"}
# The two plans a search chooses between, and the planner's own choice (ranking the window).
_WALK = {"enable_bitmapscan": "off", "enable_indexscan": "on"}
_READ_INDEX = {"enable_bitmapscan": "on", "enable_indexscan": "off"}
_ANY_PLAN = {"enable_bitmapscan": "on", "enable_indexscan": "on"}


async def _set_local(conn: AsyncConnection, **settings: str) -> None:
    """SET LOCAL of several settings (names from this module) in one round trip."""
    calls = ", ".join(f"set_config('{name}', :{name}, true)" for name in settings)
    await conn.execute(text(f"SELECT {calls}"), settings)


def _hits(page: dict[int, float], rows: dict[int, Any]) -> list[SearchHit]:
    # A final deleted since its window was read is left out.
    return [
        SearchHit(*rows[row], score=score, row_id=row) for row, score in page.items() if row in rows
    ]


def _search_filters(tenant_id: str, where: SearchFilter) -> list[Any]:
    s = segments
    filters: list[Any] = [s.c.tenant_id == tenant_id]
    if where.meeting_id is not None:
        filters.append(s.c.meeting_id == where.meeting_id)
    if where.meeting_ids is not None:
        filters.append(s.c.meeting_id.in_(sorted(where.meeting_ids)))
    if where.speaker is not None:
        filters.append(s.c.speaker == where.speaker)
    if where.since is not None:
        filters.append(s.c.created_at >= where.since)
    if where.until is not None:
        filters.append(s.c.created_at < where.until)
    if where.up_to_row is not None:
        filters.append(s.c.id <= where.up_to_row)
    return filters


def _hit_columns() -> tuple[Any, ...]:
    s = segments
    return (
        s.c.meeting_id,
        s.c.segment_no,
        s.c.start_ms,
        s.c.end_ms,
        s.c.speaker,
        s.c.source,
        s.c.created_at,
        s.c.text,
    )
