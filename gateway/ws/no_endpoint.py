"""WebSocket paths no endpoint serves, answered as the endpoints answer bad input: accepted,
told why in an `error` message and closed 4400 (Starlette refuses them with a bare HTTP 403,
which a browser cannot read and which reads as a refused token). A plain HTTP GET of an
endpoint's path gets 426 with the same kind of reason."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from gateway.close_codes import CloseCode, CloseError
from gateway.http.errors import error_response
from gateway.ids import ID_RULE
from gateway.ws.common import close_with

INGEST_PREFIX = "/api/v1/ws/ingest/meetings/"
VIEWER_PREFIX = "/api/v1/ws/meetings/"
ENDPOINTS = f"ingest at {INGEST_PREFIX}{{meeting_id}}, viewers at {VIEWER_PREFIX}{{meeting_id}}"


def _problem(path: str) -> str:
    for prefix in (INGEST_PREFIX, VIEWER_PREFIX):
        if path.startswith(prefix) and not path[len(prefix) :]:
            return f"meeting id must be {ID_RULE}"  # empty
    return f"no WebSocket endpoint at this path (a meeting id holds no '/'): {ENDPOINTS}"


async def no_such_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    problem = _problem(websocket.scope["path"])
    error = CloseError(CloseCode.PROTOCOL_ERROR, problem)  # its reason: as on the endpoints
    await close_with(websocket, error.code, error.reason, error=problem)


async def upgrade_required(request: Request) -> Response:
    """A WebSocket endpoint's path asked over plain HTTP."""
    response = error_response(
        426, "this is a WebSocket endpoint: open it with a WebSocket client (Upgrade: websocket)"
    )
    response.headers["Upgrade"] = "websocket"
    return response
