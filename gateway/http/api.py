"""REST endpoints: transcript export, stats for ops, health and readiness."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth import ROLE_OPS, Forbidden, Principal, Unauthorized, bearer_token
from gateway.dependency_errors import UNAVAILABLE_ERRORS
from gateway.http.errors import HttpError
from gateway.ids import ID_RULE, valid_id
from gateway.observability.stats import tenant_stats
from gateway.services import Services
from store.base import STREAM_FRESH_WITHIN_S, StreamInfo


def _services(request: Request) -> Services:
    return request.app.state.services


def authorize(request: Request, role: str, meeting_id: str | None = None) -> Principal:
    return authorize_any(request, (role,), meeting_id)


def lacked(roles: tuple[str, ...]) -> str:
    """`'viewer'`, or `'viewer' or 'ops'`: the roles a route takes, for its 403."""
    return " or ".join(f"'{role}'" for role in roles)


def authorize_any(
    request: Request, roles: tuple[str, ...], meeting_id: str | None = None
) -> Principal:
    """The request's principal, holding one of `roles` (and valid for `meeting_id` if given)."""
    services = _services(request)
    # REST takes the token from the Authorization header only: URLs end up in logs and history.
    try:
        token = bearer_token(request.headers, {})
        if token is None:  # (a token in the URL, or a header without its scheme, is not read)
            raise Unauthorized("missing token: send it as `Authorization: Bearer <JWT>`")
        principal = services.verifier.verify(token)
        held = next((role for role in roles if role in principal.roles), None)
        if held is None:
            raise Forbidden(f"token lacks the {lacked(roles)} role")
        principal.require(held, meeting_id)
    except Unauthorized as exc:
        services.metrics.auth_failed("unauthorized")
        raise HttpError(401, str(exc)) from None
    except Forbidden as exc:
        services.metrics.auth_failed("forbidden")
        raise HttpError(403, str(exc)) from None
    if meeting_id is not None and not valid_id(meeting_id):
        raise HttpError(400, f"meeting id must be {ID_RULE}")
    return principal


def authorize_tenant_wide(request: Request, role: str) -> Principal:
    """As `authorize`, for a route that covers every meeting of the tenant (webhooks, stats):
    a token bound to some meetings (`meetings` claim) is 403 there."""
    principal = authorize(request, role)
    if principal.meetings is not None:
        _services(request).metrics.auth_failed("forbidden")
        raise HttpError(403, "token is bound to meetings; this route covers the whole tenant")
    return principal


async def gateway_stats(request: Request) -> Response:
    """This replica's figures for the token's tenant only (whole-replica ones are on /metrics)."""
    principal = authorize_tenant_wide(request, ROLE_OPS)
    services = _services(request)
    body = tenant_stats(services.metrics, principal.tenant_id, services.replica_id)
    # This tenant's numbered finals on disk waiting for the database (README "Delivery
    # guarantees"); the replica's whole outbox is on /metrics.
    body["outbox"] = await services.finals.tenant_backlog(principal.tenant_id)
    return JSONResponse(body)


async def metrics(request: Request) -> Response:
    """Prometheus text format; unauthenticated, so deployments keep it off the public edge (or
    serve it on METRICS_PORT instead: gateway/observability/metrics_server.py)."""
    body, content_type = metrics_exposition(_services(request))
    return Response(body, media_type=content_type)


def metrics_exposition(services: Services) -> tuple[bytes, str]:
    """The replica's metrics, outbox figures refreshed: (body, content type)."""
    refresh_outbox(services)
    return services.metrics.exposition()


def refresh_outbox(services: Services) -> None:
    """This process's outbox and engine breaker gauges, as of now (no I/O)."""
    outbox = services.finals.stats()
    services.metrics.set_outbox(outbox.depth, outbox.oldest_age_s, outbox.unwritable)
    chain = services.engines
    services.metrics.set_breakers({e.name: chain.breaker_tripped(e.name) for e in chain.engines})


async def meeting_stats(request: Request) -> Response:
    meeting_id = request.path_params["meeting_id"]
    principal = authorize(request, ROLE_OPS, meeting_id)
    services = _services(request)
    tenant = principal.tenant_id
    store = services.store
    # During an outage (when on-call needs it most) what this replica knows is answered: what
    # the database or Redis would say is null, and `unavailable` names which (it was a 503).
    unavailable: list[str] = []
    streams: list[StreamInfo] | None = None
    summary = None
    try:
        streams = await store.active_streams(
            tenant, meeting_id, fresh_within_s=STREAM_FRESH_WITHIN_S
        )
        summary = await store.meeting_stats(tenant, meeting_id)
    except UNAVAILABLE_ERRORS:
        unavailable.append("database")
    subscribers: int | None = None
    try:
        subscribers = await services.coordinator.subscriber_count(tenant, meeting_id)
    except UNAVAILABLE_ERRORS:
        unavailable.append("bus")
    body: dict[str, object] = {
        "meeting_id": meeting_id,
        "subscribers": subscribers,
        "local_subscribers": services.rooms.local_subscriber_count(tenant, meeting_id),
        "ingest_streams": None
        if streams is None
        else [_stream_stats(s, services) for s in streams],
        "final_count": None if summary is None else summary.final_count,
        "last_segment_no": None if summary is None else summary.last_segment_no,
    }
    if unavailable:
        body["unavailable"] = unavailable
    return JSONResponse(body)


