"""The HTTP edge of a running gateway: oversized request heads get a prompt 414/431 and a close;
a connection that never completes a request head is closed after HTTP_HEAD_TIMEOUT_S."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable

from tests.e2e.harness import Gateway, KeyPair


def upgrade_request(path: str, *extra: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def exchange(gateway: Gateway, request: bytes, timeout: float = 10) -> tuple[bytes, float]:
    """Send `request`; what the server answered until it closed, and how long that took."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    started = time.monotonic()
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout)  # until EOF: the server closed
    elapsed = time.monotonic() - started
    writer.close()
    return answer, elapsed


async def test_an_oversized_header_gets_431_within_a_second(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    token = keypair.token(roles=["viewer"])
    big = "X-Padding: " + "a" * 9000
    answer, elapsed = await exchange(
        gateway, upgrade_request(f"/api/v1/ws/meetings/{meeting}?token={token}", big)
    )
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:200]
    assert answer.endswith(b"header line too long\n")
    assert elapsed < 1.0  # answered and closed at once, not held


async def test_a_long_request_line_gets_414(gateway: Gateway) -> None:
    answer, _ = await exchange(gateway, upgrade_request("/healthz?q=" + "a" * 9000))
    assert answer.startswith(b"HTTP/1.1 414 URI Too Long\r\n"), answer[:200]


async def test_an_upgrade_at_the_limits_still_connects(
    gateway: Gateway, keypair: KeyPair, meeting: str
) -> None:
    # Header lines of exactly 8192 bytes with their CRLF: what websockets itself accepts.
    token = keypair.token(roles=["viewer"])
    line = "X-Padding: " + "a" * (8192 - 2 - len("X-Padding: "))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(upgrade_request(f"/api/v1/ws/meetings/{meeting}?token={token}", line, line))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    writer.close()


async def test_connections_without_a_complete_head_are_closed_in_time(
    start_gateway: Callable[..., Gateway],
) -> None:
    gateway = start_gateway(HTTP_HEAD_TIMEOUT_S="1")

    async def closed_after(trickle: bytes) -> float:
        started = time.monotonic()  # before connecting: the server's timer starts later
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)

        async def send_slowly() -> None:
            for byte in trickle:  # slowloris: a byte at a time, never the end of the head
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)

        sender = asyncio.create_task(send_slowly())
        try:
            try:
                answered = await asyncio.wait_for(reader.read(), 15)
            except ConnectionResetError:
                # Closed with a trickled byte still unread: the kernel sends RST, not FIN.
                answered = b""
            assert answered == b""  # closed, nothing answered
        finally:
            sender.cancel()
            writer.close()
        return time.monotonic() - started

    idle, slow = await asyncio.gather(
        closed_after(b""), closed_after(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " * 4)
    )
    assert 0.95 <= idle < 10 and 0.95 <= slow < 10, (idle, slow)
    # A client that sends its request promptly is served as before.
    answer, _ = await exchange(
        gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200")


async def test_a_pipelined_request_gets_the_same_limits(gateway: Gateway) -> None:
    """A second request in the same packet as the first is parsed from the server's buffer after
    the first answer: its oversized head must still get 414, not a socket held open."""
    first = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answer, elapsed = await exchange(gateway, first + upgrade_request("/healthz?q=" + "a" * 9000))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:200]
    assert b"HTTP/1.1 414 URI Too Long\r\n" in answer
    assert elapsed < 2.0
