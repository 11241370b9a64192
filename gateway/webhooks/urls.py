"""What a webhook URL must look like (the address it reaches is checked separately)."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

MAX_URL_CHARS = 2048


def check_url(url: str) -> str | None:
    """Why `url` cannot be a webhook endpoint, or None."""
    if len(url) > MAX_URL_CHARS:
        return f"must be at most {MAX_URL_CHARS} characters"
    if any(char <= " " or char == "\x7f" for char in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port above 65535
        httpx.URL(url)  # what the sender will build its request from
    except (ValueError, httpx.InvalidURL):
        return "is not a valid URL"
    if port == 0:  # no connection reaches it: every delivery would fail
        return "must not name port 0"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    try:
        parts.hostname.encode("idna")  # what name resolution does with it
    except UnicodeError:
        return "must name a valid host (dot-separated labels of 1 to 63 characters)"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (the signature authenticates the sender)"
    if parts.fragment:
        return "must not have a fragment"
    return None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalized_url(url: str) -> str:
    """`url` (one `check_url` passed) as it is stored and compared: scheme and host in lower
    case, no default or empty port, no leading zeros in one, `/` for an empty path, no empty
    query. Two spellings of one URL are one endpoint (each event would go to it twice)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{netloc}{parts.path or '/'}{query}"


def url_identity(url: str) -> str:
    """What two spellings of one URL share: `normalized_url`, or the URL as it is when it was
    stored before the rules it would now have to pass (a refused one is not normalised)."""
    if check_url(url) is not None:
        return url
    try:
        return normalized_url(url)
    except ValueError:
        return url
