"""A store opened while PostgreSQL is down: the start succeeds, health waits for the schema."""

from __future__ import annotations

import pytest

from store.errors import DATABASE_UNREACHABLE
from store.migrate import open_store, upgrade
from tests.private_pg import PrivatePostgres


async def test_opens_while_down_and_checks_the_schema_once_reachable() -> None:
    server = PrivatePostgres()  # initialised, not started
    try:
        with pytest.raises(DATABASE_UNREACHABLE):
            await open_store(server.url)
        store = await open_store(server.url, start_unreachable=True)
        try:
            assert not await store.healthy()
            server.start()
            assert not await store.healthy()  # reachable, but not migrated: still not ready
            await upgrade(server.url)
            assert await store.healthy()
            assert store.pending_schema_check is None
        finally:
            await store.aclose()
    finally:
        server.destroy()


async def test_a_database_whose_ctype_is_c_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under LC_CTYPE C the search vector's regular expression splits words at every non-ASCII
    letter: the start says so (it cannot be fixed from inside the database)."""
    import logging
    import uuid

    import asyncpg

    from store.migrate import open_store, upgrade
    from tests.conftest import PG_ADMIN_DSN

    name = f"mg_ctype_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(
            f"CREATE DATABASE \"{name}\" TEMPLATE template0 LC_CTYPE 'C' LC_COLLATE 'C'"
        )
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        await upgrade(url)
        with caplog.at_level(logging.WARNING, logger="store.migrate"):
            store = await open_store(url)
            await store.aclose()
        assert "LC_CTYPE is C" in caplog.text
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
