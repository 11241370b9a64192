"""Per-connection outbound delivery: a bounded queue between the publisher and one socket.

The publisher (a bus handler) calls `offer`, which never blocks; one writer task per connection
runs `run(send)`. A consumer that falls behind fills its queue, and the next `offer` marks the
outbox overflowed and closes it instead of waiting or silently dropping: the stream would have a
gap, so the connection handler closes the socket with a "slow consumer" code and the client
reconnects and recovers from the store by segment number.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable


class Outbox:
    def __init__(self, max_messages: int = 256, max_bytes: int | None = None) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._closed = False
        # Set once when the queue overflows; the connection handler awaits it to close the socket.
        self.overflow = asyncio.Event()
        self.sent = 0  # messages handed to `send` successfully

    @property
    def overflowed(self) -> bool:
        return self.overflow.is_set()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def pending_bytes(self) -> int:
        return self._queued_bytes

    def offer(self, data: bytes) -> bool:
        """Queue `data` for sending; False if the outbox is closed or just overflowed."""
        if self._closed:
            return False
        over_count = len(self._queue) >= self.max_messages
        over_bytes = self.max_bytes is not None and self._queued_bytes + len(data) > self.max_bytes
        if over_count or over_bytes:
            self.overflow.set()
            self.close()
            return False
        self._queue.append(data)
        self._queued_bytes += len(data)
        self._wakeup.set()
        return True

    def close(self) -> None:
        """Stop delivery: pending messages are dropped and `run` returns. Idempotent."""
        self._closed = True
        self._queue.clear()
        self._queued_bytes = 0
        self._wakeup.set()

    async def run(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Send queued messages in order until closed. An exception from `send` closes the
        outbox and propagates (the socket is gone; the caller decides what to log)."""
        try:
            while True:
                while not self._queue:
                    if self._closed:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                data = self._queue.popleft()
                self._queued_bytes -= len(data)
                await send(data)
                self.sent += 1
        except BaseException:
            self.close()
            raise
