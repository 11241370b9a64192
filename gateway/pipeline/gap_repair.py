"""Repair what at-most-once pub/sub lost: after the bus reconnects, re-deliver stored finals.

While a replica's bus connection is down, finals published by other replicas never reach its
viewers. The bus reports the gap once the subscriptions are live again, before it hands on any
message published after: each affected room's repair mark is taken right then, and the room gets
the stored finals after it (the room skips any it already has).
"""

from __future__ import annotations

import asyncio

from fanout.bus import parse_transcript_topic
from fanout.rooms import RoomRegistry
from gateway.observability.logs import get_logger
from gateway.observability.metrics import Metrics
from gateway.pipeline.stored_finals import final_message
from store.base import TranscriptStore

log = get_logger("gateway.pipeline.gap_repair")

MAX_REPLAY = 1000


class GapRepair:
    def __init__(self, rooms: RoomRegistry, store: TranscriptStore, metrics: Metrics) -> None:
        self._rooms, self._store, self._metrics = rooms, store, metrics
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, topics: set[str]) -> None:
        """The bus's gap listener: called on the event loop, must not block. The marks are read
        now, before finals published after the reconnect raise them."""
        marks: dict[tuple[str, str], int] = {}
        for key in filter(None, map(parse_transcript_topic, topics)):
            mark = self._rooms.repair_mark(*key)
            if mark is not None:  # None: no local viewers any more
                marks[key] = mark
        task = asyncio.create_task(self._repair(marks))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _repair(self, marks: dict[tuple[str, str], int]) -> None:
        for (tenant_id, meeting_id), mark in marks.items():
            try:
                finals = await self._store.finals_after(tenant_id, meeting_id, mark, MAX_REPLAY)
            except Exception as exc:
                log.warning("gap repair: reading finals failed", error=type(exc).__name__)
                continue
            encoded = [final_message(meeting_id, segment) for segment in finals]
            if replayed := self._rooms.replay(tenant_id, meeting_id, encoded):
                self._metrics.replayed(tenant_id, replayed)
                log.info("gap repair: finals re-delivered", count=replayed)
