"""Idle viewers of the real application park (gateway.server.parking) under the server the CLI
runs (in process, embedded defaults): no task while idle, yet they answer pings, receive the
meeting's messages, are ended by a drain or their token's expiry with the documented codes, and
leave their room and the meeting when they go."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fanout.topics import status_topic
from gateway.app import create_app
from gateway.close_codes import CloseCode
from gateway.config import Settings
from gateway.server.edge import EdgeH11Protocol
from gateway.server.heartbeat import HeartbeatWebSocketProtocol
from gateway.tokens import generate_keypair, mint_token
from tests.util import eventually

TENANT = "acme"
QUEUE_MAX = 8


class Running:
    def __init__(self, server: uvicorn.Server, app: Any, port: int, private_pem: bytes) -> None:
        self.server, self.app, self.port, self.private_pem = server, app, port, private_pem

    @property
    def services(self) -> Any:
        return self.app.state.services

    def url(self, meeting: str, ttl_s: int = 3600) -> str:
        token = mint_token(
            self.private_pem, tenant=TENANT, user="u1", roles=["viewer"], ttl_s=ttl_s
        )
        return f"ws://127.0.0.1:{self.port}/api/v1/ws/meetings/{meeting}?token={token}"

    def tasks(self) -> int:
        return len(self.server.server_state.tasks)

    def viewers_in_room(self, meeting: str) -> int:
        return len(self.services.connections.of_meeting(TENANT, meeting))


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    async with serve_gateway(tmp_path) as gateway:
        yield gateway


@contextlib.asynccontextmanager
async def serve_gateway(tmp_path: Path, **overrides: Any) -> AsyncIterator[Running]:
    """The real app under the CLI's protocols, in process, with `overrides` of its settings."""
    private, public = generate_keypair(tmp_path)
    settings = Settings(
        jwt_public_key_path=public,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
        outbox_dir=tmp_path / "outbox",
        # Viewers need no engine: a vendor one that is never reached starts at once.
        asr_engine="deepgram",
        deepgram_api_key="unused",
        deepgram_url="ws://127.0.0.1:9",
        jwt_leeway_s=0,  # a token expires when its `exp` says
        subscriber_queue_max=QUEUE_MAX,
        **overrides,
    )
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        http=EdgeH11Protocol,
        ws=HeartbeatWebSocketProtocol,
        ws_ping_interval=None,
        proxy_headers=False,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started or task.done(), within=120, what="started")
        assert server.started, "the gateway did not start"
        yield Running(server, app, sock.getsockname()[1], private.read_bytes())
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)


async def ping(ws: ClientConnection) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "ping"}))
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == "pong":
            return message


async def closed_code(ws: ClientConnection) -> int | None:
    """Read until the gateway closes the connection; the code it closed with."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 60)
    return None if closed.value.rcvd is None else closed.value.rcvd.code


async def test_idle_viewers_hold_no_task_and_still_answer_and_leave(running: Running) -> None:
    async with (
        connect(running.url("m-parked")) as first,
        connect(running.url("m-parked")) as second,
    ):
        await eventually(lambda: running.viewers_in_room("m-parked") == 2, what="both joined")
        await eventually(lambda: running.tasks() == 0, what="both viewers parked")
        for _ in range(3):  # resumed for each message, parked again after it
            assert (await ping(first))["meeting_id"] == "m-parked"
            await eventually(lambda: running.tasks() == 0, what="parked again")
        # Publishing still reaches a parked viewer (its socket is written directly).
        probe = json.dumps({"type": "probe", "meeting_id": "m-parked"}).encode()
        await running.services.bus.publish(status_topic(TENANT, "m-parked"), probe)
        seen = await asyncio.wait_for(second.recv(), 30)
        assert json.loads(seen)["type"] == "probe"
    # Their close resumed them: they left the connection registry, the room and the meeting.
    await eventually(lambda: running.viewers_in_room("m-parked") == 0, what="left")
    rooms = running.services.rooms
    await eventually(
        lambda: rooms.local_subscriber_count(TENANT, "m-parked") == 0, what="room left"
    )
    assert running.tasks() == 0


async def test_a_drain_ends_parked_viewers_with_1012(running: Running) -> None:
    async with connect(running.url("m-drain")) as ws:
        await eventually(lambda: running.viewers_in_room("m-drain") == 1)
        await eventually(lambda: running.tasks() == 0, what="parked")
        for connection in running.services.connections.of_meeting(TENANT, "m-drain"):
            connection.end(CloseCode.SERVICE_RESTART, "server restarting, reconnect")
        assert await closed_code(ws) == CloseCode.SERVICE_RESTART
    await eventually(lambda: running.viewers_in_room("m-drain") == 0)


async def test_a_parked_viewer_is_closed_4401_when_its_token_expires(running: Running) -> None:
    async with connect(running.url("m-expiry", ttl_s=3)) as ws:
        await eventually(lambda: running.tasks() == 0, what="parked")
        assert await closed_code(ws) == CloseCode.UNAUTHORIZED
    await eventually(lambda: running.viewers_in_room("m-expiry") == 0)


async def test_a_reply_that_overflows_the_queue_closes_the_viewer_4408(running: Running) -> None:
    """The overflow happens in the viewer's own (resumed) task, while it answers a ping."""
    async with connect(running.url("m-full")) as ws:
        await eventually(lambda: running.tasks() == 0, what="parked")
        # Its queue holds everything (as while a history is sent) and is full: the pong the
        # viewer asks for next cannot be queued.
        room = running.services.rooms._rooms[TENANT, "m-full"]
        (queue,) = room.viewers
        queue.hold()
        for n in range(QUEUE_MAX):
            assert queue.offer(json.dumps({"type": "held", "n": n}).encode())
        await ws.send(json.dumps({"type": "ping"}))
        error = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert error["type"] == "error" and error["code"] == CloseCode.SLOW_CONSUMER
        assert await closed_code(ws) == CloseCode.SLOW_CONSUMER
    await eventually(lambda: running.viewers_in_room("m-full") == 0)
    assert running.tasks() == 0


async def test_viewers_arriving_during_the_meetings_first_join_park_too(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """A meeting's first join (its Redis subscription and membership) takes a while; the
    viewers that arrive meanwhile wait for it in their handlers, then park like the rest."""
    viewers = 150
    async with serve_gateway(
        tmp_path,
        redis_url=redis_url,
        redis_key_prefix=redis_prefix,
        max_ws_clients_per_meeting=viewers,
    ) as running:
        gate = asyncio.Semaphore(8)  # as a page of viewers opening at once would

        async def open_viewer() -> ClientConnection:
            async with gate:
                return await connect(running.url("m-first"))

        clients = await asyncio.gather(*(open_viewer() for _ in range(viewers)))
        try:
            await eventually(lambda: running.viewers_in_room("m-first") == viewers, within=60)
            await eventually(lambda: running.tasks() == 0, what="every viewer parked")
        finally:
            await asyncio.gather(*(client.close() for client in clients))
