"""Schema migrations (Alembic, shipped in `store/migrations`) and opening a migrated store."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from store.errors import DATABASE_UNREACHABLE
from store.sql import SqlTranscriptStore, create_engine, write_engine
from store.urls import MIGRATION_COMMAND_TIMEOUT_S, is_sqlite_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
UPGRADE_HINT = "run `meeting-gateway db upgrade`"
# Serialises concurrent upgrades (e.g. replicas starting together) on PostgreSQL.
_PG_MIGRATION_LOCK = 0x6D67_0001


class DatabaseNotMigrated(Exception):
    def __init__(self, current: str | None, head: str) -> None:
        self.current = current
        self.head = head
        if current is None:
            detail = f"database has no schema yet (this release needs revision {head!r})"
        else:
            detail = f"database schema is at revision {current!r}, this release needs {head!r}"
        super().__init__(f"{detail}: {UPGRADE_HINT}")


def alembic_config(url: str | None = None) -> Config:
    """Config built in code: no alembic.ini to locate at runtime."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser escaping
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


class NewerSchema(Exception):
    """The database was migrated by a newer release: nothing to apply (expand-then-contract
    migrations keep this release working on it)."""

    def __init__(self, revision: str) -> None:
        super().__init__(f"database schema {revision} is newer than this release's")
        self.revision = revision


def _upgrade_sync(connection: Connection) -> None:
    current = _revision_sync(connection)
    if current is not None and current not in _known_revisions():
        # Alembic says "Can't locate revision": a rollback's re-run `db upgrade` (its Job)
        # failed on what is no fault.
        raise NewerSchema(current)
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def _revision_sync(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade_engine(engine: AsyncEngine) -> None:
    """Apply all migrations to head in one transaction (DDL is transactional on both dialects).

    On SQLite the engine must have foreign keys off (`create_engine(..., foreign_keys=False)`);
    integrity is checked before commit instead.
    """
    # BEGIN IMMEDIATE on SQLite: processes auto-migrating the same file at once take turns.
    async with write_engine(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
            )
        await conn.run_sync(_upgrade_sync)
        if conn.dialect.name == "sqlite":
            violations = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
            if violations:
                raise RuntimeError(f"migration broke foreign keys: {violations[:5]}")


async def engine_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_revision_sync)


async def upgrade(url: str) -> None:
    # Not the 30 s a request's statement gets: a migration may rewrite a table of millions.
    engine = create_engine(url, foreign_keys=False, command_timeout_s=MIGRATION_COMMAND_TIMEOUT_S)
    try:
        await upgrade_engine(engine)
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    """The database's revision; None for a database never migrated."""
    engine = create_engine(url)
    try:
        return await engine_revision(engine)
    finally:
        await engine.dispose()


def _known_revisions() -> set[str]:
    return {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def schema_is_usable(current: str | None) -> bool:
    """At head, or newer than this release (a rolling deploy already upgraded the database:
    migrations are written expand-then-contract, so the previous release keeps working)."""
    return current == head_revision() or (current is not None and current not in _known_revisions())


async def is_up_to_date(url: str) -> bool:
    return schema_is_usable(await current_revision(url))


async def open_store(
    url: str, *, pool_size: int = 5, max_overflow: int = 5, start_unreachable: bool = False
) -> SqlTranscriptStore:
    """A ready store. SQLite migrates itself; PostgreSQL must have been upgraded explicitly
    (shared by replicas, so schema changes are an operator's deliberate step).

    With `start_unreachable`, a PostgreSQL server that cannot be reached does not fail the start
    (a gateway restarted during a database outage keeps serving live traffic and keeps its outbox):
    the schema is checked by the store's health probe once the server answers, and the store
    reports unhealthy until then.
    """
    store = SqlTranscriptStore(url, pool_size=pool_size, max_overflow=max_overflow)
    try:
        if is_sqlite_url(url):
            current = await engine_revision(store.engine)
            if current is None or current in _known_revisions():
                await upgrade(url)
            else:  # a newer release migrated this file: it runs on it as it is (expand-contract)
                log.warning("database schema %s is newer than this release's: using it", current)
        else:
            try:
                await _check_schema(store)
            except DATABASE_UNREACHABLE as exc:
                if not start_unreachable:
                    raise
                log.warning(
                    "database unreachable at start (%s): starting anyway, schema checked later",
                    type(exc).__name__,
                )
                store.pending_schema_check = lambda: _check_schema(store)
    except BaseException:
        await store.aclose()
        raise
    return store


async def _check_schema(store: SqlTranscriptStore) -> None:
    current = await engine_revision(store.engine)
    if not schema_is_usable(current):
        error = DatabaseNotMigrated(current, head_revision())
        log.error("%s", error)
        raise error
    async with store.engine.connect() as conn:
        ctype = (await conn.execute(text("SHOW lc_ctype"))).scalar_one()
    if ctype.upper() in ("C", "POSIX"):
        # Its regular expressions know only ASCII letters: search would split `bütçe` apart.
        log.warning(
            "database LC_CTYPE is %s: search splits words at non-ASCII letters (`bütçe` is "
            "missed, and its pieces `b`, `t` found where they are no word); create the "
            "database with a UTF-8 LC_CTYPE (e.g. C.UTF-8 or en_US.UTF-8)",
            ctype,
        )
