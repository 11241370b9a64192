"""Heartbeats through a real uvicorn server: a peer that never answers pings is dropped and
counted; a normal client that answers them stays connected."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Iterator

import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.server.heartbeat import HeartbeatWebSocketProtocol, on_heartbeat_timeout
from tests.gateway.serving import serving_app
from tests.util import eventually

INTERVAL = 0.2
PATIENT_INTERVAL = 1.0


class CountingProtocol(HeartbeatWebSocketProtocol):
    """Counts pongs (answered pings) per connection, so the test can wait for them."""

    pongs = 0

    def handle_pong(self, event: object) -> None:
        answered = self.pending_ping_payload is not None
        super().handle_pong(event)  # type: ignore[arg-type]
        if answered and self.pending_ping_payload is None:
            CountingProtocol.pongs += 1


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


@pytest.fixture
def drops() -> Iterator[list[str]]:
    """The paths of connections the heartbeat reported dropped."""
    dropped: list[str] = []
    unregister = on_heartbeat_timeout(lambda scope: dropped.append(scope["path"]))
    yield dropped
    unregister()


STALLING = {"on": True}


async def stalling(websocket: WebSocket) -> None:
    """Takes a message, then stalls 3 timeouts long (an ingest stream whose engine is behind),
    and so on while STALLING["on"]: uvicorn stops reading once 8 messages wait for it."""
    await websocket.accept()
    try:
        while True:
            await websocket.receive_bytes()
            if STALLING["on"]:
                await asyncio.sleep(3 * PATIENT_INTERVAL)
    except WebSocketDisconnect:
        pass


async def serving(interval: float) -> AsyncIterator[int]:
    app = Starlette(routes=[WebSocketRoute("/ws", echo), WebSocketRoute("/stall", stalling)])
    pings = {"ws_ping_interval": interval, "ws_ping_timeout": interval}
    async with serving_app(app, ws=CountingProtocol, **pings) as (port, _):
        yield port


@pytest.fixture
async def server_port() -> AsyncIterator[int]:
    async for port in serving(INTERVAL):
        yield port


@pytest.fixture
async def patient_port() -> AsyncIterator[int]:
    """Pings every second, each answered within one: a test's own event loop, stalled by a busy
    machine, must not pass for a silent peer."""
    async for port in serving(PATIENT_INTERVAL):
        yield port


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of unmasked server frames with short payloads (control frames)."""
    out, i = [], 0
    while i + 2 <= len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        assert length < 126, "only short frames expected"
        out.append((opcode, data[i + 2 : i + 2 + length]))
        i += 2 + length
    return out


async def raw_peer(
    port: int, path: str = "/ws"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket peer by hand, past its handshake: it answers nothing unless told."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


def masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


async def test_silent_peer_is_dropped_and_reported(server_port: int, drops: list[str]) -> None:
    reader, writer = await raw_peer(server_port)
    # Never answer: no pong, no frame of any kind.
    await eventually(lambda: drops == ["/ws"], within=5, what="drop")
    rest = await asyncio.wait_for(reader.read(), 5)  # the server closes: EOF
    received = frames(rest)
    assert received[0][0] == 0x9  # it did ping us
    assert (0x8, (1011).to_bytes(2, "big") + b"keepalive ping timeout") in received
    writer.close()
    assert drops == ["/ws"]  # reported once


async def test_client_that_answers_pings_stays_connected(
    server_port: int, drops: list[str]
) -> None:
    CountingProtocol.pongs = 0
    async with websockets.connect(f"ws://127.0.0.1:{server_port}/ws", ping_interval=None) as ws:
        # Several full ping intervals, each answered (websockets answers pings by itself).
        await eventually(lambda: CountingProtocol.pongs >= 5, within=10, what="5 pongs")
        await ws.send("still here")
        assert await asyncio.wait_for(ws.recv(), 5) == "still here"
    assert drops == []


def test_gateway_can_name_the_class_as_a_string() -> None:
    config = uvicorn.Config(Starlette(), ws="gateway.server.heartbeat:HeartbeatWebSocketProtocol")
    config.load()
    assert config.ws_protocol_class is HeartbeatWebSocketProtocol


async def test_a_peer_that_keeps_sending_is_not_silent(patient_port: int, drops: list[str]) -> None:
    # Its pong would wait behind what the server has not read (an ingest stream read at a slow
    # engine's pace): what it sends after the ping shows it is there.
    reader, writer = await raw_peer(patient_port)
    pings = 0

    async def count_pings() -> None:
        nonlocal pings
        while data := await reader.read(65536):
            pings += data.count(b"\x89\x04")  # an unmasked ping with uvicorn's 4-byte payload

    counting = asyncio.create_task(count_pings())
    loop = asyncio.get_running_loop()
    start = loop.time()
    while pings < 4:  # four pings unanswered, each past its timeout
        assert loop.time() - start < 60, "pings stopped coming"
        writer.write(masked_text(b"still here"))
        await writer.drain()
        await asyncio.sleep(PATIENT_INTERVAL / 10)
    assert drops == []
    # Then it falls silent: dropped within a timeout or two.
    await eventually(lambda: drops == ["/ws"], within=30, what="drop")
    counting.cancel()
    writer.close()


async def test_a_peer_the_application_stopped_reading_is_not_dropped(
    patient_port: int, drops: list[str]
) -> None:
    # The application is behind (uvicorn reads nothing more: pings' answers included); its own
    # limit ends such a stream, not the heartbeat.
    STALLING["on"] = True
    _, writer = await raw_peer(patient_port, "/stall")
    frame = bytes([0x82, 0x80 | 100]) + bytes(4) + bytes(100)  # masked (zero mask) binary
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < 9 * PATIENT_INTERVAL:  # three stalls, each three timeouts long
        writer.write(frame)
        await writer.drain()
        await asyncio.sleep(PATIENT_INTERVAL / 10)
    assert drops == []
    STALLING["on"] = False  # it catches up: the server can stop without waiting out stalls
    writer.close()
