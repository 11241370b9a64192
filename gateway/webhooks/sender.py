"""One delivery attempt: the body signed for this attempt, POSTed to the endpoint's checked
address (Host header and TLS server name kept as the URL's), within the timeout."""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import certifi
import httpx

from gateway.webhooks.addresses import AddressRefused, Resolver, checked_address, system_resolver
from gateway.webhooks.signing import signed_headers
from store.webhooks import Delivery, Endpoint

USER_AGENT = "meeting-gateway-webhooks/1"
_QUERY = re.compile(r"\?[^\s'\"]*")


@dataclass(frozen=True, slots=True)
class Outcome:
    delivered: bool
    status_code: int | None = None
    error: str | None = None  # for the delivery log, which the endpoint's tenant reads
    # For the gateway's own log, when `error` quotes what the receiver sent (a malformed
    # status or header line echoes anything, a URL's path included): its kind only.
    log_error: str | None = None

    @property
    def loggable_error(self) -> str | None:
        return self.log_error or self.error


def trust_store(ca_file: Path | None = None) -> ssl.SSLContext:
    """certifi's CAs (as httpx's own default: not the environment's SSL_CERT_FILE or SSL_CERT_DIR,
    nor a host's store, which a slim image may lack), and those in `ca_file` (an internal CA,
    WEBHOOKS_CA_FILE) besides. OSError or ssl.SSLError for a file that holds none."""
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


class WebhookSender:
    def __init__(
        self,
        *,
        timeout_s: float,
        allow_private: bool,
        resolver: Resolver = system_resolver,
        ca_file: Path | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._allow_private = allow_private
        self._resolver = resolver
        # No redirects (a 3xx could point anywhere) and no proxy from the environment.
        self._client = httpx.AsyncClient(
            timeout=timeout_s,
            follow_redirects=False,
            trust_env=False,
            verify=trust_store(ca_file),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, delivery: Delivery, endpoint: Endpoint) -> Outcome:
        """One attempt, resolving the host included, within the timeout (a delivery's lease
        outlasts it)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._send(delivery, endpoint)
        except TimeoutError:
            return Outcome(False, error=f"no answer within {self._timeout_s:g} s")

    async def _send(self, delivery: Delivery, endpoint: Endpoint) -> Outcome:
        try:
            url = urlsplit(endpoint.url)
            port = url.port or (443 if url.scheme == "https" else 80)
            parsed = httpx.URL(endpoint.url)
            # An internationalised name as DNS, the Host header and TLS take it (IDNA).
            host, netloc = parsed.raw_host.decode("ascii"), parsed.netloc.decode("ascii")
        except (ValueError, httpx.InvalidURL):  # UnicodeError is a ValueError
            return Outcome(False, error="the endpoint's URL is not valid")
        try:
            address = await checked_address(
                host, port, allow_private=self._allow_private, resolver=self._resolver
            )
        except AddressRefused as exc:
            return Outcome(False, error=f"refused: {exc}")
        target = f"[{address}]" if ":" in address else address
        pinned = urlunsplit((url.scheme, f"{target}:{port}", url.path or "/", url.query, ""))
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": netloc,
            **signed_headers(
                endpoint.signing_secrets(datetime.now(UTC)),
                delivery.delivery_id,
                timestamp,
                delivery.payload,
            ),
        }
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        try:
            # Streamed and never read: a receiver's body, however large, is not loaded.
            async with self._client.stream(
                "POST",
                pinned,
                content=delivery.payload.encode(),
                headers=headers,
                extensions=extensions,
            ) as response:
                status = response.status_code
        except httpx.TimeoutException:
            return Outcome(False, error=f"no answer within {self._timeout_s:g} s")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            # InvalidURL: an endpoint stored before its URL was checked as strictly; a failed
            # attempt like any other, never a round of the worker that raises.
            # Kept in the delivery log with a URL's query (it may carry a receiver's token) cut
            # from the message. A protocol error quotes the receiver's bytes (a malformed status
            # or header line): the gateway's log gets its kind only.
            quoted = isinstance(exc, httpx.ProtocolError)
            return Outcome(
                False,
                error=_QUERY.sub("?…", f"{type(exc).__name__}: {exc}")[:300],
                log_error=type(exc).__name__ if quoted else None,
            )
        if 200 <= status < 300:
            return Outcome(True, status)
        return Outcome(False, status, f"answered {status}")
