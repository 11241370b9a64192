"""uvicorn's h11 protocol with the edge limits of gateway/http/edge.py and its timeouts: a
request head, a request body that stops coming, and a response the client stops reading.

Pass `EdgeH11Protocol` as uvicorn's `http=` (the CLI does). Relies on uvicorn's H11Protocol
(`conn`, `cycle`, `loop`, `transport`, `flow`, `data_received`, `on_response_complete`,
`connection_made`, `connection_lost`, `pause_writing`, `resume_writing`; listed in
gateway/server/__init__.py), checked against the uvicorn range pinned in pyproject.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.http.edge import REASONS, EdgeLimits, check_head

log = logging.getLogger("gateway.edge")

# A response sent before its request's body was read (a refusal: 401, 413, ...): the rest of the
# body is read and discarded while it keeps coming, as a client that sends its whole body before
# reading the answer expects (closing on unread data resets the connection, and the client may
# never see the answer), but for at most LINGER_MAX_S after the answer, and only while data came
# within LINGER_IDLE_S (nginx's lingering close). Without it a client trickling a body it never
# finished held the connection, with no token.
LINGER_IDLE_S = 5.0
LINGER_MAX_S = 30.0


class EdgeH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with request-head limits and a head timeout."""

    limits: ClassVar[EdgeLimits | None] = None  # None: read from the environment once

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cls = type(self)
        if cls.limits is None:
            cls.limits = EdgeLimits.from_settings()
        self._limits = cls.limits
        # h11 must never answer first with its own 400 for a head our limits allow.
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self._limits.head_bytes + 1024
        )
        self._head = bytearray()
        self._head_timer: asyncio.TimerHandle | None = None
        # One timer each, re-armed at expiry for what is left, not moved on every chunk.
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_data_at = 0.0
        self._stall_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        # After an answer that ends the connection: the rest of the body is read through h11
        # into nothing until it ends or stops (see `_close_after_body`).
        self._discarding = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        for timer in (self._body_timer, self._stall_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._body_timer = self._stall_timer = self._linger_timer = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(
                self._limits.send_stall_timeout_s, self._send_stalled
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _send_stalled(self) -> None:
        self._stall_timer = None
        if self._serving():
            log.info(
                "connection closed: the client read none of the response for %gs",
                self._limits.send_stall_timeout_s,
            )
            self.transport.close()  # the application's next send sees the client gone

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            self._discard(data)
            return
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.SEND_BODY:
            self._answered_body_received(data)
            return
        waiting_for_head = self.conn.their_state is h11.IDLE
        if waiting_for_head:
            self._head += data
            refusal = check_head(self._head, self._limits)
            if refusal is not None:
                self._refuse(*refusal)
                return
            if self._head_timer is None:
                self._arm_head_timer()  # a later request on a kept-alive connection
        super().data_received(data)
        self._after_events(waiting_for_head)

    def _answered_body_received(self, data: bytes) -> None:
        """More of a body whose request was answered (kept alive): read into nothing here, not
        by uvicorn, which would go on to parse a request pipelined behind it from h11's buffer
        without the head's limits."""
        self._body_data_at = self.loop.time()
        self._unset_keepalive_if_required()
        if not self._read_body_into_nothing(data):
            return
        self.conn.start_next_cycle()
        self.flow.resume_reading()
        self._head = bytearray(self.conn.trailing_data[0])  # the next head's start, if any
        if self._head and (refusal := check_head(self._head, self._limits)) is not None:
            self._refuse(*refusal)
            return
        self._await_next_head()
        self.handle_events()
        self._after_events(waiting_for_head=True)

    def _after_events(self, waiting_for_head: bool) -> None:
        """Timers and the cycle's transport once uvicorn has taken in what was received."""
        self._own_the_cycles_close()
        if waiting_for_head and self.conn.their_state is not h11.IDLE:
            self._head.clear()  # complete: from here on uvicorn's own timeouts apply
            self._cancel_head_timer()
        if self.conn.their_state is h11.SEND_BODY and self._serving():
            self._body_data_at = self.loop.time()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(
                    self._limits.body_idle_timeout_s, self._body_idle
                )

    def _serving(self) -> bool:
        """Whether the connection is still this protocol's: after a WebSocket upgrade the
        transport belongs to the WebSocket protocol (h11's state then stays where it was)."""
        return self.transport.get_protocol() is self and not self.transport.is_closing()

    def _body_idle(self) -> None:
        self._body_timer = None
        if self.conn.their_state is not h11.SEND_BODY or not self._serving():
            return
        idle = self.loop.time() - self._body_data_at
        if idle < self._limits.body_idle_timeout_s or self.flow.read_paused:
            # Data came since, or the server is the one not reading (the client is blocked).
            wait = self._limits.body_idle_timeout_s - (0 if self.flow.read_paused else idle)
            self._body_timer = self.loop.call_later(wait, self._body_idle)
            return
        log.info(
            "connection closed: no request body data for %gs", self._limits.body_idle_timeout_s
        )
        self.transport.close()  # the application reading the body sees the client gone

    def on_response_complete(self) -> None:
        # A request pipelined behind the one just answered is already in h11's buffer: uvicorn
        # parses it from here, never through data_received, so its head is checked here.
        # Only after a whole request: before, what h11 holds is its body (a chunk's size line).
        pending = bytes(self.conn.trailing_data[0]) if self.conn.their_state is h11.DONE else b""
        if pending:
            refusal = check_head(pending, self._limits)
            if refusal is not None:
                self._refuse(*refusal)
                return
        super().on_response_complete()
        if self._discarding:  # its own timers run (uvicorn's keep-alive timer would cut it)
            self._unset_keepalive_if_required()
            return
        self._own_the_cycles_close()  # a pipelined request's cycle starts in there
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._head = bytearray(pending)  # the next head's start, if any
            self._await_next_head()
        elif self.conn.their_state is h11.SEND_BODY and self._serving():
            if self._linger_timer is not None:
                self._linger_timer.cancel()
            until = self.loop.time() + LINGER_MAX_S
            self._linger_timer = self.loop.call_later(
                LINGER_IDLE_S, self._linger, self.cycle, until
            )

    def _linger(self, cycle: object, until: float) -> None:
        """The rest of an answered request's body: closed when it stops coming, or at `until`."""
        self._linger_timer = None
        if self.cycle is not cycle or not self._serving():
            return
        if self.conn.their_state is h11.IDLE:  # the body ended: wait for the next request
            if self._head_timer is None:
                self._await_next_head()
            return
        if self.conn.their_state is not h11.SEND_BODY:
            return
        if (wait := self._lingered(until)) is not None:
            self._linger_timer = self.loop.call_later(wait, self._linger, cycle, until)

    def _own_the_cycles_close(self) -> None:
        """Give a new request's cycle `_CycleTransport`, so its close (after an answer with
        `Connection: close`, or to HTTP/1.0) does not drop a body still coming."""
        cycle = self.cycle
        if cycle is not None and not isinstance(cycle.transport, _CycleTransport):
            cycle.transport = _CycleTransport(self)

    def _close_after_body(self) -> None:
        """Close, or, while the request's body is still coming, read the rest of it into
        nothing first and close when it ends: closing a socket with unread data resets the
        connection, and the client may never see the answer (a 401, a 413) sent before it.
        On plain TCP the answer's end is sent at once (FIN). The same limits as a kept-alive
        connection's linger apply."""
        transport = self.transport
        if self.conn.their_state is not h11.SEND_BODY or not self._serving():
            transport.close()
            return
        self._discarding = True
        if transport.can_write_eof():  # not TLS
            transport.write_eof()
        self.flow.resume_reading()
        self._body_data_at = self.loop.time()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        until = self.loop.time() + LINGER_MAX_S
        self._linger_timer = self.loop.call_later(LINGER_IDLE_S, self._discard_until, until)
        self._discard(None)  # the body may have ended in what was read already

    def _discard(self, data: bytes | None) -> None:
        """More of an answered request's body (None: what h11 holds already), after an answer
        that ends the connection: read through h11 into nothing, and the connection closed at
        the body's end."""
        self._body_data_at = self.loop.time()
        self._unset_keepalive_if_required()  # uvicorn's 5 s keep-alive timer would cut it
        if self._read_body_into_nothing(data):
            self.transport.close()

    def _read_body_into_nothing(self, data: bytes | None) -> bool:
        """Feed `data` (None: what h11 holds) to h11 and drop the body's data: whether the body
        ended (h11 holds what followed it). A malformed body closes the connection."""
        try:
            if data is not None:
                self.conn.receive_data(data)
            while (event := self.conn.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                    return True
        except h11.RemoteProtocolError:
            self.transport.close()
        return False

    def _discard_until(self, until: float) -> None:
        self._linger_timer = None
        if not self.transport.is_closing() and (wait := self._lingered(until)) is not None:
            self._linger_timer = self.loop.call_later(wait, self._discard_until, until)

    def _lingered(self, until: float) -> float | None:
        """Close once the body stopped coming for LINGER_IDLE_S or `until` passed (None), else
        how long to wait before looking again."""
        now = self.loop.time()
        idle = now - self._body_data_at
        if idle >= LINGER_IDLE_S or now >= until:
            log.info(
                "connection closed: the request body was still coming %gs after its answer"
                if now >= until
                else "connection closed: the request body stopped %gs after its answer",
                LINGER_MAX_S if now >= until else LINGER_IDLE_S,
            )
            self.transport.close()
            return None
        return min(LINGER_IDLE_S - idle, until - now)

    def _await_next_head(self) -> None:
        """Between requests: an idle connection is kept for uvicorn's keep-alive timeout
        (HTTP_KEEPALIVE_S, longer than a proxy keeps its idle upstream connections, or the
        proxy may send a request on one just closed: a 502 it does not retry for a POST); once
        the next head has started, it has HTTP_HEAD_TIMEOUT_S to complete."""
        if self._head:
            self._arm_head_timer()
            return
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self._limits.head_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self.cycle is not None and not self.cycle.response_complete:
                return  # still answering the previous request
            log.info("connection closed: no request head within %gs", self._limits.head_timeout_s)
            self.transport.close()

    def _refuse(self, status: int, reason: str) -> None:
        self._cancel_head_timer()
        self._head.clear()
        log.info("request head refused with %d: %s", status, reason)
        body = f"{reason}\n".encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, REASONS[status], len(body), body)
        )
        self.transport.close()


class _CycleTransport:
    """The transport as a request's cycle sees it: every call goes to the connection's, but a
    close waits for the request's body (`EdgeH11Protocol._close_after_body`)."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: EdgeH11Protocol) -> None:
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._protocol.transport, name)

    def close(self) -> None:
        self._protocol._close_after_body()
