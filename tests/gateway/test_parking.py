"""Parked connections through a real uvicorn server with the gateway's protocol
(gateway.server.parking): no task while parked, resumed on each message, on the peer's close and
on the application's `unpark`, in the context the handler parked in, with messages in order."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.server.parking import Parked, parker
from tests.gateway.serving import serving
from tests.util import eventually

LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("label", default="none")


class Echo:
    """Echoes each text message with the handler's context label; parks whenever idle; closes
    with 4000 when unparked from outside with `ending` set."""

    def __init__(self) -> None:
        self.runs = 0  # the handler's first run and each resume
        self.ended: list[Any] = []
        self.park: Any = None
        self.ending = False

    async def endpoint(self, websocket: WebSocket) -> None:
        await websocket.accept()
        LABEL.set("handler's")
        self.park = parker(websocket.scope)
        assert self.park is not None
        await self.serve(websocket)

    async def serve(self, websocket: WebSocket) -> None:
        self.runs += 1
        while True:
            if self.ending:
                await websocket.close(4000)
                self.ended.append("closed")
                return
            message = self.park.take_message()
            if message is None:
                self.park.park(lambda: self.serve(websocket))
                raise Parked
            if message["type"] == "websocket.disconnect":
                self.ended.append(message["code"])
                return
            await websocket.send_text(f"{message['text']} ({LABEL.get()})")


@contextlib.asynccontextmanager
async def parked_echo() -> AsyncIterator[tuple[Echo, ClientConnection, uvicorn.Server]]:
    """An Echo served by a real uvicorn, with one client connected and its connection parked."""
    echo = Echo()
    async with serving(echo.endpoint, "/echo") as (url, server), connect(url) as ws:
        await eventually(
            lambda: echo.park is not None and not server.server_state.tasks, what="parked"
        )
        yield echo, ws, server


async def test_a_parked_connection_has_no_task_and_resumes_on_each_message_in_order() -> None:
    async with parked_echo() as (echo, ws, server):
        for n in range(3):
            await ws.send(f"m{n}")
            assert await ws.recv() == f"m{n} (handler's)"
            await eventually(lambda: not server.server_state.tasks, what="parked again")
        # Several at once: one resume answers them all, in order.
        for n in range(5):
            await ws.send(f"b{n}")
        assert [await ws.recv() for _ in range(5)] == [f"b{n} (handler's)" for n in range(5)]
        await ws.close()
        await eventually(lambda: echo.ended == [1000], what="the peer's close resumed it")
        assert echo.runs >= 5
        assert not server.server_state.tasks


async def test_unpark_lets_the_application_close_a_parked_connection() -> None:
    async with parked_echo() as (echo, ws, server):
        echo.ending = True
        echo.park.unpark()
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
        await eventually(lambda: echo.ended == ["closed"])
        echo.park.unpark()  # no longer parked: nothing happens
        assert not server.server_state.tasks


async def test_a_server_shutdown_resumes_parked_connections() -> None:
    async with parked_echo() as (echo, ws, server):
        server.should_exit = True
        with contextlib.suppress(ConnectionClosed):
            await ws.recv()
        await eventually(lambda: echo.ended == [1012], what="the shutdown resumed it")
