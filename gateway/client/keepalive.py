"""The ingest client's heartbeat: the gateway is there while it answers pings or reads our audio.

While its engine is behind, the gateway reads the connection at the engine's pace, and reads
nothing of it for up to 30 s (then it ends the stream 4503). A ping then waits behind every frame
sent before it: websockets' own keepalive, which waits for the pong alone, dropped streams the
gateway still served (an outside test: two sources at 4x speed into a slow engine, both dropped
after 40 s, the audio queued behind the ping lost). Here the gateway's host acknowledging more
of our bytes while the pong is awaited shows the gateway reading, and the wait starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Coroutine
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

try:  # POSIX only: elsewhere a completed send counts as progress (IngestKeepalive)
    import fcntl
    import termios
except ImportError:  # pragma: no cover - Windows
    fcntl = termios = None  # type: ignore[assignment]

PING_INTERVAL_S = 20.0
# More than the 30 s the gateway may read nothing while its engine catches up.
PONG_TIMEOUT_S = 45.0
CLOSE_TIMEOUT_S = 5.0


def frame_bytes(payload: int) -> int:
    """A client frame's size on the wire: header, mask and payload (RFC 6455)."""
    return payload + 6 + (2 if 126 <= payload < 65536 else 8 if payload >= 65536 else 0)


def unacked_bytes(ws: ClientConnection) -> int | None:
    """Bytes the socket holds that the peer has not acknowledged (Linux SIOCOUTQ); None where
    the platform does not say."""
    sock = ws.transport.get_extra_info("socket")
    if sock is None or fcntl is None:
        return None
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, AttributeError):
        return None
    return int(struct.unpack("i", raw)[0])


class IngestKeepalive:
    """Sends frames for `send_paced` and pings the gateway; `run` closes the connection 1011
    when neither a pong nor progress in the gateway's reading came within `timeout_s`.

    Progress is the bytes the gateway's host acknowledged growing: what the connection took
    minus what waits in its buffer and unacknowledged in the socket. A completed send alone says
    only that our buffers had room: a gateway gone without a trace took minutes to notice. Where
    the socket does not tell (not Linux), a completed send counts."""

    def __init__(
        self,
        ws: ClientConnection,
        *,
        interval_s: float = PING_INTERVAL_S,
        timeout_s: float = PONG_TIMEOUT_S,
    ) -> None:
        self.ws = ws
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.sends = 0
        self.sent_bytes = 0  # frames handed to the connection, as on the wire

    async def send(self, message: bytes, /) -> None:
        await self.ws.send(message)
        self.sends += 1
        self.sent_bytes += frame_bytes(len(message))

    def progress(self) -> int:
        """A count that grows while the gateway reads (see the class)."""
        unacked = unacked_bytes(self.ws)
        if unacked is None:
            return self.sends
        return self.sent_bytes - self.ws.transport.get_write_buffer_size() - unacked

    async def run(self) -> None:
        """Until the connection closes (or the task is cancelled)."""
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                if not await self._answered(self._ping()):
                    await self._give_up()
                    return
        except ConnectionClosed:
            return

    async def _give_up(self) -> None:
        """Close 1011 if the close frame can still go out, else drop the connection: a gateway
        that reads nothing leaves no room for it, and the frame's drain would wait forever."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.ws.close_timeout or CLOSE_TIMEOUT_S):
                await self.ws.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        self.ws.transport.abort()

    async def _ping(self) -> None:
        pong = await self.ws.ping()  # may wait while earlier frames drain
        await pong

    async def _answered(self, ping: Coroutine[Any, Any, None]) -> bool:
        """Whether the ping's pong came, waiting `timeout_s` again each time a send completed
        meanwhile."""
        task = asyncio.ensure_future(ping)
        # Its ConnectionClosed, when the connection ends as this waits or is cancelled, is no
        # news (the reader says why): retrieved, not printed as "never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            while True:
                seen = self.progress()
                done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
                if done:
                    task.result()  # ConnectionClosed: the connection is gone anyway
                    return True
                if self.progress() <= seen:
                    return False
        finally:
            if not task.done():
                task.cancel()
