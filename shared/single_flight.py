"""Single-flight: callers asking for the same key at the same moment share one call.

A reconnect storm (a redeploy, a large meeting starting) sends many viewers of one meeting asking
for the same `since=` history at once; the first caller's read serves them all. The shared call
runs in its own task, so a caller that is cancelled (its viewer left) does not cancel it for the
others; the key is forgotten as soon as the call ends, so nothing is cached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Task[T]] = {}
        self.calls = 0  # calls actually made
        self.shared = 0  # requests served by another caller's call

    async def run(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        """The result of `call()`, or of the call already in flight for `key`."""
        task = self._calls.get(key)
        if task is None:
            task = asyncio.ensure_future(call())
            self.calls += 1
            self._calls[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        else:
            self.shared += 1
        return await asyncio.shield(task)

    def in_flight(self) -> int:
        return len(self._calls)

    def _forget(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" warning when every caller left
