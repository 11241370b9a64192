"""Subscribing to a meeting: every server message to a handler until the connection closes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from gateway.client.connection import MessageHandler, dispatch, open_ws, read_all
from gateway.client.urls import with_query


@dataclass(frozen=True)
class CloseInfo:
    code: int
    reason: str


async def ping_every(ws: ClientConnection, interval_s: float) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.sleep(interval_s)
            await ws.send(json.dumps({"type": "ping"}))


async def close_on(ws: ClientConnection, stop: asyncio.Event) -> None:
    await stop.wait()
    await ws.close()


async def subscribe(
    url: str,
    token: str | None,
    *,
    since: int | None = None,
    on_message: MessageHandler,
    token_in_query: bool = False,
    ping_interval_s: float | None = None,
    stop: asyncio.Event | None = None,
) -> CloseInfo:
    """Pass every message of a meeting subscription to `on_message` until the connection closes.

    Returns how it closed (an `error` message before the close also reaches `on_message`). Set
    `stop` (or cancel the task) to leave; `ping_interval_s` sends application-level pings.
    """
    url = with_query(url, since=since)
    async with open_ws(url, token, token_in_query=token_in_query) as ws:
        helpers = []
        if ping_interval_s:
            helpers.append(asyncio.create_task(ping_every(ws, ping_interval_s)))
        if stop is not None:
            helpers.append(asyncio.create_task(close_on(ws, stop)))
        try:
            await read_all(ws, lambda msg: dispatch(on_message, msg))
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
    return CloseInfo(ws.close_code or 1006, ws.close_reason or "")
