"""The ASGI application: routes and the lifespan that builds the services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway import drain
from gateway.config import Settings
from gateway.dependency_errors import unavailable
from gateway.http import api as http_api
from gateway.http import meetings as http_meetings
from gateway.http import notes as http_notes
from gateway.http import openapi as http_openapi
from gateway.http.errors import HttpError, error_response, http_error_handler
from gateway.http.recording_events import routes as recording_event_routes
from gateway.http.recordings import routes as recording_routes
from gateway.http.recordings import start_recordings
from gateway.http.viewer import routes as viewer_routes
from gateway.http.webhooks import routes as webhook_routes
from gateway.observability.logs import configure_logging, get_logger
from gateway.observability.metrics import multiprocess_dir
from gateway.observability.metrics_server import serving_metrics
from gateway.server.forwarded import ForwardedHeaders
from gateway.server.heartbeat import on_heartbeat_timeout
from gateway.server.starlette_internals import handle_as_starlette_would
from gateway.services import build_services
from gateway.ws.common import UNAVAILABLE_ERRORS
from gateway.ws.ingest import ingest_endpoint
from gateway.ws.no_endpoint import no_such_endpoint, upgrade_required
from gateway.ws.subscriber import subscriber_endpoint

log = get_logger("gateway.app")

VIEWER_PATH = "/api/v1/ws/meetings/{meeting_id}"
UNAVAILABLE_RETRY_AFTER_S = 5  # a dependency away, or no pooled connection free in time


class GatewayApp(Starlette):
    """Starlette, with viewer WebSockets handed to their endpoint directly.

    A viewer's connection may idle for hours, and every frame of the call chain lives as long as
    it does: Starlette's middleware, exception wrappers and router cost about 5 KiB per viewer.
    The viewer endpoint handles every error of its own (gateway.ws.common.serve_connection), so
    those layers add nothing to it; the route still matches exactly as the router would, and an
    exception escaping the endpoint still reaches the application's exception handlers."""

    viewer_route: WebSocketRoute | None = None
    forwarded: ForwardedHeaders | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.forwarded is not None:
            self.forwarded.apply(scope)
        route = self.viewer_route
        if route is not None and scope["type"] == "websocket":
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope["app"] = self
                scope.setdefault("router", self.router)
                scope.update(child_scope)
                websocket = WebSocket(scope, receive=receive, send=send)
                try:
                    await route.endpoint(websocket)
                except Exception as exc:
                    await self._handle_viewer_error(websocket, exc)
                return
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            send = _not_stored(send)
        await super().__call__(scope, receive, send)

    async def _handle_viewer_error(self, websocket: WebSocket, exc: Exception) -> None:
        """What Starlette's exception middleware does with it (rare: built only on error)."""
        await handle_as_starlette_would(websocket, exc, self.exception_handlers)


