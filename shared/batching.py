"""Coalesce concurrent requests per key into one round trip.

Many callers asking about the same key at the same moment (a thousand viewers joining one meeting)
become one call of `flush(key, items)` per key at a time: requests arriving while a flush is in
flight wait for the next one. Load on the backend then grows with keys, not with callers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from shared.tasks import cancel_and_wait, shared_task

K = TypeVar("K")
T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[K, Sequence[T]], Awaitable[Sequence[R]]]


class KeyedBatcher(Generic[K, T, R]):
    """`submit(key, item)` resolves to `flush`'s result for that item (or raises its error).

    `max_batch` bounds one flush (e.g. a script's argument list); the rest go in the next one.
    `on_abandoned(key, item, result)` is told about results whose caller was cancelled meanwhile,
    so work done on their behalf (a slot taken) can be undone or left to expire.
    """

    def __init__(
        self,
        flush: Flush[K, T, R],
        *,
        max_batch: int = 500,
        on_abandoned: Callable[[K, T, R], None] | None = None,
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._on_abandoned = on_abandoned
        self._queued: dict[K, list[tuple[T, asyncio.Future[R]]]] = {}
        self._flushers: dict[K, asyncio.Task[None]] = {}
        self.flushes = 0  # round trips made (for tests and stats)
        self._closing_error: Exception | None = None

    async def submit(self, key: K, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(key, []).append((item, future))
        if key not in self._flushers:
            self._flushers[key] = shared_task(self._run(key))
        return await future

    async def _run(self, key: K) -> None:
        try:
            # Let every caller that is ready in this turn of the loop join the first batch.
            await asyncio.sleep(0)
            while queued := self._queued.get(key):
                batch, rest = queued[: self._max_batch], queued[self._max_batch :]
                if rest:
                    self._queued[key] = rest
                else:
                    del self._queued[key]
                await self._flush_one(key, batch)
        finally:
            del self._flushers[key]

    async def _flush_one(self, key: K, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.flushes += 1
        try:
            results = await self._flush(key, [item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"flush returned {len(results)} results for {len(batch)}")
        except asyncio.CancelledError:  # closed mid-flush: nobody may wait forever
            for _, future in batch:
                self._abort(future)
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
                    # Retrieved here so an abandoned caller's error is not reported as unhandled.
                    with contextlib.suppress(BaseException):
                        future.exception()
            return
        for (item, future), result in zip(batch, results, strict=True):
            if future.done():  # the caller was cancelled while the flush ran
                if self._on_abandoned is not None:
                    self._on_abandoned(key, item, result)
            else:
                future.set_result(result)

    def _abort(self, future: asyncio.Future[R]) -> None:
        if future.done():
            return
        if self._closing_error is None:
            future.cancel()
        else:
            future.set_exception(self._closing_error)

    async def aclose(self, error: Exception | None = None) -> None:
        """Stop: waiting callers get `error` (or are cancelled when None)."""
        self._closing_error = error
        for queued in self._queued.values():
            for _, future in queued:
                self._abort(future)
        self._queued.clear()
        await cancel_and_wait(*self._flushers.values())
