"""Query plans on PostgreSQL, for tests that a read uses its index: a database seeded by SQL,
and the plan of the statement a call of the store's code runs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from store.migrate import upgrade
from store.sql import SqlTranscriptStore


@contextlib.asynccontextmanager
async def seeded_store(pg_url: str, seed: str) -> AsyncIterator[SqlTranscriptStore]:
    """A migrated store holding what `seed`'s statements (`;`-separated) insert."""
    await upgrade(pg_url)
    store = SqlTranscriptStore(pg_url)
    try:
        async with store.engine.begin() as conn:
            for statement in filter(str.strip, seed.split(";")):
                await conn.exec_driver_sql(statement)
        yield store
    finally:
        await store.aclose()


async def plan_of(
    engine: AsyncEngine, read: Callable[[], Awaitable[Any]], table: str, *, analyze: bool = False
) -> str:
    """The plan of the first statement on `table` that `read` runs (as it ran, with
    `analyze`); `read` must find something."""
    asked: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        asked.append((statement, params))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        assert await read()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    statement, params = next(a for a in asked if f"FROM {table}" in a[0])
    explain = "EXPLAIN ANALYZE" if analyze else "EXPLAIN"
    async with engine.connect() as conn:
        rows = await conn.exec_driver_sql(f"{explain} {statement}", params)
        return "\n".join(row[0] for row in rows)