def _stream_stats(stream: StreamInfo, services: Services) -> dict[str, object]:
    # This replica's own streams are exact; other replicas' are as of their last row update.
    own = services.live_ingests.get(stream.stream_id)
    audio_ms, frames = (own.audio_ms, own.frames) if own else (stream.audio_ms, stream.frames)
    return {
        "stream_id": stream.stream_id,
        "source": stream.source,
        "engine": (own.engine if own else None) or stream.engine,
        "audio_seconds": audio_ms / 1000,
        "frames": frames,
        "sample_rate": stream.sample_rate,
        "channels": stream.channels,
        "started_at": stream.started_at.isoformat(),
    }


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Whether this replica can serve its traffic: viewers, the REST API and ingest. A full
    engine is reported, not failed: the replica still serves viewers and the API, and a stream
    it cannot take is refused with a retryable close."""
    return await _readiness(request, optional={"engines"})


async def readyz_ingest(request: Request) -> Response:
    """Whether a new ingest stream can start here (a route of ingest only): an engine can take
    it and the bus answers; a database outage is reported, not failed, once the schema was
    checked (finals wait in the outbox)."""
    services = _services(request)
    optional = {"database"} if services.store.schema_checked else set()
    return await _readiness(request, optional=optional)


async def readyz_live(request: Request) -> Response:
    """`readyz` for live meetings: a database or bus outage is reported, not failed, once the
    replica has reached it (the schema checked, the bus connected) since it started. Live
    streams and viewers ride it out (finals wait in the outbox, publishes are retried), and
    both are shared: failing every replica at once would take the whole Service down, the
    REST API and the viewer page with it."""
    services = _services(request)
    optional = {"engines"}
    if services.store.schema_checked:
        optional.add("database")
    if services.bus.reached:
        optional.add("bus")
    return await _readiness(request, optional=optional)


# A check that is reported, not required, answers within this: a database that hangs (a
# partition, not a refusal) took its own 5 s, past the probe's timeout, failing every replica.
OPTIONAL_CHECK_S = 1.0
# One check in flight per store or bus, shared by the probes and never cancelled: a cancelled
# connect or query still waits out SQLAlchemy's close of the connection (2 s more with asyncpg),
# and a command cut short costs redis-py its connection.
_checks_in_flight: weakref.WeakKeyDictionary[Any, asyncio.Future[bool]] = (
    weakref.WeakKeyDictionary()
)


async def _healthy_within(dependency: Any, timeout_s: float) -> bool:
    check = _checks_in_flight.get(dependency)
    if check is None or check.done():
        check = _checks_in_flight[dependency] = asyncio.ensure_future(dependency.healthy())
    done, _ = await asyncio.wait({check}, timeout=timeout_s)
    return bool(check.result()) if done else False


async def _readiness(request: Request, *, optional: set[str]) -> Response:
    services = _services(request)
    if services.draining:  # gateway/drain.py: take this replica out of rotation at once
        return JSONResponse(
            {"status": "draining", "checks": {"not_draining": False}}, status_code=503
        )
    # A check that is reported, not required, answers within the probe's budget.
    database_check = (
        _healthy_within(services.store, OPTIONAL_CHECK_S)
        if "database" in optional
        else services.store.healthy()
    )
    bus_check = (
        _healthy_within(services.bus, OPTIONAL_CHECK_S)
        if "bus" in optional
        else services.bus.healthy()
    )
    database, bus = await asyncio.gather(database_check, bus_check)
    # Answering is not enough: a database that takes no write is down for what matters here.
    database = database and not services.finals.writes_failing()
    # The replica's own outbox file (its disk): never optional, it fails this replica only.
    outbox = not services.finals.outbox_failing()
    services.metrics.set_dependencies({"database": database, "bus": bus, "outbox": outbox})
    checks = {
        "database": database,
        "bus": bus,
        "outbox": outbox,
        # Room for a stream on an engine whose breaker lets one try (an engine down is not).
        "engines": services.engines.can_take_stream(),
        "not_draining": not services.draining,
    }
    ready = all(ok for name, ok in checks.items() if name not in optional)
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )
