"""Parked connections through a real uvicorn server with the gateway's protocol
(gateway.server.parking): no task while parked, resumed on each message, on the peer's close and
on the application's `unpark`, in the context the handler parked in, with messages in order."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any

import uvicorn
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
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


async def parked(echo: Echo, server: uvicorn.Server) -> None:
    await eventually(lambda: echo.park is not None and not server.server_state.tasks, what="parked")


async def test_a_parked_connection_has_no_task_and_resumes_on_each_message_in_order() -> None:
    echo = Echo()
    async with serving(echo.endpoint, "/echo") as (url, server):
        async with connect(url) as ws:
            await parked(echo, server)
            for n in range(3):
                await ws.send(f"m{n}")
                assert await ws.recv() == f"m{n} (handler's)"
                await eventually(lambda: not server.server_state.tasks, what="parked again")
            # Several at once: one resume answers them all, in order.
            for n in range(5):
                await ws.send(f"b{n}")
            assert [await ws.recv() for _ in range(5)] == [f"b{n} (handler's)" for n in range(5)]
        await eventually(lambda: echo.ended == [1000], what="the peer's close resumed it")
        assert echo.runs >= 5
        assert not server.server_state.tasks


async def test_unpark_lets_the_application_close_a_parked_connection() -> None:
    echo = Echo()
    async with serving(echo.endpoint, "/echo") as (url, server):
        async with connect(url) as ws:
            await parked(echo, server)
            echo.ending = True
            echo.park.unpark()
            try:
                await ws.recv()
                raise AssertionError("the connection stayed open")
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 4000
        await eventually(lambda: echo.ended == ["closed"])
        echo.park.unpark()  # no longer parked: nothing happens
        assert not server.server_state.tasks


async def test_a_server_shutdown_resumes_parked_connections() -> None:
    echo = Echo()
    async with serving(echo.endpoint, "/echo") as (url, server):
        async with connect(url) as ws:
            await parked(echo, server)
            server.should_exit = True
            with contextlib.suppress(ConnectionClosed):
                await ws.recv()
    assert echo.ended == [1012]
