"""The search horizon's plan on PostgreSQL: a tenant's newest row read from its own index, not
found by walking the primary key back through every other tenant's newer rows."""

from __future__ import annotations

from collections.abc import Awaitable

from store.catalog_sql import SqlMeetingCatalog
from tests.store.plans import plan_of, seeded_store

SEED = """
INSERT INTO meetings (tenant_id, meeting_id, created_at, last_segment_no)
VALUES ('big', 'm', now(), 0), ('busy', 'm', now(), 0);
INSERT INTO segments (tenant_id, meeting_id, segment_no, text, start_ms, end_ms, source,
                      created_at)
SELECT 'big', 'm', n, 'old words', 0, 1, 'mic', now() FROM generate_series(1, 30000) n;
INSERT INTO segments (tenant_id, meeting_id, segment_no, text, start_ms, end_ms, source,
                      created_at)
SELECT 'busy', 'm', n, 'new words', 0, 1, 'mic', now() FROM generate_series(1, 70000) n;
ANALYZE segments;
"""


async def test_the_horizon_reads_the_tenants_index_not_the_primary_key(pg_url: str) -> None:
    """A large tenant idle while others write (30 % of the rows, all older): as max(id) the
    planner walked the primary key from the newest row, filtering out the 70,000 rows written
    since (a quarter of a second per search at 700,000; it grows until searches time out)."""
    async with seeded_store(pg_url, SEED) as store:
        catalog = SqlMeetingCatalog(store.engine)
        plan = await plan_of(
            store.engine, lambda: _positive(catalog.search_horizon("big")), "segments"
        )
        assert "ix_segments_tenant_id_id" in plan and "Sort" not in plan, plan


async def _positive(value: Awaitable[int]) -> bool:
    return await value > 0
