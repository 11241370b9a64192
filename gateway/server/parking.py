"""Parked connections: a WebSocket with no task of its own while it waits.

An idle viewer waits for hours on a message that rarely comes. Awaiting it keeps a task and its
whole chain of coroutine frames alive (about 3 KiB per viewer). A server that offers parking
(`gateway.server.websocket.DirectFramesProtocol`) lets the handler hand the wait over instead:

    park = parker(websocket.scope)
    if park is not None and nothing is pending:
        park(resume)   # then unwind at once, raising Parked: no cleanup, no close
        raise Parked

The server returns from the application without closing the socket. On the connection's next
event (a message, a disconnect, or the application's own `unpark()`, for a close it wants to
send) it runs `resume()` in a new task, in the context the handler parked in; `resume` serves
the event and either parks again or ends the connection, as the handler would have. Under a
server without the capability `parker` returns None and the handler awaits `receive` as usual.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

PARKING = "meeting_gateway.parking"

Resume = Callable[[], Awaitable[None]]


class Parked(BaseException):
    """Raised by a handler that parked its connection, through the frames above it: not an error
    (a BaseException, so `except Exception` passes it on); every frame it passes skips its
    cleanup, which the resumed handler runs when the connection ends."""


class Parker(Protocol):
    def park(self, resume: Resume) -> Callable[[], None]:
        """Park; returns what resumes it now (the same `unpark`, one object: keep it)."""
        ...

    def unpark(self) -> None: ...

    def take_message(self) -> dict[str, Any] | None: ...


def parker(scope: Any) -> Parker | None:
    """The scope's connection, if its server can park it; None otherwise."""
    extension = (scope.get("extensions") or {}).get(PARKING)
    return None if extension is None else extension.get("connection")
