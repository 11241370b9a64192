"""The HTTP edge: limits on request heads that uvicorn's h11 protocol does not enforce itself.

Pass `EdgeH11Protocol` as uvicorn's `http=` (the CLI does). Before h11 parses anything, it
  - answers 414 and closes when the request line is longer than HTTP_MAX_REQUEST_LINE_BYTES,
  - answers 431 and closes when a header line is longer than HTTP_MAX_HEADER_LINE_BYTES, the
    head holds more than HTTP_MAX_HEADERS fields or more than HTTP_MAX_HEAD_BYTES in all,
  - closes a connection that has not sent a complete request head HTTP_HEAD_TIMEOUT_S after it
    opened (or after the first byte of a later request on a kept-alive connection).
Without this, a WebSocket upgrade with a line over websockets' 8 KiB limit was handed to the
WebSocket protocol, which refused it silently and held the socket, and a client that never sent
a head held its connection for ever. Relies on uvicorn's H11Protocol (`conn`, `data_received`,
`connection_made`, `connection_lost`), checked against the uvicorn range pinned in pyproject.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("gateway.edge")


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    request_line_bytes: int = 8192  # CRLF included; websockets refuses longer lines
    header_line_bytes: int = 8192
    headers: int = 100  # websockets refuses more than 128
    head_bytes: int = 32768
    head_timeout_s: float = 5.0

    @classmethod
    def from_settings(cls) -> EdgeLimits:
        from gateway.config import Settings

        s = Settings()
        return cls(
            request_line_bytes=s.http_max_request_line_bytes,
            header_line_bytes=s.http_max_header_line_bytes,
            headers=s.http_max_headers,
            head_bytes=s.http_max_head_bytes,
            head_timeout_s=s.http_head_timeout_s,
        )


def check_head(head: bytes | bytearray, limits: EdgeLimits) -> tuple[int, str] | None:
    """The (status, reason) a request head (possibly incomplete) must be refused with, if any.

    Lines are measured with a CRLF ending, as uvicorn re-sends them to the WebSocket protocol.
    """
    text = bytes(head).replace(b"\r\n", b"\n")
    end = text.find(b"\n\n")
    if end >= 0:
        text = text[: end + 1]
    *done, partial = text.split(b"\n")  # `partial`: a line still arriving ("" once complete)
    if not done:
        return (414, "request line too long") if len(partial) > limits.request_line_bytes else None
    if len(done[0]) + 2 > limits.request_line_bytes:
        return 414, "request line too long"
    fields = done[1:]
    if any(len(line) + 2 > limits.header_line_bytes for line in fields) or (
        len(partial) > limits.header_line_bytes
    ):
        return 431, "header line too long"
    if len(fields) + (1 if partial else 0) > limits.headers:
        return 431, "too many header fields"
    # Bytes after a complete head (a body in the same read) are not the head's.
    if (len(text) if end >= 0 else len(head)) > limits.head_bytes:
        return 431, "request head too large"
    return None


REASONS = {414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


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

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
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
        if waiting_for_head and self.conn.their_state is not h11.IDLE:
            self._head.clear()  # complete: from here on uvicorn's own timeouts apply
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        # A request pipelined behind the one just answered is already in h11's buffer: uvicorn
        # parses it from here, never through data_received, so its head is checked here.
        pending = bytes(self.conn.trailing_data[0])
        if pending:
            refusal = check_head(pending, self._limits)
            if refusal is not None:
                self._refuse(*refusal)
                return
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._head = bytearray(pending)  # the next head's start, if any
            self._arm_head_timer()

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
