"""WEBHOOKS_FILE: endpoints an operator declares in a JSON file, read at start and made the
store's `file` endpoints (the API's admin routes manage the others).

    {"endpoints": [{"tenant": "acme", "url": "https://hooks.example.com/mg",
                    "secret": "whsec_...", "events": ["meeting.ended"]}]}

`events` defaults to every event; `secret` is required (the receiver must know it). A URL whose
host is an address the delivery would refuse (loopback, private, ...) stops the start unless
WEBHOOKS_ALLOW_PRIVATE is set; a host name is checked when each delivery is sent (its DNS answer
may change).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.ids import ID_RULE, valid_id
from gateway.text_rules import description_problem, one_line
from gateway.webhooks.addresses import refusal
from gateway.webhooks.signing import secret_key
from gateway.webhooks.urls import check_url
from store.webhooks import EVENT_TYPES, MAX_DESCRIPTION_CHARS, Endpoint

FIELDS = ("tenant", "url", "secret", "events", "description")
# As the secrets the API makes (32 bytes); Standard Webhooks asks for 24 to 64.
MIN_SECRET_BYTES = 24


class EndpointsFileError(ValueError):
    pass


def load_endpoints_file(path: Path, *, allow_private: bool) -> list[Endpoint]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EndpointsFileError(f"WEBHOOKS_FILE {path}: cannot be read as JSON ({exc})") from None
    items = document.get("endpoints") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise EndpointsFileError(f'WEBHOOKS_FILE {path}: expected {{"endpoints": [...]}}')
    endpoints = [_endpoint(path, n, item, allow_private) for n, item in enumerate(items)]
    seen: dict[str, int] = {}
    for n, endpoint in enumerate(endpoints):
        # One endpoint per (tenant, url): a second would silently replace the first's events.
        if (first := seen.setdefault(endpoint.endpoint_id, n)) != n:
            raise EndpointsFileError(
                f"WEBHOOKS_FILE {path}, endpoint {n}: the same tenant and url as endpoint {first}"
                " (list all its events in one entry)"
            )
    return endpoints


def _endpoint(path: Path, n: int, item: Any, allow_private: bool) -> Endpoint:
    where = f"WEBHOOKS_FILE {path}, endpoint {n}"
    if not isinstance(item, dict):
        raise EndpointsFileError(f"{where}: expected an object")
    if unknown := sorted(set(item) - set(FIELDS)):
        # A typo (`event`) would leave its field at its default (every event) unseen.
        raise EndpointsFileError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; fields are "
            + ", ".join(FIELDS)
        )
    tenant, url, secret = item.get("tenant"), item.get("url"), item.get("secret")
    events = item.get("events", list(EVENT_TYPES))
    if not isinstance(tenant, str) or not tenant:
        raise EndpointsFileError(f"{where}: `tenant` is required")
    if not valid_id(tenant):
        raise EndpointsFileError(f"{where}: `tenant` must be {ID_RULE} (as a token's tenant_id)")
    if not isinstance(url, str) or (problem := check_url(url)) is not None:
        raise EndpointsFileError(f"{where}: `url` {problem or 'is required'}")
    if not allow_private and (reason := _refused_literal(url)) is not None:
        raise EndpointsFileError(
            f"{where}: `url` {reason}; webhooks reach public addresses only"
            " (WEBHOOKS_ALLOW_PRIVATE=true allows others)"
        )
    if not isinstance(secret, str):
        raise EndpointsFileError(f"{where}: `secret` (whsec_ and base64) is required")
    try:
        key = secret_key(secret) if secret.startswith("whsec_") else b""
    except ValueError:
        key = b""
    if len(key) < MIN_SECRET_BYTES:
        raise EndpointsFileError(
            f"{where}: `secret` must be whsec_ and the base64 of {MIN_SECRET_BYTES} random bytes"
            " or more"
        )
    description = item.get("description")
    if isinstance(description, str):  # one line, as it is listed
        description = one_line(description)
    if description is not None and (
        problem := description_problem(description, MAX_DESCRIPTION_CHARS)
    ):
        raise EndpointsFileError(f"{where}: `description` {problem}")
    if not isinstance(events, list) or not events or any(e not in EVENT_TYPES for e in events):
        raise EndpointsFileError(f"{where}: `events` must be a list of {', '.join(EVENT_TYPES)}")
    digest = hashlib.sha256(f"{tenant}\n{url}".encode()).hexdigest()[:24]
    return Endpoint(
        endpoint_id=f"ep_file_{digest}",
        tenant_id=tenant,
        url=url,
        events=tuple(events),
        secret=secret,
        description=description,
        source="file",
        created_at=datetime.now(UTC),
    )


def _refused_literal(url: str) -> str | None:
    """Why the URL's host, when it is an address rather than a name (or `localhost`, which
    always is loopback), may not be reached."""
    host = (urlsplit(url).hostname or "").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761
        return f"{host} is a loopback name"
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host)
    except ValueError:
        try:  # the forms resolvers also read as IPv4 (`127.1`, `2130706433`, `0x7f.1`)
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None  # a name: checked at each delivery, as its answer may change
    return refusal(address)
