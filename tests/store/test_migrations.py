"""Shipped migrations: reach head from empty, match `store.tables`, gate PostgreSQL startup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect

from store import migrate
from store.base import NewFinal
from store.migrate import (
    DatabaseNotMigrated,
    current_revision,
    head_revision,
    is_up_to_date,
    open_store,
    upgrade,
)
from store.sql import create_engine
from store.tables import include_object, metadata
from tests.util import eventually, sessions_waiting_on_locks

SCHEMA_TABLES = {"meetings", "segments", "ingest_streams"}


def _diffs(connection: Connection) -> list[Any]:
    ctx = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_object": include_object}
    )
    return compare_metadata(ctx, metadata)


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def _run_sync(url: str, fn: Any) -> Any:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def test_head_is_the_latest_revision() -> None:
    assert head_revision() == "0017"


async def test_upgrade_from_empty_reaches_head_and_matches_tables(db_url: str) -> None:
    assert await current_revision(db_url) is None
    assert not await is_up_to_date(db_url)

    await upgrade(db_url)

    assert await current_revision(db_url) == head_revision()
    assert await is_up_to_date(db_url)
    assert SCHEMA_TABLES <= await _run_sync(db_url, _table_names)
    assert await _run_sync(db_url, _diffs) == []


async def test_upgrade_is_idempotent(db_url: str) -> None:
    await upgrade(db_url)
    await upgrade(db_url)
    assert await current_revision(db_url) == head_revision()


async def test_downgrade_to_base_removes_the_schema(migrated_url: str) -> None:
    def downgrade(connection: Connection) -> None:
        cfg = migrate.alembic_config()
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "base")

    await _run_sync(migrated_url, downgrade)
    assert not SCHEMA_TABLES & await _run_sync(migrated_url, _table_names)
    assert await current_revision(migrated_url) is None


def _migrate_to(revision: str, direction: str = "upgrade") -> Any:
    def run(connection: Connection) -> None:
        cfg = migrate.alembic_config()
        cfg.attributes["connection"] = connection
        getattr(command, direction)(cfg, revision)

    return run


async def test_upgrade_keeps_existing_finals(db_url: str) -> None:
    """0001 -> head on a database holding finals: rows and numbering survive."""
    await _run_sync(db_url, _migrate_to("0001"))
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(
                "INSERT INTO meetings (tenant_id, meeting_id, created_at, last_segment_no) "
                "VALUES ('t', 'm', '2026-01-01 00:00:00+00:00', 1)"
            )
            await conn.exec_driver_sql(
                "INSERT INTO segments (tenant_id, meeting_id, segment_no, text, start_ms, end_ms,"
                " source, created_at) VALUES ('t', 'm', 1, 'kept', 0, 10, 'mic',"
                " '2026-01-01 00:00:00+00:00')"
            )
    finally:
        await engine.dispose()
    await upgrade(db_url)
    store = await open_store(db_url)
    try:
        assert [f.text for f in await store.finals_after("t", "m")] == ["kept"]
        assert (await store.append_final("t", "m", NewFinal("next", 20, 30, "mic"))).segment_no == 2
    finally:
        await store.aclose()


async def test_a_newer_schema_than_this_release_is_accepted(db_url: str) -> None:
    """Rolling deploys: replicas of the previous release keep starting after `db upgrade`; on
    SQLite too, where `serve` migrates the file itself (it asked Alembic for a revision it did
    not know, and the start failed with a traceback)."""
    await upgrade(db_url)
    await _run_sync(
        db_url, lambda c: c.exec_driver_sql("UPDATE alembic_version SET version_num='9999'")
    )
    assert await is_up_to_date(db_url)
    store = await open_store(db_url)
    try:
        assert (await store.append_final("t", "m", NewFinal("hi", 0, 1, "mic"))).segment_no == 1
    finally:
        await store.aclose()
    assert await current_revision(db_url) == "9999"


async def test_open_store_refuses_unmigrated_postgresql(pg_url: str) -> None:
    with pytest.raises(DatabaseNotMigrated, match="run `meeting-gateway db upgrade`"):
        await open_store(pg_url)
    assert await current_revision(pg_url) is None  # nothing was created behind the operator


async def test_open_store_accepts_migrated_postgresql(pg_url: str) -> None:
    await upgrade(pg_url)
    store = await open_store(pg_url, pool_size=2, max_overflow=1)
    try:
        assert (await store.append_final("t", "m", NewFinal("hi", 0, 1, "mic"))).segment_no == 1
    finally:
        await store.aclose()


async def test_open_store_migrates_sqlite_and_creates_the_directory(tmp_path: Path) -> None:
    db_file = tmp_path / "not" / "yet" / "gateway.db"
    url = f"sqlite+aiosqlite:///{db_file}"
    store = await open_store(url)
    try:
        assert db_file.exists()
        assert await current_revision(url) == head_revision()
        assert (await store.append_final("t", "m", NewFinal("hi", 0, 1, "mic"))).segment_no == 1
    finally:
        await store.aclose()
    # Reopening an up-to-date file is a no-op that keeps the data.
    store = await open_store(url)
    try:
        assert await store.last_segment_no("t", "m") == 1
    finally:
        await store.aclose()


async def test_sqlite_uses_wal(sqlite_url: str) -> None:
    await upgrade(sqlite_url)

    def journal_mode(connection: Connection) -> str:
        return connection.exec_driver_sql("PRAGMA journal_mode").scalar_one()

    assert (await _run_sync(sqlite_url, journal_mode)).lower() == "wal"


async def test_sqlite_table_rebuild_in_a_migration_keeps_child_rows(sqlite_url: str) -> None:
    """Batch mode rebuilds `meetings` (drop + recreate); on the migration engine that must not
    cascade into `segments`."""
    from alembic.operations import Operations

    from store.sql import write_engine

    store = await open_store(sqlite_url)
    try:
        await store.append_final("t", "m", NewFinal("kept", 0, 10, "mic"))
    finally:
        await store.aclose()

    def rebuild_meetings(connection: Connection) -> None:
        operations = Operations(MigrationContext.configure(connection))
        with operations.batch_alter_table("meetings", recreate="always") as batch:
            batch.alter_column("created_at", nullable=True)

    engine = create_engine(sqlite_url, foreign_keys=False)  # as `upgrade` builds it
    try:
        async with write_engine(engine).begin() as conn:
            await conn.run_sync(rebuild_meetings)
    finally:
        await engine.dispose()
    store = await open_store(sqlite_url)
    try:
        assert [f.text for f in await store.finals_after("t", "m")] == ["kept"]
    finally:
        await store.aclose()


async def _newest_row(engine: Any) -> int:
    async with engine.connect() as conn:
        return (await conn.exec_driver_sql("SELECT max(id) FROM segments")).scalar()


async def test_sqlite_rows_are_never_numbered_again_after_0008(sqlite_url: str) -> None:
    """0007 -> head on finals: the rows and their search index are kept, the index follows new
    and deleted finals, and the newest row's number is not given again once it is deleted."""
    from store.catalog_sql import SqlMeetingCatalog
    from store.search import parse_query

    await _run_sync(sqlite_url, _migrate_to("0007"))
    store = await open_store(sqlite_url)
    try:
        for text in ("budget one", "budget two", "budget three"):
            await store.append_final("t", "m", NewFinal(text, 0, 10, "mic"))
        await store.append_final("t", "newest", NewFinal("budget four", 0, 10, "mic"))
    finally:
        await store.aclose()
    await upgrade(sqlite_url)
    store = await open_store(sqlite_url)
    catalog = SqlMeetingCatalog(store.engine)
    try:
        newest = await _newest_row(store.engine)
        assert len(await catalog.search("t", parse_query("budget"), limit=10)) == 4
        assert await catalog.delete_meeting("t", "newest", announce=False)
        await store.append_final("t", "m", NewFinal("budget five", 0, 10, "mic"))
        assert await _newest_row(store.engine) > newest
        found = await catalog.search("t", parse_query("budget"), limit=10)
        assert sorted(h.text for h in found) == [
            f"budget {n}" for n in ("five", "one", "three", "two")
        ]
    finally:
        await store.aclose()


async def test_a_migrations_statement_is_not_held_to_a_requests_timeout(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration rewrites whole tables (about a minute per million finals): held to the 30 s
    a request's statement gets, `db upgrade` failed on every large database. Here a request's
    limit is 1 s and the migration waits 3 s (another migrator holds the lock)."""
    import asyncio

    import asyncpg

    from store import urls

    await upgrade(pg_url)
    monkeypatch.setattr(urls, "COMMAND_TIMEOUT_S", 1.0)
    holder = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", migrate._PG_MIGRATION_LOCK)
        upgrading = asyncio.create_task(upgrade(pg_url))
        await eventually(lambda: sessions_waiting_on_locks(pg_url), what="the upgrade waits")
        await asyncio.sleep(2)  # a duration, not a wait: twice a request's limit
        await holder.execute("SELECT pg_advisory_unlock($1)", migrate._PG_MIGRATION_LOCK)
        await asyncio.wait_for(upgrading, 120)
    finally:
        await holder.close()
    engine = create_engine(pg_url)  # a request's statement is still held to its limit
    try:
        async with engine.connect() as conn:
            with pytest.raises(TimeoutError):
                await conn.exec_driver_sql("SELECT pg_sleep(3)")
    finally:
        await engine.dispose()
