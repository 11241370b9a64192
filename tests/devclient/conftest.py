"""A key pair and a minimal in-process gateway speaking the pinned wire contract."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway.tokens import generate_keypair, mint_token


@dataclass(frozen=True)
class KeyPair:
    key_path: Path
    pub_path: Path

    @property
    def private_pem(self) -> bytes:
        return self.key_path.read_bytes()

    def token(self, roles: list[str], **kwargs: Any) -> str:
        return mint_token(self.private_pem, tenant="t1", user="u1", roles=roles, **kwargs)


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return KeyPair(*generate_keypair(tmp_path_factory.mktemp("keys")))


@dataclass
class FakeGateway:
    """Just enough server to check the client against the contract, recording what it got."""

    public_pem: bytes
    url: str = ""
    http_status: HTTPStatus | None = None  # reject the upgrade itself
    limit_after_frames: int | None = None  # 4429 once more frames than this arrive
    ignore_close: bool = False
    subscriber_script: list[dict[str, Any]] = field(default_factory=list)
    subscriber_stays_open: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    handshakes: list[dict[str, Any]] = field(default_factory=list)
    frames: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, size)
    controls: list[str] = field(default_factory=list)
    subscriber_closes: list[int | None] = field(default_factory=list)  # codes the clients sent

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.http_status is not None:
            return connection.respond(self.http_status, "rejected by fake\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        path, auth = ws.request.path, ws.request.headers.get("Authorization")
        self.requests.append((path, auth))
        claims = self._claims(path, auth)
        if claims is None:
            return await _fail(ws, 4401, "bad token")
        if "/ws/ingest/" in path:
            if "ingest" not in claims["roles"]:
                return await _fail(ws, 4403, "forbidden")
            return await self._ingest(ws)
        await self._subscriber(ws)

    def _claims(self, path: str, auth: str | None) -> dict[str, Any] | None:
        token = auth.removeprefix("Bearer ") if auth else None
        token = token or parse_qs(urlsplit(path).query).get("token", [None])[0]
        try:
            return jwt.decode(
                token or "", self.public_pem, algorithms=["RS256"], audience="meetings"
            )
        except jwt.PyJWTError:
            return None

    async def _ingest(self, ws: ServerConnection) -> None:
        handshake = json.loads(await ws.recv())
        if handshake.get("type") != "handshake" or handshake.get("channels") not in (1, 2):
            return await _fail(ws, 4400, "bad handshake")
        self.handshakes.append(handshake)
        ready = {"type": "ready", "stream_id": "s1", "engine": "fake"}
        await ws.send(json.dumps(ready | {"sample_rate": handshake["sample_rate"]}))
        block = 2 * handshake["channels"]
        async for msg in ws:
            if isinstance(msg, bytes):
                if len(msg) > 32768:
                    return await _fail(ws, 1009, "frame too big")
                if len(msg) % block:
                    return await _fail(ws, 4400, "partial sample")
                self.frames.append((time.monotonic(), len(msg)))
                if self.limit_after_frames is not None:
                    if len(self.frames) > self.limit_after_frames:
                        return await _fail(ws, 4429, "rate limited")
                continue
            kind = json.loads(msg)["type"]
            self.controls.append(kind)
            if kind == "close" and not self.ignore_close:
                await ws.send(json.dumps({"type": "summary", "frames": len(self.frames)}))
                await ws.close(1000, "stream closed")
                return

    async def _subscriber(self, ws: ServerConnection) -> None:
        for msg in self.subscriber_script:
            await ws.send(json.dumps(msg))
        if not self.subscriber_stays_open:
            await ws.close(1000, "meeting ended")
            return
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                if json.loads(raw).get("type") == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
        self.subscriber_closes.append(ws.close_code)


async def _fail(ws: ServerConnection, code: int, message: str) -> None:
    try:
        await ws.send(json.dumps({"type": "error", "code": code, "message": message}))
        await ws.close(code, message)
    except ConnectionClosed:
        pass


@pytest.fixture
async def fake_gateway(keypair: KeyPair) -> AsyncIterator[FakeGateway]:
    fake = FakeGateway(public_pem=keypair.pub_path.read_bytes())
    async with serve(fake.handler, "127.0.0.1", 0, process_request=fake.process_request) as srv:
        port = srv.sockets[0].getsockname()[1]
        fake.url = f"http://127.0.0.1:{port}"
        yield fake
