"""Webhook endpoints of the token's tenant (role `admin`): register, list, read, delete, and
each endpoint's delivery log (docs/protocol.md "Webhooks").

A URL is checked when it is registered (http or https, no credentials) and its host resolved:
one that is or resolves to a private, loopback or link-local address is refused with 400 unless
WEBHOOKS_ALLOW_PRIVATE is set. Deliveries check the address again (gateway/webhooks/sender.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import ROLE_ADMIN
from gateway.http.api import authorize_tenant_wide
from gateway.http.errors import HttpError
from gateway.http.params import Params, as_utc, json_body
from gateway.ids import valid_id
from gateway.observability.logs import get_logger
from gateway.services import Services
from gateway.text_rules import description_problem, one_line
from gateway.webhooks.addresses import AddressRefused, checked_address
from gateway.webhooks.urls import check_url, normalized_url, url_identity
from store.webhooks import (
    EVENT_TYPES,
    MAX_DESCRIPTION_CHARS,
    DeclaredInFile,
    Delivery,
    Endpoint,
    EndpointExists,
    TooManyEndpoints,
    WebhookStore,
)

log = get_logger("gateway.http.webhooks")

MAX_ENDPOINTS_PER_TENANT = 20
MAX_BODY_BYTES = 16 * 1024
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
BASE = "/api/v1/webhooks"
# A rotated secret signs beside its successor this long by default (receivers switch meanwhile).
ROTATION_GRACE_S = 24 * 3600
MAX_ROTATION_GRACE_S = 7 * 24 * 3600


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def endpoint_body(endpoint: Endpoint, *, secret: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": endpoint.endpoint_id,
        "url": endpoint.url,
        "events": list(endpoint.events),
        "description": endpoint.description,
        "source": endpoint.source,
        "created_at": _iso(endpoint.created_at),
        "links": {"deliveries": f"{BASE}/{endpoint.endpoint_id}/deliveries"},
    }
    if secret:  # shown once, when the endpoint is created or its secret rotated
        body["secret"] = endpoint.secret
    if (until := endpoint.previous_until(_now())) is not None:
        body["previous_secret_expires_at"] = _iso(until)
    return body


def _now() -> datetime:
    return datetime.now(UTC)


def delivery_body(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.delivery_id,
        "event": delivery.event_type,
        "meeting_id": delivery.meeting_id,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": _iso(delivery.created_at),
        "next_attempt_at": _iso(delivery.next_attempt_at) if delivery.status == "pending" else None,
        "delivered_at": _iso(delivery.delivered_at),
    }


def _store(request: Request) -> WebhookStore:
    services: Services = request.app.state.services
    if services.webhooks is None:
        raise HttpError(501, "webhooks need the SQL store")
    return services.webhooks


def _tenant(request: Request) -> str:
    return authorize_tenant_wide(request, ROLE_ADMIN).tenant_id


async def _endpoint(request: Request, tenant_id: str) -> Endpoint:
    endpoint_id = request.path_params["endpoint_id"]
    endpoint = None
    if valid_id(endpoint_id):
        endpoint = await _store(request).endpoint(endpoint_id, tenant_id)
    if endpoint is None:  # another tenant's endpoint is not found either
        raise HttpError(404, "no such webhook endpoint")
    return endpoint


async def create_endpoint(request: Request) -> Response:
    """POST `{"url": "https://...", "events": [...], "description": "..."}`: 201 with the
    endpoint and its signing secret (shown this once)."""
    tenant_id = _tenant(request)
    body = await json_body(request, MAX_BODY_BYTES)
    unknown = set(body) - {"url", "events", "description"}
    if unknown:
        raise HttpError(400, f"unknown fields: {', '.join(sorted(unknown))}")
    url = body.get("url")
    if not isinstance(url, str):
        raise HttpError(400, "url is required: the https:// URL to deliver events to")
    if (problem := check_url(url)) is not None:
        raise HttpError(400, f"url {problem}")
    url = normalized_url(url)  # one endpoint per URL however it is spelled
    events = body.get("events", list(EVENT_TYPES))
    if not isinstance(events, list) or not events or any(e not in EVENT_TYPES for e in events):
        raise HttpError(400, f"events must be a non-empty list of: {', '.join(EVENT_TYPES)}")
    description = body.get("description")
    if isinstance(description, str):  # one line, as it is listed
        description = one_line(description)
    if description is not None and (
        problem := description_problem(description, MAX_DESCRIPTION_CHARS)
    ):
        raise HttpError(400, f"description {problem}")
    services: Services = request.app.state.services
    parts = urlsplit(url)
    try:
        await checked_address(
            parts.hostname or "",
            parts.port or (443 if parts.scheme == "https" else 80),
            allow_private=services.settings.webhooks_allow_private,
        )
    except AddressRefused as exc:
        raise HttpError(400, f"url refused: {exc}") from None
    try:
        endpoint = await _store(request).create_endpoint(
            tenant_id,
            url,
            list(dict.fromkeys(events)),
            description=description,
            limit=MAX_ENDPOINTS_PER_TENANT,
            url_key=url_identity,
        )
    except (TooManyEndpoints, EndpointExists) as exc:
        raise HttpError(409, str(exc)) from None
    log.info("webhook endpoint created", tenant=tenant_id, endpoint=endpoint.endpoint_id)
    return JSONResponse(endpoint_body(endpoint, secret=True), status_code=201)


async def list_endpoints(request: Request) -> Response:
    tenant_id = _tenant(request)
    endpoints = await _store(request).endpoints(tenant_id)
    return JSONResponse({"webhooks": [endpoint_body(e) for e in endpoints]})


async def get_endpoint(request: Request) -> Response:
    tenant_id = _tenant(request)
    return JSONResponse(endpoint_body(await _endpoint(request, tenant_id)))


async def delete_endpoint(request: Request) -> Response:
    """204; its pending deliveries go with it. WEBHOOKS_FILE's endpoints are the file's: 409
    while this replica has the file (once unset, its endpoints can be deleted here)."""
    tenant_id = _tenant(request)
    endpoint = await _endpoint(request, tenant_id)
    services: Services = request.app.state.services
    if endpoint.source == "file" and services.settings.webhooks_file is not None:
        raise HttpError(409, "this endpoint is defined in WEBHOOKS_FILE; remove it there")
    await _store(request).delete_endpoint(endpoint.endpoint_id, tenant_id)
    log.info("webhook endpoint deleted", tenant=tenant_id, endpoint=endpoint.endpoint_id)
    return Response(status_code=204)


async def rotate_secret(request: Request) -> Response:
    """POST: a new signing secret (200 with the endpoint and it, shown this once); the old one
    keeps signing beside it for `?grace_s=` (default a day, 0 to 604800) so receivers can switch
    without a failed delivery. WEBHOOKS_FILE's endpoints take their secret from the file: 409."""
    tenant_id = _tenant(request)
    grace_s = Params(request).integer("grace_s", ROTATION_GRACE_S, low=0, high=MAX_ROTATION_GRACE_S)
    endpoint = await _endpoint(request, tenant_id)
    try:
        rotated = await _store(request).rotate_secret(
            endpoint.endpoint_id, tenant_id, timedelta(seconds=grace_s)
        )
    except DeclaredInFile:
        raise HttpError(
            409, "this endpoint is defined in WEBHOOKS_FILE; change its secret there"
        ) from None
    if rotated is None:  # deleted meanwhile
        raise HttpError(404, "no such webhook endpoint")
    log.info("webhook secret rotated", tenant=tenant_id, endpoint=endpoint.endpoint_id)
    return JSONResponse(endpoint_body(rotated, secret=True))


