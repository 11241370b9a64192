"""Secrets every replica shares (`store.server_secrets`), on SQLite and PostgreSQL: made with the
schema, the same for every replica, made again (once) when the row is gone."""

from __future__ import annotations

import asyncio

from sqlalchemy import delete

from store.server_secrets import server_secret
from store.sql import SqlTranscriptStore
from store.tables import server_secrets


async def test_every_replica_reads_the_same_secret(migrated_url: str) -> None:
    replicas = [SqlTranscriptStore(migrated_url) for _ in range(3)]
    try:
        keys = {await server_secret(r.engine, "cursor") for r in replicas}
        assert len(keys) == 1 and len(next(iter(keys))) == 32
        # Removed by hand: the replicas make one again together, and agree on it.
        async with replicas[0].engine.begin() as conn:
            await conn.execute(delete(server_secrets))
        again = await asyncio.gather(*(server_secret(r.engine, "cursor") for r in replicas))
        assert len(set(again)) == 1 and again[0] not in keys
    finally:
        for replica in replicas:
            await replica.aclose()
