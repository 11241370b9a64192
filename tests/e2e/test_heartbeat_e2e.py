"""Protocol-level heartbeats on the real gateway: a silent peer is dropped and counted."""

from __future__ import annotations

import asyncio
import base64
import os

from websockets.asyncio.client import connect

from tests.e2e.harness import KeyPair
from tests.util import eventually


async def test_silent_viewer_is_dropped_and_counted(
    start_gateway, keypair: KeyPair, meeting: str
) -> None:
    # The answer timeout is what a live client on a loaded machine needs (this test blocks its
    # event loop in each `gw.get`); the silent peer is dropped after it all the same.
    gw = start_gateway(WS_PING_INTERVAL_S="0.3", WS_PING_TIMEOUT_S="5")
    ops = keypair.token(roles=["ops"])
    assert gw.get("/api/v1/ws/stats", ops).json()["heartbeat_timeouts"] == 0

    # A well-behaved client answers pings (websockets does it by itself) and stays.
    async with connect(gw.subscribe_url(meeting, keypair.token(roles=["viewer"]))) as alive:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        key = base64.b64encode(os.urandom(16)).decode()
        token = keypair.token(roles=["viewer"])
        writer.write(
            (
                f"GET /api/v1/ws/meetings/{meeting}?token={token} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{gw.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)).startswith(
            b"HTTP/1.1 101"
        )
        # Never answer anything: the gateway must hang up on us.
        await asyncio.wait_for(reader.read(), 60)  # returns at EOF: the gateway hung up
        await eventually(
            lambda: gw.get("/api/v1/ws/stats", ops).json()["heartbeat_timeouts"] >= 1,
            within=60,
            what="heartbeat timeout counted",
        )
        writer.close()
        await alive.send('{"type": "ping"}')
        assert '"pong"' in await asyncio.wait_for(alive.recv(), 30)
    stats = gw.get("/api/v1/ws/stats", ops).json()
    assert stats["heartbeat_timeouts"] == 1