async def list_deliveries(request: Request) -> Response:
    """The endpoint's deliveries, newest first: `?limit=&cursor=`, with a `next` link."""
    tenant_id = _tenant(request)
    params = Params(request)
    limit = params.integer("limit", DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
    before = None
    if cursor := params.text("cursor"):
        cursors = request.app.state.services.cursors
        payload = await cursors.open("deliveries", cursor)
        try:
            before = (datetime.fromisoformat(payload["c"]), str(payload["d"]))
        except (KeyError, TypeError, ValueError):
            raise HttpError(400, "cursor is not one this server issued") from None
        if before[0].tzinfo is None:
            raise HttpError(400, "cursor is not one this server issued")
        before = (as_utc(before[0], "cursor is not one this server issued"), before[1])
    endpoint = await _endpoint(request, tenant_id)
    page = await _store(request).deliveries(endpoint.endpoint_id, limit=limit + 1, before=before)
    more, page = len(page) > limit, page[:limit]
    next_link = None
    if more:
        last = page[-1]
        position = {"c": last.created_at.isoformat(), "d": last.delivery_id}
        token = await request.app.state.services.cursors.seal("deliveries", position)
        next_link = f"{request.url.path}?{urlencode({'limit': limit, 'cursor': token})}"
    return JSONResponse({"deliveries": [delivery_body(d) for d in page], "next": next_link})


routes = [
    Route(BASE, create_endpoint, methods=["POST"]),
    Route(BASE, list_endpoints, methods=["GET"]),
    Route(BASE + "/{endpoint_id}", get_endpoint, methods=["GET"]),
    Route(BASE + "/{endpoint_id}", delete_endpoint, methods=["DELETE"]),
    Route(BASE + "/{endpoint_id}/deliveries", list_deliveries, methods=["GET"]),
    Route(BASE + "/{endpoint_id}/secret", rotate_secret, methods=["POST"]),
]
