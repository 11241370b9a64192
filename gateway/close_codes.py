"""WebSocket close codes of the wire contract (docs/protocol.md).

4xxx codes mirror HTTP statuses so a client can tell whether reconnecting can help: 4400, 4401,
4403, 4404 and 1009 will fail again unchanged; 4409, 4429, 4408, 1011, 1012 and 4503 may succeed
later.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    PROTOCOL_ERROR = 4400
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    MEETING_DELETED = 4404
    SLOW_CONSUMER = 4408
    INGEST_IDLE = 4408  # an ingest stream sent no audio for INGEST_IDLE_S (error reason "idle")
    CONFLICT = 4409
    RATE_LIMITED = 4429
    UNAVAILABLE = 4503


# Codes counted as themselves: the gateway's and RFC 6455's. Any other code a peer closes with
# (3000-4999 are free for it) is counted as "other": each would be a metric series of its own.
_COUNTED = frozenset(int(code) for code in CloseCode) | frozenset(range(1000, 1016))


# The codes a peer's own close is counted by: a normal close, going away, none given, dropped;
# and those the WebSocket layer reports as a disconnect of its own making (a protocol error
# 1002, text not UTF-8 1007, a frame too large 1009, the server shutting down 1012), which
# reach the application as the peer's would. Any other a peer picks is "other", the gateway's
# codes among them: a viewer closing with 4503 counted as the gateway refusing it for a
# dependency, and could set off its alert.
_PEER_COUNTED = frozenset({1000, 1001, 1002, 1005, 1006, 1007, 1009, 1012})


class PeerCode(int):
    """A close code the peer closed with (not the gateway's own)."""


def peer_code(code: object) -> PeerCode:
    """The code of a `websocket.disconnect` (the peer's close), told apart for counting."""
    return PeerCode(code if isinstance(code, int) else CloseCode.NORMAL)


def close_label(code: int) -> str:
    """`code` as a metric label (and a `closes_by_code` key)."""
    counted = _PEER_COUNTED if isinstance(code, PeerCode) else _COUNTED
    return str(int(code)) if code in counted else "other"


class CloseError(Exception):
    """Ends a connection: the handler sends an error message with this code, then closes."""

    def __init__(self, code: CloseCode, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.kind = kind  # the error message's `reason` field, e.g. "engine_unavailable"

    @property
    def reason(self) -> str:
        # Close reasons are capped at 123 bytes by RFC 6455; the error message carries the rest.
        return self.message.encode()[:120].decode(errors="ignore")
