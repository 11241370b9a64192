"""Local rooms: one bus subscription per meeting topic per process, fanned out to local outboxes.

Broker cost then grows with replicas, not viewers. Each bus message is offered as the same bytes
object to every local outbox of the meeting (encoded once by the publisher, never per socket).
Join and leave of one meeting are serialised by a per-meeting lock, so the first joiner
subscribes, the last leaver unsubscribes, and a join racing a leave never ends up without a
subscription (or with two).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fanout.bus import Bus, Handler, Subscription, status_topic, transcript_topic
from fanout.delivery import Outbox

_Key = tuple[str, str]


def _key(tenant_id: str, meeting_id: str) -> _Key:
    # Topics join ids with ':', so "a:b"+"c" and "a"+"b:c" would share a topic across tenants.
    for name, value in (("tenant_id", tenant_id), ("meeting_id", meeting_id)):
        if not value or ":" in value:
            raise ValueError(f"{name} must be non-empty and must not contain ':': {value!r}")
    return tenant_id, meeting_id


def _topics(key: _Key) -> tuple[str, str]:
    return transcript_topic(*key), status_topic(*key)


class _Room:
    __slots__ = ("outboxes", "subscriptions")

    def __init__(self) -> None:
        self.outboxes: set[Outbox] = set()
        self.subscriptions: list[Subscription] = []

    def deliver(self, data: bytes) -> None:
        # Called by the bus on the event loop: offer never awaits, so a slow socket cannot stall
        # the bus reader or the other viewers.
        for outbox in self.outboxes:
            outbox.offer(data)


class _LockEntry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


async def _cancel_all(subscriptions: list[Subscription]) -> None:
    for subscription in subscriptions:
        await subscription.cancel()


class RoomRegistry:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._rooms: dict[_Key, _Room] = {}
        self._locks: dict[_Key, _LockEntry] = {}

    @contextlib.asynccontextmanager
    async def _meeting_lock(self, key: _Key) -> AsyncIterator[None]:
        # Locks are reference counted so meetings that come and go do not leak lock objects.
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = _LockEntry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[key]

    async def join(self, tenant_id: str, meeting_id: str, outbox: Outbox) -> None:
        """Deliver the meeting's messages to `outbox` from the moment this returns.

        Raises whatever the bus raises when it cannot subscribe (e.g. `BusUnavailable`); the
        outbox is then not joined.
        """
        key = _key(tenant_id, meeting_id)
        async with self._meeting_lock(key):
            room = self._rooms.get(key)
            if room is None:
                room = _Room()
                room.subscriptions = await self._subscribe(key, room.deliver)
                self._rooms[key] = room
            room.outboxes.add(outbox)

    async def _subscribe(self, key: _Key, handler: Handler) -> list[Subscription]:
        subscriptions: list[Subscription] = []
        try:
            for topic in _topics(key):
                subscriptions.append(await self._bus.subscribe(topic, handler))
        except BaseException:
            # Shielded so a cancelled join still gives back the half it took.
            await asyncio.shield(_cancel_all(subscriptions))
            raise
        return subscriptions

    async def leave(self, tenant_id: str, meeting_id: str, outbox: Outbox) -> None:
        """Stop delivering to `outbox`; unsubscribes when it was the meeting's last local one.
        Idempotent. Runs to completion even if the caller is cancelled (it is cleanup)."""
        await asyncio.shield(self._leave(_key(tenant_id, meeting_id), outbox))

    async def _leave(self, key: _Key, outbox: Outbox) -> None:
        async with self._meeting_lock(key):
            room = self._rooms.get(key)
            if room is None or outbox not in room.outboxes:
                return
            room.outboxes.discard(outbox)
            if not room.outboxes:
                del self._rooms[key]
                await _cancel_all(room.subscriptions)

    def local_subscriber_count(self, tenant_id: str, meeting_id: str) -> int:
        room = self._rooms.get((tenant_id, meeting_id))
        return len(room.outboxes) if room else 0

    def local_subscriber_total(self) -> int:
        return sum(len(room.outboxes) for room in self._rooms.values())

    def room_count(self) -> int:
        return len(self._rooms)

    def meetings(self) -> set[tuple[str, str]]:
        """(tenant_id, meeting_id) of every meeting with local subscribers."""
        return set(self._rooms)

    def subscribed_topics(self) -> set[str]:
        return {topic for key in self._rooms for topic in _topics(key)}
