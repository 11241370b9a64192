"""Reading pauses at READ_HIGH_WATER queued messages, not after each one, through a real uvicorn
server with the gateway's protocol: the queue stays bounded and every message arrives in order."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from fanout.direct_frames import frame_writer
from gateway.server.websocket import READ_HIGH_WATER
from tests.gateway.serving import serving
from tests.util import eventually

MESSAGE = 32 * 1024
COUNT = 60


async def test_a_slow_application_pauses_reading_at_the_high_water_mark() -> None:
    release = asyncio.Event()
    protocols: list[Any] = []
    received: list[int] = []

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        protocols.append(frame_writer(websocket.scope))
        await release.wait()
        for _ in range(COUNT):
            received.append((await websocket.receive_bytes())[0])
        await websocket.close()

    async with serving(endpoint, "/ingest") as (url, _):
        async with connect(url, max_size=None, compression=None) as ws:

            async def flood() -> None:
                for i in range(COUNT):
                    await ws.send(bytes([i]) * MESSAGE)

            sender = asyncio.create_task(flood())
            await eventually(lambda: protocols, what="accepted")
            protocol = protocols[0]
            await eventually(lambda: protocol.read_paused, within=30, what="reading paused")
            # Paused at the mark; one socket read (up to 256 KiB) may overshoot it.
            assert (
                READ_HIGH_WATER
                <= protocol.queue.qsize()
                <= READ_HIGH_WATER + 256 * 1024 // MESSAGE + 1
            )
            release.set()
            await asyncio.wait_for(sender, 30)
            await eventually(lambda: len(received) == COUNT, within=30, what="all read")
        assert received == list(range(COUNT))
        assert not protocol.read_paused


async def test_an_application_that_keeps_up_never_pauses_reading() -> None:
    """Messages taken as they come (the ingest socket's case) cost no pause/resume pair each."""
    pauses: list[int] = []

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        transport = frame_writer(websocket.scope).transport
        pause = transport.pause_reading

        def counted() -> None:
            pauses.append(1)
            pause()

        transport.pause_reading = counted
        while True:
            data = await websocket.receive_bytes()
            await websocket.send_bytes(data[:1])  # the client sends the next after this
            if data[0] == 199:
                break
        await websocket.close()

    async with serving(endpoint, "/ingest") as (url, _):
        async with connect(url, compression=None) as ws:
            for i in range(200):
                await ws.send(bytes([i]) * 1920)
                assert await asyncio.wait_for(ws.recv(), 30) == bytes([i])
        assert pauses == []
