"""Per-viewer outbound delivery: write directly when the socket keeps up, queue when it does not.

The publisher (a room, on the event loop) calls `fan_out`, which never blocks. When the viewer has
nothing queued and a `FrameWriter` is attached (the uvicorn protocol's direct-write capability),
the message's frame, built once per publish, is written straight to the socket: no task, no
timer, no per-viewer framing. Otherwise (the socket's transport is still sending earlier bytes,
the viewer is receiving its `since=` history, or there is no direct writer) the message joins a
bounded, coalescing queue, and a writer task drains it in order, existing only while something is
queued, under a stall watchdog armed only while it runs. Delivery returns to the direct path once
the queue is empty. An overflow or a stall closes the queue and reports it (the connection
handler closes the socket 4408, and the client reconnects and recovers with `since`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Protocol

from fanout.coalescing import CoalescingQueue
from fanout.publication import Kind, Publication


class FrameWriter(Protocol):
    """Writes pre-encoded server frames to one connection's transport, in call order."""

    def try_write(self, frame: bytes) -> bool:
        """Write now if the transport keeps up (nothing buffered); False: nothing written."""

    async def write(self, frame: bytes) -> None:
        """Wait until the transport has room, then write; raises OSError once the peer is gone."""

    def closing(self) -> bool:
        """Whether the connection is closing or gone: nothing more will reach the peer."""


class DeliveryCounter(Protocol):
    """Told of each message a viewer queue writes on its own (`offer` at once, or its queue's
    writer later: `queued`), of partials coalesced in it and of its close on an overflow or a
    stall (`reason`). Messages `fan_out` writes directly are counted by the publisher, once per
    publish for all its viewers."""

    def sent(self, pub: Publication, *, queued: bool) -> None: ...

    def coalesced(self, partials: int) -> None: ...

    def closed(self, reason: str) -> None: ...


class Offer(Enum):
    """What `ViewerQueue.fan_out` did with a message."""

    SENT = "sent"  # written to the socket now (the direct path)
    QUEUED = "queued"  # queued behind earlier messages (the writer task sends it)
    SKIPPED = "skipped"  # a final the viewer's history already gave it
    REFUSED = "refused"  # the queue is closed, or this message overflowed it


SENT, QUEUED, SKIPPED, REFUSED = Offer.SENT, Offer.QUEUED, Offer.SKIPPED, Offer.REFUSED


class ViewerQueueOverflow(Exception):
    """The viewer's queue is full even after coalescing partials."""


class ViewerQueueStalled(Exception):
    """The queue made no progress within the stall timeout."""


Failure = Callable[[BaseException], None]
_NO_FINALS: frozenset[int] = frozenset()  # shared: an empty frozenset is 216 bytes, per viewer


