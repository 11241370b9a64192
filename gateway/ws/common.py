"""What both WebSocket endpoints share: authenticate after accept, and close with an error."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from fanout.direct_frames import frame_writer
from fanout.messages import ErrorMessage
from gateway.auth import Forbidden, Principal, Unauthorized, bearer_token
from gateway.close_codes import CloseCode, CloseError, peer_code
from gateway.dependency_errors import UNAVAILABLE_ERRORS, unavailable
from gateway.ids import ID_RULE, valid_id
from gateway.observability.logs import get_logger
from gateway.observability.metrics import SCOPE_TENANT, SCOPE_TOKEN_TENANT
from gateway.params import ParamError, single
from gateway.server.parking import Parked
from gateway.services import Services
from gateway.ws.live import RESTARTING, LiveConnection
from gateway.ws.session_token import TOKEN_EXPIRED, SessionToken

log = get_logger("gateway.ws")


def refuse_while_draining(services: Services) -> None:
    """New connections are turned away with 1012 once a drain started."""
    if services.draining:
        raise CloseError(CloseCode.SERVICE_RESTART, RESTARTING)


def open_connection(
    services: Services, token: str | None, principal: Principal, role: str, meeting_id: str
) -> LiveConnection:
    """An authorized connection, registered and with its token's expiry armed; use it in a
    `with` block, which unregisters it. (A plain context manager: a suspended generator
    would keep its frame, and the token, for as long as a viewer stays.)"""
    connection = LiveConnection(role, principal.tenant_id, meeting_id)
    try:
        connection.token = SessionToken(
            services.verifier,
            connection,
            token or "",
            principal,
            leeway_s=services.settings.jwt_leeway_s,
            recheck_s=services.settings.key_recheck_s,
        )
    except Unauthorized as exc:  # its key went since the token was verified
        raise CloseError(CloseCode.UNAUTHORIZED, str(exc)) from None
    connection.register(services.connections)
    if services.draining:  # authorized while a drain started: it ends like the others
        connection.end(CloseCode.SERVICE_RESTART, RESTARTING)
    elif (left_s := services.deletions.refused_for_s(principal.tenant_id, meeting_id)) > 0:
        connection.end(
            CloseCode.MEETING_DELETED,
            f"meeting deleted; its id can be used again in {math.ceil(left_s)} s",
        )
    elif connection.token.expired():
        # Valid at the upgrade, expired by the time the connection opens (an ingest after
        # its handshake): it ends before anything of it is stored.
        connection.end(CloseCode.UNAUTHORIZED, TOKEN_EXPIRED)
    return connection


def authorize(websocket: WebSocket, services: Services, role: str) -> tuple[Principal, str]:
    """The principal and meeting id, or a CloseError naming what is wrong; from here on the
    connection counts as opened (once: `verified` checks the token again without that)."""
    principal, meeting_id = verified(websocket, services, role)
    # From here on the connection counts for its tenant (serve_connection counts its end), and
    # every log line of its task carries tenant and meeting.
    websocket.scope[SCOPE_TENANT] = principal.tenant_id
    services.metrics.connection_opened(role, principal.tenant_id, meeting_id)
    structlog.contextvars.bind_contextvars(tenant=principal.tenant_id, meeting=meeting_id)
    return principal, meeting_id


def verified(websocket: WebSocket, services: Services, role: str) -> tuple[Principal, str]:
    """The connection's token checked now (signature, key, times, role, meeting): its principal
    and meeting id, or a CloseError (4400, 4401, 4403)."""
    meeting_id: str = websocket.path_params["meeting_id"]
    try:
        single(websocket.query_params, "token")  # a repeated token: which one counts is unclear
    except ParamError as exc:
        raise CloseError(CloseCode.PROTOCOL_ERROR, str(exc)) from None
    try:
        principal = services.verifier.verify(
            bearer_token(websocket.headers, websocket.query_params)
        )
        websocket.scope[SCOPE_TOKEN_TENANT] = principal.tenant_id
        principal.require(role, meeting_id)
    except Unauthorized as exc:
        services.metrics.auth_failed("unauthorized")
        raise CloseError(CloseCode.UNAUTHORIZED, str(exc)) from None
    except Forbidden as exc:
        services.metrics.auth_failed("forbidden")
        raise CloseError(CloseCode.FORBIDDEN, str(exc)) from None
    if not valid_id(meeting_id):
        raise CloseError(CloseCode.PROTOCOL_ERROR, f"meeting id must be {ID_RULE}")
    return principal, meeting_id


def is_open(websocket: WebSocket) -> bool:
    return (
        websocket.client_state == WebSocketState.CONNECTED
        and websocket.application_state == WebSocketState.CONNECTED
    )


CLOSE_TIMEOUT_S = 5.0


async def close_with(
    websocket: WebSocket,
    code: int,
    reason: str = "",
    *,
    error: str | None = None,
    error_reason: str | None = None,
) -> None:
    """Send an error message first (when given), then close.

    A vanished peer is not an error, and a peer that stopped reading cannot hold us: the whole
    goodbye is bounded by CLOSE_TIMEOUT_S.
    """
    if not is_open(websocket):
        return
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            if error is not None:
                meeting_id = websocket.path_params.get("meeting_id")
                message = ErrorMessage(
                    meeting_id=meeting_id, code=code, message=error, reason=error_reason
                )
                await websocket.send_text(message.encode().decode())
            await websocket.close(code, reason)
    except TimeoutError:
        # The peer reads nothing (a zero receive window): a graceful close would wait forever
        # on its buffer, holding the socket. Drop the connection instead.
        writer = frame_writer(websocket.scope)
        if writer is not None:
            writer.transport.abort()
    except Exception:
        pass  # the peer is gone already


async def close_for(websocket: WebSocket, error: CloseError) -> None:
    await close_with(
        websocket, error.code, error.reason, error=error.message, error_reason=error.kind
    )


async def serve_connection(
    websocket: WebSocket,
    role: str,
    handler: Callable[[WebSocket, Services], Awaitable[int | None]],
    *,
    resumed: bool = False,
) -> None:
    """Accept, run the endpoint's handler, and turn whatever ends it into a documented close.

    The handler returns the close code the connection ended with (None: a normal close). A
    handler that parks its connection (gateway.server.parking) leaves it open and uncounted; its
    resumed handler comes through here again, `resumed`, to end it.
    """
    services: Services = websocket.app.state.services
    if not resumed:
        await websocket.accept()
        structlog.contextvars.bind_contextvars(connection_id=uuid.uuid4().hex[:12], role=role)
    code: int = CloseCode.NORMAL
    parked = False
    try:
        code = await handler(websocket, services) or CloseCode.NORMAL
    except Parked:
        parked = True
        raise
    except WebSocketDisconnect as exc:  # the client left while we were writing to it
        code = peer_code(exc.code)
    except CloseError as error:
        code = error.code
        await close_for(websocket, error)
    except UNAVAILABLE_ERRORS as exc:
        code = CloseCode.UNAVAILABLE
        line, message = unavailable(exc)
        log.warning(line, role=role, error=type(exc).__name__)
        await close_with(websocket, code, "unavailable", error=message)
    except Exception:
        code = CloseCode.INTERNAL_ERROR
        log.exception("connection failed", role=role)
        await close_with(websocket, code, "internal error", error="internal error")
    finally:
        if not parked:
            _ended(websocket, services, role, code)


def _ended(websocket: WebSocket, services: Services, role: str, code: int) -> None:
    """Log and count the connection's end."""
    tenant = websocket.scope.get(SCOPE_TENANT)
    log.info("connection ended", code=int(code))
    if tenant is None:
        services.metrics.connection_refused(role, code, websocket.scope.get(SCOPE_TOKEN_TENANT, ""))
    else:
        meeting_id = websocket.path_params["meeting_id"]
        services.metrics.connection_closed(role, tenant, meeting_id, code)
