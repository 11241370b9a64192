"""StreamRowRefresher: every live stream's row of a process refreshed in one write."""

from __future__ import annotations

import asyncio

from gateway.pipeline.stream_row import StreamRowRefresher
from shared.tasks import cancel_and_wait
from store.base import StreamProgress
from store.migrate import upgrade
from store.sql import SqlTranscriptStore
from tests.util import eventually


async def test_one_refresh_writes_every_registered_stream_whose_row_is_written(
    sqlite_url: str,
) -> None:
    await upgrade(sqlite_url)
    store = SqlTranscriptStore(sqlite_url)
    try:
        for stream_id in ("a", "b", "gone"):
            await store.open_stream(
                "t1",
                "m1",
                stream_id=stream_id,
                source="mic",
                engine="local",
                sample_rate=16000,
                channels=1,
            )
        rows = StreamRowRefresher(store, every_s=3600)
        heard = {"a": 1000, "b": 2000}
        rows.add("a", lambda: StreamProgress("a", heard["a"], 50))
        rows.add("b", lambda: StreamProgress("b", heard["b"], 100, ("local", "deepgram")))
        rows.add("unwritten", lambda: None)  # its row is not in the store yet: skipped
        rows.add("gone", lambda: StreamProgress("gone", 9, 9))
        rows.discard("gone")  # the stream ended: no longer refreshed
        await rows.refresh()
        infos = {s.stream_id: s for s in await store.active_streams("t1", "m1", fresh_within_s=60)}
        assert (infos["a"].audio_ms, infos["a"].frames) == (1000, 50)
        assert (infos["b"].audio_ms, infos["b"].engines) == (2000, ("local", "deepgram"))
        assert infos["gone"].audio_ms == 0
        heard["a"] = 6000
        await rows.refresh()  # the progress as it is now
        infos = {s.stream_id: s for s in await store.active_streams("t1", "m1", fresh_within_s=60)}
        assert infos["a"].audio_ms == 6000
    finally:
        await store.aclose()


async def test_a_failed_round_does_not_end_the_refreshes(sqlite_url: str) -> None:
    """The database is not there yet (no tables): rounds fail, the loop goes on, and once the
    database answers the rows are refreshed again."""
    store = SqlTranscriptStore(sqlite_url)  # not migrated yet: every write fails
    rows = StreamRowRefresher(store, every_s=0.05)
    asked = 0

    def progress() -> StreamProgress:
        nonlocal asked
        asked += 1
        return StreamProgress("a", 1000, 50)

    rows.add("a", progress)
    refreshing = asyncio.get_running_loop().create_task(rows.run())
    try:
        await eventually(lambda: asked >= 3, what="rounds after failed ones")
        assert not refreshing.done()
        await upgrade(sqlite_url)
        await store.open_stream(
            "t1", "m1", stream_id="a", source="mic", engine="local", sample_rate=16000, channels=1
        )

        async def refreshed() -> bool:
            streams = await store.active_streams("t1", "m1", fresh_within_s=60)
            return bool(streams) and streams[0].audio_ms == 1000

        await eventually(refreshed, what="the row refreshed once the database answered")
    finally:
        await cancel_and_wait(refreshing)
        await store.aclose()
