"""WebSocket heartbeats: uvicorn pings every `ws_ping_interval` and drops a peer that has not
answered within `ws_ping_timeout`; this protocol class only counts those drops.

Pass it as uvicorn's `ws=` (class or "fanout.heartbeat:HeartbeatWebSocketProtocol"). uvicorn's
sans-I/O protocol schedules `keepalive_timeout` with `loop.call_later(ping_timeout, ...)` after
each ping and cancels it when the matching pong arrives, so the override runs exactly when a
peer is dropped for silence.
"""

from __future__ import annotations

from typing import Any

from fanout.direct_ws import DirectFramesProtocol

try:
    from prometheus_client import Counter as _PromCounter
except ImportError:  # pragma: no cover - prometheus_client is a dependency, but optional here
    _PromCounter = None


def _prometheus_counter() -> Any:
    if _PromCounter is None:
        return None  # pragma: no cover
    try:
        return _PromCounter(
            "gateway_ws_heartbeat_timeouts_total",
            "WebSocket peers dropped for not answering a ping in time",
        )
    except ValueError:  # already registered (module re-imported): keep the plain counter only
        return None


class HeartbeatCounter:
    """Process-wide count of peers dropped by the keepalive (also exported to Prometheus)."""

    def __init__(self, prometheus: Any = None) -> None:
        self.value = 0
        self._prometheus = prometheus

    def inc(self) -> None:
        self.value += 1
        if self._prometheus is not None:
            self._prometheus.inc()


HEARTBEAT_TIMEOUTS = HeartbeatCounter(_prometheus_counter())


class HeartbeatWebSocketProtocol(DirectFramesProtocol):
    """The gateway's uvicorn WebSocket protocol: keepalive drops counted, plus direct frame
    writes for viewers (fanout.direct_ws)."""

    def keepalive_timeout(self) -> None:
        # uvicorn returns without dropping anything when the socket is already closing.
        if self.close_sent or self.transport.is_closing():
            super().keepalive_timeout()
            return
        HEARTBEAT_TIMEOUTS.inc()
        super().keepalive_timeout()
        # uvicorn only close()s, which waits to flush: a peer that stopped reading (zero receive
        # window) would keep the socket and its handler alive. A dead peer gets no flush.
        self.transport.abort()
