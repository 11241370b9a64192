"""Local rooms: one bus subscription per meeting topic per process, fanned out to local viewers.

Broker cost then grows with replicas, not viewers. Each bus message is classified once (a
`Publication`, whose WebSocket frame is also built at most once) and offered to every local viewer
of the meeting: encoded once by the publisher, framed once per process, never per socket. The room
keeps each source's in-flight partial so a viewer joining mid-sentence sees it.
Opening and closing a meeting's room are serialised by a per-meeting lock, so the first joiner
subscribes, the last leaver unsubscribes, and a join racing a leave never ends up without a
subscription (or with two); joining a room that is open takes no lock.

Publishing is at-least-once (a failed publish is retried), so a room drops a final or status
message it has already handed out. Pub/sub is at-most-once per replica, so a room also notices
a live final whose number skips one it has not seen and reports the meeting to its gap
listener, which refills the missing finals from the store (gateway.pipeline.gap_repair).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Container

from fanout.bus import Bus, Handler, Subscription
from fanout.delivery import SENT, ViewerQueue
from fanout.publication import Kind, Publication
from fanout.topics import status_topic, transcript_topic
from shared.single_flight import SingleFlight

_Key = tuple[str, str]
# A replay after a bus gap re-reads this many finals below the highest one given out.
REPAIR_REORDER_WINDOW = 64
# Told of each message a room handed out: (tenant_id, the message, how many viewers it was written
# to at once, and whether it came live from the bus rather than from a replay).
Observer = Callable[[str, Publication, int, bool], None]


def _key(tenant_id: str, meeting_id: str) -> _Key:
    # Topics join ids with ':', so "a:b"+"c" and "a"+"b:c" would share a topic across tenants.
    for name, value in (("tenant_id", tenant_id), ("meeting_id", meeting_id)):
        if not value or ":" in value:
            raise ValueError(f"{name} must be non-empty and must not contain ':': {value!r}")
    return tenant_id, meeting_id


def _topics(key: _Key) -> tuple[str, str]:
    return transcript_topic(*key), status_topic(*key)


_RECENT_FINALS = 4096
_ENDED = 2**63  # above any segment_no
_RECENT_STATUS = 64  # status messages remembered to drop a re-published one
_STATUS_PREFIX = b'{"type":"status"'  # how StatusMessage.encode() starts
# Told of a meeting whose room got a live final above a number it has not seen.
GapListener = Callable[[str, str], None]


def missing_numbers(after: int, through: int, seen: Container[int]) -> list[int]:
    """The final numbers in (after, through] not in `seen`: what a room has not handed out."""
    return [n for n in range(after + 1, through + 1) if n not in seen]


class _Room:
    """A meeting's local viewers, which finals they were given (so a replay after a bus gap
    neither repeats a final nor leaves one out), and each source's in-flight partial."""

    __slots__ = (
        "_recent",
        "_recent_order",
        "_recent_status",
        "baseline",
        "finals_given",
        "high_water",
        "meeting_id",
        "observe",
        "on_gap",
        "partials",
        "settled",
        "subscriptions",
        "tenant_id",
        "viewers",
    )

    def __init__(self, tenant_id: str, baseline: int, meeting_id: str = "") -> None:
        self.tenant_id, self.meeting_id = tenant_id, meeting_id
        self.viewers: set[ViewerQueue] = set()
        self.subscriptions: list[Subscription] = []
        self.baseline = baseline  # the meeting's last stored final when the room was created
        self.finals_given = 0  # finals handed to the viewers: changes whenever one is
        # source -> the number at or below which its partials are stale: its highest final
        # handed out, or _ENDED once its stream ended (read when adopting the bus's partials).
        self.settled: dict[str | None, int] = {}
        self.high_water = baseline  # highest final segment_no delivered (or stored at creation)
        self._recent: set[int] = set()
        self._recent_order: deque[int] = deque()
        # source -> its latest partial, until that source's final (or its stream's end).
        self.partials: dict[str | None, Publication] = {}
        self.observe: Observer | None = None  # told of each message once it is handed out
        self.on_gap: GapListener | None = None  # told of a live final above an unseen number
        self._recent_status: deque[bytes] = deque(maxlen=_RECENT_STATUS)

    def deliver(self, data: bytes) -> None:
        # The bus handler, called on the event loop: fan_out never awaits, so a slow socket
        # cannot stall the bus reader or the other viewers.
        self.offer(Publication.parse(data), live=True)

    def offer(self, pub: Publication, *, live: bool = False) -> bool:
        """Hand `pub` to every viewer; False for a final they were already given."""
        if pub.kind is Kind.FINAL:
            segment_no: int = pub.segment_no  # type: ignore[assignment]
            if segment_no in self._recent:
                return False
            skipped = segment_no > self.high_water + 1
            self._remember(segment_no)
            if skipped and live and self.on_gap is not None:
                # Two sources' finals may also just arrive out of order: the listener checks
                # the store, which is harmless when the lower one is merely late.
                self.on_gap(self.tenant_id, self.meeting_id)
            self.finals_given += 1
            if segment_no > self.settled.get(pub.source, 0):
                self.settled[pub.source] = segment_no
            partial = self.partials.get(pub.source)
            if partial is not None and partial.segment_no <= segment_no:  # type: ignore[operator]
                del self.partials[pub.source]
        elif pub.kind is Kind.PARTIAL:
            self.partials[pub.source] = pub
        elif pub.kind is Kind.STREAM_ENDED:
            self.partials.pop(pub.source, None)
            self.settled[pub.source] = _ENDED
        if pub.kind is Kind.STREAM_ENDED or (
            pub.kind is Kind.OTHER and live and pub.data.startswith(_STATUS_PREFIX)
        ):
            # A status message re-published after a failed attempt that did reach Redis: its
            # bytes (stream id, event, timestamp) are the same, and no two events share them.
            if pub.data in self._recent_status:
                return False
            self._recent_status.append(pub.data)
        # The hot loop. An idle viewer (most of them) gets the shared frame written straight to
        # its socket: `ViewerQueue.fan_out`'s direct path, inlined because this runs once per viewer
        # per message. Any other viewer (backed up, receiving history, skipping finals its
        # history gave it, closed) goes through `fan_out`. Direct writes are counted here, once
        # per publish.
        frame = pub._frame or pub.frame
        final = pub.kind is Kind.FINAL
        sent = 0
        for viewer in self.viewers:
            writer = viewer.idle_writer
            if (
                writer is not None
                and (not final or viewer.skip_finals_through is None)
                and writer.try_write(frame)
            ):
                viewer.sent += 1
                sent += 1
            elif viewer.fan_out(pub) is SENT:
                sent += 1
        if self.observe is not None:
            self.observe(self.tenant_id, pub, sent, live)
        return True

    def adopt_partials(self, kept: list[bytes]) -> None:
        """Take the bus's in-flight partials for sources this room has none of yet: one that
        arrived live since the subscription is newer, and one its source's final or stream end
        has reached already (over the pub/sub link, before this read's answer) is stale."""
        for data in kept:
            pub = Publication.parse(data)
            if (
                pub.kind is Kind.PARTIAL
                and pub.source not in self.partials
                and pub.segment_no > self.settled.get(pub.source, 0)  # type: ignore[operator]
            ):
                self.partials[pub.source] = pub

    def missing(self, after: int) -> list[int]:
        """Final numbers above `after` (and the baseline) up to the highest handed out, that
        this room has not handed out."""
        return missing_numbers(max(after, self.baseline), self.high_water, self._recent)

    def _remember(self, segment_no: int) -> None:
        self.high_water = max(self.high_water, segment_no)
        self._recent.add(segment_no)
        self._recent_order.append(segment_no)
        if len(self._recent_order) > _RECENT_FINALS:
            self._recent.discard(self._recent_order.popleft())


