"""After meetings are deleted, their words are cleared from where the database still keeps them
(`MeetingCatalog.forget_deleted`: SQLite's search index and write-ahead log).

Once per burst of deletions, not per deletion: a run rewrites the whole search index under the
write lock (a second per million finals), so runs are at least `min_gap_s` apart and requests in
between make one run after the gap. A run that readers kept from emptying the log, or that
failed, goes again after the gap, `MAX_ATTEMPTS` times at most (a warning then: the next
deletion tries again).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from gateway.observability.logs import get_logger
from shared.tasks import shared_task

log = get_logger("gateway.pipeline.forget_deleted")

MIN_GAP_S = 30.0
MAX_ATTEMPTS = 10
CLOSE_WAIT_S = 5.0  # a run still going at shutdown is left to finish in the database's thread


class ForgetDeleted:
    def __init__(self, forget: Callable[[], Awaitable[bool]], min_gap_s: float = MIN_GAP_S) -> None:
        self._forget = forget
        self._min_gap_s = min_gap_s
        self._task: asyncio.Task[None] | None = None
        self._requested = False
        self._closing = asyncio.Event()
        self._last_run = -float("inf")
        self.runs = 0

    def request(self) -> None:
        """A deletion committed: clear its words soon."""
        if self._closing.is_set():
            return
        self._requested = True
        if self._task is None or self._task.done():
            self._task = shared_task(self._run(), name="forget-deleted")

    async def _run(self) -> None:
        attempts = 0
        while self._requested or attempts:
            wait_s = self._last_run + self._min_gap_s - time.monotonic()
            if wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._closing.wait()
            if self._closing.is_set():
                return
            if self._requested:
                attempts = 0  # a new deletion: a fresh set of attempts
            self._requested = False
            self._last_run = time.monotonic()
            done = False
            try:
                done = await self._forget()
            except Exception as exc:  # the database away or locked: the next attempt
                log.warning("deleted words not cleared yet", error=type(exc).__name__)
            self.runs += 1
            attempts = 0 if done else attempts + 1
            if attempts >= MAX_ATTEMPTS:
                log.warning("deleted words not cleared: the next deletion tries again")
                attempts = 0

    async def aclose(self) -> None:
        self._closing.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT_S):
                    await asyncio.gather(self._task, return_exceptions=True)
            if not self._task.done():
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
