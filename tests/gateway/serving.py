"""A Starlette endpoint served by a real uvicorn, in process, with the gateway's WebSocket
protocol (tests of what the protocol does under a real server)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from gateway.server.websocket import DirectFramesProtocol
from tests.util import eventually


@contextlib.asynccontextmanager
async def serving(
    endpoint: Callable[[WebSocket], Awaitable[None]], path: str
) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """`endpoint` at `path`; its ws:// URL and the server."""
    app = Starlette(routes=[WebSocketRoute(path, endpoint)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app, ws=DirectFramesProtocol, lifespan="off", log_level="warning", ws_ping_interval=None
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started, what="uvicorn started")
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}{path}", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
