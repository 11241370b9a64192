"""The Starlette internals the viewer fast path relies on, each behind one small function.

`gateway.app.GatewayApp` hands viewer WebSockets to their endpoint without Starlette's middleware
and router frames, and the viewer endpoint keeps as little per connection as it can; these are
the places where that reaches past Starlette's public API (listed in gateway/server/__init__.py,
checked against the Starlette range pinned in pyproject by tests/gateway/test_server_pins.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

# A WebSocket's lazily parsed copies of its URL, query string (which carries the token) and
# headers.
PARSED_REQUEST_CACHES = ("_query_params", "_url", "_headers")


def asgi_receive(websocket: WebSocket) -> Receive:
    """The ASGI `receive` under the WebSocket: `websocket.receive` adds a frame and a state
    check per message, and an idle viewer's await chain lives as long as it does."""
    return websocket._receive


def forget_parsed_request(websocket: WebSocket) -> None:
    """Drop Starlette's parsed copies of the URL, query string and headers, when present."""
    for cached in PARSED_REQUEST_CACHES:
        vars(websocket).pop(cached, None)


async def handle_as_starlette_would(
    websocket: WebSocket, exc: Exception, exception_handlers: Mapping[Any, Any]
) -> None:
    """Give `exc`, raised by a WebSocket endpoint called outside Starlette's middleware, to the
    application's exception handlers as Starlette's `ExceptionMiddleware` would (500 and
    `Exception` are the server-error middleware's, not consulted there either)."""
    from starlette._exception_handler import wrap_app_handling_exceptions

    handlers = {
        key: handler for key, handler in exception_handlers.items() if key not in (500, Exception)
    }
    status = {key: h for key, h in handlers.items() if isinstance(key, int)}
    scope = websocket.scope
    scope["starlette.exception_handlers"] = (handlers, status)

    async def reraise(scope: Scope, receive: Receive, send: Send) -> None:
        raise exc

    await wrap_app_handling_exceptions(reraise, websocket)(
        scope, websocket._receive, websocket._send
    )
