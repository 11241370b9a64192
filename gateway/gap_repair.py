"""Repair what at-most-once pub/sub lost: after the bus reconnects, re-deliver stored finals.

While a replica's bus connection is down, finals published by other replicas never reach its
viewers. Once the subscriptions are live again, each affected room gets the stored finals after
the highest one it delivered; the room skips any it already has.
"""

from __future__ import annotations

import asyncio

from fanout.bus import parse_transcript_topic
from gateway.logs import get_logger
from gateway.services import Services
from gateway.subscriber_ws import final_message

log = get_logger("gateway.gap_repair")

MAX_REPLAY = 1000


class GapRepair:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, topics: set[str]) -> None:
        """The bus's gap listener: called on the event loop, must not block."""
        task = asyncio.create_task(self._repair(topics))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _repair(self, topics: set[str]) -> None:
        rooms, store = self._services.rooms, self._services.store
        for tenant_id, meeting_id in filter(None, map(parse_transcript_topic, topics)):
            high_water = rooms.high_water(tenant_id, meeting_id)
            if high_water is None:
                continue  # no local viewers any more
            try:
                finals = await store.finals_after(tenant_id, meeting_id, high_water, MAX_REPLAY)
            except Exception as exc:
                log.warning("gap repair: reading finals failed", error=type(exc).__name__)
                continue
            encoded = [final_message(meeting_id, segment) for segment in finals]
            if replayed := rooms.replay(tenant_id, meeting_id, encoded):
                self._services.metrics.replayed(tenant_id, replayed)
                log.info("gap repair: finals re-delivered", count=replayed)
