"""The HTTP edge: limits on request heads that uvicorn's h11 protocol does not enforce itself.

`check_head` judges a head against `EdgeLimits`; gateway/server/edge.py's `EdgeH11Protocol`
(uvicorn's `http=`, the CLI passes it) applies them before h11 parses anything:
  - answers 414 and closes when the request line is longer than HTTP_MAX_REQUEST_LINE_BYTES,
  - answers 431 and closes when a header line is longer than HTTP_MAX_HEADER_LINE_BYTES, the
    head holds more than HTTP_MAX_HEADERS fields or more than HTTP_MAX_HEAD_BYTES in all,
  - closes a connection that has not sent a complete request head HTTP_HEAD_TIMEOUT_S after it
    opened (or after the first byte of a later request on a kept-alive connection).
Without this, a WebSocket upgrade with a line over websockets' 8 KiB limit was handed to the
WebSocket protocol, which refused it silently and held the socket, and a client that never sent
a head held its connection for ever.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    request_line_bytes: int = 8192  # CRLF included; websockets refuses longer lines
    header_line_bytes: int = 8192
    headers: int = 100  # websockets refuses more than 128
    head_bytes: int = 32768
    head_timeout_s: float = 5.0
    body_idle_timeout_s: float = 30.0
    send_stall_timeout_s: float = 60.0

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
            body_idle_timeout_s=s.http_body_idle_timeout_s,
            send_stall_timeout_s=s.http_send_stall_timeout_s,
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
