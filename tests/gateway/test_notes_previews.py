"""Notes previews: made once for requests that come together, off the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from gateway.pipeline.notes import NotesPreviews, PreviewsBusy
from store.base import NewFinal, TranscriptStore
from store.catalog_sql import SqlMeetingCatalog
from store.migrate import open_store

SENTENCE = "We decided that Ayşe will send the budget review to the team by Friday. "


@pytest.fixture
async def stores(sqlite_url: str) -> AsyncIterator[tuple[TranscriptStore, SqlMeetingCatalog]]:
    store = await open_store(sqlite_url)
    yield store, SqlMeetingCatalog(store.engine)
    await store.aclose()


async def long_meeting(store: TranscriptStore, tenant: str) -> None:
    """Meeting `long` of `tenant`: 1,500 finals of twelve sentences each."""
    for n in range(1500):
        await store.append_final(tenant, "long", NewFinal(SENTENCE * 12, n, n + 1, "mic"))


async def test_previews_asked_together_are_made_once_off_the_loop(
    stores: tuple[TranscriptStore, SqlMeetingCatalog],
) -> None:
    store, catalog = stores
    await long_meeting(store, "acme")
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


async def test_a_tenant_cannot_queue_more_previews_than_its_share(
    stores: tuple[TranscriptStore, SqlMeetingCatalog],
) -> None:
    """The queue is shared: one tenant's requests for many meetings must not hold up the
    others'. A request for a meeting already being made joins it and is not counted."""
    store, catalog = stores
    for meeting in ("m1", "m2", "m3"):
        await store.append_final("busy", meeting, NewFinal(SENTENCE, 0, 1, "mic"))
    await store.append_final("quiet", "q1", NewFinal(SENTENCE, 0, 1, "mic"))
    previews = NotesPreviews(per_tenant=2)
    first = asyncio.ensure_future(previews.preview(store, catalog, "busy", "m1"))
    second = asyncio.ensure_future(previews.preview(store, catalog, "busy", "m2"))
    await asyncio.sleep(0)  # both are being made (or wait for the one slot)
    joined = asyncio.ensure_future(previews.preview(store, catalog, "busy", "m1"))
    with pytest.raises(PreviewsBusy):
        await previews.preview(store, catalog, "busy", "m3")
    other = await previews.preview(store, catalog, "quiet", "q1")
    assert other[1] == 1
    assert [r[1] for r in await asyncio.gather(first, second, joined)] == [1, 1, 1]
    assert (await previews.preview(store, catalog, "busy", "m3"))[1] == 1  # its turn now


async def test_a_tenants_long_preview_does_not_hold_up_another_tenants(
    stores: tuple[TranscriptStore, SqlMeetingCatalog],
) -> None:
    store, catalog = stores
    await long_meeting(store, "big")
    await store.append_final("small", "short", NewFinal(SENTENCE, 0, 1, "mic"))
    previews = NotesPreviews()
    long = asyncio.ensure_future(previews.preview(store, catalog, "big", "long"))
    await asyncio.sleep(0)  # queued first
    assert (await previews.preview(store, catalog, "small", "short"))[1] == 1
    assert not long.done()  # the small tenant's preview did not wait for it
    assert (await long)[1] == 1500
    assert previews._making == {} and previews._turns == {}
