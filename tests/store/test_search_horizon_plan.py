"""The search horizon's plan on PostgreSQL: a tenant's newest row read from its own index, not
found by walking the primary key back through every other tenant's newer rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from store.catalog_sql import SqlMeetingCatalog
from store.migrate import upgrade
from store.sql import SqlTranscriptStore

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
    await upgrade(pg_url)
    store = SqlTranscriptStore(pg_url)
    try:
        async with store.engine.begin() as conn:
            for statement in filter(str.strip, SEED.split(";")):
                await conn.exec_driver_sql(statement)
        catalog = SqlMeetingCatalog(store.engine)
        asked: list[tuple[str, Any]] = []

        def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
            asked.append((statement, params))

        event.listen(store.engine.sync_engine, "before_cursor_execute", capture)
        try:
            assert await catalog.search_horizon("big") > 0
        finally:
            event.remove(store.engine.sync_engine, "before_cursor_execute", capture)
        [(statement, params)] = [a for a in asked if "segments" in a[0]]
        async with store.engine.connect() as conn:
            plan = "\n".join(
                row[0] for row in await conn.exec_driver_sql(f"EXPLAIN {statement}", params)
            )
        assert "ix_segments_tenant_id_id" in plan and "Sort" not in plan, plan
    finally:
        await store.aclose()
