"""The meetings list and retention's walk on PostgreSQL read a page from an index in their own
order, not a sort of every meeting (`ix_meetings_*`, migration 0016)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from store.catalog import MeetingPosition, RetentionPosition
from store.catalog_sql import SqlMeetingCatalog
from tests.store.plans import plan_of, seeded_store

SEED = """
INSERT INTO meetings (tenant_id, meeting_id, created_at, last_segment_no)
SELECT 'tenant-' || (n % 5), 'm-' || n, now() - interval '60 days' + n * interval '1 second', 0
FROM generate_series(1, 50000) n;
ANALYZE meetings;
"""


@pytest.fixture
async def catalog(pg_url: str) -> AsyncIterator[SqlMeetingCatalog]:
    async with seeded_store(pg_url, SEED) as store:
        yield SqlMeetingCatalog(store.engine)


def rows_removed_by_filter(plan: str) -> int:
    return sum(int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", plan))


async def created_at(catalog: SqlMeetingCatalog, meeting_id: str) -> datetime:
    async with catalog.engine.connect() as conn:
        query = "SELECT created_at FROM meetings WHERE meeting_id = $1"
        return (await conn.exec_driver_sql(query, (meeting_id,))).scalar_one()


async def test_a_page_of_a_tenants_meetings_is_read_from_its_index(
    catalog: SqlMeetingCatalog,
) -> None:
    """A page far down the list starts where its position is (an index bound), not after
    filtering out every newer meeting."""
    after = MeetingPosition(await created_at(catalog, "m-10003"), "m-10003")
    page = await catalog.list_meetings("tenant-3", limit=50, after=after, live_within_s=60)
    assert [m.meeting_id for m in page[:2]] == ["m-9998", "m-9993"]
    plan = await plan_of(
        catalog.engine,
        lambda: catalog.list_meetings("tenant-3", limit=50, after=after, live_within_s=60),
        "meetings",
        analyze=True,
    )
    # Either time index answers it (the tenant's, or the walk's with the tenant as its bound).
    assert "using ix_meetings_" in plan and "Sort" not in plan, plan
    assert rows_removed_by_filter(plan) <= 1, plan


async def test_retentions_walk_reads_the_oldest_meetings_from_its_index(
    catalog: SqlMeetingCatalog,
) -> None:
    """A batch far into the walk starts where the last one ended, not after filtering out
    every older meeting (a round grew with the square of the meetings it passed)."""
    before = datetime.now(UTC) - timedelta(days=1)
    first = await catalog.inactive_meetings(before, limit=100)
    assert [m.meeting_id for m in first[:2]] == ["m-1", "m-2"]
    after = RetentionPosition(await created_at(catalog, "m-40000"), "tenant-0", "m-40000")
    following = await catalog.inactive_meetings(before, limit=100, after=after)
    assert following[0].meeting_id == "m-40001"
    plan = await plan_of(
        catalog.engine,
        lambda: catalog.inactive_meetings(before, limit=100, after=after),
        "meetings",
        analyze=True,
    )
    assert "ix_meetings_created_at_tenant_id_meeting_id" in plan and "Sort" not in plan, plan
    assert rows_removed_by_filter(plan) <= 1, plan
