"""After meetings are deleted, their words are cleared from where the database still keeps them
(`MeetingCatalog.forget_deleted`: SQLite's search index and write-ahead log).

Once per burst of deletions, not per deletion (it may rewrite the whole search index): a request
during a run makes one more run after it, and a run the log's readers kept from finishing is
tried again a little later.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from gateway.observability.logs import get_logger

log = get_logger("gateway.pipeline.forget_deleted")

RETRY_S = 5.0  # a run readers kept from emptying the log goes again after this


class ForgetDeleted:
    def __init__(self, forget: Callable[[], Awaitable[bool]], retry_s: float = RETRY_S) -> None:
        self._forget = forget
        self._retry_s = retry_s
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._closing = asyncio.Event()
        self.runs = 0

    def request(self) -> None:
        """A deletion committed: clear its words soon."""
        if self._closing.is_set():
            return
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="forget-deleted")
        else:
            self._again = True

    async def _run(self) -> None:
        attempt = 0
        while True:
            self._again = False
            done = False
            try:
                done = await self._forget()
            except Exception as exc:  # the database away: the next deletion asks again
                log.warning("deleted words not cleared yet", error=type(exc).__name__)
                done = True
            self.runs += 1
            if not done and not self._again and attempt < 10:
                attempt += 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._retry_s):
                        await self._closing.wait()
                self._again = not self._closing.is_set()
            if not self._again:
                return

    async def aclose(self) -> None:
        """Let a run in progress finish (its statement runs in the database's thread anyway)."""
        self._closing.set()
        self._again = False
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
