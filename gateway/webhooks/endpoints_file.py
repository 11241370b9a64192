"""WEBHOOKS_FILE: endpoints an operator declares in a JSON file, read at start and made the
store's `file` endpoints (the API's admin routes manage the others).

    {"endpoints": [{"tenant": "acme", "url": "https://hooks.example.com/mg",
                    "secret": "whsec_...", "events": ["meeting.ended"]}]}

`events` defaults to every event; `secret` is required (the receiver must know it).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.ids import ID_RULE, valid_id
from gateway.webhooks.signing import secret_key
from gateway.webhooks.urls import check_url
from store.webhooks import EVENT_TYPES, Endpoint


class EndpointsFileError(ValueError):
    pass


def load_endpoints_file(path: Path) -> list[Endpoint]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EndpointsFileError(f"WEBHOOKS_FILE {path}: cannot be read as JSON ({exc})") from None
    items = document.get("endpoints") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise EndpointsFileError(f'WEBHOOKS_FILE {path}: expected {{"endpoints": [...]}}')
    endpoints = [_endpoint(path, n, item) for n, item in enumerate(items)]
    seen: dict[str, int] = {}
    for n, endpoint in enumerate(endpoints):
        # One endpoint per (tenant, url): a second would silently replace the first's events.
        if (first := seen.setdefault(endpoint.endpoint_id, n)) != n:
            raise EndpointsFileError(
                f"WEBHOOKS_FILE {path}, endpoint {n}: the same tenant and url as endpoint {first}"
                " (list all its events in one entry)"
            )
    return endpoints


def _endpoint(path: Path, n: int, item: Any) -> Endpoint:
    where = f"WEBHOOKS_FILE {path}, endpoint {n}"
    if not isinstance(item, dict):
        raise EndpointsFileError(f"{where}: expected an object")
    tenant, url, secret = item.get("tenant"), item.get("url"), item.get("secret")
    events = item.get("events", list(EVENT_TYPES))
    if not isinstance(tenant, str) or not tenant:
        raise EndpointsFileError(f"{where}: `tenant` is required")
    if not valid_id(tenant):
        raise EndpointsFileError(f"{where}: `tenant` must be {ID_RULE} (as a token's tenant_id)")
    if not isinstance(url, str) or (problem := check_url(url)) is not None:
        raise EndpointsFileError(f"{where}: `url` {problem or 'is required'}")
    if not isinstance(secret, str):
        raise EndpointsFileError(f"{where}: `secret` (whsec_ and base64) is required")
    try:
        secret_key(secret)
    except ValueError:
        raise EndpointsFileError(f"{where}: `secret` must be whsec_ and base64") from None
    if not isinstance(events, list) or not events or any(e not in EVENT_TYPES for e in events):
        raise EndpointsFileError(f"{where}: `events` must be a list of {', '.join(EVENT_TYPES)}")
    digest = hashlib.sha256(f"{tenant}\n{url}".encode()).hexdigest()[:24]
    return Endpoint(
        endpoint_id=f"ep_file_{digest}",
        tenant_id=tenant,
        url=url,
        events=tuple(events),
        secret=secret,
        description=item.get("description") if isinstance(item.get("description"), str) else None,
        source="file",
        created_at=datetime.now(UTC),
    )
