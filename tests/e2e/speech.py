"""Stream the committed speech fixtures and watch them arrive over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.client.audio import load_wav_pcm
from gateway.client.ingest import StreamSummary, stream_pcm
from gateway.client.urls import ingest_url
from tests.e2e.harness import Gateway

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CATALOG = json.loads((FIXTURES / "fixtures.json").read_text())["files"]


def fixture(name: str) -> tuple[Path, list[str]]:
    entry = next(f for f in CATALOG if f["file"] == name)
    return FIXTURES / name, [s["text"] for s in entry["sentences"]]


@dataclass
class Watcher:
    """A subscriber collecting everything its meeting delivers."""

    ws: ClientConnection
    messages: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[None] | None = None
    close_code: int | None = None

    async def _collect(self) -> None:
        try:
            async for raw in self.ws:
                async with self.changed:
                    self.messages.append(json.loads(raw))
                    self.changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            async with self.changed:
                self.changed.notify_all()

    async def wait_for(self, predicate, timeout: float = 60.0) -> None:
        async def until() -> None:
            async with self.changed:
                await self.changed.wait_for(lambda: predicate(self) or self.task.done())

        await asyncio.wait_for(until(), timeout)
        assert predicate(self), f"condition not met; connection ended {self.close_code}"

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def finals(self) -> list[dict[str, Any]]:
        return self.of_type("transcript.final")

    def partials(self) -> list[dict[str, Any]]:
        return self.of_type("transcript.partial")

    async def close(self) -> None:
        await self.ws.close()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task


async def watch(url: str) -> Watcher:
    """Connect and prove the subscription is live (a pong) before returning."""
    ws = await connect(url)
    await ws.send(json.dumps({"type": "ping"}))
    watcher = Watcher(ws)
    while True:  # history (since=) may arrive before the pong
        message = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if message["type"] == "pong":
            break
        watcher.messages.append(message)
    watcher.task = asyncio.create_task(watcher._collect())
    return watcher


async def stream_fixture(
    gw: Gateway,
    token: str,
    meeting: str,
    name: str,
    *,
    source: str = "mic",
    speed: float = 4.0,
    **kwargs: Any,
) -> StreamSummary:
    pcm, rate, channels = load_wav_pcm(FIXTURES / name)
    return await stream_pcm(
        ingest_url(gw.http, meeting),
        token,
        pcm,
        sample_rate=rate,
        channels=channels,
        source=source,
        speed=speed,
        close_timeout_s=120,
        **kwargs,
    )
