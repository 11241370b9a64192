"""The ingest client's keepalive against real websockets servers: one that reads slowly (a
gateway whose engine is behind) keeps the stream, one that stops reading is given up on."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.client.keepalive import IngestKeepalive
from gateway.client.pacing import FramePlan, send_paced
from gateway.server.heartbeat import HeartbeatWebSocketProtocol
from tests.gateway.serving import serving_app

FRAME = 64 * 1024
# 25 MiB, more than the kernel's buffers hold (about 10 MiB on loopback): the sends go on as the
# server reads, and a ping waits behind what the buffers hold, seconds at 20 ms per frame.
FRAMES = 400
STUCK_FRAMES = 400


async def slow_reader(websocket: WebSocket) -> None:
    """Reads a frame every 20 ms, like a gateway whose engine is behind (uvicorn reads the
    socket only while fewer than 8 messages wait for the application)."""
    await websocket.accept()
    try:
        while True:
            await websocket.receive_bytes()
            await asyncio.sleep(0.02)
    except WebSocketDisconnect:
        pass


async def stuck_reader(websocket: WebSocket) -> None:
    await websocket.accept()
    await asyncio.Event().wait()  # reads nothing more: pings included


async def serve() -> AsyncIterator[int]:
    app = Starlette(
        routes=[WebSocketRoute("/slow", slow_reader), WebSocketRoute("/stuck", stuck_reader)]
    )
    protocol = HeartbeatWebSocketProtocol
    async with serving_app(app, ws=protocol, ws_max_size=2 * FRAME, force_exit=True) as (port, _):
        yield port


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async for bound in serve():
        yield bound


PLAN = FramePlan(FRAME, 0.0, 16000, 1)  # as fast as the connection takes them


async def test_a_gateway_that_reads_slowly_keeps_the_stream(port: int) -> None:
    async with connect(f"ws://127.0.0.1:{port}/slow", ping_interval=None, compression=None) as ws:
        keepalive = IngestKeepalive(ws, interval_s=0.2, timeout_s=1.0)
        heartbeat = asyncio.create_task(keepalive.run())
        frames, _ = await send_paced(keepalive, bytes(FRAME * FRAMES), PLAN)
        assert frames == FRAMES and keepalive.sends == FRAMES
        assert not heartbeat.done()  # pongs came late, and nothing gave up
        heartbeat.cancel()
        await asyncio.gather(heartbeat, return_exceptions=True)
    assert ws.close_code == 1000


async def test_a_gateway_that_reads_nothing_is_given_up(port: int) -> None:
    async with connect(
        f"ws://127.0.0.1:{port}/stuck", ping_interval=None, compression=None, close_timeout=1
    ) as ws:
        keepalive = IngestKeepalive(ws, interval_s=0.2, timeout_s=1.0)
        heartbeat = asyncio.create_task(keepalive.run())
        stuck = bytes(FRAME * STUCK_FRAMES)
        frames, _ = await asyncio.wait_for(send_paced(keepalive, stuck, PLAN), 60)
        assert frames < STUCK_FRAMES  # the sends stopped when the keepalive gave up
        await asyncio.wait_for(heartbeat, 60)
    assert ws.close_code != 1000


async def test_a_ping_failing_as_its_wait_is_cancelled_is_not_reported_unretrieved(
    port: int,
) -> None:
    """The connection ends just as the heartbeat is cancelled: the ping's ConnectionClosed is
    no news, and must not be printed as "Task exception was never retrieved"."""
    reported: list[dict] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        async with connect(f"ws://127.0.0.1:{port}/slow", ping_interval=None) as ws:
            keepalive = IngestKeepalive(ws, interval_s=0.2, timeout_s=30)
            gate, pinging = asyncio.Event(), asyncio.Event()

            async def ping() -> None:
                pinging.set()
                await gate.wait()
                raise ConnectionClosed(None, None)

            answered = asyncio.create_task(keepalive._answered(ping()))
            await pinging.wait()  # the keepalive is waiting on the ping
            gate.set()  # the ping fails in the same turn as the wait is cancelled
            answered.cancel()
            await asyncio.gather(answered, return_exceptions=True)
            del answered
        gc.collect()
        await asyncio.sleep(0)
        assert not [c for c in reported if "never retrieved" in str(c.get("message"))], reported
    finally:
        loop.set_exception_handler(None)