class _LockEntry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


async def _cancel_all(subscriptions: list[Subscription]) -> None:
    for subscription in subscriptions:
        await subscription.cancel()


class RoomRegistry:
    def __init__(self, bus: Bus, on_publication: Observer | None = None) -> None:
        self._bus = bus
        # Told of a meeting whose room saw a live final skip a number (set by gap repair).
        self.gap_listener: GapListener | None = None
        # Told of every bus message a room handed to its viewers (delivery latency metrics).
        self._on_publication = on_publication
        self._rooms: dict[_Key, _Room] = {}
        self._locks: dict[_Key, _LockEntry] = {}
        # Store reads that viewers of one meeting joining at once share (one read each):
        # `since=` history batches, and the meeting's last segment number (a room's baseline).
        self.history_reads: SingleFlight[list[Publication]] = SingleFlight()
        self.baseline_reads: SingleFlight[int] = SingleFlight()

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

    async def join(
        self, tenant_id: str, meeting_id: str, viewer: ViewerQueue, *, baseline: int = 0
    ) -> None:
        """Deliver the meeting's messages to `viewer` from the moment this returns, starting
        with each active source's in-flight partial (a late joiner sees the sentence under way).

        `baseline` is the meeting's last stored segment_no as the caller saw it: a new room counts
        finals after it as ones its viewers expect (see `replay`). Raises whatever the bus raises
        when it cannot subscribe (e.g. `BusUnavailable`); the viewer is then not joined.
        """
        key = _key(tenant_id, meeting_id)
        room = self._rooms.get(key)
        if room is None:
            async with self._meeting_lock(key):
                room = self._rooms.get(key)
                if room is None:
                    room = await self._open_room(key, baseline)
                self._admit(room, viewer)
        else:
            # A room in the registry is subscribed and stays so while it has viewers (a leave
            # removes it before unsubscribing), so joining it needs no lock. Taking one anyway
            # would queue a connect storm's joins behind the first, one per loop iteration.
            self._admit(room, viewer)

    @staticmethod
    def _admit(room: _Room, viewer: ViewerQueue) -> None:
        for partial in room.partials.values():
            viewer.offer(partial)
        room.viewers.add(viewer)

    async def _open_room(self, key: _Key, baseline: int) -> _Room:
        """Subscribe a new room and register it once it holds the partials in flight."""
        room = _Room(key[0], baseline, key[1])
        room.observe = self._on_publication
        room.on_gap = self._gap
        room.subscriptions = await self._subscribe(key, room.deliver)
        try:
            # Partials published before the subscription went live: one read per room.
            room.adopt_partials(await self._bus.partials(transcript_topic(*key)))
        except BaseException:
            await asyncio.shield(_cancel_all(room.subscriptions))
            raise
        self._rooms[key] = room
        return room

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

    async def leave(self, tenant_id: str, meeting_id: str, viewer: ViewerQueue) -> None:
        """Stop delivering to `viewer`; unsubscribes when it was the meeting's last local one.
        Idempotent. Runs to completion even if the caller is cancelled (it is cleanup)."""
        await asyncio.shield(self._leave(_key(tenant_id, meeting_id), viewer))

    async def _leave(self, key: _Key, viewer: ViewerQueue) -> None:
        async with self._meeting_lock(key):
            room = self._rooms.get(key)
            if room is None or viewer not in room.viewers:
                return
            room.viewers.discard(viewer)
            if not room.viewers:
                del self._rooms[key]
                await _cancel_all(room.subscriptions)

    def repair_mark(self, tenant_id: str, meeting_id: str) -> int | None:
        """Where a replay after a bus gap starts reading finals (None: no room). Below the
        highest final given out by a window, since two sources' finals can be published out of
        number order (a lower one lost while a higher one arrived); never below what the room
        started from, so viewers are not handed finals from before they joined."""
        room = self._rooms.get((tenant_id, meeting_id))
        if room is None:
            return None
        return max(room.baseline, room.high_water - REPAIR_REORDER_WINDOW)

    def _gap(self, tenant_id: str, meeting_id: str) -> None:
        if self.gap_listener is not None:
            self.gap_listener(tenant_id, meeting_id)

    def missing_finals(self, tenant_id: str, meeting_id: str, after: int) -> list[int] | None:
        """Final numbers above `after` up to the highest one handed out that the meeting's room
        has not handed out (None: no room)."""
        room = self._rooms.get((tenant_id, meeting_id))
        return None if room is None else room.missing(after)

    def finals_given(self, tenant_id: str, meeting_id: str) -> int:
        """How many finals the meeting's room has handed out (0 without a room). Viewers that
        joined when it was the same may share a history read: none of them missed a final the
        read could have started before."""
        room = self._rooms.get((tenant_id, meeting_id))
        return 0 if room is None else room.finals_given

    def given_after(self, tenant_id: str, meeting_id: str, after: int) -> list[int]:
        """The finals above `after` that the meeting's room has handed out (of the last
        _RECENT_FINALS), in no particular order; none without a room."""
        room = self._rooms.get((tenant_id, meeting_id))
        if room is None or room.high_water <= after:
            return []
        recent = room._recent
        if room.high_water - after < len(recent):  # the cheaper walk: a resume is usually near
            return [n for n in range(after + 1, room.high_water + 1) if n in recent]
        return [n for n in recent if n > after]

    def high_water(self, tenant_id: str, meeting_id: str) -> int | None:
        """The highest final segment_no the meeting's local viewers were given (None: no room)."""
        room = self._rooms.get((tenant_id, meeting_id))
        return None if room is None else room.high_water

    def replay(self, tenant_id: str, meeting_id: str, finals: list[bytes]) -> int:
        """Deliver encoded finals that the bus may have lost; those already delivered are
        skipped. The number delivered."""
        room = self._rooms.get((tenant_id, meeting_id))
        if room is None:
            return 0
        return sum(room.offer(Publication.parse(data)) for data in finals)

    def redeliver_status(self, tenant_id: str, meeting_id: str, messages: list[bytes]) -> int:
        """Deliver status messages the bus may have lost; those already delivered (the same
        bytes) are skipped. The number delivered."""
        room = self._rooms.get((tenant_id, meeting_id))
        if room is None:
            return 0
        return sum(room.offer(Publication.parse(data), live=True) for data in messages)

    def local_subscriber_count(self, tenant_id: str, meeting_id: str) -> int:
        room = self._rooms.get((tenant_id, meeting_id))
        return len(room.viewers) if room else 0

    def room_count(self) -> int:
        return len(self._rooms)

    def meetings(self) -> set[tuple[str, str]]:
        """(tenant_id, meeting_id) of every meeting with local subscribers."""
        return set(self._rooms)

    def subscribed_topics(self) -> set[str]:
        return {topic for key in self._rooms for topic in _topics(key)}
