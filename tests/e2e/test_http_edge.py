"""The HTTP edge of a running gateway: oversized request heads get a prompt 414/431 and a close;
a connection that never completes a request head is closed after HTTP_HEAD_TIMEOUT_S, one whose
body stops coming after HTTP_BODY_IDLE_TIMEOUT_S, one that stops reading its response after
HTTP_SEND_STALL_TIMEOUT_S."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from store.base import NewFinal
from store.migrate import upgrade
from store.sql import SqlTranscriptStore
from tests.e2e.harness import Gateway, KeyPair
from tests.util import wait_until


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


async def test_a_request_body_that_stops_coming_is_closed_without_a_traceback(
    start_gateway: Callable[..., Gateway], keypair: KeyPair
) -> None:
    gateway = start_gateway(HTTP_BODY_IDLE_TIMEOUT_S="1")
    editor = keypair.token(roles=["editor"])
    body = b'{"title": "x"}'

    def patch(length: int) -> bytes:
        return (
            "PATCH /api/v1/meetings/m-body HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {editor}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
        ).encode()

    # A body that stops coming: closed, whatever the application was waiting for.
    answer, elapsed = await exchange(gateway, patch(100) + body[:4], timeout=15)
    assert answer == b"" and 0.95 <= elapsed < 10, (answer, elapsed)

    # A body that keeps coming, slowly (each byte within the timeout), is answered.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(patch(len(body)))
    for byte in body:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.25)  # 3.5 s in all, never 1 s without data
    answer = await asyncio.wait_for(reader.read(), 15)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 404"), answer  # no such meeting: read and answered
    assert "no request body data for 1s" in gateway.logs()
    assert "Traceback" not in gateway.logs() and "Exception in ASGI" not in gateway.logs()


async def test_a_body_still_coming_after_its_refusal_does_not_hold_the_connection(
    gateway: Gateway,
) -> None:
    # No token, a body announced as 1 GB and trickled a byte at a time: the 401 comes at once,
    # then the connection closes LINGER_MAX_S (30 s) after it, not at the body's end or ever.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"POST /api/v1/meetings/m1/recordings HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: audio/wav\r\nContent-Length: 1000000000\r\n\r\n"
    )

    async def trickle() -> None:
        while True:
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.2)

    sender = asyncio.create_task(trickle())
    answer = b""
    try:
        with contextlib.suppress(ConnectionResetError):  # a trickled byte unread at the close
            while chunk := await asyncio.wait_for(reader.read(65536), 120):
                answer += chunk
    finally:
        sender.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    wait_until(lambda: "request body was still coming" in gateway.logs(), "the linger closed it")

    # A body that stops coming after its answer: closed (uvicorn's keep-alive timeout or
    # LINGER_IDLE_S after its last byte, whichever comes first).
    answer, _ = await exchange(
        gateway,
        b"POST /api/v1/meetings/m1/recordings HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: audio/wav\r\nContent-Length: 1000\r\n\r\nRIFF",
        timeout=60,
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]  # and the server closed


def refused_upload(connection: http.client.HTTPConnection, **headers: str) -> int:
    """A 5 MB upload with a bad token, sent whole before the answer is read (http.client)."""
    try:
        connection.request(
            "POST",
            "/api/v1/meetings/m1/recordings",
            body=b"\x00" * 5_000_000,
            headers={"Authorization": "Bearer bad", "Content-Type": "audio/wav", **headers},
        )
        return connection.getresponse().status
    finally:
        connection.close()


async def test_a_refusal_that_closes_the_connection_still_reaches_the_client(
    gateway: Gateway,
) -> None:
    """With `Connection: close` (or HTTP/1.0) the server closes after its answer: closing with
    the body unread reset the connection, and the client saw no 401 at all."""
    for headers in ({}, {"Connection": "close"}):
        for _ in range(3):
            connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=60)
            assert await asyncio.to_thread(refused_upload, connection, **headers) == 401, headers


async def test_a_refusal_that_closes_reaches_a_client_whose_body_takes_longer_than_5_s(
    gateway: Gateway,
) -> None:
    """The rest of the body is read for up to 30 s after the answer while it keeps coming:
    uvicorn's 5 s keep-alive timer cut such an upload, and the client got a broken pipe."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    body = 64 * 1024
    writer.write(
        b"POST /api/v1/meetings/m1/recordings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer bad\r\nContent-Type: audio/wav\r\n"
        b"Content-Length: %d\r\n\r\n" % body
    )
    for _ in range(16):  # 4 KiB every half second: 8 s, as a slow uplink sends it
        writer.write(b"\x00" * (body // 16))
        await writer.drain()
        await asyncio.sleep(0.5)
    answer = await asyncio.wait_for(reader.read(), 60)  # only now, as http.client reads
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


async def big_meeting(tmp_path: Path, *tenants: str) -> str:
    """A database whose meeting "big" (of each tenant) exports as about 8 MB of text: more than
    the kernel's buffers hold."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    await upgrade(url)
    store = SqlTranscriptStore(url)
    try:
        line = "word " * 400
        for tenant in tenants:
            for n in range(1, 4001):
                final = NewFinal(text=line, start_ms=n * 1000, end_ms=n * 1000 + 800, source="mic")
                await store.store_numbered_final(tenant, "big", n, final, datetime.now(UTC))
    finally:
        await store.aclose()
    return url


async def unread_export(gateway: Gateway, token: str) -> asyncio.StreamWriter:
    """A whole export of "big" asked for by a client that reads little and then nothing."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", gateway.port))
    client.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=client)
    writer.write(
        "GET /api/v1/meetings/big/transcript?format=txt HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    await writer.drain()
    assert (await asyncio.wait_for(reader.readline(), 60)).startswith(b"HTTP/1.1 200")
    return writer


async def test_a_response_the_client_stops_reading_is_closed(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, tmp_path: Path
) -> None:
    url = await big_meeting(tmp_path, "acme")
    gateway = start_gateway(url, HTTP_SEND_STALL_TIMEOUT_S="1")
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads little
    client.connect(("127.0.0.1", gateway.port))
    client.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=client)
    token = keypair.token(roles=["viewer"])
    writer.write(
        "GET /api/v1/meetings/big/transcript?format=txt HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    await writer.drain()
    wait_until(lambda: "read none of the response for 1s" in gateway.logs(), "the stall closed")
    received = await asyncio.wait_for(reader.read(), 60)  # what the kernel held, then the end
    writer.close()
    assert received.startswith(b"HTTP/1.1 200") and len(received) < 8_000_000
    # Other clients are served meanwhile and after.
    answer, _ = await exchange(
        gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200")


async def test_a_tenants_whole_exports_are_held_to_exports_per_tenant(
    start_gateway: Callable[..., Gateway], keypair: KeyPair, tmp_path: Path
) -> None:
    """Two whole exports of a tenant still streaming (their clients read nothing): a third is
    429 with Retry-After, a page is served, so is another tenant; each export that ends, with
    its client gone, gives its place back."""
    import httpx

    url = await big_meeting(tmp_path, "acme", "globex")
    gateway = start_gateway(url, EXPORTS_PER_TENANT="2")
    token = keypair.token(roles=["viewer"])
    held = [await unread_export(gateway, token) for _ in range(2)]

    def export(tenant: str = "acme", **params: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {keypair.token(tenant=tenant, roles=['viewer'])}"}
        url = f"{gateway.http}/api/v1/meetings/big/transcript"
        return httpx.get(url, params={"format": "srt", **params}, headers=auth, timeout=60)

    refused = export()
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "5"
    assert "EXPORTS_PER_TENANT" in refused.json()["error"]["message"]
    assert export(format="json", limit="5").status_code == 200  # a page: not counted
    assert export("globex").status_code == 200  # each tenant its own
    for writer in held:
        writer.transport.abort()  # gone with the response unread
        await writer.wait_closed()
    wait_until(lambda: export().status_code == 200, "the exports' places given back")
    assert export().status_code == 200  # and not one place lost


async def test_websockets_outlive_the_http_timeouts(
    start_gateway: Callable[..., Gateway], keypair: KeyPair
) -> None:
    """After the upgrade the connection is the WebSocket protocol's: no HTTP body or send timer
    of the request that opened it may close it."""
    import json

    from websockets.asyncio.client import connect

    gateway = start_gateway(HTTP_BODY_IDLE_TIMEOUT_S="0.5", HTTP_SEND_STALL_TIMEOUT_S="0.5")
    token = keypair.token(roles=["viewer"])
    async with connect(gateway.subscribe_url("m-long", token)) as ws:
        await asyncio.sleep(2)  # four times both timeouts, with nothing sent either way
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv())["type"] == "pong"
    assert "no request body data" not in gateway.logs()


async def behind_an_answered_body(
    gateway: Gateway, pipelined: bytes, then: bytes = b"", *, chunked: bool = False
) -> bytes:
    """A request refused before its body was read (no token: 401) keeps the connection; the
    rest of its body and `pipelined` then come in one packet (and `then` in a later one):
    what the server answered next."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    answer = b""
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: 14"
    body = b'e\r\n{"title": "x"}\r\n0\r\n\r\n' if chunked else b'{"title": "x"}'
    try:
        writer.write(
            b"PATCH /api/v1/meetings/m1 HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n" + framing + b"\r\n\r\n"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 401"), head
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await asyncio.wait_for(reader.readexactly(length), 10)
        writer.write(body + pipelined)
        await writer.drain()
        if then:
            await asyncio.sleep(0.2)  # a later packet (not a condition: any delay will do)
            writer.write(then)
            await writer.drain()
        with contextlib.suppress(ConnectionResetError):
            answer = await asyncio.wait_for(reader.read(), 30)  # until the server closes
    finally:
        writer.close()
    return answer


async def test_a_request_pipelined_behind_an_answered_body_gets_the_same_limits(
    gateway: Gateway,
) -> None:
    # Parsed from the server's buffer as the body ends: its 150 fields must still get 431.
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(150))
    answer = await behind_an_answered_body(
        gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert answer.endswith(b"too many header fields\n")
    # Its head split across packets: the fields of both count.
    answer = await behind_an_answered_body(
        gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields[:600], fields[600:] + b"\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    # Behind a chunked body too.
    answer = await behind_an_answered_body(
        gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n", chunked=True
    )
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    # Within the limits it is served, on the same connection.
    for chunked in (False, True):
        answer = await behind_an_answered_body(
            gateway,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            chunked=chunked,
        )
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


async def test_an_idle_kept_alive_connection_lasts_the_keepalive_not_the_head_timeout(
    start_gateway: Callable[..., Gateway],
) -> None:
    """A proxy keeps idle upstream connections 60 s: closed by the gateway after 5 s, one could
    be reused just as it closes (a 502 the proxy does not retry for a POST). Between requests
    the connection waits HTTP_KEEPALIVE_S; a started head still has HTTP_HEAD_TIMEOUT_S."""
    gateway = start_gateway(HTTP_HEAD_TIMEOUT_S="1", HTTP_KEEPALIVE_S="8")
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

    async def answered(reader: asyncio.StreamReader) -> bytes:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        return head + await asyncio.wait_for(reader.readexactly(length), 30)

    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(request)
    assert (await answered(reader)).startswith(b"HTTP/1.1 200")
    # Idle past the head timeout (three times over): still open, and serves the next request.
    assert await wait_for_close(reader, within=3) is False
    sent_at = time.monotonic()  # the keep-alive starts after this request's answer
    writer.write(request)
    assert (await answered(reader)).startswith(b"HTTP/1.1 200")
    assert await wait_for_close(reader, within=60) is True  # then closed by the keep-alive
    assert time.monotonic() - sent_at >= 8
    writer.close()

    # A next head that starts and stalls is cut by the head timeout (which says so in the log),
    # not kept for the keep-alive.
    cut_heads = gateway.logs().count("no request head within")
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(request)
    assert (await answered(reader)).startswith(b"HTTP/1.1 200")
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    assert await wait_for_close(reader, within=60) is True
    writer.close()
    wait_until(
        lambda: gateway.logs().count("no request head within") > cut_heads, "the head timeout"
    )


async def wait_for_close(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server closed the connection within `within` seconds (nothing else came)."""
    try:
        data = await asyncio.wait_for(reader.read(1), within)
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    assert data == b"", data
    return True
