"""An ingest stream's row in the store, kept through a database outage, and the refresh of every
live stream's row of the process.

The row is opened when the stream starts; when the database cannot be reached then, the stream
starts anyway (its finals wait in the outbox) and the row is written once the database answers,
followed by its close. While it streams, `StreamRowRefresher` writes its counters (and so its
liveness) with every other stream's of the process, in one write every few seconds. Rows only feed
stats and exports' metadata: nothing waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from gateway.observability.logs import get_logger
from shared.backoff import backoff_delay
from shared.outage_log import OutageLog
from shared.tasks import detach
from store.base import StreamProgress, TranscriptStore
from store.errors import DATABASE_UNREACHABLE

log = get_logger("gateway.stream_row")

ATTEMPT_TIMEOUT_S = 5.0
RETRY_BASE_S = 0.5
RETRY_CAP_S = 10.0


class StreamRow:
    def __init__(self, store: TranscriptStore, **fields: Any) -> None:
        self._store = store
        self._fields = fields
        self.stream_id: str = fields["stream_id"]
        self._opened = asyncio.Event()
        self._opener: asyncio.Future[None] | None = None

    @property
    def opened(self) -> bool:
        return self._opened.is_set()

    async def open(self) -> None:
        """Write the row now, or (database unreachable) as soon as it is back."""
        try:
            await self._open_once()
        except DATABASE_UNREACHABLE as exc:
            log.warning("stream row deferred: database unreachable", error=type(exc).__name__)
            self._opener = detach(self._retry(self._open_once), "stream-row")

    async def close(self, *, audio_ms: int, frames: int, engines: Sequence[str] = ()) -> None:
        """Close the row now, or in the background once it is opened and the database answers."""
        engines = tuple(engines)  # as they are now: a background close runs later

        async def close_once() -> None:
            async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
                await self._store.close_stream(
                    self.stream_id, audio_ms=audio_ms, frames=frames, engines=engines
                )

        if self.opened:
            with contextlib.suppress(Exception):
                await close_once()
                return

        async def close_later() -> None:
            await self._opened.wait()
            await self._retry(close_once)

        detach(close_later(), "stream-row")

    async def _open_once(self) -> None:
        async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
            await self._store.open_stream(**self._fields)
        self._opened.set()

    async def _retry(self, write: Any) -> None:
        failures = 0
        while True:
            await asyncio.sleep(backoff_delay(failures, RETRY_BASE_S, RETRY_CAP_S))
            try:
                await write()
            except Exception:
                failures += 1
                continue
            log.info("stream row written after a database outage")
            return


# What a live stream's row is refreshed with now; None while the row is not written yet.
Progress = Callable[[], StreamProgress | None]


class StreamRowRefresher:
    """Every live stream's row of the process refreshed in one write every `every_s` (a write
    per stream cost about a millisecond of CPU, most of it the transaction around it)."""

    def __init__(self, store: TranscriptStore, every_s: float) -> None:
        self._store = store
        self._every_s = every_s
        self._streams: dict[str, Progress] = {}

    def add(self, stream_id: str, progress: Progress) -> None:
        self._streams[stream_id] = progress

    def discard(self, stream_id: str) -> None:
        self._streams.pop(stream_id, None)

    async def refresh(self) -> None:
        """Write every stream's progress now. Raises what the write raised."""
        batch = [p for progress in list(self._streams.values()) if (p := progress()) is not None]
        if batch:
            batch.sort(key=lambda p: p.stream_id)  # rows locked in one order by every writer
            async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
                await self._store.update_streams(batch)

    async def run(self) -> None:
        """Refresh every `every_s` for the life of the process: a failed round (a database
        outage) is logged once and waits for the next; rows go stale only while it lasts."""
        outage = OutageLog(log, "stream rows not refreshed", "stream rows refreshed again")
        while True:
            await asyncio.sleep(self._every_s)
            try:
                await self.refresh()
            except Exception as exc:
                outage.failed(exc)
            else:
                outage.succeeded()
