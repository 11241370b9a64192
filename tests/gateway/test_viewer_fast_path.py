"""`GatewayApp` hands viewer WebSockets to their endpoint directly, matching as the router would."""

from __future__ import annotations

from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from gateway.app import VIEWER_PATH, GatewayApp


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "websocket",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "scheme": "ws",
        "server": ("testserver", 80),
        "client": ("testclient", 1),
        "subprotocols": [],
        "extensions": {},
    }


async def test_viewer_path_reaches_the_endpoint_with_path_params_and_app() -> None:
    seen: list[WebSocket] = []

    async def endpoint(websocket: WebSocket) -> None:
        seen.append(websocket)

    route = WebSocketRoute(VIEWER_PATH, endpoint)
    app = GatewayApp(routes=[route])
    app.viewer_route = route

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    await app(_scope("/api/v1/ws/meetings/m-1"), receive, send)
    assert len(seen) == 1
    assert seen[0].path_params == {"meeting_id": "m-1"}
    assert seen[0].app is app


async def test_an_escaping_exception_reaches_the_app_handlers_and_other_paths_use_the_router() -> (
    None
):
    handled: list[Exception] = []
    sent: list[dict[str, Any]] = []

    async def endpoint(websocket: WebSocket) -> None:
        raise OSError("boom")

    async def on_oserror(conn: Any, exc: Exception) -> None:
        handled.append(exc)

    route = WebSocketRoute(VIEWER_PATH, endpoint)
    app = GatewayApp(routes=[route], exception_handlers={OSError: on_oserror})
    app.viewer_route = route

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(_scope("/api/v1/ws/meetings/m-1"), receive, send)
    assert [str(exc) for exc in handled] == ["boom"]

    # Not the viewer path: Starlette's router answers (no route: the socket is closed).
    await app(_scope("/api/v1/ws/meetings/m-1/extra"), receive, send)
    assert sent[-1]["type"] == "websocket.close"
