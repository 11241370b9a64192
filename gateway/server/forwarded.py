"""X-Forwarded-For and X-Forwarded-Proto from trusted proxies, applied to the scope in place.

This is uvicorn's `ProxyHeadersMiddleware` logic (same headers, same `FORWARDED_ALLOW_IPS`
trust list), run by the application instead of as uvicorn's outermost middleware: as a
middleware its coroutine frame would live as long as each connection, about 250 bytes per idle
viewer. `gateway serve` turns uvicorn's own off (`proxy_headers=False`).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

DEFAULT_TRUSTED = "127.0.0.1"  # uvicorn's default for FORWARDED_ALLOW_IPS


async def _scope_only(scope: Any, receive: Any, send: Any) -> None:
    return None


class ForwardedHeaders:
    def __init__(self, trusted_hosts: str = DEFAULT_TRUSTED) -> None:
        self._middleware = ProxyHeadersMiddleware(_scope_only, trusted_hosts)

    def apply(self, scope: dict[str, Any]) -> None:
        """Rewrite `client` and `scheme` from a trusted proxy's headers (lifespan: untouched)."""
        # The middleware's coroutine never suspends with an app that returns at once: one step
        # runs it to the end, leaving the scope rewritten.
        client = scope.get("client")
        step = self._middleware(scope, None, None)  # type: ignore[arg-type]
        try:
            step.send(None)
        except StopIteration:
            pass
        else:
            step.close()
            raise RuntimeError("uvicorn's proxy header middleware suspended")
        forwarded = scope.get("client")
        if forwarded is not client and forwarded is not None and not _is_address(forwarded[0]):
            # uvicorn takes whatever the header says: text that is no address would go into
            # every log line of the connection as its client.
            scope["client"] = client


def _is_address(host: object) -> bool:
    try:
        ipaddress.ip_address(host)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True