def _not_stored(send: Send) -> Send:
    """`Cache-Control: no-store` on an API answer that sets none: transcripts, notes and a new
    webhook's secret must not stay in a browser's or a proxy's cache."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = message.get("headers", [])
            if not any(name.lower() == b"cache-control" for name, _ in headers):
                message["headers"] = [*headers, (b"cache-control", b"no-store")]
        await send(message)

    return sending


async def _unavailable(request: Request, exc: Exception) -> Response:
    # Which request (the path, never its query) tells on-call who is affected.
    line, message = unavailable(exc)
    log.warning(line, method=request.method, path=request.url.path, error=type(exc).__name__)
    return error_response(503, message, retry_after=UNAVAILABLE_RETRY_AFTER_S)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    response = error_response(exc.status_code, exc.detail)
    response.headers.update(exc.headers or {})
    if exc.status_code == 405:
        # Starlette's Allow names the methods of the first route matching the path; a path
        # served by one route per method allows them all.
        response.headers["allow"] = ", ".join(_allowed_methods(request))
    return response


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= route.methods
    return sorted(methods)


async def _internal_error(_: Request, exc: Exception) -> Response:
    """A bug: the client still gets the API's JSON error (Starlette then re-raises `exc`, so
    the server logs its traceback)."""
    return error_response(500, "internal error")


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            services = app.state.services = await build_services(settings, stack)
            stack.callback(services.metrics.close)
            await stack.enter_async_context(
                services.metrics.flushing(refresh=lambda: http_api.refresh_outbox(services))
            )
            stack.callback(on_heartbeat_timeout(services.metrics.heartbeat_timeout))
            stack.enter_context(drain.registered(services))  # SIGTERM drains it
            if settings.metrics_port is not None:  # /metrics on its own port only
                await stack.enter_async_context(
                    serving_metrics(
                        lambda: http_api.metrics_exposition(services),
                        settings.metrics_host,
                        settings.metrics_port,
                        reuse_port=multiprocess_dir() is not None,  # serve --workers N
                    )
                )
            await start_recordings(services, stack)
            log.info(
                "gateway ready",
                engines=settings.engine_chain,
                bus="redis" if settings.redis_url else "in-process",
                database=settings.database_url.split(":", 1)[0],
            )
            if settings.database_url.startswith("postgresql") and not settings.redis_url:
                # A shared database suggests several replicas; without Redis each one keeps its
                # viewers and its numbering to itself (an empty REDIS_URL in a Secret).
                log.warning(
                    "REDIS_URL is unset: this replica shares neither its meetings' messages nor "
                    "their numbering with other replicas; run one replica only, or set REDIS_URL"
                )
            yield

    routes = [
        WebSocketRoute("/api/v1/ws/ingest/meetings/{meeting_id}", ingest_endpoint),
        viewer_route := WebSocketRoute(VIEWER_PATH, subscriber_endpoint),
        Route("/api/v1/ws/stats", http_api.gateway_stats),
        Route("/api/v1/ws/meetings/{meeting_id}/stats", http_api.meeting_stats),
        Route("/api/v1/meetings", http_meetings.list_meetings),
        Route("/api/v1/meetings/{meeting_id}", http_meetings.get_meeting, methods=["GET"]),
        Route("/api/v1/meetings/{meeting_id}", http_meetings.edit_meeting, methods=["PATCH"]),
        Route("/api/v1/meetings/{meeting_id}", http_meetings.delete_meeting, methods=["DELETE"]),
        Route(
            "/api/v1/meetings/{meeting_id}/segments/{segment_no}",
            http_meetings.correct_segment,
            methods=["PATCH"],
        ),
        Route("/api/v1/meetings/{meeting_id}/transcript", http_meetings.transcript),
        Route(
            "/api/v1/meetings/{meeting_id}/notes",
            http_notes.meeting_notes,
            methods=["GET", "POST"],
        ),
        Route("/api/v1/search", http_meetings.search),
        Route("/api/v1/openapi.json", http_openapi.openapi),
        Route("/healthz", http_api.healthz),
        Route("/readyz", http_api.readyz),
        Route("/readyz/ingest", http_api.readyz_ingest),
        Route("/readyz/live", http_api.readyz_live),
        *viewer_routes,
        *recording_routes,
        *recording_event_routes,
        *webhook_routes,
        *([] if settings.metrics_port is not None else [Route("/metrics", http_api.metrics)]),
        # Last: what no route above took.
        Route("/api/v1/ws/ingest/meetings/{meeting_id}", upgrade_required),
        Route(VIEWER_PATH, upgrade_required),
        WebSocketRoute("/{path:path}", no_such_endpoint),
    ]
    app = GatewayApp(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            HttpError: http_error_handler,
            HTTPException: _http_exception,
            **dict.fromkeys((*UNAVAILABLE_ERRORS, OSError), _unavailable),
            Exception: _internal_error,
        },
    )
    # `/api/v1/meetings/` answered 307 with an empty body: an unknown path is a JSON 404.
    app.router.redirect_slashes = False
    app.viewer_route = viewer_route
    app.forwarded = ForwardedHeaders(settings.forwarded_allow_ips)
    return app
