"""Direct frame writes through a real uvicorn server: the coupling with uvicorn's internals
(gateway.server.websocket), the switch between the direct and the queued path under a viewer
that stops reading, compression refused on viewer paths, TLS, and the plain-ASGI fallback."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import socket
import struct
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import connect

from fanout.delivery import ViewerQueue
from fanout.direct_frames import DIRECT_FRAMES, frame_writer, plain_socket_fd
from gateway.server.heartbeat import HeartbeatWebSocketProtocol
from gateway.server.websocket import DirectFramesProtocol
from tests.fanout.counting import CountingDeliveries
from tests.tls import client_context, self_signed_cert
from tests.util import eventually

VIEWER_PATH = "/api/v1/ws/meetings/m1"


class Viewers:
    def __init__(self) -> None:
        self.outboxes: list[ViewerQueue] = []
        self.writers: list[Any] = []
        self.failures: list[BaseException] = []
        self.counted = CountingDeliveries()
        self.scopes: list[dict[str, Any]] = []


def make_app(viewers: Viewers) -> Starlette:
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        writer = frame_writer(websocket.scope)
        if writer is not None:
            # A small kernel send buffer so a reader that stops shows up in the transport soon.
            sock = writer.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        outbox = ViewerQueue(max_messages=100_000, max_bytes=64 << 20)

        async def send_text(data: bytes) -> None:
            await websocket.send_text(data.decode())

        outbox.attach(
            send_text,
            direct=writer,
            stall_timeout_s=60,
            on_failure=viewers.failures.append,
            counter=viewers.counted,
        )
        viewers.outboxes.append(outbox)
        viewers.writers.append(writer)
        viewers.scopes.append(websocket.scope)
        try:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        except WebSocketDisconnect:
            pass
        finally:
            outbox.cancel_writer()

    return Starlette(
        routes=[WebSocketRoute(VIEWER_PATH, endpoint), WebSocketRoute("/other", endpoint)]
    )


async def serve(
    protocol: type[WebSocketsSansIOProtocol], viewers: Viewers
) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        make_app(viewers), ws=protocol, lifespan="off", log_level="warning", ws_ping_interval=None
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await eventually(lambda: server.started, what="uvicorn started")
    return server, task, sock.getsockname()[1]


@pytest.fixture
async def started() -> AsyncIterator[Callable[..., Any]]:
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(protocol: type[WebSocketsSansIOProtocol]) -> tuple[Viewers, int]:
        viewers = Viewers()
        server, task, port = await serve(protocol, viewers)
        servers.append((server, task))
        return viewers, port

    yield start
    for server, task in servers:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


def test_the_gateway_protocol_has_direct_frames() -> None:
    assert issubclass(HeartbeatWebSocketProtocol, DirectFramesProtocol)
    config = uvicorn.Config(Starlette(), ws="gateway.server.heartbeat:HeartbeatWebSocketProtocol")
    config.load()
    assert config.ws_protocol_class is HeartbeatWebSocketProtocol


def test_a_transport_without_a_socket_takes_the_queued_path() -> None:
    assert plain_socket_fd(asyncio.Transport()) == -1
    assert plain_socket_fd(asyncio.Transport({"socket": None})) == -1


def test_without_the_extension_there_is_no_writer() -> None:
    assert frame_writer({"type": "websocket", "extensions": {}}) is None
    assert frame_writer({"type": "websocket"}) is None


async def raw_viewer(port: int, path: str = VIEWER_PATH) -> tuple[socket.socket, bytes]:
    """A client socket with a tiny receive buffer, after the handshake; it reads only when told."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    data = b""
    while b"\r\n\r\n" not in data:
        data += await loop.sock_recv(sock, 65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    return sock, rest


def parse_frames(data: bytes) -> tuple[list[bytes], bytes]:
    """Payloads of the complete unmasked text frames in `data`, and the incomplete rest."""
    out, i = [], 0
    while i + 2 <= len(data):
        assert data[i] == 0x81, "a whole, uncompressed text frame"
        length, start = data[i + 1] & 0x7F, i + 2
        if length == 126:
            length, start = int.from_bytes(data[i + 2 : i + 4], "big"), i + 4
        elif length == 127:
            length, start = int.from_bytes(data[i + 2 : i + 10], "big"), i + 10
        if start + length > len(data):
            break
        out.append(data[start : start + length])
        i = start + length
    return out, data[i:]


def message(n: int, size: int = 4000) -> bytes:
    return json.dumps({"type": "status", "n": n, "pad": "x" * size}).encode()


async def test_a_reader_that_stops_switches_to_the_queue_and_back_without_losing_order(
    started: Callable[..., Any],
) -> None:
    viewers, port = await started(HeartbeatWebSocketProtocol)
    sock, buffered = await raw_viewer(port)
    await eventually(lambda: len(viewers.outboxes) == 1, what="viewer registered")
    (outbox,), (writer,) = viewers.outboxes, viewers.writers
    assert writer is not None, "uvicorn with the gateway protocol offers direct frames"
    assert writer.fd >= 0, "a plain TCP transport takes direct writes"
    counted = viewers.counted
    direct_before, queued_before = counted.direct, counted.queued

    # The viewer does not read: the first messages are written directly, until the transport
    # backs up; from then on they are queued, in order.
    sent = 0
    while not outbox.queued:
        assert outbox.offer(message(sent))
        sent += 1
        assert sent < 5000, "the transport never backed up"
        await asyncio.sleep(0)
    direct = counted.direct - direct_before
    assert direct == sent - 1
    for _ in range(50):
        assert outbox.offer(message(sent))
        sent += 1
    assert outbox.pending > 0

    # The viewer reads again: it gets everything, in order, and returns to the direct path.
    loop = asyncio.get_running_loop()
    received: list[bytes] = []
    rest = buffered
    while len(received) < sent:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
        assert chunk, "server closed the connection"
        frames, rest = parse_frames(rest + chunk)
        received.extend(frames)
    assert [json.loads(m)["n"] for m in received] == list(range(sent))
    await eventually(lambda: not outbox.queued, what="back on the direct path")
    assert counted.queued - queued_before >= 50
    before = counted.direct
    assert outbox.offer(message(sent, size=10))
    assert counted.direct == before + 1
    assert viewers.failures == []
    sock.close()


async def test_a_viewer_that_resets_ends_its_outbox_and_nothing_counts_as_written(
    started: Callable[..., Any],
) -> None:
    """The peer resets between two publishes: the direct write meets the error, the message goes
    to the queue, whose writer finds the viewer gone and ends the outbox."""
    viewers, port = await started(HeartbeatWebSocketProtocol)
    sock, _ = await raw_viewer(port)
    await eventually(lambda: len(viewers.outboxes) == 1, what="viewer registered")
    (outbox,), (writer,) = viewers.outboxes, viewers.writers
    assert outbox.offer(message(0, size=10))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # an RST, which the loop has not read yet when the next message is offered
    direct_before = viewers.counted.direct
    assert writer.direct_ready and writer.try_write(b"\x81\x00") is False
    assert writer.peer_lost and not writer.direct_ready
    outbox.offer(message(1, size=10))
    await eventually(lambda: outbox.closed, what="the outbox ended")
    assert viewers.counted.direct == direct_before
    assert [type(exc).__name__ for exc in viewers.failures] == ["ClientDisconnected"]


async def test_viewer_paths_refuse_compression_and_others_keep_it(
    started: Callable[..., Any],
) -> None:
    viewers, port = await started(HeartbeatWebSocketProtocol)
    async with connect(f"ws://127.0.0.1:{port}{VIEWER_PATH}", compression="deflate") as ws:
        assert ws.protocol.extensions == []
        await eventually(lambda: len(viewers.outboxes) == 1)
        viewers.outboxes[0].offer(b'{"type":"status","event":"hello"}')
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["event"] == "hello"
    async with connect(f"ws://127.0.0.1:{port}/other", compression="deflate") as ws:
        assert [type(e).__name__ for e in ws.protocol.extensions] == ["PerMessageDeflate"]


async def test_handshake_request_is_not_retained(started: Callable[..., Any]) -> None:
    viewers, port = await started(HeartbeatWebSocketProtocol)
    async with connect(f"ws://127.0.0.1:{port}{VIEWER_PATH}"):
        await eventually(lambda: len(viewers.writers) == 1)
        protocol = viewers.writers[0]
        assert protocol.request is None and protocol.response is None
        assert DIRECT_FRAMES in viewers.scopes[0]["extensions"]


async def test_every_attribute_uvicorn_sets_lives_in_a_slot(started: Callable[..., Any]) -> None:
    """An attribute dict past 30 keys costs about 1.5 KiB per viewer: an attribute a newer
    uvicorn adds belongs in UVICORN_ATTRIBUTES (gateway/server/websocket.py)."""
    viewers, port = await started(HeartbeatWebSocketProtocol)
    async with connect(f"ws://127.0.0.1:{port}{VIEWER_PATH}") as ws:
        await eventually(lambda: len(viewers.writers) == 1)
        await asyncio.wait_for(await ws.ping(), 5)  # keepalive and frame state in use too
        protocol = viewers.writers[0]
        assert vars(protocol) == {}
        assert protocol.conn is not None and protocol.transport is not None


class RequestWatchingProtocol(HeartbeatWebSocketProtocol):
    requests: ClassVar[list[weakref.ref[Any]]] = []

    def handle_connect(self, event: Any) -> None:
        RequestWatchingProtocol.requests.append(weakref.ref(event))
        super().handle_connect(event)


async def test_the_handshake_request_is_freed_and_frames_still_parse(
    started: Callable[..., Any],
) -> None:
    viewers, port = await started(RequestWatchingProtocol)
    async with connect(f"ws://127.0.0.1:{port}{VIEWER_PATH}?token=secret") as ws:
        await eventually(lambda: len(viewers.outboxes) == 1)
        (request,) = RequestWatchingProtocol.requests
        gc.collect()
        assert request() is None, "the handshake request is still referenced"
        # The restarted parser reads the client's frames: a close handshake completes cleanly.
        await asyncio.wait_for(await ws.ping(), 5)  # the server parsed our ping and answered
        assert viewers.writers[0].conn.parser is None, "an idle viewer keeps no frame parser"
        viewers.outboxes[0].offer(b'{"type":"status","event":"after"}')
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["event"] == "after"
    assert ws.close_code == 1000


async def test_a_frame_split_across_reads_is_parsed_once_whole(
    started: Callable[..., Any],
) -> None:
    """The parser is parked only between frames: half a ping keeps it, the rest completes it."""
    viewers, port = await started(HeartbeatWebSocketProtocol)
    sock, _ = await raw_viewer(port)
    await eventually(lambda: len(viewers.writers) == 1, what="viewer registered")
    protocol = viewers.writers[0]
    assert protocol.conn.parser is None
    mask, payload = os.urandom(4), b"split-ping"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    ping = bytes([0x89, 0x80 | len(payload)]) + mask + masked
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, ping[:5])
    await eventually(lambda: protocol.conn.parser is not None, what="half a frame parsed")
    await loop.sock_sendall(sock, ping[5:])
    pong = await asyncio.wait_for(loop.sock_recv(sock, 1024), 5)
    assert pong[0] == 0x8A and pong[2:] == payload
    await eventually(lambda: protocol.conn.parser is None, what="parked again")
    sock.close()


