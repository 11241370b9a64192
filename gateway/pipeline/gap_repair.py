"""Repair what at-most-once pub/sub lost: re-deliver stored finals that viewers never got, and
the status messages published while the bus was away (from the bus's short log of them), after
the finals.

Two things start a repair of a meeting's room:

- the bus reconnected (while a replica's bus connection is down, finals published by other
  replicas never reach its viewers). The bus reports the gap once the subscriptions are live
  again, before it hands on any message published after: the room's repair mark is taken right
  then, and the meeting's counter (the highest number handed out) is read as the target;
- the room got a live final whose number skips one it has not handed out (a publish lost on one
  side of an outage or the other).

A repair reads the stored finals after the mark and hands them to the room (which skips any it
already has). A final may not be stored yet (numbered during a database outage, or its stream is
still saving it), so the repair tries again with backoff until the room has every number up to
the target and no hole below its highest final, or `GAP_REPAIR_MAX_S` has passed (a number can be
handed out and never used when its stream died at that instant).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fanout.rooms import RoomRegistry
from fanout.topics import parse_status_topic, parse_transcript_topic
from gateway.observability.logs import get_logger
from gateway.observability.metrics import Metrics
from gateway.pipeline.stored_finals import final_message
from shared.backoff import backoff_delay
from store.base import TranscriptStore

log = get_logger("gateway.pipeline.gap_repair")

MAX_REPLAY = 1000
GAP_REPAIR_MAX_S = 120.0  # how long a repair keeps looking for finals that are not stored yet
RETRY_BASE_S = 0.25
RETRY_CAP_S = 5.0

# The meeting's last number handed out, if known (the shared counter): (tenant, meeting).
LastNumber = Callable[[str, str], Awaitable[int | None]]
# The status messages the bus kept for a status topic (Bus.recent).
RecentStatus = Callable[[str], Awaitable[list[bytes]]]


@dataclass
class _Repair:
    """One meeting's repair in progress; a new trigger lowers its mark or raises its target."""

    mark: int
    target: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)


def repair_done(missing: list[int] | None, high_water: int | None, target: int) -> bool:
    """Whether a room needs nothing more: it is gone, or it has no hole below its highest final
    and has reached the target."""
    if missing is None or high_water is None:
        return True
    return not missing and high_water >= target


class GapRepair:
    def __init__(
        self,
        rooms: RoomRegistry,
        store: TranscriptStore,
        metrics: Metrics,
        last_number: LastNumber | None = None,
        recent_status: RecentStatus | None = None,
    ) -> None:
        self._rooms, self._store, self._metrics = rooms, store, metrics
        self._last_number = last_number
        self._recent_status = recent_status
        self._repairs: dict[tuple[str, str], _Repair] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        rooms.gap_listener = self.room_gap

    def __call__(self, topics: set[str]) -> None:
        """The bus's gap listener: called on the event loop, must not block. The marks are read
        now, before finals published after the reconnect raise them."""
        for key in filter(None, map(parse_transcript_topic, topics)):
            mark = self._rooms.repair_mark(*key)
            if mark is not None:  # None: no local viewers any more
                self._start(key, mark, read_target=True)
        if self._recent_status is not None:
            for topic in topics:
                key = parse_status_topic(topic)
                if key is not None and self._rooms.repair_mark(*key) is not None:
                    self._spawn(self._replay_status(key, topic))

    def room_gap(self, tenant_id: str, meeting_id: str) -> None:
        """The rooms' gap listener: a live final skipped a number the room has not seen."""
        mark = self._rooms.repair_mark(tenant_id, meeting_id)
        if mark is not None:
            self._start((tenant_id, meeting_id), mark, read_target=False)

    def _start(self, key: tuple[str, str], mark: int, *, read_target: bool) -> None:
        repair = self._repairs.get(key)
        if repair is not None:  # already running: it looks from the lower mark on its next try
            repair.mark = min(repair.mark, mark)
            if read_target:
                self._spawn(self._raise_target(key, repair))
            return
        repair = self._repairs[key] = _Repair(mark)
        self._spawn(self._repair(key, repair, read_target))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _raise_target(self, key: tuple[str, str], repair: _Repair) -> None:
        if self._last_number is None:
            return
        try:
            last = await self._last_number(*key)
        except Exception as exc:
            log.warning("gap repair: reading the counter failed", error=type(exc).__name__)
            return
        if last is not None:
            repair.target = max(repair.target, last)

    async def _repair(self, key: tuple[str, str], repair: _Repair, read_target: bool) -> None:
        try:
            if read_target:
                await self._raise_target(key, repair)
            deadline = time.monotonic() + GAP_REPAIR_MAX_S
            attempt = 0
            while True:
                await self._replay(key, repair.mark)
                missing = self._rooms.missing_finals(*key, repair.mark)
                if repair_done(missing, self._rooms.high_water(*key), repair.target):
                    return
                if time.monotonic() > deadline:
                    log.warning("gap repair: finals still missing; giving up", missing=missing)
                    return
                await asyncio.sleep(backoff_delay(attempt, RETRY_BASE_S, RETRY_CAP_S))
                attempt += 1
        finally:
            if self._repairs.get(key) is repair:
                del self._repairs[key]
            repair.ended.set()

    async def _replay_status(self, key: tuple[str, str], topic: str) -> None:
        """Status messages published while the bus was away (a stream's end), from the bus's
        short log of them; the room skips those it delivered. They wait for the meeting's finals
        repair: a stream's end must not reach viewers before its finals do (clients take it to
        mean that their view of the stream is complete, and resume from it)."""
        assert self._recent_status is not None
        if (repair := self._repairs.get(key)) is not None:
            await repair.ended.wait()
        if redelivered := self._rooms.redeliver_status(*key, await self._recent_status(topic)):
            log.info("gap repair: status messages re-delivered", count=redelivered)

    async def _replay(self, key: tuple[str, str], mark: int) -> None:
        tenant_id, meeting_id = key
        try:
            finals = await self._store.finals_after(tenant_id, meeting_id, mark, MAX_REPLAY)
        except Exception as exc:
            log.warning("gap repair: reading finals failed", error=type(exc).__name__)
            return
        encoded = [final_message(meeting_id, segment) for segment in finals]
        if replayed := self._rooms.replay(tenant_id, meeting_id, encoded):
            self._metrics.replayed(tenant_id, replayed)
            log.info("gap repair: finals re-delivered", count=replayed)
