"""The meetings list and retention's walk on PostgreSQL read a page from an index in their own
order, not a sort of every meeting (`ix_meetings_*`, migration 0016)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from store.catalog_sql import SqlMeetingCatalog
from store.migrate import upgrade
from store.sql import SqlTranscriptStore

SEED = """
INSERT INTO meetings (tenant_id, meeting_id, created_at, last_segment_no)
SELECT 'tenant-' || (n % 5), 'm-' || n, now() - interval '60 days' + n * interval '1 second', 0
FROM generate_series(1, 50000) n;
ANALYZE meetings;
"""


@pytest.fixture
async def catalog(pg_url: str) -> AsyncIterator[SqlMeetingCatalog]:
    await upgrade(pg_url)
    store = SqlTranscriptStore(pg_url)
    try:
        async with store.engine.begin() as conn:
            for statement in filter(str.strip, SEED.split(";")):
                await conn.exec_driver_sql(statement)
        yield SqlMeetingCatalog(store.engine)
    finally:
        await store.aclose()


async def plan_of(catalog: SqlMeetingCatalog, read: Callable[[], Awaitable[Any]]) -> str:
    """The plan of the statement on `meetings` that `read` runs."""
    engine = catalog.engine
    asked: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        asked.append((statement, params))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        assert await read()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    statement, params = next(a for a in asked if "FROM meetings" in a[0])
    async with engine.connect() as conn:
        rows = await conn.exec_driver_sql(f"EXPLAIN {statement}", params)
        return "\n".join(row[0] for row in rows)


async def test_a_page_of_a_tenants_meetings_is_read_from_its_index(
    catalog: SqlMeetingCatalog,
) -> None:
    plan = await plan_of(
        catalog, lambda: catalog.list_meetings("tenant-3", limit=50, live_within_s=60)
    )
    assert "ix_meetings_tenant_id_created_at_meeting_id" in plan and "Sort" not in plan, plan


async def test_retentions_walk_reads_the_oldest_meetings_from_its_index(
    catalog: SqlMeetingCatalog,
) -> None:
    before = datetime.now(UTC) - timedelta(days=1)
    first = await catalog.inactive_meetings(before, limit=100)
    assert [m.meeting_id for m in first[:2]] == ["m-1", "m-2"]
    plan = await plan_of(
        catalog, lambda: catalog.inactive_meetings(before, limit=100, after=first[-1])
    )
    assert "ix_meetings_created_at_tenant_id_meeting_id" in plan and "Sort" not in plan, plan
    following = await catalog.inactive_meetings(before, limit=100, after=first[-1])
    assert following[0].meeting_id == "m-101"