async def test_plain_uvicorn_falls_back_to_the_asgi_send(started: Callable[..., Any]) -> None:
    viewers, port = await started(WebSocketsSansIOProtocol)
    async with connect(f"ws://127.0.0.1:{port}{VIEWER_PATH}") as ws:
        await eventually(lambda: len(viewers.outboxes) == 1)
        assert viewers.writers == [None]
        outbox = viewers.outboxes[0]
        for n in range(20):
            outbox.offer(message(n, size=100))
        got = [json.loads(await asyncio.wait_for(ws.recv(), 5))["n"] for _ in range(20)]
        assert got == list(range(20))
        await eventually(lambda: not outbox.queued, what="writer task ends once drained")


async def test_behind_tls_every_frame_goes_through_the_transport_encrypted(
    tmp_path: Any,
) -> None:
    """A direct `os.write` on a TLS connection's socket would put clear text into the TLS
    stream: the client would fail its record check, and the transcript would cross the wire
    unencrypted. Behind TLS the writer offers no direct path; frames arrive whole, in order."""
    key_path, cert_path = self_signed_cert(tmp_path)
    viewers = Viewers()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        make_app(viewers),
        ws=HeartbeatWebSocketProtocol,
        lifespan="off",
        log_level="warning",
        ws_ping_interval=None,
        ssl_keyfile=key_path,
        ssl_certfile=cert_path,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started, what="uvicorn started")
        client_tls = client_context(cert_path)
        url = f"wss://127.0.0.1:{sock.getsockname()[1]}{VIEWER_PATH}"
        async with connect(url, ssl=client_tls) as client:
            await eventually(lambda: len(viewers.outboxes) == 1, what="viewer registered")
            (outbox,), (writer,) = viewers.outboxes, viewers.writers
            assert writer is not None
            assert writer.fd == -1 and not writer.direct_ready
            direct_before = viewers.counted.direct
            for n in range(20):
                assert outbox.offer(message(n, size=100))
            received = [json.loads(await asyncio.wait_for(client.recv(), 30)) for _ in range(20)]
            assert [m["n"] for m in received] == list(range(20))
            assert viewers.counted.direct == direct_before
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
