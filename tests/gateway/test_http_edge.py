"""Request-head limits with plain values (the server-side behaviour is in tests/e2e)."""

from __future__ import annotations

import pytest

from gateway.http.edge import EdgeLimits, check_head

LIMITS = EdgeLimits(
    request_line_bytes=64, header_line_bytes=32, headers=4, head_bytes=128, head_timeout_s=1
)


def head(*lines: bytes, complete: bool = True) -> bytes:
    return b"\r\n".join(lines) + (b"\r\n\r\n" if complete else b"")


@pytest.mark.parametrize(
    "data",
    [
        head(b"GET / HTTP/1.1", b"Host: x"),
        head(b"GET /" + b"a" * 48 + b" HTTP/1.1", b"Host: x"),  # 62 bytes + CRLF: at the limit
        head(b"GET / HTTP/1.1", b"X: " + b"a" * 27),  # 30 + CRLF = 32
        head(b"GET / HTTP/1.1", *[b"H%d: v" % i for i in range(4)]),
        head(b"GET / HTTP/1.1", b"Host: x", complete=False),
        b"GET / HT",
        head(b"POST / HTTP/1.1", b"Host: x") + b"x" * 500,  # a body in the same read
    ],
)
def test_heads_within_the_limits_pass(data: bytes) -> None:
    assert check_head(data, LIMITS) is None


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (head(b"GET /" + b"a" * 49 + b" HTTP/1.1", b"Host: x"), 414, "request line too long"),
        (b"GET /" + b"a" * 60, 414, "request line too long"),  # refused before its end arrives
        (head(b"GET / HTTP/1.1", b"X: " + b"a" * 28), 431, "header line too long"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 40, 431, "header line too long"),
        # Bare LF line ends are measured too.
        (head(b"GET / HTTP/1.1", b"X:" + b"a" * 40).replace(b"\r\n", b"\n"), 431,
         "header line too long"),
        (head(b"GET / HTTP/1.1", *[b"H%d: v" % i for i in range(5)]), 431,
         "too many header fields"),
        (b"GET / HTTP/1.1\r\n" + b"A: bbbbbbbbbbbbbbbbbbbb\r\n" * 5, 431, "too many header fields"),
    ],
)  # fmt: skip
def test_heads_over_a_limit_are_refused(data: bytes, status: int, reason: str) -> None:
    assert check_head(data, LIMITS) == (status, reason)


def test_a_large_head_of_short_lines_is_refused() -> None:
    limits = EdgeLimits(request_line_bytes=64, header_line_bytes=64, headers=100, head_bytes=128)
    data = head(b"GET / HTTP/1.1", *[b"H%02d: vvvvvvvvvv" % i for i in range(10)])
    assert check_head(data, limits) == (431, "request head too large")
