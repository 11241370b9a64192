"""Starlette apps served by a real uvicorn, in process, with the gateway's WebSocket protocol
(tests of what the protocol does under a real server)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from gateway.server.websocket import DirectFramesProtocol
from tests.util import eventually


@contextlib.asynccontextmanager
async def serving_app(
    app: Starlette, *, force_exit: bool = False, **config: Any
) -> AsyncIterator[tuple[int, uvicorn.Server]]:
    """`app` on a free loopback port (uvicorn settings in `config`: the gateway's protocol
    and no pings unless given); its port and the server. `force_exit`: stop without waiting
    for open connections."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    settings: dict[str, Any] = {
        "ws": DirectFramesProtocol,
        "lifespan": "off",
        "log_level": "warning",
        "ws_ping_interval": None,
        **config,
    }
    server = uvicorn.Server(uvicorn.Config(app, **settings))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started, what="uvicorn started")
        yield sock.getsockname()[1], server
    finally:
        server.should_exit = True
        server.force_exit = force_exit
        await asyncio.wait_for(task, 30)
        sock.close()


@contextlib.asynccontextmanager
async def serving(
    endpoint: Callable[[WebSocket], Awaitable[None]], path: str
) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """`endpoint` at `path`; its ws:// URL and the server."""
    async with serving_app(Starlette(routes=[WebSocketRoute(path, endpoint)])) as (port, server):
        yield f"ws://127.0.0.1:{port}{path}", server
