"""Notes previews: made once for requests that come together, off the event loop."""

from __future__ import annotations

import asyncio
import time

from gateway.pipeline.notes import NotesPreviews
from store.base import NewFinal
from store.catalog_sql import SqlMeetingCatalog
from store.migrate import open_store

SENTENCE = "We decided that Ayşe will send the budget review to the team by Friday. "


async def test_previews_asked_together_are_made_once_off_the_loop(sqlite_url: str) -> None:
    store = await open_store(sqlite_url)
    catalog = SqlMeetingCatalog(store.engine)
    try:
        for n in range(1500):
            await store.append_final("acme", "long", NewFinal(SENTENCE * 12, n, n + 1, "mic"))
        previews = NotesPreviews()
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:  # how long the loop went without running anything else
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        started = time.perf_counter()
        results = await asyncio.gather(
            *(previews.preview(store, catalog, "acme", "long") for _ in range(5))
        )
        took = time.perf_counter() - started
        done.set()
        await ticking
        assert all(result == results[0] for result in results)
        notes, finals = results[0]
        assert finals == 1500 and notes.decisions
        # The rules ran in a thread: the loop kept running (a preview on the loop would hold it
        # for most of the time the previews took).
        assert max(gaps) < took / 2, (max(gaps), took)
        assert previews._making == {}
    finally:
        await store.aclose()
