"""KeyedBatcher: concurrent requests per key become one flush at a time (plain values)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import structlog

from shared.batching import KeyedBatcher
from tests.util import eventually


class Backend:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.fail = False
        self.release = asyncio.Event()
        self.release.set()

    async def flush(self, key: str, items: Sequence[int]) -> list[int]:
        self.calls.append((key, list(items)))
        await self.release.wait()
        if self.fail:
            raise ConnectionError("backend down")
        return [item * 10 for item in items]


async def test_concurrent_submits_share_one_flush_per_key() -> None:
    backend = Backend()
    batcher: KeyedBatcher[str, int, int] = KeyedBatcher(backend.flush)
    results = await asyncio.gather(
        *(batcher.submit("a", n) for n in range(100)), batcher.submit("b", 7)
    )
    assert results == [n * 10 for n in range(100)] + [70]
    assert sorted(key for key, _ in backend.calls) == ["a", "b"]


async def test_requests_arriving_during_a_flush_go_in_the_next_one() -> None:
    backend = Backend()
    backend.release.clear()
    batcher: KeyedBatcher[str, int, int] = KeyedBatcher(backend.flush, max_batch=3)
    first = [asyncio.create_task(batcher.submit("a", n)) for n in range(5)]
    await asyncio.sleep(0.01)
    late = [asyncio.create_task(batcher.submit("a", n)) for n in range(5, 7)]
    backend.release.set()
    assert await asyncio.gather(*first, *late) == [n * 10 for n in range(7)]
    assert [items for _, items in backend.calls] == [[0, 1, 2], [3, 4, 5], [6]]


async def test_a_failed_flush_fails_its_callers_only() -> None:
    backend = Backend()
    batcher: KeyedBatcher[str, int, int] = KeyedBatcher(backend.flush)
    backend.fail = True
    with pytest.raises(ConnectionError):
        await batcher.submit("a", 1)
    backend.fail = False
    assert await batcher.submit("a", 2) == 20


async def test_a_cancelled_caller_result_goes_to_on_abandoned() -> None:
    backend = Backend()
    backend.release.clear()
    abandoned: list[tuple[str, int, int]] = []
    batcher: KeyedBatcher[str, int, int] = KeyedBatcher(
        backend.flush, on_abandoned=lambda k, i, r: abandoned.append((k, i, r))
    )
    gone = asyncio.create_task(batcher.submit("a", 1))
    stays = asyncio.create_task(batcher.submit("a", 2))
    await asyncio.sleep(0.01)
    gone.cancel()
    backend.release.set()
    assert await stays == 20
    assert abandoned == [("a", 1, 10)]


async def test_closing_fails_queued_and_in_flight_callers_with_the_given_error() -> None:
    backend = Backend()
    backend.release.clear()
    batcher: KeyedBatcher[str, int, int] = KeyedBatcher(backend.flush)
    in_flight = [asyncio.create_task(batcher.submit("a", n)) for n in range(3)]
    await eventually(lambda: bool(backend.calls), what="first flush started")
    queued = asyncio.create_task(batcher.submit("a", 9))
    await eventually(lambda: batcher._queued.get("a") is not None, what="second batch queued")
    await batcher.aclose(ConnectionError("closed"))
    for task in [*in_flight, queued]:
        with pytest.raises(ConnectionError):
            await task


async def test_a_flush_runs_outside_its_first_callers_log_context() -> None:
    """The flush serves every caller of the batch: a line it logs names none of them."""
    seen: list[dict[str, object]] = []

    async def flush(key: str, items: Sequence[int]) -> list[int]:
        seen.append(structlog.contextvars.get_contextvars())
        return list(items)

    batcher: KeyedBatcher[str, int, int] = KeyedBatcher(flush)
    structlog.contextvars.bind_contextvars(connection_id="c1")
    try:
        assert await batcher.submit("k", 1) == 1
    finally:
        structlog.contextvars.clear_contextvars()
    assert seen == [{}]
