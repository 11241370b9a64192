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