class ViewerQueue:
    __slots__ = (
        "_counter",
        "_direct",
        "_done",
        "_held",
        "_on_failure",
        "_overflow_event",
        "_overflowed",
        "_queue",
        "_send",
        "_stall_s",
        "_writer",
        "closed",
        "idle_writer",
        "sent",
        "skip_finals",
        "skip_finals_through",
    )

    def __init__(self, max_messages: int = 256, max_bytes: int | None = None) -> None:
        self._queue = CoalescingQueue(max_messages, max_bytes)
        self.closed = False
        self._overflowed = False
        self._overflow_event: asyncio.Event | None = None  # created only if someone awaits it
        self._held = False
        self._writer: asyncio.Task[None] | None = None
        self._send: Callable[[bytes], Awaitable[None]] | None = None
        self._direct: FrameWriter | None = None
        # The direct writer while the viewer is idle (attached, nothing queued or being sent, not
        # held, not closed), else None: the one check the publisher's hot loop makes.
        self.idle_writer: FrameWriter | None = None
        self._stall_s: float | None = None
        self._on_failure: Failure | None = None
        self._counter: DeliveryCounter | None = None
        self._done: asyncio.Future[None] | None = None
        # Finals up to this number were already delivered (by the history): drop them.
        self.skip_finals_through: int | None = None
        # ... and these above it (a history with a gap: a lower final not yet stored when it was
        # read still arrives live).
        self.skip_finals: frozenset[int] = _NO_FINALS
        self.sent = 0  # messages written or sent successfully

    @property
    def max_messages(self) -> int:
        return self._queue.max_messages

    @property
    def max_bytes(self) -> int | None:
        return self._queue.max_bytes

    @property
    def overflowed(self) -> bool:
        return self._overflowed

    @property
    def overflow(self) -> asyncio.Event:
        """Set once the queue overflowed (created on first use: idle viewers carry no Event)."""
        if self._overflow_event is None:
            self._overflow_event = asyncio.Event()
            if self._overflowed:
                self._overflow_event.set()
        return self._overflow_event

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def pending_bytes(self) -> int:
        return self._queue.nbytes

    @property
    def queued(self) -> bool:
        """True while the viewer is on the queued path (something queued or being sent)."""
        return bool(self._queue) or self._writer is not None

    def queued_messages(self) -> list[Publication]:
        return list(self._queue)

    def attach(
        self,
        send: Callable[[bytes], Awaitable[None]] | None = None,
        *,
        direct: FrameWriter | None = None,
        stall_timeout_s: float | None = None,
        on_failure: Failure | None = None,
        counter: DeliveryCounter | None = None,
    ) -> None:
        """Connect the queue to its socket: `direct` writes frames (preferred), `send` sends a
        payload through the ASGI send chain (the fallback). `on_failure` hears of an overflow
        (ViewerQueueOverflow), a stall (ViewerQueueStalled) or a send error, after the queue
        closed."""
        if send is None and direct is None:
            raise ValueError("attach needs a send function or a direct frame writer")
        self._send, self._direct = send, direct
        self._stall_s, self._on_failure, self._counter = stall_timeout_s, on_failure, counter
        self._start_writer()

    def hold(self) -> None:
        """Queue everything until `release` (while the viewer receives its history)."""
        self._held = True
        self._refresh_idle()

    def release(self) -> None:
        self._held = False
        self._start_writer()

    def offer(self, item: bytes | Publication) -> bool:
        """Deliver or queue `item`, counting a message written now; False if the queue is
        closed or just overflowed."""
        pub = item if type(item) is Publication else Publication.parse(item)  # type: ignore[arg-type]
        offered = self.fan_out(pub)
        if offered is SENT and self._counter is not None:
            self._counter.sent(pub, queued=False)
        return offered is not REFUSED

    def fan_out(self, pub: Publication) -> Offer:
        """The publisher's hot path (a room, once per viewer per message): write `pub`'s shared
        frame now if the viewer is idle, else queue it. A message written now (SENT) is left for
        the caller to count, once per publish for all its viewers."""
        if self.closed:
            return REFUSED
        if (
            pub.kind is Kind.FINAL
            and self.skip_finals_through is not None
            and self._delivered_before(pub)
        ):
            return SKIPPED
        writer = self.idle_writer
        if writer is not None and writer.try_write(pub._frame or pub.frame):
            self.sent += 1
            return SENT
        queue = self._queue
        coalesced = queue.coalesced
        if not queue.push(pub):
            if self._counter is not None:
                self._counter.closed("overflow")
            self._overflowed = True
            if self._overflow_event is not None:
                self._overflow_event.set()
            self._fail(
                ViewerQueueOverflow(f"queue full ({queue.count} messages, {queue.nbytes} B)")
            )
            return REFUSED
        if queue.coalesced != coalesced and self._counter is not None:
            self._counter.coalesced(queue.coalesced - coalesced)
        self._start_writer()
        return QUEUED

    def close(self) -> None:
        """Stop delivery: pending messages are dropped; a send in progress finishes. Idempotent."""
        self.closed = True
        self._queue.clear()
        self.idle_writer = None
        if self._writer is None:
            self._finish()

    def cancel_writer(self) -> None:
        """Close and abandon a send in progress too (the connection is being torn down)."""
        self.close()
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()

    async def run(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Send through `send` until closed: the writer-per-connection form of `attach`. An
        exception from `send` closes the queue and propagates; an overflow just ends it."""
        done = self._done = asyncio.get_running_loop().create_future()

        def failed(exc: BaseException) -> None:
            if not done.done() and not isinstance(exc, ViewerQueueOverflow):
                done.set_exception(exc)

        if self.closed:
            self._finish()
        else:
            self.attach(send, on_failure=failed)
        try:
            await done
        except BaseException:
            self.cancel_writer()
            raise

    # Internals

    def _count_sent(self, pub: Publication) -> None:
        self.sent += 1
        if self._counter is not None:
            self._counter.sent(pub, queued=True)

    def _start_writer(self) -> None:
        if (
            self._writer is None
            and self._queue
            and not self._held
            and not self.closed
            and (self._send is not None or self._direct is not None)
        ):
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        self._refresh_idle()

    def _refresh_idle(self) -> None:
        idle = self._writer is None and not self._held and not self.closed and not self._queue
        self.idle_writer = self._direct if idle else None

    async def _drain(self) -> None:
        """Send the queue in order, then end (the viewer is back on the direct path)."""
        loop = asyncio.get_running_loop()
        stall_s = self._stall_s
        try:
            async with asyncio.timeout(None) as watchdog:
                while (pub := self._next()) is not None:
                    if stall_s is not None:
                        watchdog.reschedule(loop.time() + stall_s)
                    if self._direct is not None:
                        await self._direct.write(pub.frame)
                    else:
                        assert self._send is not None
                        await self._send(pub.data)
                    self._count_sent(pub)
        except TimeoutError:
            if self._counter is not None:
                self._counter.closed("stall")
            self._writer = None
            self._fail(ViewerQueueStalled(f"no progress within {stall_s:g} s"))
        except asyncio.CancelledError:
            self._writer = None
            self.close()
            raise
        except Exception as exc:
            self._writer = None
            self._fail(exc)
        finally:
            self._writer = None
            self._refresh_idle()
            if self.closed:
                self._finish()

    def _next(self) -> Publication | None:
        skip = self.skip_finals_through
        while (pub := self._queue.pop()) is not None:
            if pub.kind is Kind.FINAL and skip is not None and self._delivered_before(pub):
                continue
            return pub
        return None

    def _delivered_before(self, pub: Publication) -> bool:
        """A final the viewer's history already gave it."""
        no: int = pub.segment_no  # type: ignore[assignment]
        return no <= self.skip_finals_through or no in self.skip_finals  # type: ignore[operator]

    def _fail(self, exc: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self.idle_writer = None
        if self._on_failure is not None:
            self._on_failure(exc)
        if self._writer is None:
            self._finish()

    def _finish(self) -> None:
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)
