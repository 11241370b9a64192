"""The live path's connections are its own: with every connection of the shared pool taken,
finals, stream rows, a counter's seed and the health check still reach PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from store.base import NewFinal
from store.migrate import upgrade
from store.sql import SqlTranscriptStore


async def test_the_live_path_does_not_wait_for_the_shared_pool(pg_url: str) -> None:
    await upgrade(pg_url)
    store = SqlTranscriptStore(pg_url, pool_size=1, max_overflow=0)
    try:
        async with store.engine.connect():  # the shared pool's only connection, held
            await store.open_stream(
                "t1",
                "m1",
                stream_id="s1",
                source="mic",
                engine="local",
                sample_rate=16000,
                channels=1,
            )
            final = NewFinal("hello", 0, 500, "mic", stream_id="s1", stream_seq=1)
            stored = await store.store_numbered_final("t1", "m1", 1, final, datetime.now(UTC))
            assert stored.segment_no == 1
            assert await store.last_segment_no("t1", "m1", live_path=True) == 1
            await store.close_stream("s1", audio_ms=500, frames=25)
            assert await store.healthy()
    finally:
        await store.aclose()
