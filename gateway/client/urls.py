"""Gateway URLs: the ws(s) base of an http(s) URL, endpoint paths, query parameters."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit


def _ws_base(base: str) -> str:
    """`http(s)://` or `ws(s)://` (or a bare host:port) as a ws base URL without trailing slash."""
    scheme, sep, rest = base.partition("://")
    if not sep:
        scheme, rest = "ws", base
    ws_scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(scheme.lower())
    if ws_scheme is None:
        raise ValueError(f"unsupported URL scheme {scheme!r} in {base!r}")
    return f"{ws_scheme}://{rest.rstrip('/')}"


def _meeting_path(meeting: str) -> str:
    if not meeting:
        raise ValueError("meeting id must not be empty")
    return quote(meeting, safe="")


def ingest_url(base: str, meeting: str) -> str:
    return f"{_ws_base(base)}/api/v1/ws/ingest/meetings/{_meeting_path(meeting)}"


def subscribe_url(base: str, meeting: str, since: int | None = None) -> str:
    url = f"{_ws_base(base)}/api/v1/ws/meetings/{_meeting_path(meeting)}"
    return with_query(url, since=since)


def with_query(url: str, **params: object) -> str:
    """`url` with `params` set in its query string (replacing same-named ones; None skips)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += [(k, str(v)) for k, v in params.items() if v is not None]
    return urlunsplit(parts._replace(query=urlencode(query)))
