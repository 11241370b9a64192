"""WebSocket plumbing shared by the ingest and subscriber clients: connect with a token, decode
server messages, read until close."""

from __future__ import annotations

import contextlib
import inspect
import ipaddress
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import CloseCode

from gateway.client.urls import with_query

Message = dict[str, Any]
MessageHandler = Callable[[Message], Awaitable[None] | None]


class GatewayError(Exception):
    """The gateway refused us: an `error` message, a close before `ready`, or an HTTP rejection."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.asynccontextmanager
async def open_ws(
    url: str,
    token: str | None,
    *,
    token_in_query: bool = False,
    open_timeout_s: float = 10.0,
    **connect_kwargs: Any,
) -> AsyncIterator[ClientConnection]:
    """A client connection authenticated with `token`; an HTTP rejection raises GatewayError."""
    headers: dict[str, str] = {}
    if token and token_in_query:
        url = with_query(url, token=token)
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    # A local gateway must not be reached through HTTP(S)_PROXY from the environment.
    connect_kwargs.setdefault("proxy", None if _is_loopback(url) else True)
    connect_kwargs.setdefault("close_timeout", 5.0)  # don't hang a Ctrl-C on a silent server
    try:
        ws = await connect(
            url, additional_headers=headers, open_timeout=open_timeout_s, **connect_kwargs
        )
    except InvalidStatus as exc:
        body = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
        raise GatewayError(exc.response.status_code, body or str(exc)) from exc
    try:
        yield ws
    except (GatewayError, TimeoutError):
        raise  # the server refused or went quiet: nothing went wrong on our side
    except Exception:
        await ws.close(CloseCode.INTERNAL_ERROR)  # a bug of ours, say in on_message
        raise
    finally:
        # Cancellation (Ctrl-C, a test leaving) closes normally, where websockets' own context
        # manager would report 1011 for any exception. A no-op when already closed.
        await ws.close()


def decode_message(raw: str | bytes) -> Message:
    """A server message as a dict; non-JSON or non-object payloads are wrapped, not dropped."""
    if isinstance(raw, bytes):
        return {"type": "<binary>", "size": len(raw)}
    try:
        msg = json.loads(raw)
    except ValueError:
        return {"type": "<text>", "text": raw}
    return msg if isinstance(msg, dict) else {"type": "<json>", "value": msg}


async def dispatch(handler: MessageHandler | None, msg: Message) -> None:
    if handler is not None:
        result = handler(msg)
        if inspect.isawaitable(result):
            await result


async def read_all(ws: ClientConnection, deliver: Callable[[Message], Awaitable[None]]) -> None:
    """Deliver every message until the connection closes, whatever the close code."""
    with contextlib.suppress(ConnectionClosed):
        async for raw in ws:
            await deliver(decode_message(raw))


def close_of(exc: ConnectionClosed) -> tuple[int, str]:
    return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (1006, "connection lost")
