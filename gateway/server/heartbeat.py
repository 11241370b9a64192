"""WebSocket heartbeats: uvicorn pings every `ws_ping_interval` and drops a peer that has not
answered within `ws_ping_timeout`; this protocol class only reports those drops.

Pass it as uvicorn's `ws=` (class or "gateway.server.heartbeat:HeartbeatWebSocketProtocol").
uvicorn's sans-I/O protocol schedules `keepalive_timeout` with
`loop.call_later(ping_timeout, ...)` after each ping and cancels it when the matching pong
arrives, so the override runs exactly when a peer is dropped for silence. Listeners (the
gateway's metrics) get the connection's ASGI scope.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway.server.websocket import DirectFramesProtocol

TimeoutListener = Callable[[Mapping[str, Any]], None]
_listeners: list[TimeoutListener] = []


def on_heartbeat_timeout(listener: TimeoutListener) -> Callable[[], None]:
    """Call `listener(scope)` whenever a peer is dropped; returns a function that unregisters it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


class HeartbeatWebSocketProtocol(DirectFramesProtocol):
    """The gateway's uvicorn WebSocket protocol: keepalive drops counted, plus direct frame
    writes for viewers (gateway.server.websocket). A peer that sent anything since the ping is
    not silent: its pong waits behind what the gateway has not read yet (an ingest stream whose
    engine is behind is read at the engine's pace, and a client that sends faster than that had
    its pong 40 s late and was dropped, the audio it had sent lost)."""

    __slots__ = ("heard_since_ping",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.heard_since_ping = False
        super().__init__(*args, **kwargs)

    def data_received(self, data: bytes) -> None:
        self.heard_since_ping = True
        super().data_received(data)

    def send_keepalive_ping(self) -> None:
        self.heard_since_ping = False
        super().send_keepalive_ping()

    def keepalive_timeout(self) -> None:
        # uvicorn returns without dropping anything when the socket is already closing.
        if self.close_sent or self.transport.is_closing():
            super().keepalive_timeout()
            return
        # Nor is one the gateway stopped reading because its own application is behind (an
        # ingest stream's engine: the stream ends 4503 after 30 s of that, the heartbeat's 20 s
        # dropped it first): the peer's data waits in the socket, unread.
        if self.heard_since_ping or (self.read_paused and not self.backlog_paused):
            # A fresh ping and deadline (a late pong of the last one is ignored).
            self.send_keepalive_ping()
            return
        for listener in list(_listeners):
            listener(self.scope)
        super().keepalive_timeout()
        # uvicorn only close()s, which waits to flush: a peer that stopped reading (zero receive
        # window) would keep the socket and its handler alive. A dead peer gets no flush.
        self.transport.abort()
