"""One poll of a recording job's row for all of its event streams on this process.

Each `/events` stream read the job's row (and its finals) twice a second on its own: a few
hundred streams of one job took a core and slowed every other query. Streams of a job now share
one reader; each wakes when a poll is done and reads the job it brought.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

from shared.tasks import shared_task

Row = TypeVar("Row")

POLL_S = 0.5  # how often a watched job's row is read


class _Watch(Generic[Row]):
    __slots__ = ("error", "latest", "polled", "task", "users", "version")

    def __init__(self) -> None:
        self.latest: Row | None = None
        self.error: BaseException | None = None
        self.version = 0  # polls done
        self.polled = asyncio.Event()  # replaced after each poll: waiters hold the old one
        self.users = 0
        self.task: asyncio.Task[None] | None = None

    async def after(self, version: int) -> tuple[int, Row | None]:
        """The first poll after `version`: (its version, the row; None once the row is gone).
        Raises what the poll raised."""
        while self.version <= version and self.error is None:
            await self.polled.wait()
        if self.error is not None:
            raise self.error
        return self.version, self.latest


class JobWatch(Generic[Row]):
    def __init__(
        self, fetch: Callable[[str], Awaitable[Row | None]], interval_s: float = POLL_S
    ) -> None:
        self._fetch, self._interval_s = fetch, interval_s
        self._watches: dict[str, _Watch[Row]] = {}

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[_Watch[Row]]:
        watch = self._watches.get(job_id)
        if watch is None:
            watch = self._watches[job_id] = _Watch()
            watch.task = shared_task(self._poll(job_id, watch), name=f"job-watch-{job_id}")
        watch.users += 1
        try:
            yield watch
        finally:
            watch.users -= 1
            if watch.users == 0:
                if self._watches.get(job_id) is watch:
                    del self._watches[job_id]
                if watch.task is not None:
                    watch.task.cancel()

    def watched(self) -> int:
        return len(self._watches)

    async def _poll(self, job_id: str, watch: _Watch[Row]) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                watch.latest = await self._fetch(job_id)
            except Exception as exc:  # every stream of the job ends with it, as each did
                watch.error = exc
                if self._watches.get(job_id) is watch:
                    del self._watches[job_id]  # the next stream starts afresh
            watch.version += 1
            done, watch.polled = watch.polled, asyncio.Event()
            done.set()
            if watch.error is not None:
                return
